"""Low-memory gradients for wide 3x3 convolutions (training-graph option ``low_memory_conv_gradients``).

TensorFlow's CPU kernels for Conv2DBackpropInput / Conv2DBackpropFilter lower a k x k convolution to one
matrix product over an im2col buffer of the whole image: [batch * H * W, k * k * C_in] floats, held for the
duration of the op. For PSPNet's fusion convolution (PSPModule/Conv_k: 3x3, 4096 -> 512 channels at 1/8
resolution) that buffer is 90 * 90 * 9 * 4096 * 4 B = 1.2 GB at a 713x713 crop, per image, per backprop op: the
largest single allocation of the training step (the activations of a whole ResNet block are smaller).

This module computes the same two gradients without an im2col buffer, for stride 1, dilation 1, NHWC
convolutions with SAME or VALID padding (every other convolution keeps TensorFlow's gradient):

  * input gradient  dx = conv2d(dy', rot180(W)^T), a *forward* convolution (Eigen forms its patches lazily,
                    block by block) of the output gradient (padded for VALID) with the spatially flipped kernel,
                    input and output channels swapped;
  * filter gradient dW[i, j] = x^T . shift_ij(dy), one matrix product per kernel tap of the input as it is with
                    a shifted copy of the zero-padded output gradient: k * k products of [C_in, N] x [N, C_out],
                    chained so that at most one shifted copy is alive at a time. Shifting dy rather than x copies
                    C_out channels instead of C_in (512 instead of 4096 for the fusion conv).

The arithmetic is identical (a re-association of the same sums): tests/test_conv_gradients.py checks both
gradients against TensorFlow's own, in float64, for SAME and VALID, odd and even sizes. Select convolutions
with :func:`low_memory_gradients` around the layers that build them; the scope is a graph-construction scope
(``Graph.gradient_override_map``), so the forward graph and its node names are unchanged.
"""
import contextlib

from libs.compat import tf

from tensorflow.python.framework import ops as _ops  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.ops import nn_grad as _nn_grad  # pylint: disable=g-direct-tensorflow-import

GRADIENT_NAME = 'PSPNetLowMemoryConv2D'


def _attr(op, name):
  value = op.get_attr(name)
  return value.decode() if isinstance(value, bytes) else value


def supported(op):
  """True when op (a Conv2D) is stride 1, dilation 1, NHWC, SAME/VALID: the case this module handles."""
  return (_attr(op, 'data_format') == 'NHWC' and list(op.get_attr('strides')) == [1, 1, 1, 1]
          and list(op.get_attr('dilations')) == [1, 1, 1, 1] and _attr(op, 'padding') in ('SAME', 'VALID'))


def _same_padding(size):
  """(before, after) padding of TensorFlow's SAME for stride 1 and kernel size `size`."""
  total = size - 1
  return total // 2, total - total // 2


def input_gradient(grad, kernel, padding):
  """dL/dx of conv2d(x, kernel, stride 1, padding) from grad = dL/dy [N, H', W', C_out] -> [N, H, W, C_in]."""
  kh, kw = kernel.shape.as_list()[:2]
  # Correlating with the flipped, channel-swapped kernel: an output-gradient pixel reaches the input pixels its
  # forward window covered. SAME: pad grad by the forward padding mirrored; VALID: by k - 1 on each side.
  flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
  if padding == 'SAME':
    (top, bottom), (left, right) = _same_padding(kh), _same_padding(kw)
    pads = [[0, 0], [bottom, top], [right, left], [0, 0]]
  else:
    pads = [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]]
  if any(p for pair in pads for p in pair):
    grad = tf.pad(grad, pads)
  return tf.nn.conv2d(grad, flipped, strides=[1, 1, 1, 1], padding='VALID')


def filter_gradient(inputs, grad, kernel_shape, padding):
  """dL/dW [kh, kw, C_in, C_out] of conv2d(inputs, W, stride 1, padding) from grad = dL/dy [N, H', W', C_out].

  Tap (i, j) of the kernel meets input pixel q and output pixel q + (top - i, left - j) (top, left: the forward
  padding before the image, 0 for VALID), so dW[i, j] = x^T . shift(dy): the *output gradient* is padded and
  shifted (C_out channels: 512 for PSPNet's fusion conv, 1/8 of the input's 4096), and the input is used as it
  is, a [N * H * W, C_in] matrix without a copy.

  `inputs` may also be a list of tensors whose channel concatenation is the convolution's input (the PSP module's
  concat): each part's rows of dW are computed from the part itself, so the concatenated input is not needed.
  """
  kh, kw, c_in, c_out = kernel_shape
  parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
  first = parts[0]
  top, left = (_same_padding(kh)[0], _same_padding(kw)[0]) if padding == 'SAME' else (0, 0)
  in_h, in_w = tf.shape(first)[1], tf.shape(first)[2]
  out_h, out_w = tf.shape(grad)[1], tf.shape(grad)[2]
  # Rows of dy read by the taps: q + top - i for q in [0, H), i in [0, kh), i.e. [top - kh + 1, H - 1 + top];
  # zeros outside dy's [0, H').
  pads = [[0, 0], [kh - 1 - top, in_h - out_h + top], [kw - 1 - left, in_w - out_w + left], [0, 0]]
  grad_padded = tf.pad(grad, pads)
  channels = [part.shape.as_list()[-1] for part in parts] if len(parts) > 1 else [c_in]
  if None in channels or sum(channels) != c_in:
    raise ValueError('filter_gradient: input parts with %s channels for a kernel of %d input channels'
                     % (channels, c_in))
  matrices = [tf.reshape(part, [-1, c]) for part, c in zip(parts, channels)]
  taps = []
  previous = None
  for i in range(kh):
    for j in range(kw):
      # Chained: the next tap's shifted copy is made only after this tap's product is done.
      with tf.control_dependencies([previous] if previous is not None else []):
        window = tf.reshape(tf.slice(grad_padded, [0, kh - 1 - i, kw - 1 - j, 0], [-1, in_h, in_w, -1]),
                            [-1, c_out])
      products = [tf.matmul(m, window, transpose_a=True) for m in matrices]
      previous = tf.concat(products, axis=0) if len(products) > 1 else products[0]
      taps.append(previous)
  return tf.reshape(tf.stack(taps), [kh, kw, c_in, c_out])


def _channel_concat_parts(tensor):
  """The inputs of `tensor` if it is a ConcatV2 along the last (channel) axis of a 4-D tensor, else None."""
  op = tensor.op
  if op.type != 'ConcatV2' or tensor.shape.rank != 4:
    return None
  axis = tf.get_static_value(op.inputs[-1])
  parts = list(op.inputs[:-1])
  if axis is None or int(axis) not in (3, -1) or any(p.shape.as_list()[-1] is None for p in parts):
    return None
  return parts


@_ops.RegisterGradient(GRADIENT_NAME)
def _low_memory_conv2d_grad(op, grad):
  """Gradient of a Conv2D built under low_memory_gradients(); TensorFlow's own where unsupported."""
  if not supported(op):
    return _nn_grad._Conv2DGrad(op, grad)  # pylint: disable=protected-access
  inputs, kernel = op.inputs
  padding = _attr(op, 'padding')
  with tf.name_scope('low_memory_input_grad'):
    dx = input_gradient(grad, kernel, padding)
  with tf.name_scope('low_memory_filter_grad'):
    # From the concatenated parts when the input is a channel concat: the concat's output then has no reader
    # in backprop and is freed right after the forward convolution (126 MiB at PSPNet's 713x713).
    dw = filter_gradient(_channel_concat_parts(inputs) or inputs, grad, kernel.shape.as_list(), padding)
  return dx, dw


@contextlib.contextmanager
def low_memory_gradients(enabled=True):
  """Convolutions built inside get the low-memory gradient (when enabled); a no-op scope otherwise."""
  if not enabled:
    yield
    return
  with tf.get_default_graph().gradient_override_map({'Conv2D': GRADIENT_NAME}):
    yield
