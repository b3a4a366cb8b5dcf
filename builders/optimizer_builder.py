"""Builds the training optimizer and its learning-rate schedule from an `Optimizer` config.

See protos/optimizer.proto. The whole config is validated before any op is added to the graph, so a bad
value leaves the graph untouched; every bad value raises ConfigError naming its full field path.
"""
import math

import numpy as np

from libs import learning_schedules
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import require_oneof


def _float(value):
  """A float proto field as the number that was written in the config.

  Float fields are stored as float32, so 0.01 reads back as 0.009999999776...; the shortest decimal that
  round-trips through float32 is what the user wrote, reads well in error messages, and makes the float64
  schedule arithmetic match the documented formula.
  """
  return float(str(np.float32(value)))


def _check(ok, field_path, value, allowed):
  # Callers phrase `ok` as the positive condition so that NaN, which fails every comparison, is rejected.
  if not ok:
    raise ConfigError(field_path, value, allowed)


def _check_positive_rate(value, field_path):
  # Infinity would pass '> 0' but cannot train anything.
  _check(value > 0 and math.isfinite(value), field_path, value, 'must be > 0 (and finite)')


def _check_unit_interval(value, field_path):
  _check(0.0 <= value < 1.0, field_path, value, 'must be in [0, 1)')


# Each schedule builder validates its config and returns (schedule_fn, decay_steps): schedule_fn maps a
# global-step tensor to the learning-rate tensor and adds ops only when called; decay_steps is the
# schedule's decay length (bounding the warm-up), or None for a schedule without one.


def _constant_schedule(config, field_path, num_steps):
  del num_steps  # No decay to size.
  learning_rate = _float(config.learning_rate)
  _check_positive_rate(learning_rate, field_path + '.learning_rate')
  return (lambda global_step: learning_schedules.constant(learning_rate)), None


def _exponential_decay_schedule(config, field_path, num_steps):
  del num_steps  # The proto gives decay_steps no "0 means num_steps" fallback.
  initial = _float(config.initial_learning_rate)
  decay_factor = _float(config.decay_factor)
  min_learning_rate = _float(config.min_learning_rate)
  decay_steps = config.decay_steps
  staircase = config.staircase
  _check_positive_rate(initial, field_path + '.initial_learning_rate')
  _check(decay_steps > 0, field_path + '.decay_steps', decay_steps, 'must be > 0')
  _check(0.0 < decay_factor <= 1.0, field_path + '.decay_factor', decay_factor, 'must be in (0, 1]')
  _check(min_learning_rate >= 0.0 and math.isfinite(min_learning_rate), field_path + '.min_learning_rate',
         min_learning_rate, 'must be >= 0 (and finite)')

  def schedule(global_step):
    return learning_schedules.exponential_decay(global_step, initial, decay_steps, decay_factor,
                                                staircase=staircase, min_learning_rate=min_learning_rate)

  return schedule, decay_steps


def _polynomial_decay_schedule(config, field_path, num_steps):
  initial = _float(config.initial_learning_rate)
  power = _float(config.power)
  end = _float(config.end_learning_rate)
  _check_positive_rate(initial, field_path + '.initial_learning_rate')
  _check(power >= 0.0 and math.isfinite(power), field_path + '.power', power, 'must be >= 0 (and finite)')
  _check(0.0 <= end <= initial, field_path + '.end_learning_rate', end,
         'must be >= 0 and <= initial_learning_rate (%r)' % initial)
  decay_steps = config.decay_steps
  if decay_steps == 0:
    # 0 means "decay over the whole run", which needs a run length.
    _check(num_steps > 0, field_path + '.decay_steps', decay_steps,
           'must be > 0 when train_config.num_steps is 0 (0 means decay over train_config.num_steps, '
           'and training without a step limit gives nothing to decay over)')
    decay_steps = num_steps

  def schedule(global_step):
    return learning_schedules.polynomial_decay(global_step, initial, decay_steps, power,
                                               end_learning_rate=end)

  return schedule, decay_steps


_SCHEDULE_BUILDERS = {
    'constant_learning_rate': _constant_schedule,
    'exponential_decay_learning_rate': _exponential_decay_schedule,
    'polynomial_decay_learning_rate': _polynomial_decay_schedule,
}


def build_learning_rate(learning_rate_config, global_step, num_steps, field_path):
  """Builds the learning-rate tensor of a `LearningRate` config.

  Args:
    learning_rate_config: a `LearningRate` proto.
    global_step: integer scalar tensor or variable; None uses tf.train.get_or_create_global_step().
    num_steps: train_config.num_steps, the decay length of a polynomial schedule with decay_steps 0
      (0: training has no step limit).
    field_path: dotted path of learning_rate_config in the pipeline config, for error messages.

  Returns:
    A float32 scalar tensor, the learning rate at global_step.

  Raises:
    ConfigError: no schedule is set, or a field is out of its documented range.
  """
  which = require_oneof(learning_rate_config, 'learning_rate', field_path)
  schedule_fn, decay_steps = _SCHEDULE_BUILDERS[which](
      getattr(learning_rate_config, which), field_path + '.' + which, num_steps)

  warmup_steps = learning_rate_config.warmup_steps
  warmup_learning_rate = _float(learning_rate_config.warmup_learning_rate)
  # Checked even without a warm-up: an out-of-range value there is a mistake in the config either way.
  _check(warmup_learning_rate >= 0.0 and math.isfinite(warmup_learning_rate),
         field_path + '.warmup_learning_rate', warmup_learning_rate, 'must be >= 0 (and finite)')
  if warmup_steps > 0 and decay_steps is not None:
    # A warm-up as long as the decay would hand over to an already fully decayed schedule.
    _check(warmup_steps < decay_steps, field_path + '.warmup_steps', warmup_steps,
           'must be < the schedule\'s decay_steps (%d)' % decay_steps)

  if global_step is None:
    global_step = tf.train.get_or_create_global_step()
  if warmup_steps > 0:
    return learning_schedules.with_linear_warmup(schedule_fn, global_step, warmup_steps,
                                                 warmup_learning_rate)
  return schedule_fn(global_step)


def _check_momentum_optimizer(config, field_path):
  _check_unit_interval(_float(config.momentum_optimizer_value), field_path + '.momentum_optimizer_value')


def _make_momentum_optimizer(config, learning_rate):
  return tf.train.MomentumOptimizer(learning_rate, momentum=_float(config.momentum_optimizer_value),
                                    use_nesterov=config.use_nesterov)


def _check_adam_optimizer(config, field_path):
  _check_unit_interval(_float(config.beta1), field_path + '.beta1')
  _check_unit_interval(_float(config.beta2), field_path + '.beta2')
  epsilon = _float(config.epsilon)
  _check(epsilon > 0.0 and math.isfinite(epsilon), field_path + '.epsilon', epsilon,
         'must be > 0 (and finite)')


def _make_adam_optimizer(config, learning_rate):
  return tf.train.AdamOptimizer(learning_rate, beta1=_float(config.beta1), beta2=_float(config.beta2),
                                epsilon=_float(config.epsilon))


# optimizer oneof field -> (check hyper-parameters, construct the optimizer given the learning rate).
_OPTIMIZER_BUILDERS = {
    'momentum_optimizer': (_check_momentum_optimizer, _make_momentum_optimizer),
    'adam_optimizer': (_check_adam_optimizer, _make_adam_optimizer),
}


def build(optimizer_config, global_step=None, num_steps=0, field_path='train_config.optimizer'):
  """Builds the optimizer and its learning rate from an `Optimizer` config.

  Args:
    optimizer_config: an `Optimizer` proto.
    global_step: integer scalar tensor or variable the schedule follows; None uses
      tf.train.get_or_create_global_step().
    num_steps: train_config.num_steps (a polynomial schedule's decay_steps 0 means this; 0 means no limit).
    field_path: dotted path of optimizer_config in the pipeline config, for error messages.

  Returns:
    (optimizer, learning_rate): a tf.train.Optimizer and its float32 scalar learning-rate tensor.

  Raises:
    ConfigError: no optimizer or schedule is set, or a field is out of its documented range.
  """
  which = require_oneof(optimizer_config, 'optimizer', field_path)
  config = getattr(optimizer_config, which)
  path = field_path + '.' + which
  check_fn, make_fn = _OPTIMIZER_BUILDERS[which]
  # Hyper-parameters first: build_learning_rate adds ops, which a later error would leave in the graph.
  check_fn(config, path)
  learning_rate = build_learning_rate(config.learning_rate, global_step, num_steps,
                                      path + '.learning_rate')
  return make_fn(config, learning_rate), learning_rate
