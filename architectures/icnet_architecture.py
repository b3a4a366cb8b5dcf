"""ICNet: image cascade network over PSPNet's dilated ResNet backbone (Zhao et al., "ICNet for Real-Time Semantic
Segmentation on High-Resolution Images", ECCV 2018, arXiv 1704.08545). The layer layout follows the original TF1
toolkit's ICNet (oandrienko/fast-semantic-segmentation, architectures/icnet_architecture.py); the code is ours.

Three branches see the image at three resolutions (sizes for an H x W input; sizes 32k + 1 such as 1025 x 2049
make every resize below an exact zoom, see output_stride):

    HalfResolutionInput/...                     the image x0.5 (bilinear, corners aligned)
    SharedFeatureExtractor/resnet_v1_50/...     dilated ResNet50 on it, PSPNet's variables and node names:
      .../block1/unit_3/bottleneck_v1/Relu        medium branch, 1/16 of the image, 256 x filter_scale channels
      .../resnet_v1_50/Downsample/...             variable-free x0.5 bilinear downsample before block2
      .../block4/unit_3/bottleneck_v1/Relu        low-resolution branch, 1/32, 2048 x filter_scale (blocks 2-4
                                                  at PSPNet's atrous rates 1, 2, 4)
    FullResolutionBranch/Conv .. Conv_3         3x3 convs, stride 2, 2, 2, 1: 64, 64, 128, 256 x filter_scale
                                                (BN + ReLU): the full image to 1/8
    FastPSPModule/Conv (/Relu)                  the low branch plus its average pools (pooling factors as bin
                                                counts, upsampled), summed, then 1x1 conv 512 x filter_scale with
                                                BN + ReLU (1/32)
    CascadeFeatureFusion/...                    fuses FastPSPModule (1/32) with block1 (1/16):
      Upsample/                                   the coarse input resized to the partner's grid (x2: 2n - 1 at
                                                  exact-zoom sizes; otherwise the partner's size, never misaligned)
      DilatedConv                                 3x3 conv rate 2 + BN, no activation, 256 x filter_scale
      Conv                                        1x1 conv + BN, no activation, on the partner, 256 x filter_scale
      Relu                                        ReLU of their sum (1/16)
    CascadeFeatureFusion_1/...                  the same for CascadeFeatureFusion (1/16) and FullResolutionBranch
                                                (1/8): CascadeFeatureFusion_1/Relu at 1/8
    Classifier/Conv, Classifier/Upsample        1x1 classifier (bias, no BN), logits upsampled x2 to 1/4 (a 1x1
                                                conv and a bilinear resize commute exactly, so classifying first
                                                gives the original's logits with 1/4 of the classifier's work).
                                                The original's scope name `Predictions` is not used: TensorFlow
                                                makes op names unique ignoring case, so it would rename the
                                                exported graphs' output node `predictions` (drivers/inference_graph)
    AuxOutput/Conv                              training graphs with the auxiliary loss only: cascade label
                                                guidance, 1x1 classifier on CascadeFeatureFusion's upsampled input
                                                (1/16, the first branch)
    AuxOutput_1/Conv                            the same on CascadeFeatureFusion_1's upsampled input (1/8, the
                                                second branch)

pretrain_single_branch_mode (the original's warm-up stage): the full image runs through the backbone without the
downsample (PSPNet's backbone graph, 1/8), FastPSPModule and Classifier/Conv (logits at 1/8); the training-only
AuxOutput/Conv classifies block3. No FullResolutionBranch, no fusion units.

Memory-saving checkpoint nodes (train_mem_saving.py --checkpoint_nodes, CHECKPOINT_NODES): the four block outputs
of block_output_nodes(), FastPSPModule/Conv/Relu, CascadeFeatureFusion/Relu, CascadeFeatureFusion_1/Relu.

Model interface: SegmentationModel's (architectures/segmentation_model.py), as PSPNetArchitecture's, with these
outputs:

    predict(preprocessed)  -> {'logits': [N, 2h - 1, 2w - 1, C] (h, w: the 1/8 grid, ceil(H / 8) for sizes
                               32k + 1; 1/8 itself in pretrain mode),
                               'first_branch_logits': [N, 1/16 grid, C], 'second_branch_logits': [N, 1/8, C]
                               (training + aux loss only; 'aux_logits' on block3 in pretrain mode instead),
                               'end_points': the backbone's end points plus every branch above by scope name}
    loss(predictions, labels) -> {'main_loss', 'first_branch_loss', 'second_branch_loss'} (pretrain mode:
                               {'main_loss', 'aux_loss'}); labels nearest-resized to each output (the paper's
                               cascade label guidance), ignore label excluded, weights applied.
"""
from architectures import dilated_resnet_v1
from architectures import pspnet_architecture
from architectures import segmentation_model
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import UserError
from libs.image_ops import resize_bilinear

FEATURE_EXTRACTOR_SCOPE = segmentation_model.FEATURE_EXTRACTOR_SCOPE
BACKBONE_SCOPE = segmentation_model.BACKBONE_SCOPE
HALF_RESOLUTION_SCOPE = 'HalfResolutionInput'
FULL_RESOLUTION_SCOPE = 'FullResolutionBranch'
FAST_PSP_SCOPE = 'FastPSPModule'
FIRST_FUSION_SCOPE = 'CascadeFeatureFusion'
SECOND_FUSION_SCOPE = 'CascadeFeatureFusion_1'
CLASSIFIER_SCOPE = 'Classifier'
FIRST_AUX_SCOPE = 'AuxOutput'
SECOND_AUX_SCOPE = 'AuxOutput_1'

# Filters at filter_scale 1.0 (the original toolkit's layer shapes).
FULL_RESOLUTION_DEPTHS = (64, 64, 128, 256)
FAST_PSP_DEPTH = 512
FUSION_DEPTH = 256
# The stride of the coarsest grid (the low-resolution branch): sizes (s - 1) % 32 == 0 zoom exactly everywhere.
OUTPUT_STRIDE = 32
PRETRAIN_OUTPUT_STRIDE = 8

PARTS = (
    (FEATURE_EXTRACTOR_SCOPE + '/', 'backbone'),
    (FULL_RESOLUTION_SCOPE + '/', FULL_RESOLUTION_SCOPE),
    (FAST_PSP_SCOPE + '/', FAST_PSP_SCOPE),
    (FIRST_FUSION_SCOPE + '/', FIRST_FUSION_SCOPE),
    (SECOND_FUSION_SCOPE + '/', SECOND_FUSION_SCOPE),
    (CLASSIFIER_SCOPE + '/', CLASSIFIER_SCOPE),
    (FIRST_AUX_SCOPE + '/', FIRST_AUX_SCOPE),
    (SECOND_AUX_SCOPE + '/', SECOND_AUX_SCOPE),
)

# The original project's ICNet checkpoint nodes for train_mem_saving.py, as this graph names them (ResNet50).
CHECKPOINT_NODES = segmentation_model.block_output_nodes() + (
    FAST_PSP_SCOPE + '/Conv/Relu',
    FIRST_FUSION_SCOPE + '/Relu',
    SECOND_FUSION_SCOPE + '/Relu',
)


def half_size(size):
  """ceil(size / 2): the grid of a x0.5 resize with corners aligned (exact for odd sizes)."""
  return (size - 1) // 2 + 1


def _static_size(tensor):
  height, width = tensor.shape.as_list()[1:3]
  if height is None or width is None:
    raise UserError('ICNet needs a static input size, got %s for %s; give the network inputs of a fixed size '
                     '(crop or pad them).' % (tensor.shape, tensor.name))
  return [height, width]


class ICNetArchitecture(segmentation_model.SegmentationModel):
  """ICNet over a dilated ResNet; see the module docstring for the graph and the interface."""

  PARTS = PARTS

  def __init__(self,
               is_training,
               num_classes,
               scope_fn,
               filter_scale=1.0,
               pooling_factors=(1, 2, 3, 6),
               num_units_per_block=dilated_resnet_v1.RESNET50_UNITS,
               use_aux_loss=True,
               main_loss_weight=1.0,
               second_branch_loss_weight=0.4,
               first_branch_loss_weight=0.4,
               pretrain_single_branch_mode=False,
               classification_loss_fn=None,
               ignore_label=255,
               native_atrous_conv=False):
    """Configures the network; nothing is built until predict().

    Args:
      is_training: python bool; training graphs build the auxiliary classifiers (with use_aux_loss).
      num_classes: classes predicted, > 0.
      scope_fn: function returning the arg_scope for all convolutions (builders/hyperparams_builder.py).
      filter_scale: multiplier of every layer's filter count, in (0, 1].
      pooling_factors: FastPSPModule bin counts (ints >= 1).
      num_units_per_block: residual units of block1..block4.
      use_aux_loss: build AuxOutput / AuxOutput_1 (training only) and add their losses.
      main_loss_weight: weight of the Classifier loss.
      second_branch_loss_weight: weight of AuxOutput_1's loss (1/8), and of AuxOutput's in pretrain mode.
      first_branch_loss_weight: weight of AuxOutput's loss (1/16).
      pretrain_single_branch_mode: backbone + FastPSPModule on the full image only (see the module docstring).
      classification_loss_fn: fn(logits [P, C], labels int32 [P], weights float [P]) -> scalar mean loss over
        positive weights (builders/losses_builder.py). Needed only for loss().
      ignore_label: label value excluded from the loss.
      native_atrous_conv: atrous convs (backbone and fusion units) as one dilated Conv2D each.
    """
    # The loss resizes the labels to each output's grid (nearest, corners aligned): the paper's cascade label
    # guidance (upsample_logits False).
    super().__init__(is_training, num_classes, scope_fn, filter_scale, (int(bins) for bins in pooling_factors),
                     num_units_per_block, use_aux_loss, main_loss_weight, classification_loss_fn, ignore_label,
                     False, native_atrous_conv)
    self._second_branch_loss_weight = second_branch_loss_weight
    self._first_branch_loss_weight = first_branch_loss_weight
    self._pretrain_single_branch_mode = pretrain_single_branch_mode

  @property
  def pretrain_single_branch_mode(self):
    return self._pretrain_single_branch_mode

  @property
  def output_stride(self):
    """The stride of the coarsest grid: 32 (the low-resolution branch; inputs of 32k + 1 pixels zoom exactly
    through every resize), 8 in pretrain mode (the backbone's output)."""
    return PRETRAIN_OUTPUT_STRIDE if self._pretrain_single_branch_mode else OUTPUT_STRIDE

  def checkpoint_nodes(self):
    """The memory-saving checkpoint nodes of this graph (block outputs, FastPSPModule, fusion units)."""
    nodes = self.block_output_nodes() + (FAST_PSP_SCOPE + '/Conv/Relu',)
    if not self._pretrain_single_branch_mode:
      nodes += (FIRST_FUSION_SCOPE + '/Relu', SECOND_FUSION_SCOPE + '/Relu')
    return nodes

  def _predict(self, preprocessed_inputs, reuse):
    size = _static_size(preprocessed_inputs)
    with slim.arg_scope(self._scope_fn()):
      if self._pretrain_single_branch_mode:
        return self._predict_single_branch(preprocessed_inputs, reuse)
      with tf.name_scope(HALF_RESOLUTION_SCOPE):
        half = resize_bilinear(preprocessed_inputs, [half_size(s) for s in size])

      def downsample(block1):
        with tf.name_scope('Downsample'):
          return resize_bilinear(block1, [half_size(s) for s in _static_size(block1)])

      _, end_points = self._backbone(half, reuse, after_block1_fn=downsample)
      blocks, end_points = self._block_outputs(end_points), dict(end_points)
      with tf.variable_scope(tf.get_variable_scope(), reuse=reuse):
        full = self._full_resolution_branch(preprocessed_inputs)
        low = self._fast_psp_module(blocks[3])
        first, first_upsampled = self._cascade_feature_fusion(low, blocks[0], FIRST_FUSION_SCOPE)
        second, second_upsampled = self._cascade_feature_fusion(first, full, SECOND_FUSION_SCOPE)
        logits = self._classifier(second, CLASSIFIER_SCOPE, upsample=True)
        end_points.update({FULL_RESOLUTION_SCOPE: full, FAST_PSP_SCOPE: low, FIRST_FUSION_SCOPE: first,
                           SECOND_FUSION_SCOPE: second, CLASSIFIER_SCOPE: logits})
        outputs = {'logits': logits, 'end_points': end_points}
        if self.builds_aux_head:
          outputs['first_branch_logits'] = self._classifier(first_upsampled, FIRST_AUX_SCOPE)
          outputs['second_branch_logits'] = self._classifier(second_upsampled, SECOND_AUX_SCOPE)
          end_points[FIRST_AUX_SCOPE] = outputs['first_branch_logits']
          end_points[SECOND_AUX_SCOPE] = outputs['second_branch_logits']
    return outputs

  def _predict_single_branch(self, preprocessed_inputs, reuse):
    _, end_points = self._backbone(preprocessed_inputs, reuse)
    blocks, end_points = self._block_outputs(end_points), dict(end_points)
    with tf.variable_scope(tf.get_variable_scope(), reuse=reuse):
      low = self._fast_psp_module(blocks[3])
      logits = self._classifier(low, CLASSIFIER_SCOPE)
      end_points.update({FAST_PSP_SCOPE: low, CLASSIFIER_SCOPE: logits})
      outputs = {'logits': logits, 'end_points': end_points}
      if self.builds_aux_head:
        outputs['aux_logits'] = end_points[FIRST_AUX_SCOPE] = self._classifier(blocks[2], FIRST_AUX_SCOPE)
    return outputs

  def _full_resolution_branch(self, images):
    """[N, H, W, 3] -> [N, ~H/8, ~W/8, 256 * filter_scale] (FullResolutionBranch/Conv_3/Relu)."""
    with tf.variable_scope(FULL_RESOLUTION_SCOPE, values=[images]):
      net = images
      for depth, stride in zip(FULL_RESOLUTION_DEPTHS, (2, 2, 2, 1)):
        net = slim.conv2d(net, self._scaled(depth), 3, stride=stride)
      return net

  def _fast_psp_module(self, features):
    """[N, h, w, D] -> [N, h, w, 512 * filter_scale] (FastPSPModule/Conv/Relu): the features plus their
    upsampled average pools, then a 1x1 conv with BN + ReLU."""
    size = _static_size(features)
    with tf.variable_scope(FAST_PSP_SCOPE, values=[features]):
      with tf.name_scope('Pooling'):
        pyramid = pspnet_architecture.pyramid_average_pools(features, self._pooling_factors)
      summands = [features]
      for bins, pooled in zip(self._pooling_factors, pyramid):
        with tf.name_scope('Upsample%d' % bins):
          summands.append(resize_bilinear(pooled, size))
      net = tf.add_n(summands, name='add')
      return slim.conv2d(net, self._scaled(FAST_PSP_DEPTH), 1, activation_fn=tf.nn.relu, scope='Conv')

  def _cascade_feature_fusion(self, coarse, fine, scope):
    """CFF unit: coarse [N, h, w, Dc] and fine [N, h', w', Df] (h' ~ 2h) -> ([N, h', w', 256 * filter_scale]
    fused, <scope>/Relu; the coarse input upsampled to [N, h', w', Dc], for the label guidance classifier)."""
    fine_size = _static_size(fine)
    with tf.variable_scope(scope, values=[coarse, fine]):
      with tf.name_scope('Upsample'):
        # x2 (2h - 1) at exact-zoom sizes; the partner's grid is the target, so odd and even sizes alike align.
        upsampled = resize_bilinear(coarse, fine_size)
      with slim.arg_scope([slim.conv2d], activation_fn=None):
        if self._native_atrous_conv:
          dilated = dilated_resnet_v1.native_atrous_conv2d(upsampled, self._scaled(FUSION_DEPTH), 3, 2,
                                                           scope='DilatedConv')
        else:
          dilated = slim.conv2d(upsampled, self._scaled(FUSION_DEPTH), 3, rate=2, scope='DilatedConv')
        projected = slim.conv2d(fine, self._scaled(FUSION_DEPTH), 1, scope='Conv')
      return tf.nn.relu(tf.add(dilated, projected, name='add'), name='Relu'), upsampled

  def _classifier(self, net, scope, upsample=False):
    """1x1 classifier with bias and no BN; upsample: its logits resized x2 (2h - 1, an exact zoom)."""
    with tf.variable_scope(scope, values=[net]):
      logits = self._logits_conv(net)
      if upsample:
        with tf.name_scope('Upsample'):
          logits = resize_bilinear(logits, [2 * s - 1 for s in _static_size(logits)])
      return logits

  def _aux_losses(self):
    """AuxOutput (1/16) and AuxOutput_1 (1/8), or AuxOutput on block3 ('aux_loss') in pretrain mode."""
    return (('first_branch_logits', 'first_branch_loss', self._first_branch_loss_weight, 'FirstBranchLoss'),
            ('second_branch_logits', 'second_branch_loss', self._second_branch_loss_weight, 'SecondBranchLoss'),
            ('aux_logits', 'aux_loss', self._second_branch_loss_weight, 'AuxLoss'))
