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
"""
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


def scaled_depth(depth, filter_scale):
  """Number of filters of a layer with `depth` filters at scale 1.0: floor(depth * scale), at least 1."""
  return max(1, int(depth * filter_scale))


def resnet_v1_blocks(filter_scale=1.0, num_units_per_block=RESNET50_UNITS):
  """The four `resnet_utils.Block`s of a (scaled) ResNet50-style network."""
  return [
      resnet_v1.resnet_v1_block('block%d' % (i + 1), base_depth=scaled_depth(depth, filter_scale),
                                num_units=units, stride=stride)
      for i, (depth, units, stride) in enumerate(zip(_BASE_DEPTHS, num_units_per_block, _BLOCK_STRIDES))
  ]


def dilated_resnet_v1_50(inputs, filter_scale=1.0, num_units_per_block=RESNET50_UNITS, output_stride=8,
                         scope='resnet_v1_50', reuse=None):
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

  Returns:
    net: float32 [N, ceil(H / output_stride), ceil(W / output_stride), 2048 * filter_scale], block4 output.
    end_points: dict from full scope names (e.g. '<outer>/resnet_v1_50/block3') to tensors, as tf-slim's.

  Raises:
    ValueError: for an output stride other than 8 or 16, or not exactly four unit counts.
  """
  if output_stride not in (8, 16):
    raise ValueError('output_stride must be 8 or 16, got %r' % (output_stride,))
  if len(num_units_per_block) != 4:
    raise ValueError('num_units_per_block needs 4 values, got %r' % (list(num_units_per_block),))
  blocks = resnet_v1_blocks(filter_scale, num_units_per_block)
  with tf.variable_scope(scope, 'resnet_v1', [inputs], reuse=reuse) as sc:
    end_points_collection = sc.original_name_scope + '_end_points'
    with slim.arg_scope([slim.conv2d, resnet_v1.bottleneck, resnet_utils.stack_blocks_dense],
                        outputs_collections=end_points_collection):
      net = resnet_utils.conv2d_same(inputs, scaled_depth(_ROOT_DEPTH, filter_scale), 7, stride=2,
                                     scope='conv1')
      net = slim.max_pool2d(net, [3, 3], stride=2, scope='pool1')
      # The root block already divides the resolution by 4.
      net = resnet_utils.stack_blocks_dense(net, blocks, output_stride // 4)
      end_points = slim.utils.convert_collection_to_dict(end_points_collection)
  return net, end_points
