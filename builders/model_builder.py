"""Builds a segmentation model object from a `Model` config (protos/model.proto, protos/pspnet.proto,
protos/icnet.proto)."""
from architectures import dilated_resnet_v1
from architectures import icnet_architecture
from architectures import pspnet_architecture
from builders import hyperparams_builder
from builders import losses_builder
from libs.config_errors import ConfigError
from libs.config_errors import require_oneof
from protos import model_pb2

DEFAULT_POOLING_FACTORS = (1, 2, 3, 6)
# feature_extractor.type -> the backbone's residual-unit layout.
FEATURE_EXTRACTORS = {'dilated_resnet50': dilated_resnet_v1.RESNET50_UNITS}


def _build_pspnet(config, is_training, field_path):
  """PSPNet config -> PSPNetArchitecture."""
  if config.num_classes <= 0:
    raise ConfigError(field_path + '.num_classes', config.num_classes, 'must be > 0')
  if not 0.0 < config.filter_scale <= 1.0:
    raise ConfigError(field_path + '.filter_scale', config.filter_scale, 'must be in (0, 1]')
  if not 0.0 < config.dropout_keep_prob <= 1.0:
    raise ConfigError(field_path + '.dropout_keep_prob', config.dropout_keep_prob, 'must be in (0, 1]')
  if config.aux_head_depth <= 0:
    raise ConfigError(field_path + '.aux_head_depth', config.aux_head_depth, 'must be > 0')
  for i, bins in enumerate(config.pooling_factors):
    if bins <= 0 or bins != int(bins):
      raise ConfigError('%s.pooling_factors[%d]' % (field_path, i), bins, 'must be a whole number of bins > 0')
  pooling_factors = tuple(int(bins) for bins in config.pooling_factors) or DEFAULT_POOLING_FACTORS
  if len(set(pooling_factors)) != len(pooling_factors):
    raise ConfigError(field_path + '.pooling_factors', list(pooling_factors), 'must not repeat a value')

  fe = config.feature_extractor
  fe_path = field_path + '.feature_extractor'
  if fe.type not in FEATURE_EXTRACTORS:
    raise ConfigError(fe_path + '.type', fe.type, 'allowed: %s' % ', '.join(sorted(FEATURE_EXTRACTORS)))
  if fe.output_stride not in (8, 16):
    raise ConfigError(fe_path + '.output_stride', fe.output_stride, 'allowed: 8, 16')
  units = tuple(fe.num_units_per_block) or FEATURE_EXTRACTORS[fe.type]
  if len(units) != 4 or any(u <= 0 for u in units):
    raise ConfigError(fe_path + '.num_units_per_block', list(units), 'must be four values > 0')

  if config.conv3x3_algorithm not in pspnet_architecture.CONV3X3_ALGORITHMS:
    raise ConfigError(field_path + '.conv3x3_algorithm', config.conv3x3_algorithm,
                      'allowed: %s' % ', '.join(pspnet_architecture.CONV3X3_ALGORITHMS))

  scope_fn = hyperparams_builder.build(config.hyperparams, is_training, field_path + '.hyperparams')
  loss_kwargs = losses_builder.build(config.loss, config.num_classes, field_path + '.loss')
  return pspnet_architecture.PSPNetArchitecture(
      is_training=is_training,
      num_classes=config.num_classes,
      scope_fn=scope_fn,
      filter_scale=config.filter_scale,
      pooling_factors=pooling_factors,
      num_units_per_block=units,
      output_stride=fe.output_stride,
      dropout_keep_prob=config.dropout_keep_prob,
      aux_head_depth=config.aux_head_depth,
      native_atrous_conv=fe.native_atrous_conv,
      low_memory_conv_gradients=config.low_memory_conv_gradients,
      conv3x3_algorithm=config.conv3x3_algorithm,
      **loss_kwargs)


def _build_icnet(config, is_training, field_path):
  """ICNet config -> ICNetArchitecture."""
  if config.num_classes <= 0:
    raise ConfigError(field_path + '.num_classes', config.num_classes, 'must be > 0')
  if not 0.0 < config.filter_scale <= 1.0:
    raise ConfigError(field_path + '.filter_scale', config.filter_scale, 'must be in (0, 1]')
  pooling_factors = tuple(config.pooling_factors) or DEFAULT_POOLING_FACTORS
  for i, bins in enumerate(pooling_factors):
    if bins < 1 or bins != int(bins):
      raise ConfigError('%s.pooling_factors[%d]' % (field_path, i), bins, 'must be a whole number >= 1 (a bin count)')
  if len(set(pooling_factors)) != len(pooling_factors):
    raise ConfigError(field_path + '.pooling_factors', list(pooling_factors), 'must not repeat a value')
  if config.main_branch_loss_weight <= 0:
    raise ConfigError(field_path + '.main_branch_loss_weight', config.main_branch_loss_weight, 'must be > 0')
  for name in ('second_branch_loss_weight', 'first_branch_loss_weight'):
    if getattr(config, name) < 0:
      raise ConfigError('%s.%s' % (field_path, name), getattr(config, name), 'must be >= 0')

  fe = config.feature_extractor
  fe_path = field_path + '.feature_extractor'
  if fe.type not in FEATURE_EXTRACTORS:
    raise ConfigError(fe_path + '.type', fe.type, 'allowed: %s' % ', '.join(sorted(FEATURE_EXTRACTORS)))
  if fe.output_stride != 8:
    raise ConfigError(fe_path + '.output_stride', fe.output_stride,
                      'ICNet fixes its grids (block1 at 1/16, blocks 2-4 at 1/32 of the image): leave it unset or 8')
  units = tuple(fe.num_units_per_block) or FEATURE_EXTRACTORS[fe.type]
  if len(units) != 4 or any(u <= 0 for u in units):
    raise ConfigError(fe_path + '.num_units_per_block', list(units), 'must be four values > 0')

  loss_path = field_path + '.loss'
  for name in ('main_loss_weight', 'aux_loss_weight'):
    if config.loss.HasField(name):
      raise ConfigError('%s.%s' % (loss_path, name), getattr(config.loss, name),
                        'not used by ICNet: set %s.main_branch_loss_weight / second_branch_loss_weight / '
                        'first_branch_loss_weight instead' % field_path)
  if config.loss.upsample_logits and config.loss.HasField('upsample_logits'):
    raise ConfigError(loss_path + '.upsample_logits', True,
                      'ICNet resizes the labels to each output (cascade label guidance): leave it unset or false')
  scope_fn = hyperparams_builder.build(config.hyperparams, is_training, field_path + '.hyperparams')
  loss_kwargs = losses_builder.build(config.loss, config.num_classes, loss_path)
  return icnet_architecture.ICNetArchitecture(
      is_training=is_training,
      num_classes=config.num_classes,
      scope_fn=scope_fn,
      filter_scale=config.filter_scale,
      pooling_factors=[int(bins) for bins in pooling_factors],
      num_units_per_block=units,
      use_aux_loss=loss_kwargs['use_aux_loss'],
      main_loss_weight=config.main_branch_loss_weight,
      second_branch_loss_weight=config.second_branch_loss_weight,
      first_branch_loss_weight=config.first_branch_loss_weight,
      pretrain_single_branch_mode=config.pretrain_single_branch_mode,
      classification_loss_fn=loss_kwargs['classification_loss_fn'],
      ignore_label=loss_kwargs['ignore_label'],
      native_atrous_conv=fe.native_atrous_conv)


_MODEL_BUILDERS = {'pspnet': _build_pspnet, 'icnet': _build_icnet}


def build(config, is_training, field_path='model'):
  """Builds the model object (no graph yet; call its preprocess/predict/loss).

  Args:
    config: model_pb2.Model.
    is_training: python bool.
    field_path: dotted path of `config`, for error messages.

  Returns:
    A model object with the interface documented in architectures/pspnet_architecture.py.

  Raises:
    ConfigError: for an empty oneof or an invalid field.
    ValueError: if config is not a Model message.
  """
  if not isinstance(config, model_pb2.Model):
    raise ValueError('config must be a model_pb2.Model, got %s' % type(config).__name__)
  which = require_oneof(config, 'model', field_path)
  return _MODEL_BUILDERS[which](getattr(config, which), is_training, field_path + '.' + which)


def _model_fields(config):
  """The set message of the model oneof (model.pspnet, ...): the one place that reads it outside build()."""
  return getattr(config, require_oneof(config, 'model', 'model'))


def num_classes(config):
  """The class count of a Model config.

  Raises:
    ConfigError: when it is not > 0 (naming the field, e.g. model.pspnet.num_classes).
  """
  which = require_oneof(config, 'model', 'model')
  value = getattr(config, which).num_classes
  if value <= 0:
    raise ConfigError('model.%s.num_classes' % which, value, 'must be > 0')
  return value


def ignore_label(config):
  """The ignore label of a Model config."""
  return _model_fields(config).loss.ignore_label


def output_stride(config):
  """The model's output stride (PSPNet: the backbone's, 8 unless set; ICNet: 32, its coarsest grid): network
  sizes (s - 1) % stride == 0 make every resize of the model an exact zoom."""
  return build(config, is_training=False).output_stride


def sync_batch_norm(config):
  """Whether the model's batch norms synchronise their moments across clones (hyperparams.batch_norm)."""
  return bool(_model_fields(config).hyperparams.batch_norm.sync_across_clones)


def without_regularizer(config):
  """A copy of a Model config without the weight regularizer: the variables are the same, an inference graph
  gets no L2 ops."""
  copy = model_pb2.Model()
  copy.CopyFrom(config)
  _model_fields(copy).hyperparams.ClearField('regularizer')
  return copy
