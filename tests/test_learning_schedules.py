"""Tests of libs/learning_schedules.py against numpy references of the documented formulas."""
import numpy as np
import pytest

from libs import learning_schedules
from libs.compat import tf


# Reference implementations, written from the formulas in protos/optimizer.proto.


def _poly_reference(step, initial, decay_steps, power, end=0.0):
  step = min(step, decay_steps)
  return (initial - end) * (1.0 - step / decay_steps) ** power + end


def _exponential_reference(step, initial, decay_steps, decay_factor, staircase, min_learning_rate=0.0):
  periods = step / decay_steps
  if staircase:
    periods = np.floor(periods)
  return max(initial * decay_factor ** periods, min_learning_rate)


def _warmup_reference(step, schedule, warmup_steps, warmup_learning_rate):
  if step < warmup_steps:
    target = schedule(warmup_steps)
    return warmup_learning_rate + (target - warmup_learning_rate) * step / warmup_steps
  return schedule(step)


def _evaluate(schedule_fn, steps):
  """Builds schedule_fn(global_step) in a fresh graph and returns its value at each of steps."""
  with tf.Graph().as_default():
    global_step = tf.placeholder(tf.int64, shape=[], name='global_step')
    learning_rate = schedule_fn(global_step)
    assert learning_rate.dtype == tf.float32
    assert learning_rate.shape.as_list() == []
    with tf.Session() as sess:
      return [sess.run(learning_rate, {global_step: step}) for step in steps]


def test_constant_is_named_float32_scalar():
  with tf.Graph().as_default():
    learning_rate = learning_schedules.constant(0.002)
    assert learning_rate.op.name == 'learning_rate'
    assert learning_rate.dtype == tf.float32
    with tf.Session() as sess:
      assert sess.run(learning_rate) == pytest.approx(0.002, rel=1e-6)


def test_polynomial_decay_matches_paper_schedule():
  # PSPNet: 0.01 * (1 - t / T) ^ 0.9.
  total = 120000
  steps = [0, 1, total // 4, total // 2, total - 1, total, total + 1, 2 * total]
  values = _evaluate(
      lambda step: learning_schedules.polynomial_decay(step, 0.01, total, 0.9), steps)
  for step, value in zip(steps, values):
    expected = 0.01 * (1.0 - min(step, total) / total) ** 0.9
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), step
  assert values[0] == pytest.approx(0.01, rel=1e-6)
  assert values[3] == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-6)
  assert values[5] == 0.0
  assert values[-1] == 0.0


@pytest.mark.parametrize('power', [0.0, 0.5, 1.0, 2.0])
def test_polynomial_decay_with_end_learning_rate(power):
  steps = [0, 250, 500, 999, 1000, 5000]
  values = _evaluate(
      lambda step: learning_schedules.polynomial_decay(step, 0.1, 1000, power, end_learning_rate=0.001),
      steps)
  for step, value in zip(steps, values):
    assert value == pytest.approx(_poly_reference(step, 0.1, 1000, power, 0.001), rel=1e-6), step


def test_polynomial_decay_output_name():
  with tf.Graph().as_default():
    learning_rate = learning_schedules.polynomial_decay(tf.constant(0, tf.int64), 0.01, 10, 0.9)
    assert learning_rate.op.name == 'learning_rate'


@pytest.mark.parametrize('staircase', [True, False])
def test_exponential_decay(staircase):
  steps = [0, 1, 999, 1000, 1500, 2000, 10500]
  values = _evaluate(
      lambda step: learning_schedules.exponential_decay(step, 0.002, 1000, 0.5, staircase=staircase),
      steps)
  for step, value in zip(steps, values):
    expected = _exponential_reference(step, 0.002, 1000, 0.5, staircase)
    assert value == pytest.approx(expected, rel=1e-6), step


def test_exponential_decay_staircase_holds_within_a_period():
  values = _evaluate(
      lambda step: learning_schedules.exponential_decay(step, 0.002, 1000, 0.5, staircase=True),
      [1000, 1999, 2000])
  assert values[0] == values[1] == pytest.approx(0.001, rel=1e-6)
  assert values[2] == pytest.approx(0.0005, rel=1e-6)


def test_exponential_decay_never_goes_below_min_learning_rate():
  steps = [0, 1000, 2000, 3000, 100000]
  values = _evaluate(
      lambda step: learning_schedules.exponential_decay(step, 0.008, 1000, 0.5, staircase=True,
                                                        min_learning_rate=0.0015),
      steps)
  np.testing.assert_allclose(values, [0.008, 0.004, 0.002, 0.0015, 0.0015], rtol=1e-6)


def test_decay_schedules_reject_nonpositive_decay_steps():
  with tf.Graph().as_default():
    step = tf.constant(0, tf.int64)
    with pytest.raises(ValueError, match='decay_steps'):
      learning_schedules.polynomial_decay(step, 0.01, 0, 0.9)
    with pytest.raises(ValueError, match='decay_steps'):
      learning_schedules.exponential_decay(step, 0.01, 0, 0.9)


def test_linear_warmup_ramps_to_schedule_value_at_hand_over():
  warmup_steps, total = 1000, 10000

  def schedule(step):
    return learning_schedules.polynomial_decay(step, 0.01, total, 0.9)

  def reference_schedule(step):
    return _poly_reference(step, 0.01, total, 0.9)

  steps = [0, 1, 250, 500, 999, 1000, 1001, 5000, total, total + 10]
  values = _evaluate(
      lambda step: learning_schedules.with_linear_warmup(schedule, step, warmup_steps, 0.001), steps)
  for step, value in zip(steps, values):
    expected = _warmup_reference(step, reference_schedule, warmup_steps, 0.001)
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), step
  assert values[0] == pytest.approx(0.001, rel=1e-6)
  # The hand-over is continuous: the ramp's last step leads up to exactly the schedule's value.
  schedule_at_hand_over = reference_schedule(warmup_steps)
  assert values[5] == pytest.approx(schedule_at_hand_over, rel=1e-6)
  assert values[4] == pytest.approx(
      0.001 + (schedule_at_hand_over - 0.001) * 999 / 1000, rel=1e-6)
  assert values[3] < values[4] < values[5]


def test_linear_warmup_of_constant_tensor():
  steps = [0, 50, 99, 100, 1000]
  with tf.Graph().as_default():
    global_step = tf.placeholder(tf.int64, shape=[])
    constant = learning_schedules.constant(0.02, name='schedule')
    learning_rate = learning_schedules.with_linear_warmup(constant, global_step, 100, 0.0)
    assert learning_rate.op.name == 'learning_rate'
    with tf.Session() as sess:
      values = [sess.run(learning_rate, {global_step: step}) for step in steps]
  np.testing.assert_allclose(values, [0.0, 0.01, 0.0198, 0.02, 0.02], rtol=1e-6)


def test_linear_warmup_output_is_named_learning_rate():
  with tf.Graph().as_default():
    step = tf.constant(0, tf.int64)
    learning_rate = learning_schedules.with_linear_warmup(
        lambda s: learning_schedules.polynomial_decay(s, 0.01, 100, 0.9), step, 10, 0.0)
    assert learning_rate.op.name == 'learning_rate'
    assert learning_rate.dtype == tf.float32


def test_zero_warmup_steps_returns_schedule():
  values = _evaluate(
      lambda step: learning_schedules.with_linear_warmup(
          lambda s: learning_schedules.polynomial_decay(s, 0.01, 100, 1.0), step, 0, 0.5),
      [0, 50])
  np.testing.assert_allclose(values, [0.01, 0.005], rtol=1e-6)


def test_schedules_follow_a_global_step_variable():
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    learning_rate = learning_schedules.polynomial_decay(global_step, 0.01, 100, 1.0)
    new_step = tf.placeholder(tf.int64, shape=[])
    assign = global_step.assign(new_step)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      assert sess.run(learning_rate) == pytest.approx(0.01, rel=1e-6)
      sess.run(assign, {new_step: 25})
      assert sess.run(learning_rate) == pytest.approx(0.0075, rel=1e-6)
