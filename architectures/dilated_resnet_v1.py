"""Dilated TF-Slim ResNet v1 backbones for dense prediction.

The network is TF-Slim's ResNet v1 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) built
from tf-slim's own pieces (`resnet_utils.conv2d_same`, `resnet_utils.stack_blocks_dense`,
`resnet_v1.bottleneck`), so that its variables and ops carry exactly the names of `tf_slim.nets.resnet_v1`:
`resnet_v1_50/conv1`, `resnet_v1_50/block3/unit_6/bottleneck_v1/...`. Two things differ from
`resnet_v1.resnet_v1_50`, and both are parameters rather than forks:

* `filter_scale` multiplies every layer's filter count, the 7x7 root convolution included (slim hard-codes 64
  there), so the same code builds PSPNet50 and small test/demo models;
* `num_units_per_block` replaces ResNet50's [3, 4, 6, 3].

Atrous convolution comes from slim's `output_stride`: with output stride 8, block1 ends at stride 8 (slim puts
the stride in the last unit of a block), block2 keeps it, block3 runs at rate 2 and block4 at rate 4, as in the
PSPNet paper (Zhao et al., CVPR 2017).

How an atrous convolution runs is a switch (`native_atrous_conv`, protos/pspnet.proto), not a different network:
tf-slim builds it as SpaceToBatchND -> Conv2D -> BatchToSpaceND (the default, what the original project ran);
with the switch it is one Conv2D with `dilations`. Both compute the same function with the same variables under
the same names, so checkpoints are interchangeable (tests/test_bench.py compares them). The native op's gradient
goes through the SpaceToBatchND formulation, because TensorFlow's CPU kernels of Conv2DBackpropInput/Filter
reject dilations.

`conv3x3_algorithm` 'winograd' (pspnet.conv3x3_algorithm, protos/pspnet.proto) runs the stride-1 bottleneck 3x3
convs of WINOGRAD_BLOCKS by Winograd's F(2x2, 3x3) (libs/winograd.py): at rate 1 as a SAME conv, at rate r > 1 in
tf.nn.convolution's own form of a dilated SAME conv, SpaceToBatchND -> VALID conv -> BatchToSpaceND, with the VALID
conv by Winograd. Same variables and node names as slim's layers (`.../conv2/weights`, `.../bottleneck_v1/Relu`).
"""
from libs import winograd
from libs.compat import slim
from libs.compat import tf

from tf_slim.nets import resnet_utils  # pylint: disable=g-bad-import-order
from tf_slim.nets import resnet_v1

RESNET50_UNITS = (3, 4, 6, 3)
# Bottleneck depth of block1..block4 at filter_scale 1 (outputs are 4x these).
_BASE_DEPTHS = (64, 128, 256, 512)
# Stride of the last unit of each block (TF-Slim ResNet v1 layout).
_BLOCK_STRIDES = (2, 2, 2, 1)
_ROOT_DEPTH = 64
# How the 3x3 convs may run (conv3x3_algorithm).
CONV3X3_ALGORITHMS = ('direct', 'winograd')
# Blocks whose stride-1 bottleneck 3x3 convs conv3x3_algorithm 'winograd' converts; the others stay direct, and so
# does every stride-2 conv (block1/unit_3 at output stride 8). Chosen by measurement per layer
# (bench/results/README.md, "Winograd", the backbone table): block1 (64 channels over 179x179) and block2 (128 over
# 90x90) lose, since with so few channels the transforms, which scale with the map, outweigh the saved products;
# block3 (256, rate 2) and block4 (512, rate 4) win. A per-block rule rather than a channel threshold,
# so that scaled-down models (filter_scale) build the same layout.
WINOGRAD_BLOCKS = ('block3', 'block4')


def scaled_depth(depth, filter_scale):
  """Number of filters of a layer with `depth` filters at scale 1.0: floor(depth * scale), at least 1."""
  return max(1, int(depth * filter_scale))


# gradient_override_map name of native atrous Conv2D ops (see _native_atrous_conv2d_grad).
_NATIVE_ATROUS_GRADIENT = 'PSPNetNativeAtrousConv2D'


@tf.RegisterGradient(_NATIVE_ATROUS_GRADIENT)
def _native_atrous_conv2d_grad(op, grad):
  """Gradient of a dilated stride-1 Conv2D through slim's SpaceToBatchND formulation.

  TensorFlow's CPU Conv2DBackpropInput/Filter kernels reject dilations > 1, so the backward pass is the one
  of the equivalent SpaceToBatchND -> Conv2D -> BatchToSpaceND graph (the forward Conv2D that tf.nn.convolution
  builds here is never run: nothing but the gradients reads it). It works on every device.
  """
  inputs, kernel = op.inputs
  rate = op.get_attr('dilations')[1:3]
  equivalent = tf.nn.convolution(inputs, kernel, padding=op.get_attr('padding').decode(), dilations=rate)
  return tf.gradients(equivalent, [inputs, kernel], grad_ys=grad)


def conv2d_as_slim(inputs, num_outputs, kernel_size, conv_fn, scope=None):
  """`slim.conv2d(inputs, num_outputs, kernel_size, scope=scope)` with the convolution itself done by conv_fn.

  The layer reads slim.conv2d's arg_scope (initializer, regularizer, normalizer, activation, collections) and
  creates exactly slim's variables (`<scope>/weights`, then the normalizer's, or `<scope>/biases`), so a
  checkpoint of either form restores into the other.

  Args:
    inputs: float [N, H, W, C] with a static C, or a list of such tensors standing for their channel concat
      (passed to conv_fn as given; C is the sum).
    num_outputs: output channels.
    kernel_size: int, square kernel.
    conv_fn: fn(inputs, weights [k, k, C, num_outputs]) -> [N, H', W', num_outputs], the convolution.
    scope: variable scope ('Conv' by default, as slim).

  Returns:
    [N, H', W', num_outputs], also added to the arg_scope's outputs_collections under the scope name.
  """
  parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
  params = dict(slim.current_arg_scope().get(slim.arg_scope_func_key(slim.conv2d), {}))
  normalizer_fn = params.get('normalizer_fn')
  activation_fn = params.get('activation_fn', tf.nn.relu)
  with tf.variable_scope(scope, 'Conv', parts, reuse=params.get('reuse')) as sc:
    dtype = parts[0].dtype.base_dtype
    channels = sum(int(p.shape[-1]) for p in parts)
    collections = slim.utils.get_variable_collections(params.get('variables_collections'), 'weights')
    weights = slim.model_variable(
        'weights', shape=[kernel_size, kernel_size, channels, num_outputs], dtype=dtype,
        initializer=params.get('weights_initializer', slim.xavier_initializer()),
        regularizer=params.get('weights_regularizer'), collections=collections,
        trainable=params.get('trainable', True))
    outputs = conv_fn(inputs, weights)
    if normalizer_fn is not None:
      outputs = normalizer_fn(outputs, **(params.get('normalizer_params') or {}))
    elif params.get('biases_initializer', tf.zeros_initializer()) is not None:
      biases = slim.model_variable(
          'biases', shape=[num_outputs], dtype=dtype,
          initializer=params.get('biases_initializer', tf.zeros_initializer()),
          regularizer=params.get('biases_regularizer'),
          collections=slim.utils.get_variable_collections(params.get('variables_collections'), 'biases'),
          trainable=params.get('trainable', True))
      outputs = tf.nn.bias_add(outputs, biases)
    if activation_fn is not None:
      outputs = activation_fn(outputs)
    return slim.utils.collect_named_outputs(params.get('outputs_collections'), sc.name, outputs)


def native_atrous_conv2d(inputs, num_outputs, kernel_size, rate, scope=None):
  """`slim.conv2d(inputs, num_outputs, kernel_size, rate=rate, padding='SAME', scope=scope)` as one dilated Conv2D.

  Same variables as slim's layer (conv2d_as_slim), so a checkpoint of either form restores into the other.
  Stride 1 and SAME padding only (atrous layers of ResNet).

  Args:
    inputs: float [N, H, W, C] with a static C.
    num_outputs: output channels.
    kernel_size: int, square kernel.
    rate: int > 1, the dilation.
    scope: variable scope ('Conv' by default, as slim).

  Returns:
    [N, H, W, num_outputs], also added to the arg_scope's outputs_collections under the scope name.
  """
  def dilated_conv(x, weights):
    with tf.get_default_graph().gradient_override_map({'Conv2D': _NATIVE_ATROUS_GRADIENT}):
      return tf.nn.conv2d(x, weights, strides=1, padding='SAME', dilations=rate, name='Conv2D')
  return conv2d_as_slim(inputs, num_outputs, kernel_size, dilated_conv, scope)


def winograd_atrous_conv2d(inputs, filters, rate, name=None):
  """tf.nn.convolution(inputs, filters, 'SAME', dilations=rate) for a 3x3 kernel, the conv by Winograd F(2x2, 3x3).

  Rate 1: libs/winograd.conv2d_winograd SAME. Rate r > 1: tf.nn.convolution's decomposition of a dilated SAME
  conv, with its paddings and crops (tf.required_space_to_batch_paddings over the dilated kernel's SAME padding,
  (k - 1) r split floor / ceil): SpaceToBatchND into r x r phases, a VALID 3x3 conv of the phases by
  conv2d_winograd, BatchToSpaceND.

  Args:
    inputs: float [N, H, W, C_in] with a static shape.
    filters: [3, 3, C_in, C_out] of the same dtype.
    rate: int >= 1, the dilation of both spatial dimensions.
    name: name scope of the Winograd conv ('Conv2D', as slim's conv op).

  Returns:
    [N, H, W, C_out].

  Raises:
    ValueError: a rate < 1, or a shape libs/winograd.py rejects.
  """
  if rate < 1:
    raise ValueError('winograd_atrous_conv2d: rate must be >= 1, got %r' % (rate,))
  if rate == 1:
    return winograd.conv2d_winograd(inputs, filters, 'SAME', name=name or 'Conv2D')
  height, width = inputs.shape.as_list()[1:3]
  pad_total = 2 * rate  # (kernel size - 1) * rate
  base_paddings = [[pad_total // 2, pad_total - pad_total // 2]] * 2
  paddings, crops = tf.required_space_to_batch_paddings([height, width], [rate, rate], base_paddings)
  phases = tf.space_to_batch_nd(inputs, [rate, rate], paddings, name='SpaceToBatchND')
  outputs = winograd.conv2d_winograd(phases, filters, 'VALID', name=name or 'Conv2D')
  return tf.batch_to_space_nd(outputs, [rate, rate], crops, name='BatchToSpaceND')


@slim.add_arg_scope
def bottleneck(inputs, depth, depth_bottleneck, stride, rate=1, native_atrous_conv=False,
               conv3x3_algorithm='direct', outputs_collections=None, scope=None):
  """tf-slim's `resnet_v1.bottleneck` (same ops, names and variables), optionally with native atrous convs.

  Args:
    inputs: [N, H, W, C].
    depth, depth_bottleneck: output and bottleneck channels.
    stride: the unit's stride (on the 3x3 conv).
    rate: atrous rate of the 3x3 conv.
    native_atrous_conv: a 3x3 conv with rate > 1 runs as one dilated Conv2D (native_atrous_conv2d) instead of
      slim's SpaceToBatchND -> Conv2D -> BatchToSpaceND.
    conv3x3_algorithm: 'direct', or 'winograd': a stride-1 unit's 3x3 conv by winograd_atrous_conv2d (before
      native_atrous_conv); a stride-2 unit stays slim's.
    outputs_collections: collection of the unit's output (end points).
    scope: variable scope ('bottleneck_v1').

  Returns:
    [N, H / stride, W / stride, depth].

  Raises:
    ValueError: an unknown conv3x3_algorithm.
  """
  if conv3x3_algorithm not in CONV3X3_ALGORITHMS:
    raise ValueError('conv3x3_algorithm must be one of %s, got %r' % (CONV3X3_ALGORITHMS, conv3x3_algorithm))
  use_winograd = conv3x3_algorithm == 'winograd' and stride == 1
  if not use_winograd and (not native_atrous_conv or rate == 1):
    return resnet_v1.bottleneck(inputs, depth, depth_bottleneck, stride, rate=rate,
                                outputs_collections=outputs_collections, scope=scope)
  if stride != 1:
    raise ValueError('atrous convolution with stride %d: slim never builds one' % stride)
  with tf.variable_scope(scope, 'bottleneck_v1', [inputs]) as sc:
    depth_in = slim.utils.last_dimension(inputs.get_shape(), min_rank=4)
    if depth == depth_in:
      shortcut = resnet_utils.subsample(inputs, stride, 'shortcut')
    else:
      shortcut = slim.conv2d(inputs, depth, [1, 1], stride=stride, activation_fn=None, scope='shortcut')
    residual = slim.conv2d(inputs, depth_bottleneck, [1, 1], stride=1, scope='conv1')
    if use_winograd:
      residual = conv2d_as_slim(residual, depth_bottleneck, 3,
                                lambda x, weights: winograd_atrous_conv2d(x, weights, rate), scope='conv2')
    else:
      residual = native_atrous_conv2d(residual, depth_bottleneck, 3, rate, scope='conv2')
    residual = slim.conv2d(residual, depth, [1, 1], stride=1, activation_fn=None, scope='conv3')
    output = tf.nn.relu(shortcut + residual)
    return slim.utils.collect_named_outputs(outputs_collections, sc.name, output)


def resnet_v1_blocks(filter_scale=1.0, num_units_per_block=RESNET50_UNITS, native_atrous_conv=False,
                     conv3x3_algorithm='direct'):
  """The four `resnet_utils.Block`s of a (scaled) ResNet50-style network (slim's resnet_v1_block layout);
  conv3x3_algorithm 'winograd' applies to the blocks of WINOGRAD_BLOCKS only."""
  blocks = []
  for i, (depth, units, stride) in enumerate(zip(_BASE_DEPTHS, num_units_per_block, _BLOCK_STRIDES)):
    base_depth = scaled_depth(depth, filter_scale)
    name = 'block%d' % (i + 1)
    unit = {'depth': base_depth * 4, 'depth_bottleneck': base_depth, 'native_atrous_conv': native_atrous_conv,
            'conv3x3_algorithm': conv3x3_algorithm if name in WINOGRAD_BLOCKS else 'direct'}
    # slim puts a block's stride in its last unit.
    args = [dict(unit, stride=1)] * (units - 1) + [dict(unit, stride=stride)]
    blocks.append(resnet_utils.Block(name, bottleneck, args))
  return blocks


def dilated_resnet_v1_50(inputs, filter_scale=1.0, num_units_per_block=RESNET50_UNITS, output_stride=8,
                         scope='resnet_v1_50', reuse=None, native_atrous_conv=False, after_block1_fn=None,
                         conv3x3_algorithm='direct'):
  """Builds the dilated ResNet50 v1 backbone (no global pool, no logits).

  Call it inside the network's arg_scope (builders/hyperparams_builder.py), which supplies batch norm,
  initializers and SAME max-pool padding.

  Args:
    inputs: float32 [N, H, W, 3], mean-subtracted RGB.
    filter_scale: multiplier of every layer's filter count, in (0, 1].
    num_units_per_block: four residual-unit counts.
    output_stride: 8 or 16; the ratio of input to output resolution.
    scope: variable scope ('resnet_v1_50' so public checkpoints map name-for-name).
    reuse: reuse variables (for clones sharing weights).
    native_atrous_conv: atrous 3x3 convs as one dilated Conv2D each instead of SpaceToBatchND -> Conv2D ->
      BatchToSpaceND (same variables and results; see the module docstring).
    after_block1_fn: None, or fn(block1 output) -> tensor that blocks 2-4 run on instead (ICNet's variable-free
      downsampling between block1 and block2; its ops are built in the backbone's scope, under the name scope
      the function opens). Without it the graph is one stack of the four blocks; with it the blocks keep the
      same variable and node names, and the atrous rates of blocks 2-4 are those of the plain network.
    conv3x3_algorithm: 'direct' (slim's convs) or 'winograd': the stride-1 bottleneck 3x3 convs of
      WINOGRAD_BLOCKS by Winograd F(2x2, 3x3) (bottleneck()); same variables, names and function.

  Returns:
    net: float32 [N, ceil(H / output_stride), ceil(W / output_stride), 2048 * filter_scale], block4 output.
    end_points: dict from full scope names (e.g. '<outer>/resnet_v1_50/block3') to tensors, as tf-slim's.

  Raises:
    ValueError: for an output stride other than 8 or 16, not exactly four unit counts, or an unknown
      conv3x3_algorithm.
  """
  if output_stride not in (8, 16):
    raise ValueError('output_stride must be 8 or 16, got %r' % (output_stride,))
  if len(num_units_per_block) != 4:
    raise ValueError('num_units_per_block needs 4 values, got %r' % (list(num_units_per_block),))
  if conv3x3_algorithm not in CONV3X3_ALGORITHMS:
    raise ValueError('conv3x3_algorithm must be one of %s, got %r' % (CONV3X3_ALGORITHMS, conv3x3_algorithm))
  blocks = resnet_v1_blocks(filter_scale, num_units_per_block, native_atrous_conv, conv3x3_algorithm)
  with tf.variable_scope(scope, 'resnet_v1', [inputs], reuse=reuse) as sc:
    end_points_collection = sc.original_name_scope + '_end_points'
    with slim.arg_scope([slim.conv2d, bottleneck, resnet_v1.bottleneck, resnet_utils.stack_blocks_dense],
                        outputs_collections=end_points_collection):
      net = resnet_utils.conv2d_same(inputs, scaled_depth(_ROOT_DEPTH, filter_scale), 7, stride=2,
                                     scope='conv1')
      net = slim.max_pool2d(net, [3, 3], stride=2, scope='pool1')
      # The root block already divides the resolution by 4.
      if after_block1_fn is None:
        net = resnet_utils.stack_blocks_dense(net, blocks, output_stride // 4)
      else:
        # block1 ends at stride 8 in both cases (output_stride 8 or 16 >= 8): 2 of the remaining stride budget
        # output_stride // 4 is spent, so blocks 2-4 get output_stride // 8 (1: every later stride becomes a rate).
        net = resnet_utils.stack_blocks_dense(net, blocks[:1], output_stride // 4)
        net = after_block1_fn(net)
        net = resnet_utils.stack_blocks_dense(net, blocks[1:], output_stride // 8)
      end_points = slim.utils.convert_collection_to_dict(end_points_collection)
  return net, end_points
