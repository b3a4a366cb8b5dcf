"""PSPNet: dilated ResNet backbone + pyramid pooling module (Zhao et al., "Pyramid Scene Parsing Network",
CVPR 2017).

Graph layout (scope names are stable API: train_mem_saving.py checkpoint nodes and checkpoint restores use them):

    SharedFeatureExtractor/resnet_v1_50/...   dilated ResNet50, output stride 8 (architectures/dilated_resnet_v1.py)
    PSPModule/Conv .. Conv_{k-1}             1x1 conv + BN + ReLU6 per pyramid bin (bins 1, 2, 3, 6)
    PSPModule/Conv_k                         3x3 fusion conv + BN + ReLU6 (PSPModule/Conv_4/Relu6 for 4 bins)
    Logits                                   dropout + 1x1 classifier (with bias, no BN)
    AuxHead/Conv, AuxHead/Logits             auxiliary head on block3 (training graphs with the aux loss only)

Model interface (shapes for a batch of N images of H x W):

    preprocess(images)      float32 [N, H, W, 3] RGB in [0, 255]  ->  mean-subtracted float32 [N, H, W, 3]
    predict(preprocessed)   -> {'logits': [N, h, w, C], 'aux_logits': [N, h, w, C] (training + aux only)},
                               h = ceil(H / output_stride), w likewise
    postprocess(predictions, (H, W))  -> {'logits': [N, H, W, C] bilinear upsampled,
                                          'predictions': int32 [N, H, W] train ids}
    loss(predictions, labels)  labels uint8/int [N, H, W, 1] -> {'main_loss': scalar, 'aux_loss': scalar}
                               (already weighted; pixels with the ignore label excluded)
    restore_map(fine_tune_checkpoint_type)  -> {checkpoint variable name: variable}
"""
import numpy as np

from architectures import dilated_resnet_v1
from architectures import segmentation_model
from libs import conv_gradients
from libs import winograd
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import UserError
from libs.image_ops import resize_bilinear

# The shared pieces live in architectures/segmentation_model.py; these names stay importable from here.
FEATURE_EXTRACTOR_SCOPE = segmentation_model.FEATURE_EXTRACTOR_SCOPE
BACKBONE_SCOPE = segmentation_model.BACKBONE_SCOPE
HALF_DTYPES = segmentation_model.HALF_DTYPES
FINE_TUNE_CHECKPOINT_TYPES = segmentation_model.FINE_TUNE_CHECKPOINT_TYPES
block_output_nodes = segmentation_model.block_output_nodes
segmentation_loss = segmentation_model.segmentation_loss
model_restore_map = segmentation_model.model_restore_map

PSP_MODULE_SCOPE = 'PSPModule'
LOGITS_SCOPE = 'Logits'
AUX_HEAD_SCOPE = 'AuxHead'

PSP_DEPTH = 512
# How the PSP fusion conv and the backbone's bottleneck 3x3 convs run (pspnet.conv3x3_algorithm, protos/pspnet.proto).
CONV3X3_ALGORITHMS = dilated_resnet_v1.CONV3X3_ALGORITHMS

# The checkpoint nodes of the walkthrough's train_mem_saving.py command (../shared/seed/pspnet.md).
SEED_CHECKPOINT_NODES = (
    'SharedFeatureExtractor/resnet_v1_50/block1/unit_3/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block2/unit_4/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block3/unit_6/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block4/unit_3/bottleneck_v1/Relu',
    'PSPModule/Conv_4/Relu6',
)


def adaptive_average_pool(features, bins):
  """Average-pools features into a bins x bins grid, like PyTorch's AdaptiveAvgPool2d.

  Cell (i, j) averages rows [floor(i*h/bins), ceil((i+1)*h/bins)) and the analogous columns, so every input
  pixel is covered for any h, w (also when not divisible by bins; cells overlap by at most one pixel then).

  Args:
    features: float [N, h, w, C] with static h, w and C.
    bins: cells per side, 1 <= bins.

  Returns:
    float [N, bins, bins, C], the dtype of features.

  Raises:
    ValueError: if h, w or C is not static.
  """
  return pyramid_average_pools(features, [bins])[0]


def pyramid_average_pools(features, bins_list):
  """adaptive_average_pool(features, bins) for every bins of bins_list, sharing one pass over the features.

  Two products with constant averaging matrices, rows then columns (the mean of row means over a rectangle is the
  rectangle's mean): the row matrices of all pyramid levels stacked, A_h [sum(bins_list), h] (row i of a level
  holds 1/len over cell i's rows), times the features as [N, h, w * C]; then per level A_w [bins, w] times its
  rows as [N * bins, w, C]. The gradient is the same products transposed: *one* tensor of the features' size for
  the whole pyramid, where slicing out every cell makes one zero-filled features-sized gradient per cell (50 for
  bins 1, 2, 3, 6), all added up.

  Args:
    features: float [N, h, w, C] with static h, w and C.
    bins_list: cells per side of each level, each >= 1.

  Returns:
    list of float [N, bins, bins, C] in the order of bins_list (ops under Pool<bins>/), dtype of features.

  Raises:
    ValueError: if h, w or C is not static.
  """
  height, width, channels = features.shape.as_list()[1:4]
  if height is None or width is None or channels is None:
    raise UserError('Pyramid pooling needs a static feature map size, got %s for %s; give the network inputs '
                    'of a fixed size (crop or pad them).' % (features.shape, features.name))
  row_matrix = tf.concat([_averaging_matrix(height, bins, features.dtype) for bins in bins_list], axis=0)
  rows = tf.matmul(row_matrix, tf.reshape(features, [-1, height, width * channels]),
                   name='rows')                                          # [N, sum(bins_list), w * C]
  # Split (its gradient is a concat), not slices (whose gradients are zero-filled [N, sum(bins_list), w * C]).
  levels = tf.split(rows, list(bins_list), axis=1) if len(bins_list) > 1 else [rows]
  pooled = []
  for bins, level in zip(bins_list, levels):
    with tf.name_scope('Pool%d' % bins):
      level = tf.reshape(level, [-1, width, channels])                                # [N * bins, w, C]
      cells = tf.matmul(_averaging_matrix(width, bins, features.dtype), level, name='columns')
      pooled.append(tf.reshape(cells, [-1, bins, bins, channels]))
  return pooled


def _averaging_matrix(size, bins, dtype):
  """[bins, size] constant: row i averages positions [floor(i*size/bins), ceil((i+1)*size/bins))."""
  matrix = np.zeros([bins, size], np.float64)
  for i in range(bins):
    start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
    matrix[i, start:end] = 1.0 / (end - start)
  return tf.constant(matrix, dtype=dtype)


# Network parts by scope prefix, in graph order (drivers/exporter.py's parameter and MAC tables, seed
# checkpoints): the `parts` property of the model.
PARTS = (
    (FEATURE_EXTRACTOR_SCOPE + '/', 'backbone'),
    (PSP_MODULE_SCOPE + '/', 'PSPModule'),
    (LOGITS_SCOPE + '/', 'Logits'),
    (AUX_HEAD_SCOPE + '/', 'AuxHead'),
)


class PSPNetArchitecture(segmentation_model.SegmentationModel):
  """PSPNet50 with an optional auxiliary head; see the module docstring for the interface."""

  PARTS = PARTS

  def __init__(self,
               is_training,
               num_classes,
               scope_fn,
               filter_scale=1.0,
               pooling_factors=(1, 2, 3, 6),
               num_units_per_block=dilated_resnet_v1.RESNET50_UNITS,
               output_stride=8,
               dropout_keep_prob=0.9,
               aux_head_depth=256,
               use_aux_loss=True,
               main_loss_weight=1.0,
               aux_loss_weight=0.4,
               classification_loss_fn=None,
               ignore_label=255,
               upsample_logits=True,
               native_atrous_conv=False,
               low_memory_conv_gradients=True,
               conv3x3_algorithm='direct'):
    """Configures the network; nothing is built until predict().

    Args:
      is_training: python bool; training graphs apply dropout and build the auxiliary head.
      num_classes: classes predicted, > 0.
      scope_fn: function returning the arg_scope for all convolutions (builders/hyperparams_builder.py).
      filter_scale: multiplier of every layer's filter count.
      pooling_factors: pyramid bin counts.
      num_units_per_block: residual units of block1..block4.
      output_stride: backbone output stride (8 or 16).
      dropout_keep_prob: keep probability before the classifiers while training.
      aux_head_depth: filters of the auxiliary 3x3 conv at filter_scale 1.
      use_aux_loss: build the auxiliary head (training only) and add its loss.
      main_loss_weight, aux_loss_weight: loss weights.
      classification_loss_fn: fn(logits [P, C], labels int32 [P], weights float [P]) -> scalar mean loss over
        positive weights (builders/losses_builder.py). Needed only for loss().
      ignore_label: label value excluded from the loss.
      upsample_logits: upsample logits to the labels' size (True) or downsample labels (False) for the loss.
      native_atrous_conv: atrous backbone convs as one dilated Conv2D each (architectures/dilated_resnet_v1.py).
      low_memory_conv_gradients: the PSP fusion conv and the aux head conv get libs/conv_gradients.py's
        gradients (no whole-image im2col buffers); only gradients differ, and only in rounding.
      conv3x3_algorithm: how the 3x3 convs run: 'direct' (slim.conv2d) or 'winograd': libs/winograd.py's
        F(2x2, 3x3) for the PSP fusion conv (over the concat's parts, no concat built), for the stride-1
        bottleneck convs of the backbone blocks that win by it (dilated_resnet_v1.WINOGRAD_BLOCKS) and for the
        auxiliary head's 3x3 conv. Same
        variables and names of variables; results differ in rounding only.

    Raises:
      ValueError: conv3x3_algorithm is neither 'direct' nor 'winograd'.
    """
    if conv3x3_algorithm not in CONV3X3_ALGORITHMS:
      raise ValueError('conv3x3_algorithm must be one of %s, got %r' % (CONV3X3_ALGORITHMS, conv3x3_algorithm))
    super().__init__(is_training, num_classes, scope_fn, filter_scale, pooling_factors, num_units_per_block,
                     use_aux_loss, main_loss_weight, classification_loss_fn, ignore_label, upsample_logits,
                     native_atrous_conv)
    self._output_stride = output_stride
    self._dropout_keep_prob = dropout_keep_prob
    self._aux_head_depth = aux_head_depth
    self._aux_loss_weight = aux_loss_weight
    self._low_memory_conv_gradients = low_memory_conv_gradients
    self._conv3x3_algorithm = conv3x3_algorithm

  @property
  def output_stride(self):
    return self._output_stride

  def _dropout(self, net):
    if self._is_training and self._dropout_keep_prob < 1.0:
      net = slim.dropout(net, keep_prob=self._dropout_keep_prob, is_training=True, scope='Dropout')
    return net

  def _pyramid_pooling_module(self, features):
    """[N, h, w, D] -> [N, h, w, 512 * filter_scale] (PSPModule/Conv_k/Relu6)."""
    size = [int(features.shape[1]), int(features.shape[2])]
    with tf.variable_scope(PSP_MODULE_SCOPE, values=[features]):
      branches = [features]
      with tf.name_scope('Pooling'):
        pyramid = pyramid_average_pools(features, self._pooling_factors)
      with slim.arg_scope([slim.conv2d], activation_fn=tf.nn.relu6):
        for bins, pooled in zip(self._pooling_factors, pyramid):
          pooled = slim.conv2d(pooled, self._scaled(PSP_DEPTH), 1)
          with tf.name_scope('Upsample%d' % bins):
            branches.append(resize_bilinear(pooled, size))
        if self._conv3x3_algorithm == 'winograd':
          # The parts go in as they are: each is transformed and multiplied on its own, the products summed.
          return dilated_resnet_v1.conv2d_as_slim(
              branches, self._scaled(PSP_DEPTH), 3,
              lambda parts, weights: winograd.conv2d_winograd(parts, weights, 'SAME', name='Conv2D'))
        net = tf.concat(branches, axis=3, name='concat')
        with conv_gradients.low_memory_gradients(self._low_memory_conv_gradients):
          return slim.conv2d(net, self._scaled(PSP_DEPTH), 3)

  def _classifier(self, net, scope):
    with tf.variable_scope(scope, values=[net]):
      return self._logits_conv(self._dropout(net))

  def _predict(self, preprocessed_inputs, reuse):
    with slim.arg_scope(self._scope_fn()):
      features, end_points = self._backbone(preprocessed_inputs, reuse, output_stride=self._output_stride,
                                            conv3x3_algorithm=self._conv3x3_algorithm)
      with tf.variable_scope(tf.get_variable_scope(), reuse=reuse):
        net = self._pyramid_pooling_module(features)
        outputs = {'logits': self._classifier(net, LOGITS_SCOPE), 'end_points': end_points}
        if self.builds_aux_head:
          block3 = self._block_outputs(end_points)[2]
          with tf.variable_scope(AUX_HEAD_SCOPE, values=[block3]):
            if self._conv3x3_algorithm == 'winograd':
              aux = dilated_resnet_v1.conv2d_as_slim(
                  block3, self._scaled(self._aux_head_depth), 3,
                  lambda x, weights: winograd.conv2d_winograd(x, weights, 'SAME', name='Conv2D'), scope='Conv')
            else:
              with conv_gradients.low_memory_gradients(self._low_memory_conv_gradients):
                aux = slim.conv2d(block3, self._scaled(self._aux_head_depth), 3, scope='Conv')
            outputs['aux_logits'] = self._classifier(aux, 'Logits')
    return outputs

  def _aux_losses(self):
    return (('aux_logits', 'aux_loss', self._aux_loss_weight, 'AuxLoss'),)
