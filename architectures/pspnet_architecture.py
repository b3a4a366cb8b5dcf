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
from libs import conv_gradients
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import UserError
from libs.image_ops import MEAN_RGB
from libs.image_ops import resize_bilinear

FEATURE_EXTRACTOR_SCOPE = 'SharedFeatureExtractor'
PSP_MODULE_SCOPE = 'PSPModule'
LOGITS_SCOPE = 'Logits'
AUX_HEAD_SCOPE = 'AuxHead'
BACKBONE_SCOPE = 'resnet_v1_50'

PSP_DEPTH = 512

# The checkpoint nodes of the walkthrough's train_mem_saving.py command (../shared/seed/pspnet.md).
SEED_CHECKPOINT_NODES = (
    'SharedFeatureExtractor/resnet_v1_50/block1/unit_3/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block2/unit_4/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block3/unit_6/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block4/unit_3/bottleneck_v1/Relu',
    'PSPModule/Conv_4/Relu6',
)


def block_output_nodes(num_units_per_block=dilated_resnet_v1.RESNET50_UNITS):
  """Names of the backbone's block outputs (the last unit's Relu of block1 .. block4), without clone scope."""
  return tuple('%s/%s/block%d/unit_%d/bottleneck_v1/Relu' % (FEATURE_EXTRACTOR_SCOPE, BACKBONE_SCOPE, block, units)
               for block, units in enumerate(num_units_per_block, 1))


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


HALF_DTYPES = (tf.bfloat16, tf.float16)

# Network parts by scope prefix, in graph order (drivers/exporter.py's parameter and MAC tables, seed
# checkpoints): the `parts` property of the model.
PARTS = (
    (FEATURE_EXTRACTOR_SCOPE + '/', 'backbone'),
    (PSP_MODULE_SCOPE + '/', 'PSPModule'),
    (LOGITS_SCOPE + '/', 'Logits'),
    (AUX_HEAD_SCOPE + '/', 'AuxHead'),
)
# restore_map types: 'segmentation-finetune' is the original toolkit's spelling of a segmentation checkpoint
# (its ICNet configs use it), accepted as a synonym.
FINE_TUNE_CHECKPOINT_TYPES = ('classification', 'segmentation', 'segmentation-finetune')


def float32_variable_getter(getter, name, shape=None, dtype=None, *args, **kwargs):
  """Custom getter of mixed precision: a half-precision variable is created (or reused) as float32 under its
  own name, so checkpoints are the same as float32 training's, and read as a cast to the half type."""
  if dtype in HALF_DTYPES:
    return tf.cast(getter(name, shape, tf.float32, *args, **kwargs), dtype)
  return getter(name, shape, dtype, *args, **kwargs)



def segmentation_loss(logits, labels, num_classes, ignore_label, classification_loss_fn, upsample_logits, name):
  """Mean classification loss of one head over the valid pixels (the ignore label excluded).

  Args:
    logits: float [N, h, w, C] (any float dtype; the loss is computed in float32).
    labels: uint8/int [N, H, W, 1] train ids.
    num_classes: C.
    ignore_label: label value excluded from the loss.
    classification_loss_fn: fn(logits [P, C], labels int32 [P], weights float [P]) -> scalar mean loss over
      positive weights (builders/losses_builder.py).
    upsample_logits: True: bilinearly upsample the logits to the labels' size; False: nearest-neighbour resize
      the labels to the logits' size (corners aligned, as the logits are).
    name: name scope.

  Returns:
    scalar float32.
  """
  with tf.name_scope(name):
    label_size = [int(labels.shape[1]), int(labels.shape[2])] if labels.shape[1:3].is_fully_defined() \
        else tf.shape(labels)[1:3]
    if upsample_logits:
      logits = resize_bilinear(logits, label_size)
    else:
      labels = tf.raw_ops.ResizeNearestNeighbor(images=labels, size=tf.shape(logits)[1:3], align_corners=True)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    # The loss in float32 also for mixed-precision logits (a no-op for float32 ones).
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1, num_classes])
    valid = tf.cast(tf.not_equal(labels, ignore_label), tf.float32)
    # Ignored pixels get a harmless in-range label; their weight is 0.
    labels = tf.where(tf.equal(labels, ignore_label), tf.zeros_like(labels), labels)
    return classification_loss_fn(logits, labels, valid)


def model_restore_map(fine_tune_checkpoint_type, backbone_scope):
  """restore_map() of a model whose variables are slim model variables under their checkpoint names.

  Args:
    fine_tune_checkpoint_type: 'classification' (a TF-Slim ResNet: resnet_v1_50/... -> <backbone_scope>/...,
      nothing else), 'segmentation' or its synonym 'segmentation-finetune' (every model variable by its own
      name: a PSPNet, ICNet or seed checkpoint).
    backbone_scope: the scope the classification checkpoint's names are prefixed with in the model.

  Returns:
    dict {checkpoint name: variable}.

  Raises:
    ValueError: for another checkpoint type.
  """
  # slim model variables: weights and batch-norm statistics, never optimizer slots or the global step.
  model_vars = slim.get_model_variables()
  if fine_tune_checkpoint_type == 'classification':
    prefix = backbone_scope + '/'
    return {v.op.name[len(prefix):]: v for v in model_vars if v.op.name.startswith(prefix)}
  if fine_tune_checkpoint_type in ('segmentation', 'segmentation-finetune'):
    return {v.op.name: v for v in model_vars}
  raise UserError('fine_tune_checkpoint_type must be one of %s, got %r'
                   % (', '.join('"%s"' % t for t in FINE_TUNE_CHECKPOINT_TYPES), fine_tune_checkpoint_type))


class PSPNetArchitecture(object):
  """PSPNet50 with an optional auxiliary head; see the module docstring for the interface."""

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
               low_memory_conv_gradients=True):
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
    """
    self._is_training = is_training
    self._num_classes = num_classes
    self._scope_fn = scope_fn
    self._filter_scale = filter_scale
    self._pooling_factors = tuple(pooling_factors)
    self._num_units_per_block = tuple(num_units_per_block)
    self._output_stride = output_stride
    self._dropout_keep_prob = dropout_keep_prob
    self._aux_head_depth = aux_head_depth
    self._use_aux_loss = use_aux_loss
    self._main_loss_weight = main_loss_weight
    self._aux_loss_weight = aux_loss_weight
    self._classification_loss_fn = classification_loss_fn
    self._ignore_label = ignore_label
    self._upsample_logits = upsample_logits
    self._native_atrous_conv = native_atrous_conv
    self._low_memory_conv_gradients = low_memory_conv_gradients

  @property
  def num_classes(self):
    return self._num_classes

  @property
  def is_training(self):
    return self._is_training

  @property
  def ignore_label(self):
    return self._ignore_label

  @property
  def builds_aux_head(self):
    return self._is_training and self._use_aux_loss

  @property
  def output_stride(self):
    return self._output_stride

  @property
  def backbone_scope(self):
    """The scope of every backbone variable and node ('SharedFeatureExtractor'), without clone scope."""
    return FEATURE_EXTRACTOR_SCOPE

  @property
  def num_backbone_blocks(self):
    return len(self._num_units_per_block)

  def block_output_nodes(self):
    """Node names of block1 .. block4's outputs in this model's backbone (see block_output_nodes())."""
    return block_output_nodes(self._num_units_per_block)

  @property
  def parts(self):
    """((scope prefix, part name), ...) of the network's parts in graph order (PARTS)."""
    return PARTS

  def preprocess(self, images):
    """Subtracts the ImageNet RGB mean the TF-Slim ResNet checkpoints expect.

    Args:
      images: [N, H, W, 3] RGB in [0, 255], any real dtype.

    Returns:
      float32 [N, H, W, 3].
    """
    with tf.name_scope('Preprocessor'):
      return tf.cast(images, tf.float32) - tf.constant(MEAN_RGB, tf.float32)

  def _scaled(self, depth):
    return dilated_resnet_v1.scaled_depth(depth, self._filter_scale)

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
        net = tf.concat(branches, axis=3, name='concat')
        with conv_gradients.low_memory_gradients(self._low_memory_conv_gradients):
          return slim.conv2d(net, self._scaled(PSP_DEPTH), 3)

  def _classifier(self, net, scope):
    with tf.variable_scope(scope, values=[net]):
      net = self._dropout(net)
      return slim.conv2d(net, self._num_classes, 1, activation_fn=None, normalizer_fn=None,
                         biases_initializer=tf.zeros_initializer(), scope='Conv')

  def predict(self, preprocessed_inputs, reuse=None):
    """Runs the network, in the floating-point type of its input.

    Args:
      preprocessed_inputs: [N, H, W, 3] from preprocess(), with static H and W: float32, or bfloat16/float16 for
        mixed precision (variables stay float32, with the same names, and are cast where they are read; batch
        norm keeps float32 statistics).
      reuse: reuse existing variables (data-parallel clones after the first).

    Returns:
      dict with 'logits': [N, ceil(H/os), ceil(W/os), num_classes] of the input's dtype, 'aux_logits' likewise
      (only when builds_aux_head), and 'end_points': the backbone's end points.
    """
    if preprocessed_inputs.dtype.base_dtype in HALF_DTYPES:
      with tf.variable_scope(tf.get_variable_scope(), custom_getter=float32_variable_getter):
        return self._predict(preprocessed_inputs, reuse)
    return self._predict(preprocessed_inputs, reuse)

  def _predict(self, preprocessed_inputs, reuse):
    with slim.arg_scope(self._scope_fn()):
      with tf.variable_scope(FEATURE_EXTRACTOR_SCOPE, values=[preprocessed_inputs], reuse=reuse):
        features, end_points = dilated_resnet_v1.dilated_resnet_v1_50(
            preprocessed_inputs, filter_scale=self._filter_scale,
            num_units_per_block=self._num_units_per_block, output_stride=self._output_stride,
            scope=BACKBONE_SCOPE, native_atrous_conv=self._native_atrous_conv)
      with tf.variable_scope(tf.get_variable_scope(), reuse=reuse):
        net = self._pyramid_pooling_module(features)
        outputs = {'logits': self._classifier(net, LOGITS_SCOPE), 'end_points': end_points}
        if self.builds_aux_head:
          block3 = end_points['%s/%s/block3' % (FEATURE_EXTRACTOR_SCOPE, BACKBONE_SCOPE)]
          with tf.variable_scope(AUX_HEAD_SCOPE, values=[block3]):
            with conv_gradients.low_memory_gradients(self._low_memory_conv_gradients):
              aux = slim.conv2d(block3, self._scaled(self._aux_head_depth), 3, scope='Conv')
            outputs['aux_logits'] = self._classifier(aux, 'Logits')
    return outputs

  def postprocess(self, prediction_dict, output_size):
    """Upsamples logits to output_size and takes the arg-max.

    Returns:
      dict with 'logits': float32 [N, H, W, C] and 'predictions': int32 [N, H, W].
    """
    with tf.name_scope('Postprocessor'):
      logits = resize_bilinear(prediction_dict['logits'], output_size)
      return {'logits': logits, 'predictions': tf.argmax(logits, axis=3, output_type=tf.int32)}

  def _head_loss(self, logits, labels, name):
    """Mean classification loss over the valid pixels of one head."""
    return segmentation_loss(logits, labels, self._num_classes, self._ignore_label, self._classification_loss_fn,
                             self._upsample_logits, name)

  def loss(self, prediction_dict, labels):
    """Weighted main (and auxiliary) losses.

    Args:
      prediction_dict: from predict().
      labels: [N, H, W, 1] train ids (ignore_label for ignored pixels).

    Returns:
      dict with 'main_loss' and, when the auxiliary head was built, 'aux_loss' (scalars, weights applied).
    """
    if self._classification_loss_fn is None:
      raise ValueError('PSPNetArchitecture.loss() needs a classification_loss_fn')
    losses = {'main_loss': self._main_loss_weight *
                           self._head_loss(prediction_dict['logits'], labels, 'MainLoss')}
    if 'aux_logits' in prediction_dict:
      losses['aux_loss'] = self._aux_loss_weight * self._head_loss(
          prediction_dict['aux_logits'], labels, 'AuxLoss')
    return losses

  def restore_map(self, fine_tune_checkpoint_type='segmentation'):
    """Maps checkpoint variable names to this graph's model variables.

    Args:
      fine_tune_checkpoint_type: 'classification' (TF-Slim ResNet: resnet_v1_50/... -> our backbone, nothing
        else) or 'segmentation' / 'segmentation-finetune' (a PSPNet checkpoint: every model variable by its own
        name).

    Returns:
      dict {checkpoint name: variable}. Callers drop names absent from the actual checkpoint (and log them).

    Raises:
      ValueError: for another checkpoint type.
    """
    return model_restore_map(fine_tune_checkpoint_type, FEATURE_EXTRACTOR_SCOPE)

