"""Evaluator tests: eval config validation, sliding-window / flip / multi-scale inference (exact where the result
must equal a plain pass, and checked against its definition otherwise), the evaluation loop beside a trainer
(each checkpoint once, restart, deleted and half-written checkpoints, max_evals, timeout, final step),
TensorBoard summaries read back with EventAccumulator, JSON results, the best checkpoint, and eval.py."""
import glob
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from builders import eval_input_builder
from builders import model_builder
from drivers import eval_results
from drivers import evaluator
from drivers import inference_graph
from drivers import trainer
from libs import checkpoint_utils
from libs import metrics
from libs.compat import tf
from libs.config_errors import ConfigError
from tests import testing_utils
from tests.conftest import fast_session_config
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline
from tests.conftest import tiny_pipeline_text

PADDED = eval_input_builder.EvalSpec('padded_eval_input', (65, 129), None, (1.0,), False)


def _pipeline(records, extra='', **kwargs):
  return tiny_pipeline(records, extra, **kwargs)


def _options(**kwargs):
  kwargs.setdefault('session_config', fast_session_config())
  kwargs.setdefault('eval_interval_secs', 0.05)
  return evaluator.default_options(**kwargs)


@pytest.fixture(scope='module')
def trained(cityscapes_records, tmp_path_factory):
  """A train dir with model.ckpt-1 and model.ckpt-2 (train_config.num_steps = 2)."""
  root = tmp_path_factory.mktemp('trained')
  logdir = str(root / 'train')
  # A checkpoint after every step; whatever else the trainer's cadence adds (e.g. one at step 0) is left out.
  trainer.train(_pipeline(cityscapes_records, num_steps=2), logdir,
                trainer.default_options(session_config=fast_session_config(), save_interval_secs=0))
  trained_dir = _copy_train_dir(logdir, str(root / 'checkpoints_1_2'), [1, 2])
  assert [s for s, _ in checkpoint_utils.list_checkpoints(trained_dir)[0]] == [1, 2]
  return trained_dir


def _copy_train_dir(trained, destination, steps):
  """A copy of the trained dir holding only the given checkpoints, announced in its state file."""
  os.makedirs(destination)
  for step in steps:
    for path in glob.glob(os.path.join(trained, 'model.ckpt-%d.*' % step)):
      shutil.copy(path, destination)
  _write_state(destination, steps)
  return destination


def _write_state(train_dir, steps):
  names = ['model.ckpt-%d' % s for s in steps]
  with open(os.path.join(train_dir, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "%s"\n' % names[-1])
    f.writelines('all_model_checkpoint_paths: "%s"\n' % n for n in names)


def _steps(results):
  return [r['global_step'] for r in results]


@pytest.fixture
def checkpoint_reads(monkeypatch):
  """Names of the checkpoints the evaluator tries to read, in order, one per attempt (an attempt starts by
  reading the checkpoint's variable index)."""
  reads = []
  read = checkpoint_utils.filter_restore_map

  def recording_read(var_map, path, *args, **kwargs):
    reads.append(os.path.basename(path))
    return read(var_map, path, *args, **kwargs)

  monkeypatch.setattr(checkpoint_utils, 'filter_restore_map', recording_read)
  return reads


# Configuration.

def test_unset_eval_input_type_and_reader_are_errors_naming_the_file(cityscapes_records, tmp_path):
  config = _pipeline(cityscapes_records)
  config.eval_config.ClearField('eval_input_type')
  with pytest.raises(ConfigError, match=r'^my.config: eval_config.eval_input_type = None: must be set to one of '
                     r'\{padded_eval_input, cropped_eval_input, sliding_window_eval_input\}'):
    evaluator.evaluate(config, str(tmp_path / 'train'), str(tmp_path / 'eval'), _options(), config_path='my.config')
  config.eval_config.eval_input_type.SetInParent()  # set, but none of its oneof
  with pytest.raises(ConfigError, match=r'eval_config.eval_input_type = None: exactly one of'):
    evaluator.validate_eval_config(config)
  config = _pipeline(cityscapes_records)
  config.ClearField('eval_input_reader')
  with pytest.raises(ConfigError, match='eval_input_reader = None: must be set'):
    evaluator.validate_eval_config(config)


# Inference: sliding windows, mirror images, scales.

class _PerPixelNetwork(object):
  """A network whose output at a pixel depends on that pixel only: every inference mode must reproduce it."""
  num_classes = 3

  def __call__(self, images):
    assert images.shape[1:].is_fully_defined(), images.shape  # like PSPNet, it needs a static size
    return tf.nn.softmax(images / 64.0, axis=-1)


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _run(tensors):
  with tf.Session(config=fast_session_config()) as sess:
    sess.run(tf.global_variables_initializer())
    return sess.run(tensors)


def test_window_origins_cover_the_image_and_end_at_its_border():
  with tf.Graph().as_default():
    origins = _run([inference_graph._window_starts(tf.constant(size), crop, stride)  # pylint: disable=protected-access
                    for size, crop, stride in [(10, 4, 3), (11, 4, 3), (4, 4, 2), (9, 4, 4), (12, 4, 4)]])
  assert [o.tolist() for o in origins] == [[0, 3, 6], [0, 3, 6, 7], [0], [0, 4, 5], [0, 4, 8]]


def test_every_mode_reproduces_a_per_pixel_network_exactly():
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, size=(37, 53, 3)).astype(np.float32)
  constant = np.full((37, 53, 3), [10.0, 200.0, 90.0], np.float32)
  expected = _softmax(image.astype(np.float64) / 64.0)
  specs = {
      'padded': PADDED._replace(fixed_size=(40, 60)),
      'flip': PADDED._replace(fixed_size=(40, 60), flip=True),
      # Overlapping windows in both directions, uneven batches, a last window moved back to the border.
      'sliding': eval_input_builder.EvalSpec('sliding_window_eval_input', None, eval_input_builder.SlidingWindow(16, 20, 7, 9, 4),
                                    (1.0,), True),
      # A window larger than the image: padded, then cropped away.
      'large_window': eval_input_builder.EvalSpec('sliding_window_eval_input', None,
                                         eval_input_builder.SlidingWindow(48, 64, 48, 64, 1), (1.0,), False),
  }
  scaled_specs = {
      'scales_padded': PADDED._replace(fixed_size=(40, 60), scales=(0.5, 1.0, 1.5)),
      'scales_sliding': eval_input_builder.EvalSpec('sliding_window_eval_input', None,
                                           eval_input_builder.SlidingWindow(16, 20, 8, 10, 3), (0.75, 1.25), True),
  }
  with tf.Graph().as_default():
    network = _PerPixelNetwork()
    outputs = {name: inference_graph.predict_probabilities(tf.constant(image), network, spec)
               for name, spec in specs.items()}
    # Resizing changes a varying image; a constant one stays constant at every scale.
    outputs.update({name: inference_graph.predict_probabilities(tf.constant(constant), network, spec)
                    for name, spec in scaled_specs.items()})
    values = _run(outputs)
  for name in specs:
    np.testing.assert_allclose(values[name], expected, rtol=0, atol=2e-7, err_msg=name)
  for name in scaled_specs:
    np.testing.assert_allclose(values[name], _softmax(constant.astype(np.float64) / 64.0), atol=2e-6,
                               err_msg=name)


def test_scales_average_the_probabilities_of_each_scale():
  rng = np.random.default_rng(1)
  spec = PADDED._replace(fixed_size=(20, 30))
  with tf.Graph().as_default():
    image = tf.constant(rng.uniform(0, 255, size=(20, 30, 3)).astype(np.float32))
    network = _PerPixelNetwork()
    both = inference_graph.predict_probabilities(image, network, spec._replace(scales=(0.5, 1.0)))
    half = inference_graph.predict_probabilities(image, network, spec._replace(scales=(0.5,)))
    full = inference_graph.predict_probabilities(image, network, spec)
    both, half, full = _run([both, half, full])
  np.testing.assert_allclose(both, (half + full) / 2, atol=1e-7)
  assert np.abs(half - full).max() > 1e-3  # the half-scale view is really different


def test_real_model_flip_window_and_scale_averaging(cityscapes_records):
  config = _pipeline(cityscapes_records)
  rng = np.random.default_rng(2)
  image = rng.uniform(0, 255, size=(60, 120, 3)).astype(np.float32)
  with tf.Graph().as_default():
    model = model_builder.build(config.model, is_training=False)
    network = inference_graph.ModelProbabilities(model)
    plain = inference_graph.predict_probabilities(tf.constant(image), network, PADDED)
    num_variables = len(tf.global_variables())
    mirrored_input = inference_graph.predict_probabilities(tf.constant(image[:, ::-1]), network, PADDED)
    flipped = inference_graph.predict_probabilities(tf.constant(image), network, PADDED._replace(flip=True))
    # One window exactly the padded size: the plain padded pass.
    whole_window = inference_graph.predict_probabilities(tf.constant(image), network, eval_input_builder.EvalSpec(
        'sliding_window_eval_input', None, eval_input_builder.SlidingWindow(65, 129, 65, 129, 1), (1.0,), False))
    overlapping = inference_graph.predict_probabilities(tf.constant(image), network, eval_input_builder.EvalSpec(
        'sliding_window_eval_input', None, eval_input_builder.SlidingWindow(33, 49, 17, 25, 2), (0.75, 1.0), True))
    assert len(tf.global_variables()) == num_variables  # every view shares the one set of weights
    values = _run({'plain': plain, 'mirrored_input': mirrored_input, 'flipped': flipped,
                   'whole_window': whole_window, 'overlapping': overlapping})
  assert values['plain'].shape == (60, 120, 19)
  np.testing.assert_allclose(values['flipped'], (values['plain'] + values['mirrored_input'][:, ::-1]) / 2,
                             rtol=1e-5, atol=1e-7)
  assert np.abs(values['flipped'] - values['plain']).max() > 1e-4  # the mirrored view changes something
  np.testing.assert_array_equal(values['whole_window'], values['plain'])
  overlapping = values['overlapping']
  assert overlapping.shape == (60, 120, 19) and np.all(np.isfinite(overlapping))
  np.testing.assert_allclose(overlapping.sum(axis=2), 1.0, atol=1e-5)
  assert np.abs(overlapping - values['plain']).max() > 1e-4


# Whole evaluations of trained checkpoints.

def test_evaluate_all_writes_summaries_results_and_best(cityscapes_records, trained, tmp_path):
  eval_dir = str(tmp_path / 'eval')
  results = evaluator.evaluate(_pipeline(cityscapes_records), trained, eval_dir, _options(
      evaluate_all_from_checkpoint=os.path.join(trained, 'model.ckpt-1'), image_summaries=True))
  assert _steps(results) == [1, 2]  # each once, in order
  assert eval_results.evaluated_steps(eval_dir) == {1, 2}

  names = metrics.class_names(19)
  for result in results:
    saved = metrics.read_json(os.path.join(eval_dir, 'results', 'step_%08d.json' % result['global_step']))
    matrix = np.array(saved['confusion_matrix'])
    assert matrix.shape == (19, 19) and matrix.sum() == saved['num_pixels'] > 0
    assert saved['num_images'] == 3 and saved['class_names'] == names
    assert saved['mIoU'] == pytest.approx(metrics.mean_iou(matrix), rel=1e-12)
    assert list(saved['class_iou']) == names
    assert saved['eval_input']['type'] == 'padded_eval_input' and saved['eval_input']['size'] == [129, 257]
    assert saved['eval_loss'] > 0

  events = EventAccumulator(eval_dir, size_guidance={'scalars': 0, 'images': 0})
  events.Reload()
  tags = events.Tags()
  for tag in ['Metrics/mIoU', 'Metrics/PixelAccuracy', 'Metrics/MeanClassAccuracy', 'Losses/EvalLoss',
              'Metrics/IoU/road', 'Metrics/IoU/traffic_light']:
    assert tag in tags['scalars'], tag
    assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
  for result, event in zip(results, events.Scalars('Metrics/mIoU')):
    assert event.value == pytest.approx(result['mIoU'], rel=1e-6)
  for name in ('Input', 'GroundTruth', 'Prediction'):
    images = events.Images('EvalImages/%s/0' % name)
    assert [i.step for i in images] == [1, 2]
    assert (images[0].height, images[0].width) == (128, 256)  # the image's own size, padding cropped away
  assert 'EvalImages/Input/2' in tags['images'] and 'EvalImages/Input/3' not in tags['images']

  best = metrics.read_json(os.path.join(eval_dir, 'best.json'))
  best_step = max(results, key=lambda r: r['mIoU'])['global_step']
  assert best['global_step'] == best_step
  kept = tf.train.latest_checkpoint(os.path.join(eval_dir, 'best'))
  assert kept.endswith('model.ckpt-%d' % best_step) and best['kept_checkpoint'] == kept
  assert len(glob.glob(os.path.join(eval_dir, 'best', '*.index'))) == 1
  name = 'PSPModule/Conv_4/weights'
  np.testing.assert_array_equal(tf.train.load_checkpoint(kept).get_tensor(name),
                                tf.train.load_checkpoint(os.path.join(trained, 'model.ckpt-%d' % best_step))
                                .get_tensor(name))


def test_confusion_matrix_equals_an_independent_prediction_at_label_resolution(cityscapes_records, trained,
                                                                               tmp_path):
  config = _pipeline(cityscapes_records)
  results = evaluator.evaluate(config, trained, str(tmp_path / 'eval'), _options(evaluate_all_from_checkpoint='2'))
  assert _steps(results) == [2]
  # The same checkpoint, the model applied by hand to each padded val image, the padding cropped off the
  # upsampled logits, scored against the label file's pixels in numpy.
  matrix = testing_utils.padded_eval_confusion_matrix(config, os.path.join(trained, 'model.ckpt-2'))
  np.testing.assert_array_equal(np.array(results[0]['confusion_matrix']), matrix)


def test_sliding_window_covering_the_padded_image_equals_the_padded_evaluation(cityscapes_records, trained,
                                                                              tmp_path):
  padded = evaluator.evaluate(_pipeline(cityscapes_records), trained, str(tmp_path / 'padded'),
                              _options(evaluate_all_from_checkpoint='2'))[0]
  window = evaluator.evaluate(_pipeline(cityscapes_records, extra="""eval_config { eval_input_type {
      sliding_window_eval_input { crop_height: 129 crop_width: 257 stride_height: 129 stride_width: 257 } } }"""),
                              trained, str(tmp_path / 'window'), _options(evaluate_all_from_checkpoint='2'))[0]
  assert window['eval_input']['type'] == 'sliding_window_eval_input'
  assert window['confusion_matrix'] == padded['confusion_matrix']
  assert window['eval_loss'] == pytest.approx(padded['eval_loss'], rel=1e-9)
  # Overlapping windows with mirror images and two scales run end to end on the same pixels.
  averaged = evaluator.evaluate(_pipeline(cityscapes_records, extra="""eval_config { eval_input_type {
      sliding_window_eval_input { crop_height: 65 crop_width: 97 stride_height: 40 stride_width: 60 batch_size: 3 } }
      eval_scales: [0.75, 1.0] flip_horizontally: true }"""), trained, str(tmp_path / 'averaged'),
                                _options(evaluate_all_from_checkpoint='2'))[0]
  assert averaged['num_pixels'] == padded['num_pixels']
  assert averaged['eval_input']['scales'] == [0.75, 1.0] and averaged['eval_input']['flip_horizontally']


# The loop beside a trainer.

def test_loop_evaluates_each_new_checkpoint_once_across_restarts_and_stops_at_the_final_step(
    cityscapes_records, trained, tmp_path):
  train_dir = _copy_train_dir(trained, str(tmp_path / 'train'), [1])
  eval_dir = str(tmp_path / 'eval')
  config = _pipeline(cityscapes_records, num_steps=2)
  # Only step 1 so far: evaluated, then no new checkpoint within the timeout.
  start = time.time()
  assert _steps(evaluator.evaluate(config, train_dir, eval_dir, _options(eval_timeout_secs=1.0))) == [1]
  assert 1.0 <= time.time() - start < 30
  # The trainer writes step 2 (the final one); a restarted evaluator skips step 1 and exits after step 2
  # without waiting for its timeout.
  _copy_train_dir(trained, str(tmp_path / 'step2'), [2])
  for path in glob.glob(str(tmp_path / 'step2' / 'model.ckpt-2.*')):
    shutil.copy(path, train_dir)
  _write_state(train_dir, [1, 2])
  start = time.time()
  assert _steps(evaluator.evaluate(config, train_dir, eval_dir, _options(eval_timeout_secs=30))) == [2]
  assert time.time() - start < 25
  # Everything evaluated: a third start has nothing to do.
  start = time.time()
  assert evaluator.evaluate(config, train_dir, eval_dir, _options(eval_timeout_secs=30)) == []
  assert time.time() - start < 25
  assert eval_results.evaluated_steps(eval_dir) == {1, 2}
  events = EventAccumulator(eval_dir)
  events.Reload()
  assert [e.step for e in events.Scalars('Metrics/mIoU')] == [1, 2]  # no step twice across the restarts


def test_loop_waits_in_an_empty_train_dir_and_stops_at_the_timeout(cityscapes_records, tmp_path):
  start = time.time()
  results = evaluator.evaluate(_pipeline(cityscapes_records), str(tmp_path / 'not_yet'), str(tmp_path / 'eval'),
                               _options(eval_timeout_secs=0.5))
  assert results == [] and time.time() - start >= 0.5


def test_max_evals(cityscapes_records, trained, tmp_path, checkpoint_reads):
  config = _pipeline(cityscapes_records, extra='train_config { num_steps: 100 }')
  # The loop takes the newest checkpoint and passes over older ones: step 1 is not even read.
  assert _steps(evaluator.evaluate(config, trained, str(tmp_path / 'loop'), _options(max_evals=1))) == [2]
  assert checkpoint_reads == ['model.ckpt-2']
  assert eval_results.evaluated_steps(str(tmp_path / 'loop')) == {2}
  # From a given checkpoint on: in order, and nothing after the max_evals-th.
  del checkpoint_reads[:]
  assert _steps(evaluator.evaluate(config, trained, str(tmp_path / 'all'), _options(
      max_evals=1, evaluate_all_from_checkpoint='model.ckpt-1'))) == [1]
  assert checkpoint_reads == ['model.ckpt-1']


def test_deleted_and_half_written_checkpoints_are_skipped_with_a_warning(cityscapes_records, trained, tmp_path,
                                                                        log_lines, monkeypatch, checkpoint_reads):
  train_dir = _copy_train_dir(trained, str(tmp_path / 'train'), [1, 2])
  # A checkpoint being written: its .index exists, the state file does not announce it yet.
  with open(os.path.join(train_dir, 'model.ckpt-3.index'), 'wb') as f:
    f.write(b'partial')
  # The trainer's retention deletes model.ckpt-1 just as the evaluator starts restoring it.
  restore = evaluator._restore_checkpoint  # pylint: disable=protected-access
  restored = []

  def restore_after_deletion(saver, sess, path):
    restored.append(os.path.basename(path))
    if path.endswith('model.ckpt-1'):
      for name in glob.glob(path + '.*'):
        os.remove(name)
    restore(saver, sess, path)

  monkeypatch.setattr(evaluator, '_restore_checkpoint', restore_after_deletion)
  eval_dir = str(tmp_path / 'eval')
  results = evaluator.evaluate(_pipeline(cityscapes_records), train_dir, eval_dir,
                               _options(evaluate_all_from_checkpoint='1'))
  assert _steps(results) == [2]
  assert eval_results.evaluated_steps(eval_dir) == {2}
  # The deleted checkpoint is skipped at once (not retried), and the evaluation goes on with the next one; the
  # half-written one is not read at all.
  assert restored == ['model.ckpt-1', 'model.ckpt-2']
  assert checkpoint_reads == ['model.ckpt-1', 'model.ckpt-2']
  assert any('model.ckpt-3 is not complete yet' in line for line in log_lines)

  # Deleted before evaluation (still listed in the state file); the loop skips it without reading it and goes
  # on waiting for new checkpoints.
  del checkpoint_reads[:]
  for name in glob.glob(os.path.join(train_dir, 'model.ckpt-2.*')):
    os.remove(name)
  start = time.time()
  results = evaluator.evaluate(_pipeline(cityscapes_records), train_dir, str(tmp_path / 'eval2'),
                               _options(eval_timeout_secs=0.3))
  assert results == [] and time.time() - start >= 0.3
  assert checkpoint_reads == []
  assert eval_results.evaluated_steps(str(tmp_path / 'eval2')) == set()

  # Announced but unreadable while its files exist: retried, then skipped (not read again until the timeout).
  with open(os.path.join(train_dir, 'model.ckpt-3.data-00000-of-00001'), 'wb') as f:
    f.write(b'partial')
  _write_state(train_dir, [3])
  results = evaluator.evaluate(_pipeline(cityscapes_records), train_dir, str(tmp_path / 'eval3'),
                               _options(eval_timeout_secs=2.0))
  assert results == []
  assert checkpoint_reads == ['model.ckpt-3'] * evaluator.MAX_RESTORE_ATTEMPTS
  assert eval_results.evaluated_steps(str(tmp_path / 'eval3')) == set()


def test_checkpoint_of_another_model_is_an_error(cityscapes_records, trained, tmp_path):
  config = _pipeline(cityscapes_records, num_classes=5)
  with pytest.raises(ValueError, match='does not match the model of the eval config'):
    evaluator.evaluate(config, trained, str(tmp_path / 'eval'), _options(evaluate_all_from_checkpoint='1'))


def test_eval_script_with_the_seed_flags(cityscapes_records, trained, tmp_path):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val'], num_steps=2))
  eval_dir = tmp_path / 'eval'
  # The walkthrough's command: the train dir's final checkpoint is evaluated, then the evaluator exits.
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'eval.py'), '--config_path', str(config_path), '--train_dir',
       trained, '--eval_dir', str(eval_dir), '--verbose', '--log_every_n_images', '1'],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'running mIoU' in result.stderr and 'traffic light' in result.stderr
  assert result.stderr.count('Global step 2: mIoU') == 1
  assert eval_results.evaluated_steps(str(eval_dir)) == {2}
  assert os.path.isfile(str(eval_dir / 'best.json')) and os.path.isfile(str(eval_dir / 'pipeline.config'))


def test_best_results_reads_best_json_or_the_highest_miou(tmp_path):
  eval_dir = str(tmp_path / 'eval')
  assert eval_results.best_results(eval_dir) is None
  for step, miou in ((1, 0.2), (2, 0.5), (3, float('nan'))):
    eval_results.write_results(eval_dir, step, {'global_step': step, 'mIoU': miou, 'class_iou': {'road': miou}})
  assert eval_results.best_results(eval_dir)['global_step'] == 2  # no best.json: the highest mIoU
  metrics.write_json(os.path.join(eval_dir, 'best.json'), {'global_step': 1, 'mIoU': 0.2,
                                                           'results_file': 'results/step_00000001.json'})
  assert eval_results.best_results(eval_dir)['global_step'] == 1  # what best.json names
