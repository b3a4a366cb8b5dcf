"""Builds the training augmentation function from repeated PreprocessingStep messages.

    preprocess_fn = preprocessor_builder.build(train_config.preprocessor_step)
    image, label = preprocess_fn(image, label)

Every step is validated when the function is built, not when the graph runs, and a bad value raises
ConfigError naming the indexed field (``train_config.preprocessor_step[1].random_image_crop.crop_height``),
the value and what is allowed.
"""
import functools

from libs import preprocessor
from libs.config_errors import ConfigError
from libs.config_errors import require_oneof
from libs.config_errors import require_positive_int

_ONEOF = 'preprocessing_step'


def _build_random_image_scale(config, field_path, ignore_label):
  """Validates a RandomImageScale message and returns its (image, label) function."""
  del ignore_label  # Scaling never pads.
  min_ratio = config.min_scale_ratio
  max_ratio = config.max_scale_ratio
  # `not x > 0` also rejects NaN.
  if not min_ratio > 0:
    raise ConfigError(field_path + '.min_scale_ratio', min_ratio, 'must be > 0')
  if not max_ratio >= min_ratio:
    raise ConfigError(field_path + '.max_scale_ratio', max_ratio,
                      'must be >= min_scale_ratio (%r)' % min_ratio)
  return functools.partial(preprocessor.random_image_scale,
                           min_scale_ratio=min_ratio, max_scale_ratio=max_ratio)


def _build_random_image_crop(config, field_path, ignore_label):
  """Validates a RandomImageCrop message and returns its (image, label) function."""
  crop_height = require_positive_int(config, 'crop_height', field_path)
  crop_width = require_positive_int(config, 'crop_width', field_path)
  # The channel fields only exist for compatibility with the original configs; the pipeline is RGB images
  # with single-channel labels.
  if config.images_channel_dim != 3:
    raise ConfigError(field_path + '.images_channel_dim', config.images_channel_dim, 'must be 3 (RGB)')
  if config.labels_channel_dim != 1:
    raise ConfigError(field_path + '.labels_channel_dim', config.labels_channel_dim, 'must be 1')
  return functools.partial(preprocessor.random_image_crop, crop_height=crop_height,
                           crop_width=crop_width, ignore_label=ignore_label)


def _build_random_horizontal_flip(config, field_path, ignore_label):
  """Validates a RandomHorizontalFlip message and returns its (image, label) function."""
  del ignore_label  # Flipping never pads.
  probability = config.probability
  if not 0.0 <= probability <= 1.0:
    raise ConfigError(field_path + '.probability', probability, 'must be in [0, 1]')
  return functools.partial(preprocessor.random_horizontal_flip, probability=probability)


def _build_resize_image(config, field_path, ignore_label):
  """Validates a ResizeImage message and returns its (image, label) function."""
  del ignore_label  # Resizing never pads.
  new_height = require_positive_int(config, 'new_height', field_path)
  new_width = require_positive_int(config, 'new_width', field_path)
  return functools.partial(preprocessor.resize_image, new_height=new_height, new_width=new_width)


# Oneof field name -> function(step config, field path, ignore_label) -> (image, label) function.
STEP_BUILDERS = {
    'random_image_scale': _build_random_image_scale,
    'random_image_crop': _build_random_image_crop,
    'random_horizontal_flip': _build_random_horizontal_flip,
    'resize_image': _build_resize_image,
}


def _step_functions(preprocessor_steps, ignore_label, field_path):
  """Validates every step; returns [(oneof name, step config, (image, label) function)] in order."""
  steps = []
  for index, step in enumerate(preprocessor_steps):
    step_path = '%s[%d]' % (field_path, index)
    which = require_oneof(step, _ONEOF, step_path)
    step_config = getattr(step, which)
    steps.append((which, step_config,
                  STEP_BUILDERS[which](step_config, '%s.%s' % (step_path, which), ignore_label)))
  return steps


def build(preprocessor_steps, ignore_label=255, field_path='train_config.preprocessor_step'):
  """Builds a function applying the preprocessing steps in order.

  Args:
    preprocessor_steps: repeated PreprocessingStep messages (possibly empty: the identity).
    ignore_label: label value of any padding added by crops.
    field_path: dotted path of the repeated field, for error messages.

  Returns:
    A function (image, label) -> (image, label) on one example: image float32 [H, W, 3] in [0, 255],
    label uint8 [H, W, 1].

  Raises:
    ConfigError: a step has no oneof field set or holds a value that is not allowed.
  """
  step_fns = [fn for _, _, fn in _step_functions(preprocessor_steps, ignore_label, field_path)]

  def preprocess(image, label):
    for step_fn in step_fns:
      image, label = step_fn(image, label)
    return image, label

  return preprocess


def output_size(preprocessor_steps, field_path='train_config.preprocessor_step'):
  """The static size the steps produce, when one is known at graph-building time.

  Crops and resizes fix the size; a random scale makes it unknown again; a flip keeps it. Examples can only
  be batched (batch size > 1) when this is not None.

  Args:
    preprocessor_steps: repeated PreprocessingStep messages.
    field_path: dotted path of the repeated field, for error messages.

  Returns:
    (height, width) python ints when the last size-changing step is a random_image_crop or a resize_image,
    else None.

  Raises:
    ConfigError: as build().
  """
  size = None
  for which, config, _ in _step_functions(preprocessor_steps, 255, field_path):
    if which == 'random_image_crop':
      size = (config.crop_height, config.crop_width)
    elif which == 'resize_image':
      size = (config.new_height, config.new_width)
    elif which == 'random_image_scale':
      size = None
  return size
