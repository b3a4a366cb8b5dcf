"""ICNet (architectures/icnet_architecture.py): graph names and shapes of every branch, the full model's parameter
count, initialisation from a PSPNet checkpoint, training through the trainer with the three branch losses,
evaluation and export of the trained checkpoint, memory-saving checkpoint nodes, and its configs."""
import glob
import json
import os

import numpy as np
import pytest
from google.protobuf import text_format

from architectures import icnet_architecture
from builders import model_builder
from drivers import evaluator
from drivers import exporter
from drivers import trainer
from libs import checkpoint_utils
from libs import config_util
from libs import memory_saving_gradients
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.image_ops import MEAN_RGB
from protos import model_pb2
from tests import testing_utils
from tests.conftest import capture_log_lines
from tests.conftest import fast_session_config
from tests.conftest import fixed_batch_pipeline
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_model_config

ORIGINAL_CONFIG = os.path.join(REPO_ROOT, 'configs', 'icnet_1.0_1025_resnet_v1.config')
TINY_CONFIG = os.path.join(REPO_ROOT, 'configs', 'icnet_demo_tiny.config')
BACKBONE = 'SharedFeatureExtractor/resnet_v1_50'
# Every ICNet scope that a PSPNet checkpoint does not hold.
FRESH_SCOPES = {'FullResolutionBranch', 'FastPSPModule', 'CascadeFeatureFusion', 'CascadeFeatureFusion_1',
                'Classifier', 'AuxOutput', 'AuxOutput_1'}
NUM_STEPS = 8


def _tiny_icnet(extra=''):
  """The tiny ICNet of configs/icnet_demo_tiny.config as a model_pb2.Model, with a Model fragment merged on top."""
  config = model_pb2.Model()
  config.CopyFrom(config_util.load_pipeline_config(TINY_CONFIG).model)
  if 'pooling_factors' in extra:
    config.icnet.ClearField('pooling_factors')  # Merge appends to repeated fields
  if extra:
    text_format.Merge(extra, config)
  return config


def _full_icnet():
  config = model_pb2.Model()
  config.CopyFrom(config_util.load_pipeline_config(ORIGINAL_CONFIG).model)
  return config


def _build(config, shape, is_training=True):
  model = model_builder.build(config, is_training=is_training)
  return model, model.predict(model.preprocess(tf.zeros(shape)))


# Static shapes [H, W] of every branch for three input sizes: odd (97 x 129), the padded Cityscapes frame
# (1025 x 2049, 32k + 1: every grid an exact zoom) and even (96 x 128, grids that are not exact halves).
SHAPES = {
    (97, 129): {'block1': (7, 9), 'block4': (4, 5), 'FullResolutionBranch': (13, 17), 'FastPSPModule': (4, 5),
                'CascadeFeatureFusion': (7, 9), 'CascadeFeatureFusion_1': (13, 17), 'logits': (25, 33),
                'first_branch_logits': (7, 9), 'second_branch_logits': (13, 17)},
    (1025, 2049): {'block1': (65, 129), 'block4': (33, 65), 'FullResolutionBranch': (129, 257),
                   'FastPSPModule': (33, 65), 'CascadeFeatureFusion': (65, 129),
                   'CascadeFeatureFusion_1': (129, 257), 'logits': (257, 513), 'first_branch_logits': (65, 129),
                   'second_branch_logits': (129, 257)},
    (96, 128): {'block1': (6, 8), 'block4': (3, 4), 'FullResolutionBranch': (12, 16), 'FastPSPModule': (3, 4),
                'CascadeFeatureFusion': (6, 8), 'CascadeFeatureFusion_1': (12, 16), 'logits': (23, 31),
                'first_branch_logits': (6, 8), 'second_branch_logits': (12, 16)},
}


@pytest.mark.parametrize('size', sorted(SHAPES))
def test_branch_end_points_names_and_shapes(size):
  expected = SHAPES[size]
  with tf.Graph().as_default() as graph:
    model, outputs = _build(_tiny_icnet(), [2, size[0], size[1], 3])
    end_points = outputs['end_points']
    # filter_scale 1/16: block1 256 -> 16, block4 2048 -> 128, FastPSP 512 -> 32, fusion 256 -> 16 channels.
    tensors = {
        'block1': (end_points[BACKBONE + '/block1'], 'SharedFeatureExtractor/resnet_v1_50/block1/unit_1/'
                   'bottleneck_v1/Relu', 16),
        'block4': (end_points[BACKBONE + '/block4'], 'SharedFeatureExtractor/resnet_v1_50/block4/unit_1/'
                   'bottleneck_v1/Relu', 128),
        'FullResolutionBranch': (end_points['FullResolutionBranch'], 'FullResolutionBranch/Conv_3/Relu', 16),
        'FastPSPModule': (end_points['FastPSPModule'], 'FastPSPModule/Conv/Relu', 32),
        'CascadeFeatureFusion': (end_points['CascadeFeatureFusion'], 'CascadeFeatureFusion/Relu', 16),
        'CascadeFeatureFusion_1': (end_points['CascadeFeatureFusion_1'], 'CascadeFeatureFusion_1/Relu', 16),
        'logits': (outputs['logits'], 'Classifier/Upsample/ResizeBilinear', 19),
        'first_branch_logits': (outputs['first_branch_logits'], 'AuxOutput/Conv/BiasAdd', 19),
        'second_branch_logits': (outputs['second_branch_logits'], 'AuxOutput_1/Conv/BiasAdd', 19),
    }
    for key, (tensor, name, channels) in tensors.items():
      assert tensor.op.name == name, key
      assert tensor.shape.as_list() == [2, expected[key][0], expected[key][1], channels], key
    # The variable-free downsample between block1 and block2, and the half-resolution input.
    half = graph.get_tensor_by_name('HalfResolutionInput/ResizeBilinear:0')
    assert half.shape.as_list() == [2, (size[0] + 1) // 2, (size[1] + 1) // 2, 3]
    assert graph.get_operation_by_name(BACKBONE + '/Downsample/ResizeBilinear')
    assert not [v for v in tf.global_variables() if 'Downsample' in v.op.name or 'HalfResolution' in v.op.name]
    # The fusion units' layers (3x3 rate-2 on the upsampled coarse input, 1x1 on the partner, no activation).
    for scope in ('CascadeFeatureFusion', 'CascadeFeatureFusion_1'):
      assert tf.trainable_variables(scope + '/DilatedConv/weights')[0].shape.as_list()[:2] == [3, 3]
      assert tf.trainable_variables(scope + '/Conv/weights')[0].shape.as_list()[:2] == [1, 1]
      assert not [op for op in graph.get_operations() if op.name.startswith(scope + '/DilatedConv/Relu')]
    assert model.postprocess(outputs, list(size))['predictions'].shape.as_list() == [2, size[0], size[1]]


def test_inference_graph_has_no_label_guidance_and_pretrain_mode_is_one_branch():
  with tf.Graph().as_default():
    _, outputs = _build(_tiny_icnet(), [1, 97, 129, 3], is_training=False)
    assert set(outputs) == {'logits', 'end_points'}
    assert not [v for v in tf.global_variables() if v.op.name.startswith('AuxOutput')]
  with tf.Graph().as_default() as graph:
    model, outputs = _build(_tiny_icnet('icnet { pretrain_single_branch_mode: true }'), [2, 97, 129, 3])
    assert model.output_stride == 8
    # PSPNet's backbone on the full image (1/8), FastPSPModule, a classifier at 1/8, the aux head on block3.
    assert outputs['logits'].op.name == 'Classifier/Conv/BiasAdd'
    assert outputs['logits'].shape.as_list() == [2, 13, 17, 19]
    assert outputs['aux_logits'].shape.as_list() == [2, 13, 17, 19]
    assert {v.op.name.split('/')[0] for v in tf.global_variables()} == {
        'SharedFeatureExtractor', 'FastPSPModule', 'Classifier', 'AuxOutput'}
    assert not [op for op in graph.get_operations() if 'Downsample' in op.name]
    losses = model.loss(outputs, tf.zeros([2, 97, 129, 1], tf.uint8))
    assert set(losses) == {'main_loss', 'aux_loss'}


def test_branch_losses_resize_labels_and_exclude_the_ignore_label():
  """Each loss equals a numpy cross-entropy at its output's grid with nearest-resized labels."""
  with tf.Graph().as_default():
    model, outputs = _build(_tiny_icnet(), [1, 97, 129, 3])
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 19, size=[1, 97, 129, 1]).astype(np.uint8)
    labels[0, :40] = 255
    losses = model.loss(outputs, tf.constant(labels))
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      values, logits = sess.run([losses, {k: outputs[k] for k in
                                          ('logits', 'first_branch_logits', 'second_branch_logits')}])

  def expected(logit):
    h, w = logit.shape[1:3]
    rows = np.round(np.arange(h) * (96.0 / (h - 1))).astype(int)  # corners aligned, exact grids
    cols = np.round(np.arange(w) * (128.0 / (w - 1))).astype(int)
    small = labels[0, rows][:, cols, 0]
    valid = small != 255
    z = logit[0][valid].astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(z)), small[valid]].mean()

  assert values['main_loss'] == pytest.approx(expected(logits['logits']), rel=1e-4)
  assert values['first_branch_loss'] == pytest.approx(0.4 * expected(logits['first_branch_logits']), rel=1e-4)
  assert values['second_branch_loss'] == pytest.approx(0.4 * expected(logits['second_branch_logits']), rel=1e-4)


def test_full_icnet_parameter_count_and_checkpoint_nodes():
  """ICNet 1.0 over ResNet50, 19 classes (the original config's model)."""
  with tf.Graph().as_default() as graph:
    model, _ = _build(_full_icnet(), [1, 65, 65, 3], is_training=True)
    variables = slim.get_model_variables()
    inference_vars = [v for v in variables if not v.op.name.startswith('AuxOutput')]
    params = exporter.count_parameters(inference_vars, model.parts)
    assert params['total'] == 26873363
    assert dict(params) == {
        'total': 26873363, 'backbone': 23508032, 'FullResolutionBranch': 408256, 'FastPSPModule': 1049600,
        'CascadeFeatureFusion': 1246208, 'CascadeFeatureFusion_1': 656384, 'Classifier': 4883}
    # Without the batch norms' gamma and beta (57,216): 26.82 M, the original model zoo's figure.
    without_bn = sum(v.shape.num_elements() for v in inference_vars if 'BatchNorm' not in v.op.name)
    assert without_bn == 26816147
    assert exporter.count_parameters(variables, model.parts)['total'] == 26873363 + 9747 + 4883
    # The whole ResNet50 backbone, batch-norm statistics included, under PSPNet's names.
    assert len([v for v in variables if v.op.name.startswith('SharedFeatureExtractor/')]) == 265
    # train_mem_saving.py's ICNet checkpoint nodes.
    assert model.checkpoint_nodes() == icnet_architecture.CHECKPOINT_NODES
    for name in icnet_architecture.CHECKPOINT_NODES:
      graph.get_operation_by_name(name)
    assert icnet_architecture.CHECKPOINT_NODES[:4] == model.block_output_nodes() == (
        BACKBONE + '/block1/unit_3/bottleneck_v1/Relu', BACKBONE + '/block2/unit_4/bottleneck_v1/Relu',
        BACKBONE + '/block3/unit_6/bottleneck_v1/Relu', BACKBONE + '/block4/unit_3/bottleneck_v1/Relu')


@pytest.fixture(scope='module')
def pspnet_checkpoint(tmp_path_factory):
  """(prefix, {name: value}) of a tiny PSPNet (the backbone of the tiny ICNet), random weights and statistics."""
  prefix = str(tmp_path_factory.mktemp('pspnet') / 'model.ckpt')
  with tf.Graph().as_default():
    _build(tiny_model_config(), [1, 65, 65, 3])
    variables = slim.get_model_variables()
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      # Moving statistics away from their initial 0 / 1, so that restoring them is visible.
      rng = np.random.RandomState(1)
      for v in variables:
        if 'moving_' in v.op.name:
          v.load(rng.uniform(0.5, 1.5, v.shape.as_list()).astype(np.float32), sess)
      values = dict(zip([v.op.name for v in variables], sess.run(variables)))
      tf.train.Saver(variables).save(sess, prefix, write_meta_graph=False)
  return prefix, values


@pytest.mark.parametrize('checkpoint_type', ['segmentation', 'segmentation-finetune'])
def test_pspnet_checkpoint_restores_the_whole_backbone(pspnet_checkpoint, log_lines, checkpoint_type):
  prefix, values = pspnet_checkpoint
  backbone = {name for name in values if name.startswith('SharedFeatureExtractor/')}
  with tf.Graph().as_default():
    model, _ = _build(_tiny_icnet(), [1, 97, 129, 3])
    init_fn = checkpoint_utils.build_fine_tune_init(model, prefix, checkpoint_type)
    variables = slim.get_model_variables()
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      init_fn(sess)
      restored = dict(zip([v.op.name for v in variables], sess.run(variables)))
  icnet_backbone = {name for name in restored if name.startswith('SharedFeatureExtractor/')}
  assert icnet_backbone == backbone
  for name in backbone:
    np.testing.assert_array_equal(restored[name], values[name], name)
  fresh = {name.split('/')[0] for name in restored if name not in values}
  assert fresh == FRESH_SCOPES
  assert 'Initialised %d variables from %s (%s checkpoint).' % (len(backbone), prefix, checkpoint_type) in log_lines
  fresh_line = [line for line in log_lines if line.startswith('Starting fresh')]
  assert len(fresh_line) == 1
  for scope in FRESH_SCOPES:
    assert ' %s (' % scope in fresh_line[0]
  assert 'SharedFeatureExtractor' not in fresh_line[0]


def test_backbone_shape_mismatch_is_an_error_naming_the_variables(pspnet_checkpoint):
  prefix, _ = pspnet_checkpoint
  with tf.Graph().as_default():
    model, _ = _build(_tiny_icnet('icnet { filter_scale: 0.125 }'), [1, 97, 129, 3])
    with pytest.raises(ValueError) as error:
      checkpoint_utils.build_fine_tune_init(model, prefix, 'segmentation')
  message = str(error.value)
  assert 'backbone variables have another shape' in message
  assert 'SharedFeatureExtractor/resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/beta ' \
         '(checkpoint [4], model [8])' in message


@pytest.fixture(scope='module')
def icnet_run(cityscapes_records, pspnet_checkpoint, tmp_path_factory):
  """A tiny ICNet trained NUM_STEPS steps on a fixed batch from the PSPNet checkpoint: {'pipeline', 'logdir',
  'log'}."""
  config = fixed_batch_pipeline(cityscapes_records)
  config.model.CopyFrom(_tiny_icnet())
  text_format.Merge('train_config { num_steps: %d fine_tune_checkpoint: "%s" '
                    'fine_tune_checkpoint_type: "segmentation-finetune" }' % (NUM_STEPS, pspnet_checkpoint[0]),
                    config)
  logdir = str(tmp_path_factory.mktemp('icnet') / 'train')
  with capture_log_lines() as lines:
    step = trainer.train(config, logdir, trainer.default_options(
        session_config=fast_session_config(), log_every_n_steps=1, save_summaries_secs=0))
  assert step == NUM_STEPS
  return {'pipeline': config, 'logdir': logdir, 'log': lines}


def test_training_lowers_the_loss_with_three_branch_losses_in_tensorboard(icnet_run):
  losses = [float(line.split('loss ')[1].split(',')[0]) for line in icnet_run['log']
            if line.startswith('step ') and ', loss ' in line]
  assert len(losses) == NUM_STEPS and np.all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < 0.8 * losses[0], losses
  assert any(line.startswith('Starting fresh') for line in icnet_run['log'])
  scalars = {}
  for event_file in glob.glob(os.path.join(icnet_run['logdir'], 'events.out.tfevents.*')):
    for event in tf.train.summary_iterator(event_file):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(value.simple_value)
  for tag in ('Losses/TotalLoss', 'Losses/MainLoss', 'Losses/FirstBranchLoss', 'Losses/SecondBranchLoss',
              'Losses/RegularizationLoss'):
    assert tag in scalars and all(v > 0 for v in scalars[tag]), tag
  assert 'Losses/AuxLoss' not in scalars


def test_evaluator_scores_the_checkpoints_own_predictions(icnet_run, tmp_path):
  config = icnet_run['pipeline']
  results = evaluator.evaluate(config, icnet_run['logdir'], str(tmp_path / 'eval'), evaluator.default_options(
      session_config=fast_session_config(), evaluate_all_from_checkpoint=str(NUM_STEPS)))
  assert [r['global_step'] for r in results] == [NUM_STEPS]
  # The checkpoint applied by hand to each val image padded to 129 x 257, scored in numpy.
  matrix = testing_utils.padded_eval_confusion_matrix(config, tf.train.latest_checkpoint(icnet_run['logdir']))
  assert matrix.sum() > 0
  np.testing.assert_array_equal(np.array(results[0]['confusion_matrix']), matrix)


def test_export_frozen_graph_and_saved_model_give_the_checkpoints_predictions(icnet_run, tmp_path):
  model_config = icnet_run['pipeline'].model
  checkpoint = tf.train.latest_checkpoint(icnet_run['logdir'])
  out = str(tmp_path / 'export')
  result = exporter.export(model_config, out, icnet_run['logdir'], input_shape=(1, 96, 128, 3),
                           num_timing_runs=0, session_config=fast_session_config())
  image = np.random.RandomState(3).randint(0, 256, size=[1, 96, 128, 3]).astype(np.uint8)
  # The exact-zoom network size of ICNet (stride 32): 96 x 128 -> 97 x 129, padded with the mean colour.
  padded = np.zeros([1, 97, 129, 3], np.float32)
  padded[0, :96, :128] = image[0].astype(np.float32) - np.array(MEAN_RGB, np.float32)
  with tf.Graph().as_default():
    model = model_builder.build(model_config, is_training=False)
    inputs = tf.placeholder(tf.float32, padded.shape)
    predictions = model.postprocess(model.predict(inputs), [97, 129])['predictions']
    with tf.Session(config=fast_session_config()) as sess:
      tf.train.Saver(slim.get_model_variables()).restore(sess, checkpoint)
      expected = sess.run(predictions, {inputs: padded})[0, :96, :128]
  assert len(np.unique(expected)) > 1

  with tf.Session(graph=testing_utils.import_frozen_graph(result.frozen_graph), config=fast_session_config()) as sess:
    frozen = sess.run('predictions:0', {'inputs:0': image})
  np.testing.assert_array_equal(frozen[0], expected)

  with tf.Graph().as_default():
    with tf.Session(config=fast_session_config()) as sess:
      meta = tf.saved_model.loader.load(sess, [tf.saved_model.tag_constants.SERVING], result.saved_model)
      signature = meta.signature_def['serving_default']
      saved = sess.run(signature.outputs['predictions'].name, {signature.inputs['inputs'].name: image})
  np.testing.assert_array_equal(saved[0], expected)

  with open(os.path.join(out, 'model_figures.json')) as f:
    figures = json.load(f)
  assert figures['network_shape'] == [97, 129]
  assert set(figures['parameters']) == {'total', 'backbone', 'FullResolutionBranch', 'FastPSPModule',
                                        'CascadeFeatureFusion', 'CascadeFeatureFusion_1', 'Classifier'}
  assert figures['macs']['total'] == sum(v for k, v in figures['macs'].items() if k not in ('total', 'conv_ops'))


def test_memory_saving_gradients_with_the_icnet_checkpoint_nodes(cityscapes_records):
  config = fixed_batch_pipeline(cityscapes_records, batch_size=2)
  config.model.CopyFrom(_tiny_icnet())
  nodes = list(model_builder.build(config.model, is_training=True).checkpoint_nodes())
  assert nodes[4:] == ['FastPSPModule/Conv/Relu', 'CascadeFeatureFusion/Relu', 'CascadeFeatureFusion_1/Relu']
  options = trainer.default_options(session_config=fast_session_config(),
                                    gradients_fn=memory_saving_gradients.make_gradients_fn(nodes))
  with tf.Graph().as_default():
    graph = trainer.build_training_graph(config, options)
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      step, loss = sess.run([graph.train_op, graph.total_loss])
  assert step == 1 and np.isfinite(loss)


def test_original_format_config_parses_and_validates():
  pipeline = config_util.load_pipeline_config(ORIGINAL_CONFIG)
  icnet = pipeline.model.icnet
  assert (icnet.num_classes, icnet.filter_scale, icnet.feature_extractor.type) == (19, 1.0, 'dilated_resnet50')
  assert (icnet.main_branch_loss_weight, icnet.second_branch_loss_weight) == pytest.approx((1.0, 0.4))
  assert icnet.first_branch_loss_weight == pytest.approx(0.4) and icnet.loss.use_auxiliary_loss
  assert icnet.hyperparams.batch_norm.decay == pytest.approx(0.9997)
  train = pipeline.train_config
  assert (train.batch_size, train.num_steps, train.fine_tune_checkpoint_type) == (
      16, 40000, 'segmentation-finetune')
  assert (train.batch_queue_capacity, train.num_batch_queue_threads, train.prefetch_queue_capacity) == (150, 35, 10)
  crop = train.preprocessor_step[1].random_image_crop
  assert (crop.crop_height, crop.crop_width, crop.images_channel_dim, crop.labels_channel_dim) == (1025, 1025, 3, 1)
  assert pipeline.train_input_reader.num_readers == 25 and pipeline.eval_config.num_examples == 500
  trainer.validate_train_config(pipeline, 1)
  model = model_builder.build(pipeline.model, is_training=True)
  assert (model.num_classes, model.ignore_label, model.output_stride, model.builds_aux_head) == (19, 255, 32, True)
  assert model_builder.output_stride(pipeline.model) == 32
  tiny = config_util.load_pipeline_config(TINY_CONFIG)
  trainer.validate_train_config(tiny, 1)


@pytest.mark.parametrize('extra,field,value', [
    ('icnet { num_classes: 0 }', 'model.icnet.num_classes', '0'),
    ('icnet { filter_scale: 1.5 }', 'model.icnet.filter_scale', '1.5'),
    ('icnet { pooling_factors: [1, 1.5] }', 'model.icnet.pooling_factors[1]', '1.5'),
    ('icnet { pooling_factors: [2, 2] }', 'model.icnet.pooling_factors', '[2.0, 2.0]'),
    ('icnet { first_branch_loss_weight: -1 }', 'model.icnet.first_branch_loss_weight', '-1.0'),
    ('icnet { main_branch_loss_weight: 0 }', 'model.icnet.main_branch_loss_weight', '0.0'),
    ('icnet { feature_extractor { output_stride: 16 } }', 'model.icnet.feature_extractor.output_stride', '16'),
    ('icnet { loss { aux_loss_weight: 0.4 } }', 'model.icnet.loss.aux_loss_weight', '0.4'),
    ('icnet { loss { upsample_logits: true } }', 'model.icnet.loss.upsample_logits', 'True'),
    ('icnet { loss { ignore_label: 3 } }', 'model.icnet.loss.ignore_label', '3'),
])
def test_config_errors_name_the_field_path(extra, field, value):
  with pytest.raises(ConfigError) as error:
    model_builder.build(_tiny_icnet(extra), is_training=True)
  assert error.value.field == field
  assert str(error.value).startswith('%s = %s' % (field, value))


def test_bfloat16_inference_keeps_float32_variables_and_agrees_with_float32():
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  image = np.random.RandomState(5).randint(0, 256, size=[1, 97, 129, 3]).astype(np.uint8)
  with tf.Graph().as_default():
    model = inference_graph.build_inference_model(_tiny_icnet())
    full = inference_graph.build_inference_graph(model, [1, 97, 129, 3], (97, 129), input_name='full',
                                                 output_name='full_predictions')
    half = inference_graph.build_inference_graph(model, [1, 97, 129, 3], (97, 129), reuse=True, input_name='half',
                                                 output_name='half_predictions', compute_dtype='bfloat16')
    assert {v.dtype.base_dtype for v in tf.global_variables()} == {tf.float32}
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      a, b = sess.run([full.predictions, half.predictions], {full.inputs: image, half.inputs: image})
  assert np.mean(a == b) > 0.9
