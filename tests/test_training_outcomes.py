"""How a training (or evaluation) run ends, and what it tells: option values refused before anything is written,
an input without an example is an error naming its files, summaries at the final step, progress lines of async
workers past num_steps, a training crop larger than the eval pad is a warning, eval.py warns about a missing
--train_dir, and a stop signal exits 130 / 143 after the final checkpoint."""
import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from drivers import evaluator
from drivers import trainer
from libs.compat import tf
from libs.config_errors import ConfigError
from tests.conftest import fast_session_config
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline
from tests.conftest import tiny_pipeline_text

PROGRESS = re.compile(r'step (\d+)/\d+, loss')


def _options(**kwargs):
  kwargs.setdefault('session_config', fast_session_config())
  kwargs.setdefault('log_every_n_steps', 1)
  return trainer.default_options(**kwargs)


def _checkpoint_step(logdir):
  return int(tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir)).get_tensor('global_step'))


@pytest.fixture(scope='module')
def short_run(cityscapes_records, tmp_path_factory):
  """A 3-step run with the default (long) summary interval: its logdir."""
  logdir = str(tmp_path_factory.mktemp('short_run') / 'train')
  assert trainer.train(tiny_pipeline(cityscapes_records, num_steps=3), logdir, _options()) == 3
  return logdir


@pytest.mark.parametrize('overrides,message', [
    (dict(max_checkpoints_to_keep=-1), '--max_checkpoints_to_keep = -1: must be >= 0 (0: keep all)'),
    (dict(keep_checkpoint_every_n_hours=0.0), '--keep_checkpoint_every_n_hours = 0.0: must be > 0'),
    (dict(log_every_n_steps=0), '--log_every_n_steps = 0: must be > 0'),
    (dict(save_interval_secs=-1), '--save_interval_secs = -1: must be >= 0'),
    (dict(save_summaries_secs=-1), '--save_summaries_secs = -1: must be >= 0'),
    (dict(num_clones=0), '--num_clones = 0: must be > 0'),
    (dict(max_steps=0), 'max_steps = 0: must be > 0 (None: no limit)'),
    (dict(save_interval_secs=0, max_checkpoints_to_keep=0),
     '--save_interval_secs = 0: a checkpoint after every step needs --max_checkpoints_to_keep > 0'),
])
def test_invalid_options_are_refused_before_anything_is_written(cityscapes_records, tmp_path, overrides, message):
  logdir = tmp_path / 'train'
  with pytest.raises(ConfigError) as error:
    trainer.train(tiny_pipeline(cityscapes_records, num_steps=1), str(logdir), _options(**overrides),
                  config_path='my.config')
  assert message in str(error.value)
  assert 'my.config' not in str(error.value)  # a flag, not a field of the config file
  assert not logdir.exists()


def test_train_script_refuses_a_negative_max_checkpoints_to_keep(cityscapes_records, tmp_path):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(cityscapes_records['train'], num_steps=1))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'train.py'), '--config_path', str(config_path), '--logdir',
       str(tmp_path / 'train'), '--max_checkpoints_to_keep', '-1'],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  assert result.returncode != 0
  assert '--max_checkpoints_to_keep = -1: must be >= 0' in result.stderr
  assert not (tmp_path / 'train').exists()


def test_empty_train_input_is_an_error_naming_patterns_and_files(cityscapes_records, tmp_path, log_lines):
  empty = tmp_path / 'empty.record'
  empty.write_bytes(b'')
  pattern = str(tmp_path / 'empty*.record')
  config = tiny_pipeline(cityscapes_records, extra='train_input_reader { tf_record_input_reader { '
                         'input_path: "%s" } }' % pattern)
  del config.train_input_reader.tf_record_input_reader.input_path[0]  # the tiny config's records
  logdir = str(tmp_path / 'train')
  with pytest.raises(ConfigError) as error:
    trainer.train(config, logdir, _options(), config_path='my.config')
  message = str(error.value)
  assert message.startswith('my.config: train_input_reader.tf_record_input_reader.input_path = [%r]' % pattern)
  assert str(empty) in message and 'no example' in message
  assert not any(line.startswith('Saved checkpoint') for line in log_lines)
  assert not any('nothing to train' in line for line in log_lines)


def test_train_input_exhausted_after_some_steps_ends_the_run_with_its_checkpoint(cityscapes_records, tmp_path):
  # 8 frames, one epoch, batches of 4: two steps, then the input ends (not an error).
  config = tiny_pipeline(cityscapes_records, batch_size=4, num_steps=100,
                         extra='train_input_reader { num_epochs: 1 }')
  logdir = str(tmp_path / 'train')
  assert trainer.train(config, logdir, _options()) == 2
  assert _checkpoint_step(logdir) == 2


def test_empty_eval_input_is_an_error_naming_patterns_and_files(cityscapes_records, short_run, tmp_path):
  empty = tmp_path / 'empty.record'
  empty.write_bytes(b'')
  config = tiny_pipeline(cityscapes_records, num_steps=3)
  del config.eval_input_reader.tf_record_input_reader.input_path[:]
  config.eval_input_reader.tf_record_input_reader.input_path.append(str(empty))
  with pytest.raises(ConfigError) as error:
    evaluator.evaluate(config, short_run, str(tmp_path / 'eval'),
                       evaluator.default_options(session_config=fast_session_config(), eval_interval_secs=0.05,
                                                 evaluate_all_from_checkpoint='0'),
                       config_path='my.config')
  message = str(error.value)
  assert message.startswith('my.config: eval_input_reader.tf_record_input_reader.input_path = [%r]' % str(empty))
  assert 'no example' in message
  assert not os.path.exists(str(tmp_path / 'eval' / 'results'))


def test_summaries_are_written_at_the_final_step_too(short_run):
  events = EventAccumulator(short_run, size_guidance={'scalars': 0})
  events.Reload()
  steps = [event.step for event in events.Scalars('Losses/TotalLoss')]
  # save_summaries_secs (120 s) never elapses in a short run: the first point and the final step.
  assert steps[-1] == 3 and len(steps) == len(set(steps)) == 2


def test_progress_line_past_num_steps_is_true_and_has_no_negative_eta():
  progress = trainer._Progress(6, 2, 0)  # pylint: disable=protected-access
  progress.record(1.0)
  line = progress.line(7, 0.5, 0.01)
  assert '7/6' not in line and line.startswith('step 7 (num_steps 6 reached)')
  assert '-' not in line
  assert progress.line(5, 0.5, 0.01).startswith('step 5/6') and 'ETA 0:00:01' in progress.line(5, 0.5, 0.01)


def test_training_crop_larger_than_the_eval_pad_is_a_warning_naming_both(cityscapes_records, log_lines):
  config = tiny_pipeline(cityscapes_records, extra='eval_config { eval_input_type { padded_eval_input { '
                         'height: 33 width: 257 } } }')
  trainer.validate_train_config(config, 1)  # no error
  warnings = [line for line in log_lines if 'padded_eval_input.height' in line]
  assert len(warnings) == 1
  assert '33' in warnings[0] and '65' in warnings[0] and 'train_config.preprocessor_step' in warnings[0]


def test_eval_warns_at_once_about_a_missing_train_dir_and_names_the_config_of_num_steps(
    cityscapes_records, tmp_path, log_lines):
  train_dir = str(tmp_path / 'no_such_dir')
  results = evaluator.evaluate(
      tiny_pipeline(cityscapes_records, num_steps=4), train_dir, str(tmp_path / 'eval'),
      evaluator.default_options(session_config=fast_session_config(), eval_interval_secs=0.05,
                                eval_timeout_secs=0.05), config_path='my.config')
  assert results == []
  warnings = [line for line in log_lines if train_dir in line and 'does not exist' in line]
  assert len(warnings) == 1
  assert 'train_config.num_steps = 4 of my.config' in warnings[0]


def test_eval_warns_when_the_train_dir_config_has_another_num_steps(cityscapes_records, short_run, tmp_path,
                                                                     log_lines):
  # short_run's pipeline.config says num_steps 3; this eval config says 5.
  evaluator.evaluate(
      tiny_pipeline(cityscapes_records, num_steps=5), short_run, str(tmp_path / 'eval'),
      evaluator.default_options(session_config=fast_session_config(), eval_interval_secs=0.05, max_evals=1),
      config_path='my.config')
  assert any('train_config.num_steps = 5 of my.config' in line and 'num_steps = 3' in line
             and os.path.join(short_run, 'pipeline.config') in line for line in log_lines)


def test_stop_signal_raises_training_interrupted_after_the_final_checkpoint(cityscapes_records, tmp_path):
  def interrupt(session, step):
    del session
    if step == 2:
      os.kill(os.getpid(), signal.SIGINT)

  logdir = str(tmp_path / 'train')
  with pytest.raises(trainer.TrainingInterrupted) as error:
    trainer.train(tiny_pipeline(cityscapes_records, num_steps=100), logdir, _options(step_callback=interrupt))
  assert error.value.signum == signal.SIGINT and error.value.exit_code == 130 and error.value.step == 2
  assert _checkpoint_step(logdir) == 2


def _read_lines(stream, lines):
  for line in stream:
    lines.put(line)
  lines.put(None)


def test_train_script_exits_143_on_sigterm_after_writing_the_step_reached(cityscapes_records, tmp_path):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(cityscapes_records['train'], num_steps=100000))
  logdir = str(tmp_path / 'train')
  process = subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, 'train.py'), '--config_path', str(config_path), '--logdir', logdir,
       '--log_every_n_steps', '1'], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
      cwd=str(tmp_path))
  lines = queue.Queue()
  threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True).start()
  log = []
  try:
    while not any(PROGRESS.search(line) for line in log):
      line = lines.get(timeout=300)
      assert line is not None, ''.join(log)[-3000:]
      log.append(line)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143, ''.join(log)[-3000:]
  finally:
    if process.poll() is None:
      process.kill()
  while True:
    line = lines.get(timeout=60)
    if line is None:
      break
    log.append(line)
  last_step = int([PROGRESS.search(line) for line in log if PROGRESS.search(line)][-1].group(1))
  assert _checkpoint_step(logdir) == last_step
  assert tf.train.latest_checkpoint(logdir).endswith('model.ckpt-%d' % last_step)
