"""Tests of builders/optimizer_builder.py: optimizer classes, schedules, and every config error."""
import pytest
from google.protobuf import text_format

from builders import optimizer_builder
from libs.compat import tf
from libs.config_errors import ConfigError
from protos import optimizer_pb2
from protos import train_pb2

# The optimizer block of the original TF1 toolkit's PSPNet configs, verbatim.
PSPNET_OPTIMIZER = """
  momentum_optimizer {
    learning_rate {
      polynomial_decay_learning_rate {
        initial_learning_rate: 0.01
        decay_steps: 120000
        power: 0.9
      }
    }
    momentum_optimizer_value: 0.9
  }
"""


def _optimizer_config(text):
  return text_format.Parse(text, optimizer_pb2.Optimizer())


def _learning_rate_config(text):
  return text_format.Parse(text, optimizer_pb2.LearningRate())


def _values_at(learning_rate, global_step, sess, steps):
  """Evaluates learning_rate with the global step variable assigned each of steps in turn."""
  new_step = tf.placeholder(tf.int64, shape=[])
  assign = global_step.assign(new_step)
  values = []
  for step in steps:
    sess.run(assign, {new_step: step})
    values.append(sess.run(learning_rate))
  return values


def _build_learning_rate_values(text, steps, num_steps=0):
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    learning_rate = optimizer_builder.build_learning_rate(
        _learning_rate_config(text), global_step, num_steps, 'train_config.optimizer.x.learning_rate')
    assert learning_rate.dtype == tf.float32
    assert learning_rate.shape.as_list() == []
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      return _values_at(learning_rate, global_step, sess, steps)


def _poly(step, initial, decay_steps, power, end=0.0):
  return (initial - end) * (1.0 - min(step, decay_steps) / decay_steps) ** power + end


# --- Optimizers ---


def test_pspnet_config_builds_momentum_with_poly_schedule():
  total = 120000
  with tf.Graph().as_default():
    optimizer, learning_rate = optimizer_builder.build(_optimizer_config(PSPNET_OPTIMIZER))
    assert isinstance(optimizer, tf.train.MomentumOptimizer)
    assert optimizer._momentum == pytest.approx(0.9)  # pylint: disable=protected-access
    assert not optimizer._use_nesterov  # pylint: disable=protected-access
    assert optimizer._learning_rate is learning_rate  # pylint: disable=protected-access
    assert learning_rate.op.name == 'learning_rate'
    global_step = tf.train.get_global_step()
    assert global_step is not None
    steps = [0, total // 2, total, 2 * total]
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      values = _values_at(learning_rate, global_step, sess, steps)
  for step, value in zip(steps, values):
    assert value == pytest.approx(0.01 * (1.0 - min(step, total) / total) ** 0.9, rel=1e-6, abs=1e-12)
  assert values[0] == pytest.approx(0.01, rel=1e-6)
  assert values[2] == 0.0 and values[3] == 0.0


def test_pspnet_config_inside_train_config():
  train_config = text_format.Parse(
      'num_steps: 90000 optimizer {%s}' % PSPNET_OPTIMIZER, train_pb2.TrainConfig())
  with tf.Graph().as_default():
    optimizer, _ = optimizer_builder.build(train_config.optimizer, num_steps=train_config.num_steps)
    assert isinstance(optimizer, tf.train.MomentumOptimizer)


def test_momentum_optimizer_hyper_parameters():
  config = _optimizer_config("""
      momentum_optimizer {
        learning_rate { constant_learning_rate { learning_rate: 0.05 } }
        momentum_optimizer_value: 0.5
        use_nesterov: true
      }""")
  with tf.Graph().as_default():
    optimizer, learning_rate = optimizer_builder.build(config)
    assert isinstance(optimizer, tf.train.MomentumOptimizer)
    assert optimizer._momentum == 0.5  # pylint: disable=protected-access
    assert optimizer._use_nesterov  # pylint: disable=protected-access
    with tf.Session() as sess:
      assert sess.run(learning_rate) == pytest.approx(0.05, rel=1e-6)


def test_adam_optimizer_hyper_parameters():
  config = _optimizer_config("""
      adam_optimizer {
        learning_rate { constant_learning_rate { learning_rate: 0.0001 } }
        beta1: 0.8
        beta2: 0.99
        epsilon: 0.001
      }""")
  with tf.Graph().as_default():
    optimizer, learning_rate = optimizer_builder.build(config)
    assert isinstance(optimizer, tf.train.AdamOptimizer)
    # pylint: disable=protected-access
    assert optimizer._beta1 == pytest.approx(0.8)
    assert optimizer._beta2 == pytest.approx(0.99)
    assert optimizer._epsilon == pytest.approx(0.001)
    assert optimizer._lr is learning_rate
    # pylint: enable=protected-access
    with tf.Session() as sess:
      assert sess.run(learning_rate) == pytest.approx(0.0001, rel=1e-6)


def test_adam_defaults():
  config = _optimizer_config('adam_optimizer { learning_rate { constant_learning_rate {} } }')
  with tf.Graph().as_default():
    optimizer, _ = optimizer_builder.build(config)
    # pylint: disable=protected-access
    assert (optimizer._beta1, optimizer._beta2) == (0.9, 0.999)
    assert optimizer._epsilon == pytest.approx(1e-8)
    # pylint: enable=protected-access


def test_optimizer_minimizes_with_global_step():
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    weight = tf.Variable(1.0)
    optimizer, _ = optimizer_builder.build(_optimizer_config(PSPNET_OPTIMIZER), global_step=global_step)
    train_op = optimizer.minimize(tf.square(weight), global_step=global_step)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      sess.run(train_op)
      assert sess.run(global_step) == 1
      assert sess.run(weight) == pytest.approx(1.0 - 0.01 * 2.0, rel=1e-6)


def test_explicit_global_step_is_followed():
  with tf.Graph().as_default():
    step = tf.placeholder(tf.int64, shape=[])
    _, learning_rate = optimizer_builder.build(_optimizer_config(PSPNET_OPTIMIZER), global_step=step)
    assert tf.train.get_global_step() is None
    with tf.Session() as sess:
      assert sess.run(learning_rate, {step: 60000}) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-6)


# --- Learning-rate schedules ---


def test_constant_learning_rate():
  values = _build_learning_rate_values('constant_learning_rate { learning_rate: 0.003 }', [0, 10, 10 ** 6])
  assert values == pytest.approx([0.003] * 3, rel=1e-6)


@pytest.mark.parametrize('staircase', [True, False])
def test_exponential_decay_learning_rate(staircase):
  steps = [0, 1, 999, 1000, 1500, 3000, 3999]
  text = """exponential_decay_learning_rate {
      initial_learning_rate: 0.004 decay_steps: 1000 decay_factor: 0.5 staircase: %s
      min_learning_rate: 0.0006 }""" % ('true' if staircase else 'false')
  values = _build_learning_rate_values(text, steps)
  for step, value in zip(steps, values):
    periods = step // 1000 if staircase else step / 1000
    assert value == pytest.approx(max(0.004 * 0.5 ** periods, 0.0006), rel=1e-6), step


def test_polynomial_decay_learning_rate_with_end():
  steps = [0, 500, 1000, 1500]
  values = _build_learning_rate_values("""polynomial_decay_learning_rate {
      initial_learning_rate: 0.1 decay_steps: 1000 power: 2.0 end_learning_rate: 0.01 }""", steps)
  for step, value in zip(steps, values):
    assert value == pytest.approx(_poly(step, 0.1, 1000, 2.0, 0.01), rel=1e-6), step


def test_polynomial_decay_steps_zero_means_num_steps():
  steps = [0, 2500, 5000, 6000]
  values = _build_learning_rate_values(
      'polynomial_decay_learning_rate { initial_learning_rate: 0.01 power: 0.9 }', steps, num_steps=5000)
  for step, value in zip(steps, values):
    assert value == pytest.approx(_poly(step, 0.01, 5000, 0.9), rel=1e-6, abs=1e-12), step


def test_polynomial_explicit_decay_steps_wins_over_num_steps():
  values = _build_learning_rate_values(
      'polynomial_decay_learning_rate { decay_steps: 100 power: 1.0 }', [50], num_steps=5000)
  assert values[0] == pytest.approx(0.005, rel=1e-6)


def test_warmup_before_polynomial_decay():
  warmup_steps, total, start = 1000, 10000, 0.002
  steps = [0, 500, 999, 1000, 1001, 5000, total]
  values = _build_learning_rate_values("""
      polynomial_decay_learning_rate { initial_learning_rate: 0.01 decay_steps: 10000 power: 0.9 }
      warmup_steps: 1000
      warmup_learning_rate: 0.002""", steps)
  hand_over = _poly(warmup_steps, 0.01, total, 0.9)
  for step, value in zip(steps, values):
    if step < warmup_steps:
      expected = start + (hand_over - start) * step / warmup_steps
    else:
      expected = _poly(step, 0.01, total, 0.9)
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), step
  assert values[0] == pytest.approx(start, rel=1e-6)
  assert values[3] == pytest.approx(hand_over, rel=1e-6)


def test_warmup_before_constant():
  values = _build_learning_rate_values("""
      constant_learning_rate { learning_rate: 0.04 }
      warmup_steps: 4""", [0, 1, 2, 3, 4, 100])
  assert values == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.04], rel=1e-6)


def test_warmup_before_exponential_decay():
  values = _build_learning_rate_values("""
      exponential_decay_learning_rate {
        initial_learning_rate: 0.008 decay_steps: 100 decay_factor: 0.5 staircase: true }
      warmup_steps: 50 warmup_learning_rate: 0.0""", [0, 25, 50, 100])
  assert values == pytest.approx([0.0, 0.004, 0.008, 0.004], rel=1e-6)


def test_warmup_output_is_named_learning_rate():
  with tf.Graph().as_default():
    learning_rate = optimizer_builder.build_learning_rate(
        _learning_rate_config('constant_learning_rate {} warmup_steps: 10'), None, 0, 'lr')
    assert learning_rate.op.name == 'learning_rate'


# --- Config errors ---

_MOMENTUM_LR = 'train_config.optimizer.momentum_optimizer.learning_rate'
_POLY = _MOMENTUM_LR + '.polynomial_decay_learning_rate'
_EXP = _MOMENTUM_LR + '.exponential_decay_learning_rate'
_CONST = _MOMENTUM_LR + '.constant_learning_rate'
_ADAM = 'train_config.optimizer.adam_optimizer'


def _momentum(learning_rate_text, extra=''):
  return 'momentum_optimizer { learning_rate { %s } %s }' % (learning_rate_text, extra)


def _adam(extra):
  return 'adam_optimizer { learning_rate { constant_learning_rate {} } %s }' % extra


_INVALID = [
    # (id, config text, num_steps, field path, value)
    ('no_optimizer', '', 0, 'train_config.optimizer', None),
    ('no_learning_rate', 'momentum_optimizer { }', 0, _MOMENTUM_LR, None),
    ('empty_learning_rate', _momentum(''), 0, _MOMENTUM_LR, None),
    ('adam_empty_learning_rate', 'adam_optimizer { learning_rate { warmup_steps: 5 } }', 0,
     _ADAM + '.learning_rate', None),
    ('momentum_negative', _momentum('constant_learning_rate {}', 'momentum_optimizer_value: -0.1'), 0,
     'train_config.optimizer.momentum_optimizer.momentum_optimizer_value', -0.1),
    ('momentum_one', _momentum('constant_learning_rate {}', 'momentum_optimizer_value: 1.0'), 0,
     'train_config.optimizer.momentum_optimizer.momentum_optimizer_value', 1.0),
    ('beta1_one', _adam('beta1: 1.0'), 0, _ADAM + '.beta1', 1.0),
    ('beta1_negative', _adam('beta1: -0.5'), 0, _ADAM + '.beta1', -0.5),
    ('beta2_one', _adam('beta2: 1.0'), 0, _ADAM + '.beta2', 1.0),
    ('beta2_negative', _adam('beta2: -0.001'), 0, _ADAM + '.beta2', -0.001),
    ('epsilon_zero', _adam('epsilon: 0.0'), 0, _ADAM + '.epsilon', 0.0),
    ('epsilon_negative', _adam('epsilon: -1e-8'), 0, _ADAM + '.epsilon', -1e-8),
    ('constant_zero', _momentum('constant_learning_rate { learning_rate: 0.0 }'), 0,
     _CONST + '.learning_rate', 0.0),
    ('constant_negative', _momentum('constant_learning_rate { learning_rate: -0.01 }'), 0,
     _CONST + '.learning_rate', -0.01),
    ('constant_inf', _momentum('constant_learning_rate { learning_rate: inf }'), 0,
     _CONST + '.learning_rate', float('inf')),
    ('exp_initial_zero', _momentum('exponential_decay_learning_rate { initial_learning_rate: 0.0 }'), 0,
     _EXP + '.initial_learning_rate', 0.0),
    ('exp_decay_steps_zero', _momentum('exponential_decay_learning_rate { decay_steps: 0 }'), 1000,
     _EXP + '.decay_steps', 0),
    ('exp_decay_factor_zero', _momentum('exponential_decay_learning_rate { decay_factor: 0.0 }'), 0,
     _EXP + '.decay_factor', 0.0),
    ('exp_decay_factor_above_one', _momentum('exponential_decay_learning_rate { decay_factor: 1.5 }'), 0,
     _EXP + '.decay_factor', 1.5),
    ('exp_min_negative', _momentum('exponential_decay_learning_rate { min_learning_rate: -0.1 }'), 0,
     _EXP + '.min_learning_rate', -0.1),
    ('exp_warmup_not_below_decay_steps',
     _momentum('exponential_decay_learning_rate { decay_steps: 100 } warmup_steps: 100'), 0,
     _MOMENTUM_LR + '.warmup_steps', 100),
    ('poly_initial_zero',
     _momentum('polynomial_decay_learning_rate { initial_learning_rate: 0.0 decay_steps: 10 }'), 0,
     _POLY + '.initial_learning_rate', 0.0),
    ('poly_initial_negative',
     _momentum('polynomial_decay_learning_rate { initial_learning_rate: -0.01 decay_steps: 10 }'), 0,
     _POLY + '.initial_learning_rate', -0.01),
    ('poly_power_negative', _momentum('polynomial_decay_learning_rate { power: -0.5 decay_steps: 10 }'),
     0, _POLY + '.power', -0.5),
    ('poly_end_negative',
     _momentum('polynomial_decay_learning_rate { end_learning_rate: -0.001 decay_steps: 10 }'), 0,
     _POLY + '.end_learning_rate', -0.001),
    ('poly_end_above_initial', _momentum(
        'polynomial_decay_learning_rate { initial_learning_rate: 0.01 end_learning_rate: 0.02 '
        'decay_steps: 10 }'), 0, _POLY + '.end_learning_rate', 0.02),
    ('poly_decay_steps_and_num_steps_zero', _momentum('polynomial_decay_learning_rate { }'), 0,
     _POLY + '.decay_steps', 0),
    ('poly_warmup_not_below_decay_steps',
     _momentum('polynomial_decay_learning_rate { decay_steps: 100 } warmup_steps: 200'), 0,
     _MOMENTUM_LR + '.warmup_steps', 200),
    ('poly_warmup_not_below_num_steps',
     _momentum('polynomial_decay_learning_rate { } warmup_steps: 500'), 500,
     _MOMENTUM_LR + '.warmup_steps', 500),
    ('warmup_learning_rate_negative',
     _momentum('constant_learning_rate { } warmup_steps: 10 warmup_learning_rate: -0.001'), 0,
     _MOMENTUM_LR + '.warmup_learning_rate', -0.001),
    ('adam_poly_power_negative',
     'adam_optimizer { learning_rate { polynomial_decay_learning_rate { power: -1.0 } } }', 100,
     _ADAM + '.learning_rate.polynomial_decay_learning_rate.power', -1.0),
]


@pytest.mark.parametrize('text,num_steps,field_path,value', [case[1:] for case in _INVALID],
                         ids=[case[0] for case in _INVALID])
def test_invalid_config_raises_config_error(text, num_steps, field_path, value):
  config = _optimizer_config(text)
  with tf.Graph().as_default() as graph:
    with pytest.raises(ConfigError) as error:
      optimizer_builder.build(config, num_steps=num_steps)
    # Validation happens before any op is built, so a bad config leaves the graph as it was.
    assert not graph.get_operations()
  assert error.value.field == field_path
  assert error.value.value == value
  assert '%s = %r' % (field_path, value) in str(error.value)


def test_decay_steps_error_explains_num_steps():
  config = _optimizer_config(_momentum('polynomial_decay_learning_rate { }'))
  with tf.Graph().as_default():
    with pytest.raises(ConfigError, match='num_steps'):
      optimizer_builder.build(config, num_steps=0)


def test_empty_optimizer_lists_choices():
  with tf.Graph().as_default():
    with pytest.raises(ConfigError) as error:
      optimizer_builder.build(optimizer_pb2.Optimizer())
  assert 'momentum_optimizer' in str(error.value) and 'adam_optimizer' in str(error.value)


def test_field_path_argument_prefixes_errors():
  config = _optimizer_config(_momentum('constant_learning_rate { learning_rate: -1.0 }'))
  with tf.Graph().as_default():
    with pytest.raises(ConfigError) as error:
      optimizer_builder.build(config, field_path='other.optimizer')
  assert error.value.field == 'other.optimizer.momentum_optimizer.learning_rate.constant_learning_rate' \
      '.learning_rate'


def test_build_learning_rate_errors_use_given_path():
  with tf.Graph().as_default():
    with pytest.raises(ConfigError) as error:
      optimizer_builder.build_learning_rate(optimizer_pb2.LearningRate(), None, 0, 'a.learning_rate')
  assert error.value.field == 'a.learning_rate'
