"""Builds the segmentation classification loss from a `Loss` config (protos/losses.proto)."""
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import require_oneof
from protos import losses_pb2


def _softmax(config, field_path):
  """Softmax cross-entropy averaged over the pixels with positive weight."""
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(field_path + '.label_smoothing', config.label_smoothing, 'must be in [0, 1)')
  label_smoothing = float(config.label_smoothing)

  def loss_fn(logits, labels, weights):
    """logits float [P, C], labels int32 [P], weights float [P] -> scalar."""
    onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
    # SUM_BY_NONZERO_WEIGHTS divides by the number of valid pixels (0 loss when there are none).
    return tf.losses.softmax_cross_entropy(
        onehot, logits, weights=weights, label_smoothing=label_smoothing, loss_collection=None,
        reduction=tf.losses.Reduction.SUM_BY_NONZERO_WEIGHTS)

  return loss_fn


_CLASSIFICATION_LOSSES = {'softmax': _softmax}


def build_classification_loss(config, field_path='model.pspnet.loss.classification_loss'):
  """Returns fn(logits [P, C], labels int32 [P], weights [P]) -> scalar mean loss over valid pixels."""
  which = require_oneof(config, 'loss_type', field_path)
  return _CLASSIFICATION_LOSSES[which](getattr(config, which), field_path + '.' + which)


def build(config, num_classes, field_path='model.pspnet.loss'):
  """Validates a Loss config and returns the PSPNetArchitecture keyword arguments it determines.

  Args:
    config: losses_pb2.Loss.
    num_classes: the model's class count (the ignore label must not be a class).
    field_path: dotted path of `config`, for error messages.

  Returns:
    dict with classification_loss_fn, use_aux_loss, main_loss_weight, aux_loss_weight, ignore_label,
    upsample_logits.

  Raises:
    ConfigError: for an invalid field.
  """
  if not isinstance(config, losses_pb2.Loss):
    raise ValueError('config must be a losses_pb2.Loss, got %s' % type(config).__name__)
  if not config.HasField('classification_loss'):
    raise ConfigError(field_path + '.classification_loss', None, 'must be set (e.g. "softmax {}")')
  if config.main_loss_weight <= 0:
    raise ConfigError(field_path + '.main_loss_weight', config.main_loss_weight, 'must be > 0')
  if config.aux_loss_weight < 0:
    raise ConfigError(field_path + '.aux_loss_weight', config.aux_loss_weight, 'must be >= 0')
  if not 0 <= config.ignore_label <= 255 or config.ignore_label < num_classes:
    raise ConfigError(field_path + '.ignore_label', config.ignore_label,
                      'must be in [%d, 255] (a label value that is not a class id)' % num_classes)
  return {
      'classification_loss_fn': build_classification_loss(config.classification_loss,
                                                           field_path + '.classification_loss'),
      'use_aux_loss': config.use_auxiliary_loss,
      'main_loss_weight': config.main_loss_weight,
      'aux_loss_weight': config.aux_loss_weight,
      'ignore_label': config.ignore_label,
      'upsample_logits': config.upsample_logits,
  }
