"""Builds how evaluation feeds images to the network from an `EvalConfig` (protos/eval.proto).

    eval_input = eval_input_builder.build(pipeline_config.eval_config, ignore_label=255)
    eval_input.spec           # EvalSpec: input type, fixed size or sliding window, scales, flip
    eval_input.preprocess_fn  # for dataset_builder.build(), or None (sliding windows take images as they are)

The one reader of the `eval_input_type` oneof: the evaluator, the trainer's check of the training crop against
the padded evaluation size and the benchmarks all ask this builder.
"""
import collections

from libs import preprocessor
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import require_oneof
from libs.config_errors import require_positive_int
from protos import eval_pb2

# Largest multi-scale testing factor accepted in eval_config.eval_scales.
MAX_SCALE = 4.0

SlidingWindow = collections.namedtuple('SlidingWindow', [
    'crop_height', 'crop_width', 'stride_height', 'stride_width', 'batch_size'])

EvalSpec = collections.namedtuple('EvalSpec', ['input_type', 'fixed_size', 'sliding_window', 'scales', 'flip'])
EvalSpec.__doc__ = """How images are fed to the network, from a validated eval_config.

input_type: 'padded_eval_input', 'cropped_eval_input' or 'sliding_window_eval_input'.
fixed_size: (height, width) the input is padded or cropped to (padded / cropped), else None.
sliding_window: SlidingWindow (sliding_window_eval_input), else None.
scales: tuple of floats ((1.0,) when eval_scales is empty).
flip: bool, also average the mirrored image.
"""

EvalInput = collections.namedtuple('EvalInput', ['spec', 'preprocess_fn'])
EvalInput.__doc__ = """spec: EvalSpec. preprocess_fn: fn(image, label, filename=None) -> (image, label) for
dataset_builder.build() (padded and cropped input: static output shape [height, width, C]), or None for
sliding windows (whole images of any size, batch size 1)."""


def build(eval_config, ignore_label=255, field_path='eval_config'):
  """Reads eval_config once and returns the spec and the input preprocessing.

  Args:
    eval_config: eval_pb2.EvalConfig.
    ignore_label: label value of the padding.
    field_path: dotted path of eval_config, for error messages.

  Returns:
    EvalInput.

  Raises:
    ConfigError: naming the field path, the value and what is allowed.
    ValueError: if eval_config is not an EvalConfig message.
  """
  if not isinstance(eval_config, eval_pb2.EvalConfig):
    raise ValueError('eval_config must be an eval_pb2.EvalConfig, got %s' % type(eval_config).__name__)
  type_path = field_path + '.eval_input_type'
  if not eval_config.HasField('eval_input_type'):
    choices = [f.name for f in eval_pb2.EvalInputType.DESCRIPTOR.oneofs_by_name['eval_input_type_oneof'].fields]
    raise ConfigError(type_path, None, 'must be set to one of {%s}: the network needs inputs of a fixed size'
                      % ', '.join(choices))
  which = require_oneof(eval_config.eval_input_type, 'eval_input_type_oneof', type_path)
  input_config = getattr(eval_config.eval_input_type, which)
  path = '%s.%s' % (type_path, which)
  if which == 'sliding_window_eval_input':
    fixed_size, window, preprocess_fn = None, _sliding_window(input_config, path), None
  else:
    fixed_size = (require_positive_int(input_config, 'height', path),
                  require_positive_int(input_config, 'width', path))
    window = None
    preprocess_fn = _PREPROCESS_FNS[which](fixed_size, ignore_label, path)
  scales = tuple(eval_config.eval_scales) or (1.0,)
  for i, scale in enumerate(eval_config.eval_scales):
    if not 0.0 < scale <= MAX_SCALE:
      raise ConfigError('%s.eval_scales[%d]' % (field_path, i), scale, 'must be in (0, %g]' % MAX_SCALE)
  if len(set(scales)) != len(scales):
    raise ConfigError(field_path + '.eval_scales', list(scales), 'must not repeat a value')
  spec = EvalSpec(which, fixed_size, window, scales, bool(eval_config.flip_horizontally))
  return EvalInput(spec, preprocess_fn)


def _sliding_window(input_config, path):
  crop_height = require_positive_int(input_config, 'crop_height', path)
  crop_width = require_positive_int(input_config, 'crop_width', path)
  strides = []
  for name, crop in (('stride_height', crop_height), ('stride_width', crop_width)):
    value = getattr(input_config, name)
    if not input_config.HasField(name) or not 1 <= value <= crop:
      raise ConfigError('%s.%s' % (path, name), value if input_config.HasField(name) else None,
                        'must be in [1, %d] (the crop size; a larger stride leaves pixels uncovered)' % crop)
    strides.append(value)
  if input_config.batch_size <= 0:
    raise ConfigError(path + '.batch_size', input_config.batch_size, 'must be > 0')
  return SlidingWindow(crop_height, crop_width, strides[0], strides[1], input_config.batch_size)


def _padded_input(size, ignore_label, path):
  """Pads image (MEAN_RGB) and label (ignore_label) at the bottom/right to size; an image larger than size
  raises tf.errors.InvalidArgumentError at run time naming the record and both sizes."""
  height, width = size

  def pad(image, label, filename=None):
    if filename is None:
      filename = tf.constant('<unknown record>')
    image_size = tf.shape(image)[:2]
    # Padding cannot shrink an image; cropping it silently would evaluate on part of the frame only.
    fits = tf.debugging.Assert(
        tf.logical_and(image_size[0] <= height, image_size[1] <= width),
        ['Image of record', filename, 'is larger than %s.height x width = %d x %d; (h, w) =' %
         (path, height, width), image_size])
    with tf.control_dependencies([fits]):
      image = tf.identity(image)
    image, label = preprocessor.pad_to_size(image, label, height, width, ignore_label)
    # The assertion above makes the padded size exactly height x width.
    image.set_shape([height, width, image.shape[2]])
    label.set_shape([height, width, label.shape[2]])
    return image, label

  return pad


def _cropped_input(size, ignore_label, path):
  """The central window of size, padded as _padded_input where the image is smaller."""
  del path  # Any size can be cropped or padded.
  height, width = size

  def central_crop(image, label, filename=None):
    del filename
    return preprocessor.central_crop_or_pad(image, label, height, width, ignore_label)

  return central_crop


_PREPROCESS_FNS = {'padded_eval_input': _padded_input, 'cropped_eval_input': _cropped_input}
