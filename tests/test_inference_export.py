"""Tests of inference.py and export.py (drivers/inference.py, drivers/exporter.py) with a tiny trained checkpoint:
result images and the Cityscapes palette, label ids, any image size, corrupt files, frozen graph and SavedModel
against the checkpoint, bfloat16 inference (--compute_dtype) against float32 with the same float32 checkpoint,
model figures (the full PSPNet50 at 1024x2048 included), and the ICNet seed checkpoint round trip into a new
training run.

Every prediction of the trained model is compared with a reference computed from the model interface alone (mean
subtraction and zero padding in numpy, predict + postprocess at the network shape, crop), not with the exporter's
own graph."""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from google.protobuf import text_format

from builders import model_builder
from drivers import exporter
from drivers import inference as inference_lib
from drivers import inference_graph
from drivers import trainer
from libs import checkpoint_utils
from libs import cityscapes_labels
from libs import config_util
from libs.compat import slim
from libs.compat import tf
from libs.image_ops import MEAN_RGB
from tests import testing_utils
from tests.conftest import fast_session_config
from tests.conftest import REPO_ROOT
from tests.conftest import SAMPLE_DIR
from tests.conftest import tiny_model_config
from tests.conftest import tiny_pipeline_text
from tests.testing_utils import random_weights_inference_session

SAMPLE_IMAGES = sorted(glob.glob(os.path.join(SAMPLE_DIR, 'leftImg8bit', 'val', 'frankfurt', '*.png')))
SAMPLE_NAME = 'frankfurt_000000_000294_leftImg8bit'
TINY_SHAPE = (128, 256, 3)  # the sample frame; its network shape is 129 x 257


@pytest.fixture(scope='module')
def trained(cityscapes_records, tmp_path_factory):
  """{'config': path, 'pipeline': PipelineConfig, 'logdir': dir, 'checkpoint': prefix} of a tiny model trained
  a few steps (enough to predict several classes)."""
  root = tmp_path_factory.mktemp('trained')
  text = tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val'], num_steps=3)
  config_path = str(root / 'tiny.config')
  with open(config_path, 'w') as f:
    f.write(text)
  pipeline = config_util.parse_pipeline_config(text, config_path)
  logdir = str(root / 'train')
  trainer.train(pipeline, logdir, trainer.default_options(session_config=fast_session_config()))
  return {'config': config_path, 'pipeline': pipeline, 'logdir': logdir,
          'checkpoint': tf.train.latest_checkpoint(logdir)}


def _read_rgb(path):
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def _read_png(path):
  with Image.open(path) as image:
    return np.asarray(image)


def _reference_predictions(model_config, checkpoint, image, network_shape):
  """Train ids of one uint8 image, padded with the mean colour to network_shape and cropped back."""
  height, width = image.shape[:2]
  padded = np.zeros([1, network_shape[0], network_shape[1], 3], np.float32)
  padded[0, :height, :width] = image.astype(np.float32) - np.array(MEAN_RGB, np.float32)
  with tf.Graph().as_default():
    model = model_builder.build(model_config, is_training=False)
    inputs = tf.placeholder(tf.float32, padded.shape)
    predictions = model.postprocess(model.predict(inputs), list(network_shape))['predictions']
    with tf.Session(config=fast_session_config()) as sess:
      tf.train.Saver(slim.get_model_variables()).restore(sess, checkpoint)
      return sess.run(predictions, {inputs: padded})[0, :height, :width]


def test_sample_frame_is_there():
  assert len(SAMPLE_IMAGES) == 1 and os.path.basename(SAMPLE_IMAGES[0]) == SAMPLE_NAME + '.png'


def test_inference_script_palette_any_size_and_corrupt_file(trained, tmp_path):
  inputs = tmp_path / 'inputs'
  sample = _read_rgb(SAMPLE_IMAGES[0])
  os.makedirs(str(inputs / 'frankfurt'))
  shutil.copyfile(SAMPLE_IMAGES[0], str(inputs / 'frankfurt' / (SAMPLE_NAME + '.png')))
  os.makedirs(str(inputs / 'other'))
  small = sample[30:91, 40:123]  # 61 x 83: padded into the 129 x 257 network
  Image.fromarray(small).save(str(inputs / 'other' / 'small.png'))
  wide = np.asarray(Image.fromarray(sample).resize((300, 97)))  # wider than the network: a network of its own
  Image.fromarray(wide).save(str(inputs / 'other' / 'wide.jpg'), quality=95)
  (inputs / 'other' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
  (inputs / 'other' / 'notes.txt').write_text('not an image and not a .png: not picked up')
  output = tmp_path / 'output'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'inference.py'), '--input_path', str(inputs), '--config_path',
       trained['config'], '--trained_checkpoint', trained['logdir'], '--output_dir', str(output),
       '--input_shape', '%d,%d,%d' % TINY_SHAPE, '--overlay'],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  log = result.stderr
  # The broken file is named and skipped, the others are written, and the exit status says something failed.
  assert result.returncode == 1, log[-3000:]
  assert 'broken.png: not a readable image' in log
  assert 'Segmented 3 of 4 images' in log and '1 FAILED: ' in log and 'broken.png' in log.splitlines()[-1]
  assert '[1/4]' in log and ' s -> ' in log  # progress with per-image time
  assert not glob.glob(str(output / 'other' / 'broken*'))
  assert not glob.glob(str(output / 'other' / 'notes*'))

  model_config = trained['pipeline'].model
  cases = [('frankfurt/' + SAMPLE_NAME, sample, (129, 257)), ('other/small', small, (129, 257)),
           ('other/wide', _read_rgb(str(inputs / 'other' / 'wide.jpg')), (129, 305))]
  classes = set()
  for name, image, network_shape in cases:
    train_ids = _read_png(str(output / (name + '_trainIds.png')))
    color = _read_png(str(output / (name + '_color.png')))
    overlay = _read_png(str(output / (name + '_overlay.png')))
    assert train_ids.shape == image.shape[:2] and train_ids.dtype == np.uint8, name
    assert color.shape == overlay.shape == image.shape, name
    np.testing.assert_array_equal(
        train_ids, _reference_predictions(model_config, trained['checkpoint'], image, network_shape), name)
    # Exactly the official colour of each pixel's class.
    np.testing.assert_array_equal(color, cityscapes_labels.TRAIN_ID_PALETTE[train_ids], name)
    np.testing.assert_allclose(overlay, 0.5 * image + 0.5 * color, atol=1, err_msg=name)
    classes.update(np.unique(train_ids).tolist())
  assert len(classes) >= 2, classes  # the palette check is not about a single colour


def test_label_ids_map_back_to_train_ids_through_the_official_table(trained, tmp_path):
  sample = _read_rgb(SAMPLE_IMAGES[0])
  summary = inference_lib.run_inference(
      trained['pipeline'].model, trained['checkpoint'], SAMPLE_IMAGES[0], str(tmp_path), input_shape=TINY_SHAPE,
      label_ids=True, session_config=fast_session_config())
  assert not summary.failed and len(summary.written) == 1
  label_ids = _read_png(str(tmp_path / (SAMPLE_NAME + '_labelIds.png')))
  assert not os.path.exists(str(tmp_path / (SAMPLE_NAME + '_trainIds.png')))
  train_ids = _reference_predictions(trained['pipeline'].model, trained['checkpoint'], sample, (129, 257))
  evaluated_ids = {label.id for label in cityscapes_labels.LABELS if 0 <= label.train_id < 19}
  assert set(np.unique(label_ids).tolist()) <= evaluated_ids
  np.testing.assert_array_equal(cityscapes_labels.LABEL_ID_TO_TRAIN_ID_LUT[label_ids], train_ids)
  # Without --input_shape the frame runs at its own rounded-up size, which is the same network here.
  np.testing.assert_array_equal(
      inference_lib.Segmenter(trained['pipeline'].model, trained['checkpoint']).network_shape_for(128, 256),
      (129, 257))


def test_list_images_directory_glob_and_file(tmp_path):
  for name in ('a/x.png', 'a/b/y.JPG', 'b/x.png', 'b/x.jpg', 'c/readme.txt'):
    os.makedirs(str((tmp_path / name).parent), exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  found = inference_lib.list_images(str(tmp_path))
  assert [n for _, n in found] == ['a/b/y', 'a/x', 'b/x_jpg', 'b/x_png']
  assert [n for _, n in inference_lib.list_images(str(tmp_path / '*' / '*.png'))] == ['a/x', 'b/x']
  assert [n for _, n in inference_lib.list_images(str(tmp_path / 'c' / 'readme.txt'))] == ['readme']
  with pytest.raises(ValueError, match=r"--input_path = '.*nowhere.*': no .png/.jpg/.jpeg images"):
    inference_lib.list_images(str(tmp_path / 'nowhere' / '*.png'))


def test_shape_flags_and_label_ids_errors(trained, tmp_path):
  assert inference_graph.parse_shape('1,-1,-1,3', '--input_shape', (3, 4)) == (1, None, None, 3)
  assert inference_graph.parse_shape('', '--pad_to_shape', (2,)) is None
  with pytest.raises(ValueError, match=r"--input_shape = '1024x2048': expected comma-separated integers"):
    inference_graph.parse_shape('1024x2048', '--input_shape', (3,))
  with pytest.raises(ValueError, match=r"--pad_to_shape = '1,2,3': expected 2 values"):
    inference_graph.parse_shape('1,2,3', '--pad_to_shape', (2,))
  assert inference_graph.resolve_network_shape((1024, 2048), None, 8) == (1025, 2049)
  assert inference_graph.resolve_network_shape((713, 713), None, 8) == (713, 713)
  with pytest.raises(ValueError, match='--pad_to_shape = 100,2049 is smaller than --input_shape = 1024,2048'):
    inference_graph.resolve_network_shape((1024, 2048), (100, 2049), 8)
  with pytest.raises(ValueError, match='dynamic height or width: give --pad_to_shape'):
    inference_graph.resolve_network_shape((None, 2048), None, 8)
  five_classes = text_format.Parse(text_format.MessageToString(trained['pipeline'].model),
                                   type(trained['pipeline'].model)())
  five_classes.pspnet.num_classes = 5
  with pytest.raises(ValueError, match='--label_ids .* num_classes = 5'):
    inference_lib.run_inference(five_classes, trained['checkpoint'], SAMPLE_IMAGES[0], '/nonexistent',
                                label_ids=True)
  with pytest.raises(ValueError, match=r'--trained_checkpoint = .* does not fit the model of the config: '
                                       r'0 of \d+ model variables missing, 2 with another shape'):
    exporter.export(five_classes, str(tmp_path / 'export'), trained['checkpoint'],
                    input_shape=(1, 65, 65, 3), num_timing_runs=0)
  assert not os.path.exists(str(tmp_path / 'export'))


def test_export_frozen_graph_and_saved_model_equal_the_checkpoint(trained, tmp_path):
  out = str(tmp_path / 'export')
  result = exporter.export(trained['pipeline'].model, out, trained['logdir'], input_shape=(1,) + TINY_SHAPE,
                           num_timing_runs=2, num_warmup_runs=1, session_config=fast_session_config())
  sample = _read_rgb(SAMPLE_IMAGES[0])
  expected = _reference_predictions(trained['pipeline'].model, trained['checkpoint'], sample, (129, 257))

  # Frozen graph: loads into a fresh graph, has no variables left, gives the checkpoint's predictions.
  assert result.frozen_graph == os.path.join(out, 'frozen_inference_graph.pb')
  graph = testing_utils.import_frozen_graph(result.frozen_graph)
  with graph.as_default():
    inputs, predictions = graph.get_tensor_by_name('inputs:0'), graph.get_tensor_by_name('predictions:0')
    assert inputs.dtype == tf.uint8 and inputs.shape.as_list() == [1, 128, 256, 3]
    assert predictions.dtype == tf.int32 and predictions.shape.as_list() == [1, 128, 256]
    with tf.Session(config=fast_session_config()) as sess:
      frozen_out = sess.run(predictions, {inputs: sample[np.newaxis]})
  np.testing.assert_array_equal(frozen_out[0], expected)

  # SavedModel: loaded by eager TF2 in a fresh process (this one is in TF1 graph mode).
  script = """
import sys
import numpy as np
import tensorflow as tf
assert tf.executing_eagerly()
loaded = tf.saved_model.load(sys.argv[1])
serving = loaded.signatures['serving_default']
out = serving(inputs=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], out['predictions'].numpy())
print(sorted(out))
"""
  np.save(str(tmp_path / 'image.npy'), sample[np.newaxis])
  run = subprocess.run([sys.executable, '-c', script, result.saved_model, str(tmp_path / 'image.npy'),
                        str(tmp_path / 'saved.npy')], capture_output=True, text=True, timeout=180)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "['predictions']" in run.stdout
  saved_out = np.load(str(tmp_path / 'saved.npy'))
  assert saved_out.dtype == np.int32
  np.testing.assert_array_equal(saved_out[0], expected)

  # Figures: the inference graph's parameters (no aux head, no moving statistics), MACs cross-checked.
  with open(os.path.join(out, 'model_figures.json')) as f:
    figures = json.load(f)
  with tf.Graph().as_default():
    model = model_builder.build(trained['pipeline'].model, is_training=False)
    model.predict(tf.zeros([1, 65, 65, 3]))
    expected_params = sum(v.shape.num_elements() for v in tf.trainable_variables())
  assert figures['parameters']['total'] == expected_params
  assert 'AuxHead' not in figures['parameters']
  assert figures['network_shape'] == [129, 257] and figures['input_shape'] == [1, 128, 256, 3]
  assert figures['macs']['total'] > 0
  assert figures['macs']['total'] == sum(figures['macs'][p] for p in ('backbone', 'PSPModule', 'Logits'))
  assert figures['profiler']['conv_flops'] == 2 * figures['macs']['total']
  assert figures['timing']['weights'] == 'checkpoint' and figures['timing']['runs'] == 2
  assert figures['timing']['median_seconds'] > 0


def test_export_dynamic_image_size_pads_crops_and_rejects_larger_images(trained, tmp_path):
  out = str(tmp_path / 'export')
  result = exporter.export(trained['pipeline'].model, out, trained['checkpoint'], input_shape=(None, None, 3),
                           pad_to_shape=(129, 257), num_timing_runs=0, session_config=fast_session_config())
  assert result.figures['timing'] is None
  graph_def = tf.GraphDef()
  with open(result.frozen_graph, 'rb') as f:
    graph_def.ParseFromString(f.read())
  sample = _read_rgb(SAMPLE_IMAGES[0])
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name='')
    inputs, predictions = graph.get_tensor_by_name('inputs:0'), graph.get_tensor_by_name('predictions:0')
    with tf.Session(config=fast_session_config()) as sess:
      for image in (sample, sample[5:70, 17:250]):
        np.testing.assert_array_equal(
            sess.run(predictions, {inputs: image}),
            _reference_predictions(trained['pipeline'].model, trained['checkpoint'], image, (129, 257)))
      with pytest.raises(tf.errors.InvalidArgumentError, match='larger than the network shape 129x257'):
        sess.run(predictions, {inputs: np.zeros([130, 20, 3], np.uint8)})


def test_export_script_without_checkpoint_reports_figures_only(trained, tmp_path):
  out = tmp_path / 'figures'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'export.py'), '--config_path', trained['config'], '--output_dir',
       str(out), '--input_shape', '1,%d,%d,3' % TINY_SHAPE[:2], '--num_timing_runs', '1',
       '--num_warmup_runs', '1'], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads((out / 'model_figures.json').read_text())
  assert figures['trained_checkpoint'] is None and figures['timing']['weights'] == 'random'
  # The printed report is the written figures.
  assert 'Parameters (inference graph): {:,} '.format(figures['parameters']['total']) in result.stdout
  assert 'MACs at 128x256 (network 129x257): %.2f G' % figures['gmacs'] in result.stdout
  assert 'random weights' in result.stdout
  assert sorted(os.listdir(str(out))) == ['model_figures.json']


def test_bfloat16_inference_agrees_with_float32_and_keeps_float32_variables(tmp_path):
  size = [65, 97]
  model_config = tiny_model_config(num_classes=5)
  image = np.random.RandomState(3).randint(0, 256, [1] + size + [3]).astype(np.uint8)
  sess, endpoints, _ = random_weights_inference_session(model_config, size)
  with sess:
    expected = sess.run(endpoints.predictions, {endpoints.inputs: image})
    with sess.graph.as_default():
      checkpoint = tf.train.Saver(slim.get_model_variables()).save(sess, str(tmp_path / 'model.ckpt'))
  export_dir = str(tmp_path / 'export')
  exporter.export(model_config, export_dir, trained_checkpoint=checkpoint, input_shape=(1, size[0], size[1], 3),
                  num_timing_runs=0, compute_dtype='bfloat16')
  with open(os.path.join(export_dir, exporter.FIGURES_NAME)) as f:
    assert json.load(f)['compute_dtype'] == 'bfloat16'
  graph_def = tf.GraphDef()
  with open(os.path.join(export_dir, exporter.FROZEN_GRAPH_NAME), 'rb') as f:
    graph_def.ParseFromString(f.read())
  assert any(n.op == 'Conv2D' and n.attr['T'].type == tf.bfloat16.as_datatype_enum for n in graph_def.node)
  with tf.Graph().as_default():
    tf.import_graph_def(graph_def, name='')
    with tf.Session() as sess:
      frozen = sess.run('predictions:0', {'inputs:0': image})
  # bf16 keeps 8 bits of mantissa: most pixels keep their class (random weights, 5 classes).
  assert np.mean(frozen == expected) > 0.9
  # The bfloat16 checkpoint graph restores the float32 checkpoint: same variable names and dtypes.
  with tf.Graph().as_default():
    endpoints = inference_graph.build_inference_graph(inference_graph.build_inference_model(model_config),
                                                      [1] + size + [3], size, compute_dtype='bfloat16')
    assert {v.dtype.base_dtype for v in tf.global_variables()} == {tf.float32}
    with tf.Session() as sess:
      checkpoint_utils.restore_model_variables(sess, checkpoint)
      restored = sess.run(endpoints.predictions, {endpoints.inputs: image})
  assert np.mean(restored == expected) > 0.9


def test_compute_dtype_errors_name_the_flag():
  with pytest.raises(ValueError) as error:
    inference_graph.compute_dtype_of('float16')
  assert '--compute_dtype' in str(error.value) and 'bfloat16' in str(error.value)


def test_full_pspnet50_parameters_and_macs_at_1024x2048():
  pipeline = config_util.load_pipeline_config(os.path.join(REPO_ROOT, 'configs', 'pspnet_1.0_713_resnet_v1.config'))
  with tf.Graph().as_default() as graph:
    model = inference_graph.build_inference_model(pipeline.model)
    inference_graph.build_inference_graph(model, [1, 1024, 2048, 3], (1024, 2048))
    parameters = exporter.count_parameters(slim.get_model_variables())
    macs = exporter.count_conv_macs(graph)
    profiled = exporter.profile_flops(graph)
  assert parameters['total'] == 46591571
  assert 'AuxHead' not in parameters
  # ~1.41 TMACs (2.8 TFLOPs), 95 % of it in the dilated backbone and the pyramid fusion conv at stride 8.
  assert macs['total'] == 1407744737280
  assert macs['total'] == macs['backbone'] + macs['PSPModule'] + macs['Logits']
  assert profiled['Conv2D'] == 2 * macs['total']
  # Padding to 1025 x 2049 is what the Cityscapes export runs at by default.
  assert inference_graph.resolve_network_shape((1024, 2048), None, 8) == (1025, 2049)


def test_seed_checkpoint_for_icnet_round_trips_into_a_new_training_run(trained, cityscapes_records, tmp_path):
  out = str(tmp_path / 'seed')
  result = exporter.export(trained['pipeline'].model, out, trained['checkpoint'], input_shape=(1,) + TINY_SHAPE,
                           checkpoint_only=True)
  assert result.frozen_graph is None and result.saved_model is None
  assert result.checkpoint == os.path.join(out, 'model.ckpt')
  assert tf.train.latest_checkpoint(out) == result.checkpoint
  seed = dict(tf.train.list_variables(result.checkpoint))
  source = tf.train.load_checkpoint(trained['checkpoint'])
  # Model variables only: weights, batch-norm statistics, the aux head; no optimizer slots, no global step.
  assert not [n for n in seed if 'Adam' in n or 'global_step' in n or 'beta1_power' in n]
  assert 'SharedFeatureExtractor/resnet_v1_50/conv1/weights' in seed
  assert 'SharedFeatureExtractor/resnet_v1_50/block4/unit_1/bottleneck_v1/conv2/BatchNorm/moving_variance' in seed
  assert 'PSPModule/Conv_4/weights' in seed and 'Logits/Conv/biases' in seed and 'AuxHead/Logits/Conv/weights' in seed
  seed_reader = tf.train.load_checkpoint(result.checkpoint)
  for name in seed:
    np.testing.assert_array_equal(seed_reader.get_tensor(name), source.get_tensor(name), name)
  with tf.Graph().as_default():
    model = model_builder.build(trained['pipeline'].model, is_training=True)
    model.predict(tf.zeros([1, 65, 65, 3]))
    assert set(seed) == {v.op.name for v in slim.get_model_variables()}

  with open(os.path.join(out, 'name_map.json')) as f:
    name_map = json.load(f)
  assert name_map['fine_tune_checkpoint_type'] == 'segmentation'
  listed = {entry['name']: entry for entry in name_map['variables']}
  assert set(listed) == set(seed)
  for name, entry in listed.items():
    assert entry['shape'] == list(seed[name])
    assert entry['part'] == {'SharedFeatureExtractor': 'backbone', 'PSPModule': 'PSPModule', 'Logits': 'Logits',
                             'AuxHead': 'AuxHead'}[name.split('/')[0]]
    assert entry['kind'] == ('moving_statistics' if 'moving_' in name else 'parameter')
  assert list(name_map['parts']) == ['backbone', 'PSPModule', 'Logits', 'AuxHead']

  # A new run initialised from the seed directory: every learned value arrives (lr ~0 keeps them as restored).
  config = config_util.parse_pipeline_config(
      tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val'], num_steps=1))
  text_format.Merge("""train_config { fine_tune_checkpoint: "%s" fine_tune_checkpoint_type: "segmentation"
      optimizer { adam_optimizer { learning_rate { constant_learning_rate { learning_rate: 1e-30 } } } } }""" % out,
                    config)
  logdir = str(tmp_path / 'downstream')
  assert trainer.train(config, logdir, trainer.default_options(session_config=fast_session_config())) == 1
  downstream = tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir))
  for name, entry in listed.items():
    if entry['kind'] == 'parameter':
      np.testing.assert_allclose(downstream.get_tensor(name), seed_reader.get_tensor(name), atol=1e-12,
                                 err_msg=name)
