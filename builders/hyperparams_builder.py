"""Builds the tf-slim arg_scope shared by every convolution from a `Hyperparams` config.

    scope_fn = hyperparams_builder.build(config.model.pspnet.hyperparams, is_training=True)
    with slim.arg_scope(scope_fn()):
      net = slim.conv2d(...)

The scope sets, for `slim.conv2d` (and so for slim's ResNet units): the kernel initializer and regularizer,
ReLU activation, and the toolkit's batch norm (libs/batch_norm.py) as normalizer; `slim.max_pool2d` gets SAME
padding as in TF-Slim's `resnet_arg_scope`, which the public ResNet checkpoints were trained with.
"""

from libs import batch_norm as batch_norm_lib
from libs import mixed_precision
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import require_oneof
from protos import hyperparams_pb2


_VS_MODES = {
    hyperparams_pb2.VarianceScalingInitializer.FAN_IN: 'FAN_IN',
    hyperparams_pb2.VarianceScalingInitializer.FAN_OUT: 'FAN_OUT',
    hyperparams_pb2.VarianceScalingInitializer.FAN_AVG: 'FAN_AVG',
}


def _l2(config, field_path):
  if config.weight < 0:
    raise ConfigError(field_path + '.weight', config.weight, 'must be >= 0')
  return slim.l2_regularizer(scale=float(config.weight))


def _l1(config, field_path):
  if config.weight < 0:
    raise ConfigError(field_path + '.weight', config.weight, 'must be >= 0')
  return slim.l1_regularizer(scale=float(config.weight))


_REGULARIZERS = {'l2_regularizer': _l2, 'l1_regularizer': _l1}


def _truncated_normal(config, field_path):
  if config.stddev <= 0:
    raise ConfigError(field_path + '.stddev', config.stddev, 'must be > 0')
  return tf.truncated_normal_initializer(mean=config.mean, stddev=config.stddev)


def _random_normal(config, field_path):
  if config.stddev <= 0:
    raise ConfigError(field_path + '.stddev', config.stddev, 'must be > 0')
  return tf.random_normal_initializer(mean=config.mean, stddev=config.stddev)


def _variance_scaling(config, field_path):
  if config.factor <= 0:
    raise ConfigError(field_path + '.factor', config.factor, 'must be > 0')
  return slim.variance_scaling_initializer(
      factor=config.factor, mode=_VS_MODES[config.mode], uniform=config.uniform)


_INITIALIZERS = {
    'truncated_normal_initializer': _truncated_normal,
    'variance_scaling_initializer': _variance_scaling,
    'random_normal_initializer': _random_normal,
}


def build_regularizer(config, field_path='regularizer'):
  """Returns a tf-slim regularizer function. Raises ConfigError on an empty oneof or bad weight."""
  which = require_oneof(config, 'regularizer_oneof', field_path)
  return _REGULARIZERS[which](getattr(config, which), field_path + '.' + which)


def build_initializer(config, field_path='initializer'):
  """Returns a kernel initializer. Raises ConfigError on an empty oneof or a bad value."""
  which = require_oneof(config, 'initializer_oneof', field_path)
  return _INITIALIZERS[which](getattr(config, which), field_path + '.' + which)


def build_batch_norm_params(config, is_training, field_path='batch_norm'):
  """Returns the keyword arguments of libs.batch_norm.batch_norm for a BatchNorm config.

  Args:
    config: hyperparams_pb2.BatchNorm.
    is_training: whether the graph is a training graph. Batch statistics are used only when both this and
      `config.train` are true; `config.train: false` freezes batch norm (moving statistics, beta and gamma
      not trained).
    field_path: for error messages.
  """
  if not 0.0 <= config.decay < 1.0:
    raise ConfigError(field_path + '.decay', config.decay, 'must be in [0, 1)')
  if config.epsilon <= 0:
    raise ConfigError(field_path + '.epsilon', config.epsilon, 'must be > 0')
  return {
      'decay': config.decay,
      'epsilon': config.epsilon,
      'center': config.center,
      'scale': config.scale,
      'is_training': bool(is_training and config.train),
      'trainable': bool(config.train),
      'sync_across_clones': bool(config.sync_across_clones),
  }


def build(config, is_training, field_path='model.pspnet.hyperparams'):
  """Builds a function returning the arg_scope for the network's layers.

  Args:
    config: hyperparams_pb2.Hyperparams.
    is_training: python bool, whether the graph is built for training.
    field_path: dotted path of `config`, for error messages.

  Returns:
    A zero-argument function returning an arg_scope dictionary, to be used as
    `with slim.arg_scope(scope_fn()): ...`.

  Raises:
    ConfigError: for an invalid field.
    ValueError: if `config` is not a Hyperparams message.
  """
  if not isinstance(config, hyperparams_pb2.Hyperparams):
    raise ValueError('config must be a hyperparams_pb2.Hyperparams, got %s' % type(config).__name__)
  regularizer = None
  if config.HasField('regularizer'):
    # In float32 also for the half-precision weight reads of mixed-precision training.
    regularizer = mixed_precision.float32_regularizer(
        build_regularizer(config.regularizer, field_path + '.regularizer'))
  if config.HasField('initializer'):
    initializer = build_initializer(config.initializer, field_path + '.initializer')
  else:
    initializer = slim.variance_scaling_initializer()
  bn_params = build_batch_norm_params(config.batch_norm, is_training, field_path + '.batch_norm')

  def scope_fn():
    with slim.arg_scope([slim.conv2d],
                        weights_initializer=initializer,
                        weights_regularizer=regularizer,
                        activation_fn=tf.nn.relu,
                        normalizer_fn=batch_norm_lib.batch_norm,
                        normalizer_params=bn_params):
      with slim.arg_scope([batch_norm_lib.batch_norm], **bn_params):
        with slim.arg_scope([slim.max_pool2d], padding='SAME') as sc:
          return sc

  return scope_fn
