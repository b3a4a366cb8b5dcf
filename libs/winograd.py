"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3) (model option ``pspnet.conv3x3_algorithm``).

F(2x2, 3x3) computes each 2x2 tile of a 3x3 convolution's output from the 4x4 input window under it with 16
products per (input channel, output channel) instead of 36 (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", CVPR 2016; the matrices B^T, G and A^T below are those of that paper):

    Y = A^T [ (G g G^T) * (B^T d B) ] A      (g: 3x3 filter, d: 4x4 input tile, *: elementwise)

Summed over input channels, the elementwise products become 16 independent matrix products, one per position
(k, l) of the 4x4 transformed tile: M_kl [tiles, C_out] = V_kl [tiles, C_in] . U_kl [C_in, C_out]. For
PSPNet's pyramid fusion conv (3x3, 4096 -> 512 at 1/8 resolution, 153 of the model's 348 GMACs at 713x713)
those products are 2.25x fewer MACs than the direct convolution, and they are large matmuls, TensorFlow's
fastest kernel on a CPU; measured figures: bench/results/winograd.md.

How the transforms are built (standard TensorFlow ops only, so that frozen graphs and SavedModels keep them):
  * input: one Gather of the 16 pixels of every 4x4 window (the zero-padded input seen as a [pixels, C_in]
    matrix, so every gathered row is C_in contiguous floats), giving D [16, tiles, C_in] in the layout the
    products want; then V = (B^T (x) B^T) . D, one [16, 16] x [16, tiles * C_in] matmul (the Kronecker product
    applies B^T to rows and columns at once);
  * filter: U = (G (x) G) . g, a [16, 9] x [9, C_in * C_out] matmul, in the graph (a frozen graph computes it
    per run: 0.3 GMACs for the fusion conv, against 68 in the products);
  * output: Y = (A^T (x) A^T) . M, a [4, 16] x [16, tiles * C_out] matmul, and a transpose placing the 2x2
    tiles.
Memory: V holds 16 / 4 = 4x the input (530 MB for the fusion conv at 713x713), so the tiles are processed in
chunks of tile rows (``max_transform_bytes``), chained so that one chunk's V is alive at a time.

The input may be given as the parts of a channel concat (the PSP module's backbone features and pyramid levels):
every part is transformed and multiplied on its own and the products summed, so the concat is never built.

Numerics: the transforms have entries 0, +-1 and +-1/2 (exact in binary floating point), so the result differs
from the direct convolution only in rounding: ~1e-16 relative in float64, ~1e-6 in float32
(tests/test_winograd.py).

Gradients (training, :func:`conv2d_winograd_grad`): TensorFlow's automatic gradient of the graph above would be a
scatter-add over the transformed input's gradient and would keep the forward's V alive for the products'
gradient (530 MB each at 713x713). The output is instead passed through an IdentityN whose registered gradient
reads the convolution's inputs and filter from the op itself (so memory-saving recomputation, which copies ops
with their inputs remapped, gets the gradient of the copies), and computes
  * the input gradient as the transposed convolution: a 3x3 convolution of dy with the kernel flipped 180
    degrees, input and output channels swapped (SAME: SAME; VALID: dy zero-padded by 2, VALID), itself by
    F(2x2, 3x3), one per input part (no concat, no split; the flip is a reordering of the filter transform's
    taps, so the flipped kernel is never built);
  * the filter gradient in Winograd form: dU_kl = sum over chunks V_kl^T . dM_kl, dM = (A^T (x) A^T)^T . dy's
    2x2 tiles, dg = (G (x) G)^T . dU, with V recomputed from the inputs chunk by chunk, one part at a time, once
    dy exists (so nothing of the forward's transforms stays alive for backprop).
Every op of the gradient, weight-only ones included (padding, filter transforms), hangs from dy by data or by
control dependencies, so none runs during the forward pass and holds its result until backprop arrives; in the
forward, each part's U is computed just before its product, once the part exists.
The filter gradient runs before the input gradient (it is the last reader of the input). Second derivatives are
TensorFlow's automatic ones of that gradient graph: neither needed nor tested.
"""

import numpy as np

from libs.compat import tf

from tensorflow.core.framework import attr_value_pb2  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import ops as _ops  # pylint: disable=g-direct-tensorflow-import

# Lavin & Gray (2016), F(2x2, 3x3).
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)

GRADIENT_NAME = 'PSPNetWinogradConv2D'
# Attribute of the IdentityN carrying the gradient: the forward's max_transform_bytes, reused by the backward.
_MAX_BYTES_ATTR = '_winograd_max_transform_bytes'

# Bytes of the transformed input V per chunk of tile rows (the 713x713 fusion conv's 530 MB takes 9 chunks): a
# chunk's gather, V and products are the transient a conv adds; smaller chunks cost little time down to this size
# (bench/results/README.md, "Winograd").
DEFAULT_MAX_TRANSFORM_BYTES = 2**26


class Geometry(object):
  """Tiling of a stride-1 3x3 convolution of an [N, H, W, C] input.

  Attributes:
    batch, height, width: input N, H, W.
    out_height, out_width: output H', W' (H, W for SAME; H - 2, W - 2 for VALID).
    tile_rows, tile_cols: 2x2 output tiles per column and row: ceil(H' / 2), ceil(W' / 2).
    pads: tf.pad paddings giving the zero-padded input [N, 2 * tile_rows + 2, 2 * tile_cols + 2, C] (SAME's
      one pixel before, then zeros up to whole tiles; the extra outputs are cropped).
  """

  def __init__(self, input_shape, padding):
    self.batch, self.height, self.width = input_shape[:3]
    if padding == 'SAME':
      before, self.out_height, self.out_width = 1, self.height, self.width
    elif padding == 'VALID':
      before, self.out_height, self.out_width = 0, self.height - 2, self.width - 2
    else:
      raise ValueError("padding must be 'SAME' or 'VALID', got %r" % (padding,))
    if self.out_height < 1 or self.out_width < 1:
      raise ValueError('a %dx%d input has no %s 3x3 convolution output' % (self.height, self.width, padding))
    self.tile_rows, self.tile_cols = (self.out_height + 1) // 2, (self.out_width + 1) // 2
    self.padded_height, self.padded_width = 2 * self.tile_rows + 2, 2 * self.tile_cols + 2
    self.pads = [[0, 0], [before, self.padded_height - before - self.height],
                 [before, self.padded_width - before - self.width], [0, 0]]

  def window_indices(self, first_row, rows, padded_height=None):
    """int32 [16, N * rows * tile_cols]: pixel indices (into a padded input [N, padded_height, W_p, C] seen as
    [N * padded_height * W_p, C]; padded_height: H_p, or 2 * rows + 2 for pad_rows' slice with first_row 0) of
    the 4x4 windows of tile rows [first_row, first_row + rows), window position (r, s) -> row 4 r + s."""
    padded_height = self.padded_height if padded_height is None else padded_height
    n = np.arange(self.batch)[:, None, None]
    i = np.arange(first_row, first_row + rows)[None, :, None]
    j = np.arange(self.tile_cols)[None, None, :]
    corner = (n * padded_height + 2 * i) * self.padded_width + 2 * j
    offsets = [r * self.padded_width + s for r in range(4) for s in range(4)]
    return np.stack([(corner + o).reshape(-1) for o in offsets]).astype(np.int32)

  def pad_rows(self, inputs, first_row, rows):
    """The rows of the zero-padded input under tile rows [first_row, first_row + rows): [N, H, W, C] ->
    [N, 2 * rows + 2, W_p, C] (a slice of the input, padded; the whole padded input for a single chunk), so
    that a chunk never needs the whole input padded."""
    top = 2 * first_row - self.pads[1][0]  # input row of the slice's first row
    bottom = top + 2 * rows + 2
    low, high = max(0, top), min(self.height, bottom)
    if (low, high) != (0, self.height):
      inputs = inputs[:, low:high]
    return tf.pad(inputs, [[0, 0], [low - top, bottom - high], self.pads[2], [0, 0]])


def _static_shape(tensor, what):
  shape = tensor.shape.as_list()
  if len(shape) != 4 or None in shape:
    raise ValueError('conv2d_winograd: %s needs a static 4-D shape, got %s' % (what, shape))
  return shape


def filter_transform(filters, first_channel=0, channels=None, flipped=False):
  """U = G g G^T of every (input, output) channel pair of input channels [first_channel, first_channel +
  channels) (default: all): [3, 3, C_in, C_out] -> [16, channels, C_out].

  flipped: the transform of the kernel rotated by 180 degrees (the input gradient's), in the same layout (the
  products then take U_kl transposed: [16, channels, C_out] serves as [16, C_out, channels]). The rotation
  reverses the order of the 9 taps, so it is a reordering of the columns of G (x) G, not an op on the kernel.
  """
  _, _, c_in, c_out = _static_shape(filters, 'filters')
  channels = c_in - first_channel if channels is None else channels
  gg = np.kron(G, G)
  gg = tf.constant(gg[:, ::-1] if flipped else gg, filters.dtype)
  taps = tf.reshape(filters, [9, c_in, c_out])
  if channels != c_in:
    taps = taps[:, first_channel:first_channel + channels]
  return tf.reshape(tf.matmul(gg, tf.reshape(taps, [9, channels * c_out])), [16, channels, c_out])


def input_transform(padded, geometry, first_row, rows):
  """V = B^T d B of the windows of tile rows [first_row, first_row + rows).

  Args:
    padded: [N, H_p, W_p, C] zero-padded input (geometry.pads), or pad_rows' [N, 2 * rows + 2, W_p, C] with
      first_row 0.
    geometry: Geometry.
    first_row, rows: python ints, the chunk of tile rows.

  Returns:
    [16, N * rows * tile_cols, C]: V_kl of every tile, (k, l) -> 4 k + l.
  """
  c = padded.shape.as_list()[-1]
  pixels = tf.reshape(padded, [-1, c])
  windows = tf.gather(pixels, tf.constant(geometry.window_indices(first_row, rows, padded.shape.as_list()[1])))
  bb = tf.constant(np.kron(B_T, B_T), padded.dtype)
  return tf.reshape(tf.matmul(bb, tf.reshape(windows, [16, -1])), [16, -1, c])


def output_transform(products, geometry, rows):
  """Y = A^T m A: [16, N * rows * tile_cols, C_out] -> [N, 2 * rows, 2 * tile_cols, C_out] (uncropped)."""
  c_out = products.shape.as_list()[-1]
  aa = tf.constant(np.kron(A_T, A_T), products.dtype)
  y = tf.reshape(tf.matmul(aa, tf.reshape(products, [16, -1])),
                 [2, 2, geometry.batch, rows, geometry.tile_cols, c_out])
  y = tf.transpose(y, [2, 3, 0, 4, 1, 5])
  return tf.reshape(y, [geometry.batch, 2 * rows, 2 * geometry.tile_cols, c_out])


def chunk_rows(geometry, channels, itemsize, max_transform_bytes):
  """Tile rows per chunk so that [16, N * rows * tile_cols, channels] stays within max_transform_bytes (V with
  channels = C_in; callers pass max(C_in, C_out) to bound the products M as well)."""
  per_row = 16 * geometry.batch * geometry.tile_cols * channels * itemsize
  return int(max(1, min(geometry.tile_rows, max_transform_bytes // per_row)))




def _check(parts, filters, padding):
  """Geometry and the parts' channel counts of conv2d_winograd(parts, filters, padding); ValueError if invalid."""
  shapes = [_static_shape(p, 'inputs') for p in parts]
  kh, kw, c_in, _ = _static_shape(filters, 'filters')
  if (kh, kw) != (3, 3):
    raise ValueError('conv2d_winograd: a 3x3 kernel is needed, got %dx%d' % (kh, kw))
  if any(s[:3] != shapes[0][:3] for s in shapes) or sum(s[3] for s in shapes) != c_in:
    raise ValueError('conv2d_winograd: input parts %s do not match a kernel of %d input channels'
                     % (shapes, c_in))
  return Geometry(shapes[0], padding), [s[3] for s in shapes]


def _convolve(parts, filter_transforms, c_out, geometry, max_transform_bytes, after=None, transposed=False):
  """The F(2x2, 3x3) convolution of the channel concat of `parts` [N, H, W, C_i] -> [N, H', W', C_out].

  filter_transforms: one function per part building its U [16, C_i, C_out] (transposed=True: [16, C_out, C_i],
    used transposed). Every op of the convolution runs in one chain, in order: part 0's padding and U (once the
    part exists and the ops `after` have run), its windows' V and product, then part 1's, ..., chunk by chunk;
    so that neither U nor a padded copy is computed early and held (in training, the gradients' own weight
    transforms would otherwise run at the start of the step and stay alive through the forward pass), and one
    V is alive at a time. Each chunk pads only its own rows of a part (Geometry.pad_rows).
  """
  rows = chunk_rows(geometry, max(sum(p.shape.as_list()[-1] for p in parts), c_out), parts[0].dtype.size,
                    max_transform_bytes)
  transformed = [None] * len(parts)
  chunks, previous = [], list(after or [])
  for first in range(0, geometry.tile_rows, rows):
    count = min(rows, geometry.tile_rows - first)
    total = None
    for i, part in enumerate(parts):
      with tf.control_dependencies(previous):
        padded = geometry.pad_rows(part, first, count)
        if transformed[i] is None:
          with tf.control_dependencies([padded]):
            transformed[i] = filter_transforms[i]()
        product = tf.matmul(input_transform(padded, geometry, 0, count), transformed[i],
                            transpose_b=transposed)
      total = product if total is None else total + product
      # The next step waits for the running sum, not the product: an add that drives a control dependency is
      # left alone by grappler's AddOpsRewrite, which would otherwise turn the chain into one AddN holding
      # every part's product at once.
      previous = [total]
    previous = [output_transform(total, geometry, count)]
    chunks.append(previous[0])
  out = tf.concat(chunks, axis=1) if len(chunks) > 1 else chunks[0]
  if out.shape.as_list()[1:3] != [geometry.out_height, geometry.out_width]:
    out = out[:, :geometry.out_height, :geometry.out_width]
  return out


def _part_transforms(filters, channels, flipped=False):
  """filter_transform of each part's input channels, as functions for _convolve."""
  offsets = np.cumsum([0] + list(channels[:-1]))
  whole = len(channels) == 1
  return [(lambda first=int(first), c=c: filter_transform(filters, first, None if whole else c, flipped))
          for first, c in zip(offsets, channels)]


def conv2d_winograd(inputs, filters, padding='SAME', max_transform_bytes=DEFAULT_MAX_TRANSFORM_BYTES,
                    name=None):
  """tf.nn.conv2d(inputs, filters, strides=1, padding) for a 3x3 kernel, by Winograd's F(2x2, 3x3).

  Args:
    inputs: [N, H, W, C_in] float tensor (NHWC, static shape), or a list of [N, H, W, C_i] tensors whose
      channel concatenation is the input (sum C_i = C_in): each part is transformed and multiplied separately.
    filters: [3, 3, C_in, C_out] tensor of the same dtype.
    padding: 'SAME' or 'VALID'.
    max_transform_bytes: bound on the transformed input V (and the products M) of one chunk of tile rows, all
      parts together; chunks run one after another, and so do the parts within a chunk. The gradient uses the
      same chunks.
    name: name scope (default 'conv2d_winograd').

  Returns:
    [N, H', W', C_out]: H', W' = H, W for SAME, H - 2, W - 2 for VALID; its gradient is conv2d_winograd_grad.

  Raises:
    ValueError: a shape that is not static, a kernel that is not 3x3, parts that disagree with the kernel's
      input channels or with one another, or a padding other than SAME / VALID.
  """
  parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
  with tf.name_scope(name, 'conv2d_winograd', parts + [filters]):
    geometry, channels = _check(parts, filters, padding)
    out = _convolve(parts, _part_transforms(filters, channels), filters.shape.as_list()[-1], geometry,
                    max_transform_bytes)
    # The gradient's op: reads (out, parts..., filters); only `out` is passed on.
    with tf.get_default_graph().gradient_override_map({'IdentityN': GRADIENT_NAME}):
      identity = tf.identity_n([out] + parts + [filters], name='with_gradient')
    identity[0].op._set_attr(  # pylint: disable=protected-access
        _MAX_BYTES_ATTR, attr_value_pb2.AttrValue(i=int(max_transform_bytes)))
    return identity[0]


def dy_tiles(grad, geometry, first_row, rows):
  """dy of tile rows [first_row, first_row + rows) in output_transform's layout: [N, 2 T_r, 2 T_c, C_out] (padded
  to whole tiles) -> [4, N * rows * tile_cols * C_out], output position (a, b) of the tile -> row 2 a + b."""
  c_out = grad.shape.as_list()[-1]
  chunk = tf.reshape(grad[:, 2 * first_row:2 * (first_row + rows)],
                     [geometry.batch, rows, 2, geometry.tile_cols, 2, c_out])
  return tf.reshape(tf.transpose(chunk, [2, 4, 0, 1, 3, 5]), [4, -1])


def filter_gradient(parts, grad, geometry, max_transform_bytes):
  """dL/dg [3, 3, C_in, C_out] of conv2d_winograd(parts, g) from grad = dL/dy [N, H', W', C_out].

  dU_kl [C_i, C_out] = sum over tiles of V_kl^T dM_kl per part, dM = (A^T (x) A^T)^T . dy's tiles; then
  dg = (G (x) G)^T . dU. V is recomputed from the parts, in the forward's chunks, one part after another (each
  part's dU summed over the chunks and turned into its dg before the next part starts). All of it runs in one
  chain that starts from dy: no part is padded (and held) before backprop reaches the convolution.
  """
  c_out = grad.shape.as_list()[-1]
  channels = [p.shape.as_list()[-1] for p in parts]
  extra_rows, extra_cols = 2 * geometry.tile_rows - geometry.out_height, 2 * geometry.tile_cols - geometry.out_width
  if extra_rows or extra_cols:
    # The outputs the forward computed and cropped have a zero gradient.
    grad = tf.pad(grad, [[0, 0], [0, extra_rows], [0, extra_cols], [0, 0]])
  aa = tf.constant(np.kron(A_T, A_T), grad.dtype)
  gg = tf.constant(np.kron(G, G), grad.dtype)
  rows = chunk_rows(geometry, max(sum(channels), c_out), grad.dtype.size, max_transform_bytes)
  filters, previous = [], [grad]
  # Parts outer, chunks inner: one part's dU [16, C_i, C_out] is alive at a time (it is 16/9 of the part's
  # filter gradient), at the price of recomputing each chunk's dM (4x dy, 16 x 4 MACs an element) per part.
  for part, c in zip(parts, channels):
    du = None
    for first in range(0, geometry.tile_rows, rows):
      count = min(rows, geometry.tile_rows - first)
      with tf.control_dependencies(previous):
        dm = tf.reshape(tf.matmul(aa, dy_tiles(grad, geometry, first, count), transpose_a=True),
                        [16, -1, c_out])
        v = input_transform(geometry.pad_rows(part, first, count), geometry, 0, count)
      product = tf.matmul(v, dm, transpose_a=True)
      du = product if du is None else du + product
      previous = [du]  # (the running sum, as in _convolve)
    filters.append(tf.reshape(tf.matmul(gg, tf.reshape(du, [16, -1]), transpose_a=True), [3, 3, c, c_out]))
    previous = [filters[-1]]
  return tf.concat(filters, axis=2) if len(filters) > 1 else filters[0]


def input_gradients(grad, filters, channels, padding, max_transform_bytes, after=None):
  """dL/dx of each input part [N, H, W, C_i] from grad = dL/dy [N, H', W', C_out]: the transposed convolution,
  conv2d(dy, rot180(g)^T) by F(2x2, 3x3) (SAME: SAME; VALID: dy zero-padded by 2, VALID), one per part, the
  parts one after another, the first once the ops `after` have run. The rotated kernel is never built: each
  part's U is filter_transform(flipped=True) of its slice of g, used transposed."""
  with tf.control_dependencies(after or []):
    if padding == 'VALID':
      grad = tf.pad(grad, [[0, 0], [2, 2], [2, 2], [0, 0]])
  geometry = Geometry(grad.shape.as_list(), padding)
  grads, previous = [], list(after or [])
  for transform, c in zip(_part_transforms(filters, channels, flipped=True), channels):
    grads.append(_convolve([grad], [transform], c, geometry, max_transform_bytes, after=previous,
                           transposed=True))
    previous = [grads[-1]]
  return grads


@_ops.RegisterGradient(GRADIENT_NAME)
def conv2d_winograd_grad(op, grad, *unused_grads):
  """Gradient of conv2d_winograd's IdentityN (out, parts..., filters): None for out (the transforms get no
  gradient), the input gradient of each part, the filter gradient."""
  parts, filters = list(op.inputs[1:-1]), op.inputs[-1]
  if grad is None:
    return [None] * len(op.inputs)
  in_height, out_height = parts[0].shape.as_list()[1], grad.shape.as_list()[1]
  padding = 'SAME' if in_height == out_height else 'VALID'
  max_transform_bytes = op.get_attr(_MAX_BYTES_ATTR)
  geometry, channels = _check(parts, filters, padding)
  with tf.name_scope('winograd_filter_grad'):
    dg = filter_gradient(parts, grad, geometry, max_transform_bytes)
  with tf.name_scope('winograd_input_grad'):
    # After the filter gradient: run concurrently, their transforms would add up.
    dx = input_gradients(grad, filters, channels, padding, max_transform_bytes, after=[dg])
  return [None] + dx + [dg]
