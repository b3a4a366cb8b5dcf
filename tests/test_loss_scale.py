"""libs/loss_scale.py on a toy graph: scaled gradients are unscaled exactly, a non-finite step changes neither
the weights nor the optimizer slots but advances the global step and halves the scale, finite steps double it
after growth_steps, the bounds, the fixed scale, and IndexedSlices gradients."""
import numpy as np
import pytest

from libs import loss_scale as loss_scale_lib
from libs.compat import tf
from tests.conftest import fast_session_config


class _Toy(object):
  """loss = factor * sum(w^2) over w = [1, 2, 3] (float32), momentum SGD at lr 0.1, a LossScale."""

  def __init__(self, **scale_kwargs):
    self.graph = tf.Graph()
    with self.graph.as_default():
      self.global_step = tf.train.get_or_create_global_step()
      self.w = tf.get_variable('w', initializer=tf.constant([1.0, 2.0, 3.0]))
      self.factor = tf.placeholder_with_default(1.0, [])
      loss = self.factor * tf.reduce_sum(tf.square(self.w))
      self.loss_scale = loss_scale_lib.LossScale(**scale_kwargs)
      optimizer = tf.train.MomentumOptimizer(0.1, 0.9)
      grads = tf.gradients(self.loss_scale.scale(loss), [self.w])
      self.scaled_grad = grads[0]
      self.train_op, self.finite, self.used_scale = self.loss_scale.apply_gradients(
          optimizer, zip(grads, [self.w]), self.global_step)
      self.momentum = optimizer.get_slot(self.w, 'momentum')
      self.scale_var, self.good_var = self.loss_scale.variables
      self.sess = tf.Session(config=fast_session_config())
      self.sess.run(tf.global_variables_initializer())

  def step(self, factor=1.0):
    _, finite, used = self.sess.run([self.train_op, self.finite, self.used_scale], {self.factor: factor})
    return bool(finite), float(used)

  def state(self):
    return self.sess.run({'w': self.w, 'momentum': self.momentum, 'scale': self.scale_var,
                          'good': self.good_var, 'step': self.global_step})


def test_finite_step_applies_the_unscaled_gradient():
  toy = _Toy(initial_scale=1024.0, growth_steps=100)
  scaled = toy.sess.run(toy.scaled_grad)
  np.testing.assert_allclose(scaled, 1024.0 * 2 * np.array([1.0, 2.0, 3.0]))
  assert toy.step() == (True, 1024.0)
  state = toy.state()
  # Momentum SGD's first step: w - lr * grad, the gradient unscaled.
  np.testing.assert_allclose(state['w'], np.array([1.0, 2.0, 3.0]) * (1 - 0.1 * 2), rtol=1e-6)
  assert state['step'] == 1 and state['scale'] == 1024.0 and state['good'] == 1


def test_overflow_skips_the_update_and_halves_the_scale():
  toy = _Toy(initial_scale=2.0**15, growth_steps=100)
  toy.step()  # fills the momentum slot
  before = toy.state()
  # 1e35 * 2^15 overflows float32: the scaled gradient is inf.
  assert toy.step(factor=1e35) == (False, 2.0**15)
  after = toy.state()
  np.testing.assert_array_equal(after['w'], before['w'])
  np.testing.assert_array_equal(after['momentum'], before['momentum'])
  assert after['step'] == before['step'] + 1
  assert after['scale'] == 2.0**14 and after['good'] == 0
  # The next finite step is applied again.
  assert toy.step() == (True, 2.0**14)
  assert not np.array_equal(toy.state()['w'], after['w'])


def test_scale_doubles_after_growth_steps_finite_steps_and_stays_within_bounds():
  toy = _Toy(initial_scale=4.0, growth_steps=3)
  scales = []
  for _ in range(7):
    toy.step()
    scales.append(float(toy.state()['scale']))
  assert scales == [4.0, 4.0, 8.0, 8.0, 8.0, 16.0, 16.0]
  low = _Toy(initial_scale=1.0, growth_steps=3)
  low.step(factor=float('nan'))
  assert low.state()['scale'] == 1.0  # never below 1
  high = _Toy(initial_scale=loss_scale_lib.MAX_SCALE, growth_steps=1)
  high.step()
  assert high.state()['scale'] == loss_scale_lib.MAX_SCALE  # never grown above MAX_SCALE


def test_fixed_scale_never_moves_but_still_skips():
  toy = _Toy(initial_scale=8.0, growth_steps=1, dynamic=False)
  toy.step()
  w = toy.state()['w']
  assert toy.step(factor=float('inf')) == (False, 8.0)
  state = toy.state()
  np.testing.assert_array_equal(state['w'], w)
  assert state['scale'] == 8.0 and state['step'] == 2


def test_indexed_slices_gradients_are_unscaled():
  with tf.Graph().as_default():
    table = tf.get_variable('table', initializer=tf.ones([4, 2]))
    loss = tf.reduce_sum(tf.gather(table, [1, 3]))
    loss_scale = loss_scale_lib.LossScale(initial_scale=16.0)
    grads = tf.gradients(loss_scale.scale(loss), [table])
    assert isinstance(grads[0], tf.IndexedSlices)
    train_op, finite, _ = loss_scale.apply_gradients(tf.train.GradientDescentOptimizer(1.0), zip(grads, [table]),
                                                     tf.train.get_or_create_global_step())
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      assert sess.run([train_op, finite])[1]
      np.testing.assert_allclose(sess.run(table), [[1, 1], [0, 0], [1, 1], [0, 0]])


@pytest.mark.parametrize('kwargs', [dict(initial_scale=0.5), dict(growth_steps=0)])
def test_invalid_arguments(kwargs):
  with tf.Graph().as_default(), pytest.raises(ValueError):
    loss_scale_lib.LossScale(**kwargs)
