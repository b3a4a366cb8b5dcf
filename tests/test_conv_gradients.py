"""libs/conv_gradients: the low-memory convolution gradients equal TensorFlow's, and leave the forward graph alone;
in the model (pspnet.low_memory_conv_gradients) they replace the gradients of exactly the two wide convs."""
import numpy as np
import pytest

from libs import conv_gradients
from libs.compat import tf
from tests.conftest import tiny_model_config
from tests.testing_utils import training_graph_outputs


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


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_filter_gradient_of_a_channel_concat_reads_the_parts_not_the_concat(padding):
  # PSPNet's fusion conv reads concat(features, upsampled pyramid levels): its filter gradient is computed from
  # the parts, so nothing in backprop reads the concatenated tensor and it is freed after the forward pass.
  rng = np.random.RandomState(3)
  parts_value = [rng.normal(size=[2, 7, 6, c]) for c in (5, 2, 3)]
  k_value = rng.normal(size=[3, 3, 10, 4])
  dy_value = rng.normal(size=[2, 7, 6, 4] if padding == 'SAME' else [2, 5, 4, 4])
  results = {}
  for low_memory in (False, True):
    graph = tf.Graph()
    with graph.as_default():
      parts = [tf.constant(v, tf.float64) for v in parts_value]
      kernel = tf.constant(k_value, tf.float64)
      net = tf.concat(parts, axis=3)
      with conv_gradients.low_memory_gradients(low_memory):
        y = tf.nn.conv2d(net, kernel, strides=[1, 1, 1, 1], padding=padding)
      first = len(graph.get_operations())
      grads = tf.gradients(y, parts + [kernel], grad_ys=tf.constant(dy_value))
      readers = [op.name for op in graph.get_operations()[first:] if net in list(op.inputs)]
      with tf.Session(graph=graph) as sess:
        results[low_memory] = sess.run(grads)
    assert bool(readers) == (not low_memory), readers  # TensorFlow's filter gradient reads the concat
  for ours, theirs in zip(results[True], results[False]):
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def _model_outputs(low_memory_conv_gradients):
  config = tiny_model_config(num_classes=5)
  config.pspnet.low_memory_conv_gradients = low_memory_conv_gradients
  return training_graph_outputs(config)


def test_low_memory_conv_gradients_only_change_the_two_wide_convs_gradients():
  plain = _model_outputs(False)
  low = _model_outputs(True)
  # The forward graph (names and types), the variables and the forward values are untouched.
  assert low['forward'] == plain['forward']
  assert low['variables'] == plain['variables']
  # TensorFlow's im2col backprop kernels are gone for exactly the PSP fusion conv and the aux head conv.
  gone = sorted(set(plain['backprop']) - set(low['backprop']))
  assert gone == ['gradients/AuxHead/Conv/Conv2D_grad/Conv2DBackpropFilter',
                  'gradients/AuxHead/Conv/Conv2D_grad/Conv2DBackpropInput',
                  'gradients/PSPModule/Conv_4/Conv2D_grad/Conv2DBackpropFilter',
                  'gradients/PSPModule/Conv_4/Conv2D_grad/Conv2DBackpropInput'], gone
  assert set(low['backprop']) < set(plain['backprop'])
  np.testing.assert_array_equal(low['values'][0], plain['values'][0])
  np.testing.assert_array_equal(low['values'][1], plain['values'][1])
  # Gradients: equal up to float32 re-association.
  for a, b in zip(plain['values'][2:], low['values'][2:]):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())))
