"""Builds the mixed-precision setting of training from train_config.mixed_precision and train_config.loss_scale
(protos/train.proto).

    setting = mixed_precision_builder.build(pipeline_config.train_config)
    setting.compute_dtype        # None (float32), tf.float16 or tf.bfloat16: the network's activations
    setting.make_loss_scale()    # libs.loss_scale.LossScale for float16, None otherwise (creates variables)

The whole setting is validated by build(), before anything is added to a graph; every bad value raises
ConfigError naming its field path.
"""
import collections
import math

from libs import loss_scale as loss_scale_lib
from libs.compat import tf
from libs.config_errors import ConfigError

MODES = collections.OrderedDict([('none', None), ('float16', tf.float16), ('bfloat16', tf.bfloat16)])


class MixedPrecision(collections.namedtuple('MixedPrecision', ['mode', 'compute_dtype', 'loss_scale_config'])):
  """mode: 'none' | 'float16' | 'bfloat16'; compute_dtype: None or the half type; loss_scale_config: the
  LossScale proto (float16 only) or None."""

  @property
  def enabled(self):
    return self.compute_dtype is not None

  def make_loss_scale(self):
    """A LossScale (its variables in the current graph and device scope) for float16, else None."""
    if self.loss_scale_config is None:
      return None
    config = self.loss_scale_config
    return loss_scale_lib.LossScale(initial_scale=config.initial_scale, growth_steps=config.growth_steps,
                                    dynamic=config.dynamic)


def build(train_config, field_path='train_config'):
  """TrainConfig -> MixedPrecision.

  Raises:
    ConfigError: for an unknown mixed_precision, loss_scale without float16, or a bad loss_scale value.
  """
  mode = train_config.mixed_precision
  if mode not in MODES:
    raise ConfigError(field_path + '.mixed_precision', mode,
                      'allowed: %s' % ', '.join('"%s"' % m for m in MODES))
  scale_path = field_path + '.loss_scale'
  if mode != 'float16':
    if train_config.HasField('loss_scale'):
      raise ConfigError(scale_path, str(train_config.loss_scale).replace('\n', ' ').strip(),
                        'only used with mixed_precision: "float16" (this config has "%s"; bfloat16 needs no loss '
                        'scaling)' % mode)
    return MixedPrecision(mode, MODES[mode], None)
  config = train_config.loss_scale
  if not (config.initial_scale >= 1 and math.isfinite(config.initial_scale)):
    raise ConfigError(scale_path + '.initial_scale', config.initial_scale, 'must be >= 1 (and finite)')
  if config.growth_steps <= 0:
    raise ConfigError(scale_path + '.growth_steps', config.growth_steps, 'must be > 0')
  return MixedPrecision(mode, MODES[mode], config)
