"""Tests of the PSPNet graph: builder branches and errors, the seed's node names, shapes, parameter count,
pyramid pooling, and restore maps."""
import numpy as np
import pytest
from google.protobuf import text_format

from architectures import pspnet_architecture
from builders import model_builder
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from protos import model_pb2
from tests.conftest import fast_session_config
from tests.conftest import tiny_model_config

# The seed's memory-saving checkpoint nodes (../shared/seed/pspnet.md): stable API.
SEED_CHECKPOINT_NODES = [
    'SharedFeatureExtractor/resnet_v1_50/block1/unit_3/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block2/unit_4/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block3/unit_6/bottleneck_v1/Relu',
    'SharedFeatureExtractor/resnet_v1_50/block4/unit_3/bottleneck_v1/Relu',
    'PSPModule/Conv_4/Relu6',
]

FULL_MODEL = """
pspnet {
  num_classes: 19
  feature_extractor { type: "dilated_resnet50" }
  hyperparams {
    batch_norm { train: true scale: true center: true decay: 0.9997 epsilon: 0.00001 }
    regularizer { l2_regularizer { weight: 0.0001 } }
    initializer { variance_scaling_initializer {} }
  }
  loss { classification_loss { softmax {} } use_auxiliary_loss: true }
}
"""


def _model_config(text):
  return text_format.Parse(text, model_pb2.Model())


def _param_count(variables):
  return sum(int(v.shape.num_elements()) for v in variables)


def test_full_pspnet50_node_names_shapes_and_parameter_count():
  with tf.Graph().as_default() as graph:
    model = model_builder.build(_model_config(FULL_MODEL), is_training=False)
    outputs = model.predict(model.preprocess(tf.zeros([1, 97, 97, 3])))
    for name in SEED_CHECKPOINT_NODES:
      tensor = graph.get_tensor_by_name(name + ':0')
      assert tensor.shape.as_list()[:3] == [1, 13, 13], name
    assert graph.get_tensor_by_name(SEED_CHECKPOINT_NODES[3] + ':0').shape[-1] == 2048
    assert graph.get_tensor_by_name('PSPModule/Conv_4/Relu6:0').shape[-1] == 512
    assert outputs['logits'].shape.as_list() == [1, 13, 13, 19]
    assert 'aux_logits' not in outputs
    # PSPNet50 without the auxiliary head: ResNet50 trunk 23.5 M + pyramid convs 4.2 M + fusion conv 18.9 M
    # + classifier. The paper's table gives ~46.6 M.
    assert _param_count(tf.trainable_variables()) == 46591571
    names = {v.op.name for v in tf.global_variables()}
    assert 'SharedFeatureExtractor/resnet_v1_50/conv1/weights' in names
    assert 'SharedFeatureExtractor/resnet_v1_50/block3/unit_6/bottleneck_v1/conv2/BatchNorm/moving_variance' in names
    assert 'Logits/Conv/biases' in names
    # Atrous rates of output stride 8: block3 at rate 2, block4 at rate 4 (slim builds them as
    # SpaceToBatchND with that block shape).
    rates = {}
    for op in graph.get_operations():
      if op.type == 'SpaceToBatchND' and '/conv2/' in op.name:
        unit = op.name.split('/bottleneck_v1')[0].split('resnet_v1_50/')[1]
        rates[unit] = tuple(tf.get_default_session() is None and
                            tf.make_ndarray(op.inputs[1].op.get_attr('value')))
    assert rates['block3/unit_1'] == (2, 2)
    assert rates['block4/unit_3'] == (4, 4)
    assert not any(unit.startswith(('block1', 'block2/unit_1')) for unit in rates)


def test_training_graph_adds_auxiliary_head_on_block3():
  with tf.Graph().as_default() as graph:
    model = model_builder.build(tiny_model_config(5), is_training=True)
    outputs = model.predict(model.preprocess(tf.zeros([2, 65, 65, 3])))
    assert outputs['aux_logits'].shape.as_list() == [2, 9, 9, 5]
    aux_conv = graph.get_operation_by_name('AuxHead/Conv/Conv2D')
    assert 'block3' in aux_conv.inputs[0].name
    assert {v.op.name for v in tf.global_variables() if v.op.name.startswith('AuxHead/')} >= {
        'AuxHead/Conv/weights', 'AuxHead/Logits/Conv/weights', 'AuxHead/Logits/Conv/biases'}


def test_aux_head_absent_when_aux_loss_disabled():
  with tf.Graph().as_default():
    model = model_builder.build(tiny_model_config(5, extra='pspnet { loss { use_auxiliary_loss: false } }'),
                                is_training=True)
    outputs = model.predict(model.preprocess(tf.zeros([1, 33, 33, 3])))
    assert 'aux_logits' not in outputs
    assert not [v for v in tf.global_variables() if v.op.name.startswith('AuxHead')]


@pytest.mark.parametrize('height,width', [(65, 65), (97, 129), (50, 77), (33, 257)])
def test_any_input_size_gives_ceil_stride_8_logits_and_full_size_predictions(height, width):
  with tf.Graph().as_default():
    model = model_builder.build(tiny_model_config(5), is_training=False)
    images = tf.random.uniform([1, height, width, 3], 0, 255, seed=1)
    outputs = model.predict(model.preprocess(images))
    post = model.postprocess(outputs, [height, width])
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      logits, predictions = sess.run([outputs['logits'], post['predictions']])
    assert logits.shape == (1, -(-height // 8), -(-width // 8), 5)
    assert predictions.shape == (1, height, width)
    assert predictions.min() >= 0 and predictions.max() < 5


def test_output_stride_16():
  with tf.Graph().as_default():
    model = model_builder.build(tiny_model_config(5, extra='pspnet { feature_extractor { output_stride: 16 } }'),
                                is_training=False)
    outputs = model.predict(model.preprocess(tf.zeros([1, 64, 64, 3])))
    assert outputs['logits'].shape.as_list() == [1, 4, 4, 5]


def _adaptive_pool_reference(x, bins):
  n, h, w, c = x.shape
  out = np.zeros((n, bins, bins, c))
  for i in range(bins):
    for j in range(bins):
      r0, r1 = (i * h) // bins, -((-(i + 1) * h) // bins)
      c0, c1 = (j * w) // bins, -((-(j + 1) * w) // bins)
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


@pytest.mark.parametrize('size,bins', [(size, bins) for size in [(6, 6), (13, 13), (9, 17), (5, 7)]
                                        for bins in [1, 2, 3, 6] if bins <= min(size)])
def test_adaptive_average_pool_matches_reference_for_sizes_not_divisible_by_bins(size, bins):
  x = np.random.RandomState(0).randn(2, size[0], size[1], 3)
  with tf.Graph().as_default():
    pooled = pspnet_architecture.adaptive_average_pool(tf.constant(x), bins)
    with tf.Session(config=fast_session_config()) as sess:
      result = sess.run(pooled)
  np.testing.assert_allclose(result, _adaptive_pool_reference(x, bins), rtol=1e-12, atol=1e-12)


def _adaptive_pool_gradient_reference(x_shape, upstream):
  """d sum(pooled * upstream) / dx: each cell spreads its upstream value / cell size over its pixels."""
  n, h, w, c = x_shape
  bins = upstream.shape[1]
  grad = np.zeros(x_shape)
  for i in range(bins):
    for j in range(bins):
      r0, r1 = (i * h) // bins, -((-(i + 1) * h) // bins)
      c0, c1 = (j * w) // bins, -((-(j + 1) * w) // bins)
      grad[:, r0:r1, c0:c1] += upstream[:, i, j][:, None, None, :] / ((r1 - r0) * (c1 - c0))
  return grad


@pytest.mark.parametrize('size,bins', [((13, 13), 6), ((9, 17), 3), ((5, 7), 2), ((6, 6), 1)])
def test_adaptive_average_pool_gradient_is_one_dense_product(size, bins):
  rng = np.random.RandomState(1)
  x = rng.randn(2, size[0], size[1], 3)
  upstream = rng.randn(2, bins, bins, 3)
  with tf.Graph().as_default() as graph:
    inputs = tf.constant(x)
    pooled = pspnet_architecture.adaptive_average_pool(inputs, bins)
    first = len(graph.get_operations())
    grad, = tf.gradients(pooled, [inputs], grad_ys=tf.constant(upstream))
    gradient_types = {op.type for op in graph.get_operations()[first:]}
    with tf.Session(config=fast_session_config()) as sess:
      value = sess.run(grad)
  np.testing.assert_allclose(value, _adaptive_pool_gradient_reference(x.shape, upstream), rtol=1e-12, atol=1e-12)
  # No per-cell input-sized gradients to add up (what slicing out every cell would give).
  assert not gradient_types & {'StridedSliceGrad', 'SliceGrad', 'AddN', 'Tile'}, gradient_types


def test_pyramid_pools_share_one_pass_and_one_input_gradient():
  rng = np.random.RandomState(2)
  x = rng.randn(1, 13, 9, 4)
  levels = [1, 2, 3, 6]
  upstream = [rng.randn(1, bins, bins, 4) for bins in levels]
  with tf.Graph().as_default() as graph:
    inputs = tf.constant(x)
    pooled = pspnet_architecture.pyramid_average_pools(inputs, levels)
    first = len(graph.get_operations())
    grad, = tf.gradients(pooled, [inputs], grad_ys=[tf.constant(u) for u in upstream])
    # Only one op reads the features, so backprop makes one features-sized gradient for the whole pyramid.
    assert len(inputs.consumers()) == 1
    gradient_types = {op.type for op in graph.get_operations()[first:]}
    assert not gradient_types & {'StridedSliceGrad', 'SliceGrad', 'AddN', 'Tile'}, gradient_types
    with tf.Session(config=fast_session_config()) as sess:
      values, grad_value = sess.run([pooled, grad])
  for bins, value in zip(levels, values):
    np.testing.assert_allclose(value, _adaptive_pool_reference(x, bins), rtol=1e-12, atol=1e-12)
  expected = sum(_adaptive_pool_gradient_reference(x.shape, u) for u in upstream)
  np.testing.assert_allclose(grad_value, expected, rtol=1e-12, atol=1e-12)
  assert [op.name for op in graph.get_operations() if op.name.endswith('/columns')] == [
      'Pool%d/columns' % bins for bins in levels]


def test_adaptive_average_pool_needs_static_size():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='static feature map size'):
      pspnet_architecture.adaptive_average_pool(tf.placeholder(tf.float32, [1, None, None, 4]), 2)


def test_pyramid_branches_follow_pooling_factors():
  with tf.Graph().as_default() as graph:
    model = model_builder.build(tiny_model_config(5, extra='pspnet { pooling_factors: [1, 3] }'), is_training=False)
    model.predict(model.preprocess(tf.zeros([1, 65, 65, 3])))
    convs = sorted({v.op.name.split('/')[1] for v in tf.global_variables()
                    if v.op.name.startswith('PSPModule/')})
    # Two bins -> Conv, Conv_1, then the fusion conv Conv_2.
    assert convs == ['Conv', 'Conv_1', 'Conv_2']
    concat = graph.get_operation_by_name('PSPModule/concat')
    assert concat.outputs[0].shape[-1] == 2048 // 16 + 2 * 512 // 16


def test_pooling_factors_as_floats_of_the_original_proto():
  # The original project's configs write them as floats (its proto: repeated float).
  with tf.Graph().as_default():
    model = model_builder.build(tiny_model_config(5, extra='pspnet { pooling_factors: [1.0, 3.0] }'),
                                is_training=False)
    model.predict(model.preprocess(tf.zeros([1, 65, 65, 3])))
    convs = sorted({v.op.name.split('/')[1] for v in tf.global_variables() if v.op.name.startswith('PSPModule/')})
  assert convs == ['Conv', 'Conv_1', 'Conv_2']


def test_fractional_pooling_factor_names_field_and_value():
  with pytest.raises(ConfigError) as error:
    model_builder.build(tiny_model_config(5, extra='pspnet { pooling_factors: [1, 1.5] }'), is_training=False)
  assert str(error.value) == 'model.pspnet.pooling_factors[1] = 1.5: must be a whole number of bins > 0'


def test_num_classes_question_names_the_field():
  with pytest.raises(ConfigError, match=r'^model.pspnet.num_classes = 0: must be > 0'):
    model_builder.num_classes(tiny_model_config(5, extra='pspnet { num_classes: 0 }'))


def test_restore_maps():
  with tf.Graph().as_default():
    model = model_builder.build(tiny_model_config(5), is_training=True)
    model.predict(model.preprocess(tf.zeros([1, 33, 33, 3])))
    tf.train.get_or_create_global_step()
    classification = model.restore_map('classification')
    segmentation = model.restore_map('segmentation')
    model_variables = {v.op.name for v in slim.get_model_variables()}
  assert 'resnet_v1_50/conv1/weights' in classification
  assert 'resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/moving_mean' in classification
  assert all(name.startswith('resnet_v1_50/') for name in classification)
  assert set(segmentation) == model_variables
  assert 'global_step' not in segmentation and 'PSPModule/Conv_4/weights' in segmentation
  assert 'PSPModule/Conv/weights' in segmentation and 'AuxHead/Conv/weights' in segmentation
  with pytest.raises(ValueError, match='detection'):
    model.restore_map('detection')


@pytest.mark.parametrize('extra,field,value', [
    ('pspnet { num_classes: 0 }', 'model.pspnet.num_classes', '0'),
    ('pspnet { filter_scale: 1.5 }', 'model.pspnet.filter_scale', '1.5'),
    ('pspnet { filter_scale: 0 }', 'model.pspnet.filter_scale', '0'),
    ('pspnet { dropout_keep_prob: 0 }', 'model.pspnet.dropout_keep_prob', '0'),
    ('pspnet { pooling_factors: [0] }', 'model.pspnet.pooling_factors[0]', '0'),
    ('pspnet { feature_extractor { type: "resnet101" } }', 'model.pspnet.feature_extractor.type', 'resnet101'),
    ('pspnet { feature_extractor { output_stride: 32 } }', 'model.pspnet.feature_extractor.output_stride',
     '32'),
    ('pspnet { feature_extractor { num_units_per_block: [2] } }',
     'model.pspnet.feature_extractor.num_units_per_block', '[1, 1, 1, 1, 2]'),
    ('pspnet { loss { ignore_label: 3 } }', 'model.pspnet.loss.ignore_label', '3'),
    ('pspnet { aux_head_depth: 0 }', 'model.pspnet.aux_head_depth', '0'),
])
def test_invalid_model_configs_name_field_and_value(extra, field, value):
  with tf.Graph().as_default():
    with pytest.raises(ConfigError) as error:
      model_builder.build(tiny_model_config(5, extra=extra), is_training=True)
  assert field in str(error.value) and value in str(error.value)


def test_empty_model_oneof():
  with pytest.raises(ConfigError, match=r'model = None: exactly one of \{pspnet, icnet\}'):
    model_builder.build(model_pb2.Model(), is_training=True)


def test_wrong_message_type():
  with pytest.raises(ValueError, match='model_pb2.Model'):
    model_builder.build(model_pb2.Model().DESCRIPTOR, is_training=True)
