"""Augmentation and resizing ops on one (image, label) segmentation example.

Every function takes and returns the pair

  image: float32 [H, W, 3], RGB in [0, 255] (not mean-subtracted; the model subtracts MEAN_RGB);
  label: uint8 [H, W, 1], train ids with an ignore label (255 for Cityscapes),

and transforms both with the same geometry, so that a label pixel keeps describing the image pixel at the
same position. Labels are class ids, not intensities: they are only ever resized with nearest neighbour
sampling, never interpolated, and padded with the ignore label so that padding never becomes a class.

All ops are graph-mode TensorFlow; sizes may be dynamic, and functions that fix the output size also fix
the static shape so that examples can be batched.
"""
from libs import image_ops
from libs.compat import tf


def _resize_pair(image, label, size):
  """Resizes the image bilinearly and the label with nearest neighbour to `size`.

  Both use TF2's half-pixel-centre sampling (tf.image.resize); the legacy TF1 resize ops use different
  corner conventions for the two methods, which would shift the label against the image.

  Args:
    image: float32 [H, W, C].
    label: uint8 [H, W, 1].
    size: int32 [2] tensor or (height, width).

  Returns:
    image: float32 [h, w, C].
    label: label's dtype, [h, w, 1].
  """
  resized_image = tf.compat.v2.image.resize(
      image, size, method=tf.compat.v2.image.ResizeMethod.BILINEAR, antialias=False)
  resized_label = tf.compat.v2.image.resize(
      label, size, method=tf.compat.v2.image.ResizeMethod.NEAREST_NEIGHBOR)
  return resized_image, resized_label


def random_image_scale(image, label, min_scale_ratio, max_scale_ratio, seed=None):
  """Rescales image and label by one random factor.

  Args:
    image: float32 [H, W, C].
    label: uint8 [H, W, 1].
    min_scale_ratio: smallest factor (> 0).
    max_scale_ratio: largest factor (>= min_scale_ratio).
    seed: op-level random seed.

  Returns:
    image: float32 [round(H*s), round(W*s), C], bilinear.
    label: uint8 [round(H*s), round(W*s), 1], nearest neighbour, so its values are a subset of the input's.
  """
  with tf.name_scope('random_image_scale'):
    scale = tf.random.uniform([], minval=min_scale_ratio, maxval=max_scale_ratio, dtype=tf.float32,
                              seed=seed)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    # A tiny image at a small scale must not shrink to an empty one.
    new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    return _resize_pair(image, label, new_size)


def resize_image(image, label, new_height, new_width):
  """Resizes image (bilinear) and label (nearest neighbour) to a fixed size.

  Args:
    image: float32 [H, W, C].
    label: uint8 [H, W, 1].
    new_height, new_width: python ints > 0.

  Returns:
    image: float32 [new_height, new_width, C].
    label: uint8 [new_height, new_width, 1].
  """
  with tf.name_scope('resize_image'):
    return _resize_pair(image, label, [new_height, new_width])


def pad_to_size(image, label, height, width, ignore_label):
  """Pads image and label at the bottom/right to at least height x width.

  Dimensions already at least as large are left alone, so this is a no-op for a large enough example.

  Args:
    image: float32 [H, W, 3].
    label: uint8 [H, W, 1].
    height, width: minimum output size (python ints or int32 scalars).
    ignore_label: label value of the padding.

  Returns:
    image: float32 [max(H, height), max(W, width), 3], padded with MEAN_RGB.
    label: uint8 [max(H, height), max(W, width), 1], padded with ignore_label.
  """
  with tf.name_scope('pad_to_size'):
    padded_image = image_ops.pad_with_mean(image, height, width)
    shape = tf.shape(image)
    paddings = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)], [0, 0]]
    padded_label = tf.pad(label, paddings, constant_values=tf.constant(ignore_label, dtype=label.dtype))
    padded_label.set_shape(padded_image.shape[:2].concatenate(label.shape[2:]))
    return padded_image, padded_label


def random_image_crop(image, label, crop_height, crop_width, ignore_label, seed=None):
  """Crops image and label at the same random crop_height x crop_width window.

  An example smaller than the crop is first padded (see pad_to_size), so the output always has the crop
  size.

  Args:
    image: float32 [H, W, C].
    label: uint8 [H, W, 1].
    crop_height, crop_width: python ints > 0.
    ignore_label: label value of any padding.
    seed: op-level random seed.

  Returns:
    image: float32 [crop_height, crop_width, C] (static shape).
    label: uint8 [crop_height, crop_width, 1] (static shape).
  """
  with tf.name_scope('random_image_crop'):
    image, label = pad_to_size(image, label, crop_height, crop_width, ignore_label)
    shape = tf.shape(image)
    # Number of valid offsets along each axis (>= 1 after padding).
    num_offsets = tf.stack([shape[0] - crop_height + 1, shape[1] - crop_width + 1])
    # One random op draws both offsets: two ops with the same op seed would draw the same numbers and
    # correlate the vertical and horizontal offsets.
    uniform = tf.random.uniform([2], minval=0.0, maxval=1.0, dtype=tf.float32, seed=seed)
    offsets = tf.cast(tf.floor(uniform * tf.cast(num_offsets, tf.float32)), tf.int32)
    # Guards against uniform * n rounding up to n in float32.
    offsets = tf.minimum(offsets, num_offsets - 1)
    return _crop_pair(image, label, offsets, crop_height, crop_width)


def _crop_pair(image, label, offsets, height, width):
  """Slices the same window from image and label and fixes the static output shape.

  Args:
    image: [H, W, C].
    label: [H, W, 1].
    offsets: int32 [2], (top, left) of the window.
    height, width: python ints, window size.

  Returns:
    image [height, width, C] and label [height, width, 1].
  """
  begin = tf.concat([offsets, [0]], axis=0)
  cropped_image = tf.slice(image, begin, [height, width, -1])
  cropped_label = tf.slice(label, begin, [height, width, -1])
  cropped_image.set_shape([height, width, image.shape[2]])
  cropped_label.set_shape([height, width, label.shape[2]])
  return cropped_image, cropped_label


def random_horizontal_flip(image, label, probability=0.5, seed=None):
  """Mirrors image and label left-right together with the given probability.

  Args:
    image: float32 [H, W, C].
    label: uint8 [H, W, 1].
    probability: chance of flipping, in [0, 1].
    seed: op-level random seed.

  Returns:
    image and label with the input shapes, both flipped or both not.
  """
  with tf.name_scope('random_horizontal_flip'):
    # uniform is in [0, 1), so probability 0 never flips and 1 always does.
    do_flip = tf.random.uniform([], minval=0.0, maxval=1.0, dtype=tf.float32, seed=seed) < probability
    return tf.cond(do_flip,
                   lambda: (tf.reverse(image, axis=[1]), tf.reverse(label, axis=[1])),
                   lambda: (tf.identity(image), tf.identity(label)))


def central_crop_or_pad(image, label, height, width, ignore_label):
  """Crops the central height x width window, padding first where the example is smaller.

  Used for cropped evaluation. Padding goes to the bottom/right as in training (image MEAN_RGB, label
  ignore_label), so a padded axis is "cropped" at offset 0.

  Args:
    image: float32 [H, W, C].
    label: uint8 [H, W, 1].
    height, width: python ints > 0.
    ignore_label: label value of any padding.

  Returns:
    image: float32 [height, width, C] (static shape).
    label: uint8 [height, width, 1] (static shape).
  """
  with tf.name_scope('central_crop_or_pad'):
    image, label = pad_to_size(image, label, height, width, ignore_label)
    shape = tf.shape(image)
    offsets = tf.stack([(shape[0] - height) // 2, (shape[1] - width) // 2])
    return _crop_pair(image, label, offsets, height, width)
