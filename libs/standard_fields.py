"""Dictionary keys shared by the input pipeline, the model, the trainer and the evaluator.

Keeping them in one module means a renamed key is a single edit and a typo is an AttributeError.
"""


class TfExampleFields(object):
  """Feature keys of a Cityscapes `tf.train.Example` (written by dataset_tools/create_cityscapes_tfrecord.py).

  image_encoded: PNG (or JPEG) bytes of the RGB image.
  filename: frame name, e.g. ``frankfurt_000000_000294_leftImg8bit.png``.
  format: 'png' or 'jpeg'.
  height, width, channels: int64 image size.
  segmentation_class_encoded: single-channel PNG of train ids (0..num_classes-1, 255 = ignore).
  segmentation_class_format: 'png'.
  """
  image_encoded = 'image/encoded'
  filename = 'image/filename'
  format = 'image/format'
  height = 'image/height'
  width = 'image/width'
  channels = 'image/channels'
  segmentation_class_encoded = 'image/segmentation/class/encoded'
  segmentation_class_format = 'image/segmentation/class/format'


class InputDataFields(object):
  """Keys of the decoded (and later batched) input dictionaries.

  image: float32 RGB in [0, 255], [H, W, 3] (or [N, H, W, 3] batched).
  labels_class: uint8 train ids, [H, W, 1] (or [N, H, W, 1] batched); 255 (ignore_label) marks ignored pixels.
  filename: string scalar (or [N]).
  original_height, original_width: int32 size of the decoded image before any preprocessing.
  """
  image = 'image'
  labels_class = 'labels_class'
  filename = 'filename'
  original_height = 'original_height'
  original_width = 'original_width'
