"""Image ops shared by training preprocessing, the model and test-time inference.

The model subtracts MEAN_RGB from its RGB input; padding an image with MEAN_RGB therefore pads it with zeros in
the network's input space, which is how every padded input of the toolkit is made (training crops, padded
evaluation, sliding windows, the exported graphs).
"""
from libs.compat import tf

# ImageNet RGB channel means of the TF-Slim ResNet/VGG preprocessing (tf-slim's vgg_preprocessing:
# _R_MEAN = 123.68, _G_MEAN = 116.78, _B_MEAN = 103.94).
MEAN_RGB = (123.68, 116.779, 103.939)


def pad_with_mean(image, height, width):
  """Pads an image at the bottom/right with MEAN_RGB to at least height x width.

  Each channel is padded with its own mean, which is exact, whereas (image - mean) -> pad 0 -> + mean would
  perturb the real pixels by float32 rounding.

  Args:
    image: float32 [H, W, 3], RGB in [0, 255].
    height, width: minimum output size (python ints or int32 scalars).

  Returns:
    float32 [max(H, height), max(W, width), 3] (static where both sizes are).
  """
  with tf.name_scope('pad_with_mean'):
    shape = tf.shape(image)
    paddings = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]
    padded = tf.stack([tf.pad(image[:, :, c], paddings, constant_values=MEAN_RGB[c])
                       for c in range(len(MEAN_RGB))], axis=2)
    padded.set_shape([static_padded_dim(image.shape[0], height), static_padded_dim(image.shape[1], width),
                      image.shape[2]])
    return padded


def static_padded_dim(dim, minimum):
  """The static size of max(dim, minimum), or None when either is unknown at graph-building time."""
  if dim is None or not isinstance(minimum, int):
    return None
  return max(dim, minimum)


def resize_bilinear(images, size):
  """Bilinear resize with corners aligned (Caffe "interp" semantics: 90 -> 713 is an exact zoom by 8).

  Args:
    images: [N, H, W, C] of any float dtype.
    size: (height, width), ints or an int32 [2] tensor.

  Returns:
    [N, height, width, C] of the dtype of `images` (ResizeBilinear itself always returns float32): bfloat16
    graphs stay in bfloat16 (tf.cast is a no-op for float32).
  """
  resized = tf.raw_ops.ResizeBilinear(images=images, size=size, align_corners=True)
  return tf.cast(resized, images.dtype)
