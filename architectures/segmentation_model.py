"""The common part of the segmentation models (PSPNet in pspnet_architecture.py, ICNet in icnet_architecture.py):
SegmentationModel, their base class, and the pieces both build on.

Both models run a dilated ResNet50 (architectures/dilated_resnet_v1.py) under

    SharedFeatureExtractor/resnet_v1_50/...   FEATURE_EXTRACTOR_SCOPE / BACKBONE_SCOPE, the same variable and
                                              node names in both (a PSPNet checkpoint holds ICNet's backbone)

and add their heads next to it (scopes in each model's PARTS). Scope names are stable API: checkpoint restores,
train_mem_saving.py's checkpoint nodes and drivers/exporter.py's part tables use them.

Model interface (shapes for a batch of N images of H x W; C = num_classes):

    preprocess(images)      float32 [N, H, W, 3] RGB in [0, 255]  ->  mean-subtracted float32 [N, H, W, 3]
    predict(preprocessed)   -> {'logits': [N, h, w, C], the auxiliary heads' logits (training graphs with the
                               auxiliary loss only), 'end_points': {scope name: tensor}}; h, w and the auxiliary
                               keys are the model's (see its module docstring). The input may be bfloat16 or
                               float16 (mixed precision): float32 variables under the same names, cast where read
                               (libs/mixed_precision.py).
    postprocess(predictions, (H, W))  -> {'logits': [N, H, W, C] bilinear upsampled,
                                          'predictions': int32 [N, H, W] train ids}
    loss(predictions, labels)  labels uint8/int [N, H, W, 1] -> {'main_loss': scalar, one scalar per auxiliary
                               head} (already weighted; pixels with the ignore label excluded)
    restore_map(fine_tune_checkpoint_type)  -> {checkpoint variable name: variable}

    properties: num_classes, is_training, ignore_label, builds_aux_head (training graph with the auxiliary loss),
    output_stride, backbone_scope ('SharedFeatureExtractor'), num_backbone_blocks (4), parts (the model's PARTS:
    ((scope prefix, part name), ...) in graph order); block_output_nodes(): the backbone's four block outputs.

A subclass sets PARTS, defines output_stride and _predict(preprocessed_inputs, reuse) (called inside predict()'s
mixed-precision scope), and lists its auxiliary losses in _aux_losses().
"""
from architectures import dilated_resnet_v1
from libs import mixed_precision
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import UserError
from libs.image_ops import MEAN_RGB
from libs.image_ops import resize_bilinear

FEATURE_EXTRACTOR_SCOPE = 'SharedFeatureExtractor'
BACKBONE_SCOPE = 'resnet_v1_50'

HALF_DTYPES = mixed_precision.HALF_DTYPES

# restore_map types: 'segmentation-finetune' is the original toolkit's spelling of a segmentation checkpoint
# (its ICNet configs use it), accepted as a synonym.
FINE_TUNE_CHECKPOINT_TYPES = ('classification', 'segmentation', 'segmentation-finetune')


def block_output_nodes(num_units_per_block=dilated_resnet_v1.RESNET50_UNITS):
  """Names of the backbone's block outputs (the last unit's Relu of block1 .. block4), without clone scope."""
  return tuple('%s/%s/block%d/unit_%d/bottleneck_v1/Relu' % (FEATURE_EXTRACTOR_SCOPE, BACKBONE_SCOPE, block, units)
               for block, units in enumerate(num_units_per_block, 1))


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


class SegmentationModel(object):
  """Base of PSPNetArchitecture and ICNetArchitecture: the shared configuration, properties and methods of the
  interface in the module docstring. Nothing is built until predict()."""

  # ((scope prefix, part name), ...) in graph order: drivers/exporter.py's parameter and MAC tables.
  PARTS = ()

  def __init__(self, is_training, num_classes, scope_fn, filter_scale, pooling_factors, num_units_per_block,
               use_aux_loss, main_loss_weight, classification_loss_fn, ignore_label, upsample_logits,
               native_atrous_conv):
    """Stores the configuration both models share (their constructors document the arguments).

    Args:
      is_training: python bool.
      num_classes: classes predicted, > 0.
      scope_fn: function returning the arg_scope for all convolutions (builders/hyperparams_builder.py).
      filter_scale: multiplier of every layer's filter count.
      pooling_factors: pyramid bin counts.
      num_units_per_block: residual units of block1..block4.
      use_aux_loss: build the auxiliary heads (training only) and add their losses.
      main_loss_weight: weight of the main loss.
      classification_loss_fn: fn(logits [P, C], labels int32 [P], weights float [P]) -> scalar mean loss over
        positive weights (builders/losses_builder.py). Needed only for loss().
      ignore_label: label value excluded from the loss.
      upsample_logits: the loss upsamples logits to the labels' size (True) or resizes labels to the logits'
        (False), see segmentation_loss().
      native_atrous_conv: atrous convs as one dilated Conv2D each (architectures/dilated_resnet_v1.py).
    """
    self._is_training = is_training
    self._num_classes = num_classes
    self._scope_fn = scope_fn
    self._filter_scale = filter_scale
    self._pooling_factors = tuple(pooling_factors)
    self._num_units_per_block = tuple(num_units_per_block)
    self._use_aux_loss = use_aux_loss
    self._main_loss_weight = main_loss_weight
    self._classification_loss_fn = classification_loss_fn
    self._ignore_label = ignore_label
    self._upsample_logits = upsample_logits
    self._native_atrous_conv = native_atrous_conv

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
    """The input-to-logits resolution ratio of the model's coarsest grid."""
    raise NotImplementedError

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
    return self.PARTS

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

  def predict(self, preprocessed_inputs, reuse=None):
    """Runs the network, in the floating-point type of its input.

    Args:
      preprocessed_inputs: [N, H, W, 3] from preprocess(), with static H and W: float32, or bfloat16/float16 for
        mixed precision (variables stay float32, with the same names, and are cast where they are read; batch
        norm keeps float32 statistics).
      reuse: reuse existing variables (data-parallel clones after the first).

    Returns:
      dict with 'logits' (of the input's dtype), the auxiliary heads' logits (only when builds_aux_head) and
      'end_points'; see the model's module docstring.
    """
    if preprocessed_inputs.dtype.base_dtype in HALF_DTYPES:
      with tf.variable_scope(tf.get_variable_scope(), custom_getter=mixed_precision.float32_variable_getter):
        return self._predict(preprocessed_inputs, reuse)
    return self._predict(preprocessed_inputs, reuse)

  def _predict(self, preprocessed_inputs, reuse):
    raise NotImplementedError

  def _backbone(self, inputs, reuse, output_stride=8, after_block1_fn=None, conv3x3_algorithm='direct'):
    """The dilated ResNet50 under SharedFeatureExtractor/resnet_v1_50: (block4 output, end points);
    conv3x3_algorithm as dilated_resnet_v1_50's."""
    with tf.variable_scope(FEATURE_EXTRACTOR_SCOPE, values=[inputs], reuse=reuse):
      return dilated_resnet_v1.dilated_resnet_v1_50(
          inputs, filter_scale=self._filter_scale, num_units_per_block=self._num_units_per_block,
          output_stride=output_stride, scope=BACKBONE_SCOPE, native_atrous_conv=self._native_atrous_conv,
          after_block1_fn=after_block1_fn, conv3x3_algorithm=conv3x3_algorithm)

  @staticmethod
  def _block_outputs(end_points):
    """[block1, block2, block3, block4] outputs from the backbone's end points."""
    prefix = '%s/%s/' % (FEATURE_EXTRACTOR_SCOPE, BACKBONE_SCOPE)
    return [end_points[prefix + 'block%d' % i] for i in range(1, 5)]

  def _logits_conv(self, net):
    """The 1x1 classifier conv <current scope>/Conv: bias, no BN, no activation."""
    return slim.conv2d(net, self._num_classes, 1, activation_fn=None, normalizer_fn=None,
                       biases_initializer=tf.zeros_initializer(), scope='Conv')

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

  def _aux_losses(self):
    """((prediction key, loss key, weight, name scope), ...): the auxiliary losses, in graph order; a loss is
    added when its prediction key is in the prediction dict."""
    return ()

  def loss(self, prediction_dict, labels):
    """Weighted main and auxiliary losses.

    Args:
      prediction_dict: from predict().
      labels: [N, H, W, 1] train ids (ignore_label for ignored pixels).

    Returns:
      dict with 'main_loss' and one loss per auxiliary head that predict() built (scalars, weights applied).
    """
    if self._classification_loss_fn is None:
      raise ValueError('%s.loss() needs a classification_loss_fn' % type(self).__name__)
    losses = {'main_loss': self._main_loss_weight *
                           self._head_loss(prediction_dict['logits'], labels, 'MainLoss')}
    for prediction_key, loss_key, weight, name in self._aux_losses():
      if prediction_key in prediction_dict:
        losses[loss_key] = weight * self._head_loss(prediction_dict[prediction_key], labels, name)
    return losses

  def restore_map(self, fine_tune_checkpoint_type='segmentation'):
    """Maps checkpoint variable names to this graph's model variables.

    Args:
      fine_tune_checkpoint_type: 'classification' (TF-Slim ResNet: resnet_v1_50/... -> the backbone, nothing
        else) or 'segmentation' / 'segmentation-finetune' (a PSPNet, ICNet or seed checkpoint: every model
        variable by its own name; a PSPNet checkpoint holds ICNet's whole backbone, the ICNet parts start fresh).

    Returns:
      dict {checkpoint name: variable}. Callers drop names absent from the actual checkpoint (and log them).

    Raises:
      ValueError: for another checkpoint type.
    """
    return model_restore_map(fine_tune_checkpoint_type, FEATURE_EXTRACTOR_SCOPE)
