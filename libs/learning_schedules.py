"""Learning-rate schedules as graph ops of the global step.

Every schedule returns a float32 scalar tensor named 'learning_rate' (uniquified by TensorFlow when several
are built in one graph). The arithmetic runs in float64 and is cast to float32 only at the end: a step count
above 2**24 is not exactly representable in float32, which would make `step / decay_steps` (and so the
floor of a staircase schedule) wrong long before an int64 global step overflows.

These functions take plain Python numbers and trust them; builders/optimizer_builder.py validates the
configuration (and names the offending field) before calling them.
"""
from libs.compat import tf


def _step_as_float64(global_step):
  return tf.cast(tf.convert_to_tensor(global_step), tf.float64)


def _as_output(value_float64, name):
  return tf.identity(tf.cast(value_float64, tf.float32), name=name)


def constant(learning_rate, name='learning_rate'):
  """A learning rate that does not depend on the step.

  Args:
    learning_rate: the rate, a Python number.
    name: name of the returned tensor.

  Returns:
    A float32 scalar tensor.
  """
  return tf.constant(learning_rate, dtype=tf.float32, name=name)


def exponential_decay(global_step, initial_learning_rate, decay_steps, decay_factor, staircase=True,
                      min_learning_rate=0.0, name='learning_rate'):
  """lr = max(initial * decay_factor ^ (step / decay_steps), min_learning_rate).

  Args:
    global_step: integer scalar tensor (or variable), the training step.
    initial_learning_rate: the rate at step 0.
    decay_steps: steps per multiplication by decay_factor; > 0.
    decay_factor: the factor applied every decay_steps steps.
    staircase: decay in whole periods (floor(step / decay_steps)) instead of continuously.
    min_learning_rate: lower bound of the rate.
    name: name of the returned tensor.

  Returns:
    A float32 scalar tensor.

  Raises:
    ValueError: decay_steps is not positive.
  """
  if decay_steps <= 0:
    raise ValueError('decay_steps must be > 0, got %r' % (decay_steps,))
  with tf.name_scope('exponential_decay'):
    periods = _step_as_float64(global_step) / float(decay_steps)
    if staircase:
      periods = tf.floor(periods)
    rate = float(initial_learning_rate) * tf.pow(tf.constant(float(decay_factor), tf.float64), periods)
    rate = tf.maximum(rate, float(min_learning_rate))
  return _as_output(rate, name)


def polynomial_decay(global_step, initial_learning_rate, decay_steps, power, end_learning_rate=0.0,
                     name='learning_rate'):
  """The "poly" schedule of DeepLab/PSPNet.

  lr = (initial - end) * (1 - min(step, decay_steps) / decay_steps) ^ power + end, so the rate reaches
  end_learning_rate at decay_steps and stays there.

  Args:
    global_step: integer scalar tensor (or variable), the training step.
    initial_learning_rate: the rate at step 0.
    decay_steps: steps over which the rate decays; > 0.
    power: exponent of the decay (0.9 in the PSPNet paper).
    end_learning_rate: the rate from decay_steps on.
    name: name of the returned tensor.

  Returns:
    A float32 scalar tensor.

  Raises:
    ValueError: decay_steps is not positive.
  """
  if decay_steps <= 0:
    raise ValueError('decay_steps must be > 0, got %r' % (decay_steps,))
  with tf.name_scope('polynomial_decay'):
    step = tf.minimum(_step_as_float64(global_step), float(decay_steps))
    remaining = 1.0 - step / float(decay_steps)
    rate = ((float(initial_learning_rate) - float(end_learning_rate)) *
            tf.pow(remaining, tf.constant(float(power), tf.float64)) + float(end_learning_rate))
  return _as_output(rate, name)


def with_linear_warmup(schedule_fn_or_tensor, global_step, warmup_steps, warmup_learning_rate,
                       name='learning_rate'):
  """Precedes a schedule with a linear warm-up.

  For step < warmup_steps the rate goes linearly from warmup_learning_rate (step 0) towards the schedule's
  value at step warmup_steps, which it reaches exactly at the hand-over; from warmup_steps on it is the
  schedule's.

  Args:
    schedule_fn_or_tensor: either a function global_step -> float scalar tensor (the schedule, evaluated
      both at the current step and at warmup_steps), or a float scalar tensor. A tensor can only be
      evaluated at the current step, so its current value is the warm-up's target: exact for a constant
      rate, and the reason to pass a function for a decaying one.
    global_step: integer scalar tensor (or variable), the training step.
    warmup_steps: length of the warm-up in steps; 0 returns the schedule unchanged.
    warmup_learning_rate: the rate at step 0.
    name: name of the returned tensor.

  Returns:
    A float32 scalar tensor.

  Raises:
    ValueError: warmup_steps is negative.
  """
  if warmup_steps < 0:
    raise ValueError('warmup_steps must be >= 0, got %r' % (warmup_steps,))
  if warmup_steps == 0:
    if callable(schedule_fn_or_tensor):
      return schedule_fn_or_tensor(global_step)
    return schedule_fn_or_tensor
  global_step = tf.convert_to_tensor(global_step)
  with tf.name_scope('linear_warmup'):
    if callable(schedule_fn_or_tensor):
      schedule = schedule_fn_or_tensor(global_step)
      target = schedule_fn_or_tensor(tf.constant(warmup_steps, dtype=global_step.dtype))
    else:
      schedule = schedule_fn_or_tensor
      target = schedule_fn_or_tensor
    schedule = tf.cast(schedule, tf.float64)
    target = tf.cast(target, tf.float64)
    fraction = _step_as_float64(global_step) / float(warmup_steps)
    ramp = float(warmup_learning_rate) + (target - float(warmup_learning_rate)) * fraction
    rate = tf.where(tf.less(global_step, tf.cast(warmup_steps, global_step.dtype)), ramp, schedule)
  return _as_output(rate, name)
