"""libs/conv_gradients: the low-memory convolution gradients equal TensorFlow's, and leave the forward graph alone."""
import numpy as np
import pytest

from libs import conv_gradients
from libs.compat import tf


def _gradients(x_shape, k_shape, padding, low_memory, strides=(1, 1, 1, 1)):
  rng = np.random.RandomState(0)
  x_value = rng.normal(size=x_shape)
  k_value = rng.normal(size=k_shape)
  graph = tf.Graph()
  with graph.as_default():
    x = tf.constant(x_value, tf.float64)
    kernel = tf.constant(k_value, tf.float64)
    with conv_gradients.low_memory_gradients(low_memory):
      y = tf.nn.conv2d(x, kernel, strides=list(strides), padding=padding)
    weights = tf.constant(rng.normal(size=[int(d) for d in y.shape]), tf.float64)
    loss = tf.reduce_sum(y * weights)
    dx, dk = tf.gradients(loss, [x, kernel])
    op_types = {op.type for op in graph.get_operations()}
    with tf.Session(graph=graph) as sess:
      return sess.run([y, dx, dk]) + [op_types]


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
@pytest.mark.parametrize('x_shape,k_shape', [
    ([2, 9, 7, 5], [3, 3, 5, 4]),    # the PSP fusion conv's case: odd kernel
    ([1, 8, 10, 3], [2, 4, 3, 6]),   # even kernel sizes: SAME pads asymmetrically
    ([1, 6, 6, 4], [5, 1, 4, 2]),
    ([3, 4, 4, 2], [1, 1, 2, 3]),    # 1x1: no padding at all
])
def test_gradients_equal_tensorflows(x_shape, k_shape, padding):
  y_ref, dx_ref, dk_ref, ops_ref = _gradients(x_shape, k_shape, padding, low_memory=False)
  y, dx, dk, ops = _gradients(x_shape, k_shape, padding, low_memory=True)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-10, atol=1e-10)
  # The im2col kernels are gone from the low-memory graph.
  assert {'Conv2DBackpropInput', 'Conv2DBackpropFilter'} <= ops_ref
  assert not {'Conv2DBackpropInput', 'Conv2DBackpropFilter'} & ops


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_strided_convolutions_keep_tensorflows_gradient(padding):
  # (Dilated convolutions have no CPU kernel at all; slim builds them with SpaceToBatchND, stride 1 inside.)
  y_ref, dx_ref, dk_ref, _ = _gradients([1, 9, 9, 3], [3, 3, 3, 2], padding, False, strides=(1, 2, 2, 1))
  y, dx, dk, ops = _gradients([1, 9, 9, 3], [3, 3, 3, 2], padding, True, strides=(1, 2, 2, 1))
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, dx_ref)
  np.testing.assert_array_equal(dk, dk_ref)
  assert 'Conv2DBackpropFilter' in ops
