"""Training directories that survive real use (drivers/train_dir.py): copied or moved directories resume from
their own files, one trainer per directory, broken newest checkpoints skipped with a reason, model and
optimizer fixed on resume, left-overs of killed runs removed, files written with the umask's mode."""
import hashlib
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from drivers import train_dir
from drivers import trainer
from libs import config_util
from libs.compat import tf
from libs.config_errors import ConfigError
from tests.conftest import fast_session_config
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline


def _options(**kwargs):
  kwargs.setdefault('session_config', fast_session_config())
  kwargs.setdefault('log_every_n_steps', 1)
  return trainer.default_options(**kwargs)


def _digests(directory):
  """{relative path: sha256} of every file under directory."""
  digests = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digests


def _write_state(logdir, steps, absolute=False):
  """The Saver's state file listing model.ckpt-<step> for steps (the last is the latest)."""
  names = [os.path.join(logdir, 'model.ckpt-%d' % s) if absolute else 'model.ckpt-%d' % s for s in steps]
  tf.train.update_checkpoint_state(logdir, names[-1], names)


@pytest.fixture(scope='module')
def trained_dir(cityscapes_records, tmp_path_factory):
  """A training directory with checkpoints 0 to 3 (one per step), all in the state file."""
  logdir = str(tmp_path_factory.mktemp('trained') / 'train')
  trainer.train(tiny_pipeline(cityscapes_records, num_steps=3), logdir, _options(save_interval_secs=0))
  assert tf.train.get_checkpoint_state(logdir).all_model_checkpoint_paths[0].endswith('model.ckpt-0')
  return logdir


@pytest.fixture
def train_copy(trained_dir, tmp_path):
  """A copy of trained_dir whose state file names its own files (as a trainer writing into it would)."""
  logdir = str(tmp_path / 'copy')
  shutil.copytree(trained_dir, logdir)
  _write_state(logdir, [0, 1, 2, 3])
  return logdir


# Item 2: a training directory is self-contained.

def test_a_copied_directory_resumes_from_its_own_files_and_never_touches_the_original(
    cityscapes_records, tmp_path, log_lines):
  run = str(tmp_path / 'run')
  trainer.train(tiny_pipeline(cityscapes_records, num_steps=2), run, _options(save_interval_secs=0))
  # As trainers before this change wrote it (and a run of another machine): absolute paths.
  _write_state(run, [0, 1, 2], absolute=True)
  original = _digests(run)
  fork = str(tmp_path / 'fork')
  shutil.copytree(run, fork)  # cp -r RUN FORK

  # Retention 1: every older checkpoint the fork knows is deleted, which must be the fork's.
  assert trainer.train(tiny_pipeline(cityscapes_records, num_steps=4), fork,
                       _options(save_interval_secs=0, max_checkpoints_to_keep=1)) == 4
  assert _digests(run) == original
  assert 'Resuming from %s.' % os.path.join(fork, 'model.ckpt-2') in log_lines
  # The Saver deletes one old checkpoint per save.
  assert sorted(n for n in os.listdir(fork) if n.startswith('model.ckpt')) == \
      ['model.ckpt-%d.%s' % (s, e) for s in (3, 4) for e in ('data-00000-of-00001', 'index')]
  with open(os.path.join(fork, 'checkpoint')) as f:
    assert os.sep not in f.read()  # Relative paths: copies of the fork are self-contained too.

  moved = str(tmp_path / 'moved')
  os.rename(run, moved)  # mv RUN MOVED
  assert trainer.train(tiny_pipeline(cityscapes_records, num_steps=3), moved, _options()) == 3
  assert 'Resuming from %s.' % os.path.join(moved, 'model.ckpt-2') in log_lines


# Item 3: one trainer per directory.

def _lock_in_another_thread(logdir):
  held = []
  thread = threading.Thread(target=lambda: held.append(train_dir.lock(logdir)))
  thread.start()
  thread.join(60)
  return held[0]


def test_a_held_lock_is_refused_with_the_holder_named(tmp_path):
  logdir = str(tmp_path)
  holder = _lock_in_another_thread(logdir)
  with pytest.raises(train_dir.TrainDirInUseError) as error:
    train_dir.lock(logdir)
  message = str(error.value)
  assert 'pid %d on host %s since ' % (os.getpid(), socket.gethostname()) in message
  assert os.path.join(logdir, 'train.lock') in message and '\n' not in message
  holder.release()
  train_dir.lock(logdir).release()

  # Another open file description of the lock file (as another process would hold it) conflicts too.
  fd = os.open(os.path.join(logdir, 'train.lock'), os.O_RDWR)
  import fcntl  # pylint: disable=import-outside-toplevel
  fcntl.flock(fd, fcntl.LOCK_EX)
  with pytest.raises(train_dir.TrainDirInUseError, match='in use by another trainer'):
    train_dir.lock(logdir)
  os.close(fd)
  train_dir.lock(logdir).release()


def test_a_lock_left_by_an_earlier_call_of_the_same_thread_is_taken_over(tmp_path):
  # An exception's traceback can keep the lock of a train() call of this thread that has ended.
  stale = train_dir.lock(str(tmp_path))
  fresh = train_dir.lock(str(tmp_path))
  assert fresh.held and not stale.held
  fresh.release()


def test_workers_start_while_the_chief_holds_the_lock(trained_dir, tmp_path, cityscapes_records):
  logdir = str(tmp_path / 'copy')
  shutil.copytree(trained_dir, logdir)
  holder = _lock_in_another_thread(logdir)
  worker = train_dir.prepare(logdir, tiny_pipeline(cityscapes_records), is_chief=False)
  assert worker.lock is None and worker.resume_checkpoint.endswith('model.ckpt-3')
  holder.release()


def test_a_second_trainer_refuses_before_writing_and_starts_once_the_first_is_killed(
    cityscapes_records, tmp_path):
  logdir = str(tmp_path / 'train')
  os.makedirs(logdir)
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; sys.path.insert(0, %r); from drivers import train_dir; '
       'held = train_dir.lock(sys.argv[1]); print("locked", flush=True); time.sleep(600)' % REPO_ROOT, logdir],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
  try:
    ready, _, _ = select.select([holder.stdout], [], [], 300)
    assert ready and holder.stdout.readline().strip() == 'locked'
    with pytest.raises(train_dir.TrainDirInUseError, match=r'in use by another trainer: pid %d on host ' %
                       holder.pid):
      trainer.train(tiny_pipeline(cityscapes_records, num_steps=1), logdir, _options())
    assert os.listdir(logdir) == ['train.lock']  # Nothing written.
  finally:
    holder.kill()  # SIGKILL: the kernel releases the lock.
    holder.wait(60)
  assert trainer.train(tiny_pipeline(cityscapes_records, num_steps=1), logdir, _options()) == 1


# Item 5: the newest readable checkpoint.

def _delete_data(prefix):
  os.remove(prefix + '.data-00000-of-00001')


def _truncate_index(prefix):
  with open(prefix + '.index', 'r+b') as f:
    f.truncate(10)


def _unrecord(prefix):
  logdir = os.path.dirname(prefix)
  _write_state(logdir, [0, 1, 2])


def _corrupt_data(prefix):
  path = prefix + '.data-00000-of-00001'
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    f.write(b'\xff' * 64)


@pytest.mark.parametrize('damage, reason', [
    (_delete_data, r'data file \S+model.ckpt-3.data-00000-of-00001 missing'),
    (_truncate_index, r'index file \S+model.ckpt-3.index unreadable \(.*sstable'),
    (_unrecord, r'not in the state file'),
])
def test_a_broken_newest_checkpoint_is_skipped_with_a_reason(cityscapes_records, train_copy, log_lines, damage,
                                                             reason):
  damage(os.path.join(train_copy, 'model.ckpt-3'))
  options = _options(max_steps=1)
  assert trainer.train(tiny_pipeline(cityscapes_records, num_steps=10), train_copy, options) == 3
  skipped = [line for line in log_lines if line.startswith('Not resuming from checkpoint %s: ' %
                                                           os.path.join(train_copy, 'model.ckpt-3'))]
  assert len(skipped) == 1 and re.search(reason, skipped[0]), log_lines
  assert 'Resuming from %s.' % os.path.join(train_copy, 'model.ckpt-2') in log_lines


def test_corrupt_data_is_found_before_the_session_restores_it(cityscapes_records, train_copy, log_lines):
  _corrupt_data(os.path.join(train_copy, 'model.ckpt-3'))
  run_dir = train_dir.prepare(train_copy, tiny_pipeline(cityscapes_records))
  assert run_dir.resume_checkpoint == os.path.join(train_copy, 'model.ckpt-2')
  assert tf.train.latest_checkpoint(train_copy) == run_dir.resume_checkpoint  # What the session restores.
  assert any('model.ckpt-3.data-00000-of-00001 unreadable' in line for line in log_lines)
  run_dir.lock.release()


def test_checkpoints_none_of_which_is_usable_are_an_error_not_a_fresh_start(cityscapes_records, train_copy):
  for step in range(4):
    _truncate_index(os.path.join(train_copy, 'model.ckpt-%d' % step))
  state = os.path.join(train_copy, 'checkpoint')
  with open(state, 'rb') as f:
    before = f.read()
  with pytest.raises(ValueError, match=r'no checkpoint to resume from \(.*model.ckpt-3: index file .*'
                                       r'model.ckpt-0: index file .*remove the broken checkpoint'):
    trainer.train(tiny_pipeline(cityscapes_records), train_copy, _options())
  with open(state, 'rb') as f:
    assert f.read() == before
  train_dir.lock(train_copy).release()  # The failed start released its lock.

  # A state file naming checkpoints whose files are all gone.
  for name in os.listdir(train_copy):
    if name.startswith('model.ckpt-'):
      os.remove(os.path.join(train_copy, name))
  with pytest.raises(ValueError, match=r'model.ckpt-3: index file \S+ missing'):
    train_dir.prepare(train_copy, tiny_pipeline(cityscapes_records))


# Item 6: the model and the optimizer's kind are fixed on resume.

@pytest.mark.parametrize('extra, field, change', [
    ('model { pspnet { num_classes: 5 } }', 'model.pspnet.num_classes', '19 -> 5'),
    ('model { pspnet { filter_scale: 0.125 } }', 'model.pspnet.filter_scale', '0.0625 -> 0.125'),
    ('train_config { optimizer { momentum_optimizer { learning_rate { constant_learning_rate {} } } } }',
     'train_config.optimizer', 'adam_optimizer -> momentum_optimizer'),
    ('train_config { freeze_fine_tune_backbone: true fine_tune_checkpoint: "/elsewhere/ckpt" '
     'fine_tune_checkpoint_type: "segmentation" }', 'train_config.freeze_fine_tune_backbone', 'false -> true'),
])
def test_a_changed_model_or_optimizer_is_refused_and_the_saved_config_kept(cityscapes_records, train_copy,
                                                                           extra, field, change):
  saved = os.path.join(train_copy, 'pipeline.config')
  with open(saved, 'rb') as f:
    before = f.read()
  config = tiny_pipeline(cityscapes_records)
  if 'optimizer' in extra:
    config.train_config.optimizer.Clear()
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  text_format.Merge(extra, config)
  with pytest.raises(ConfigError) as error:
    trainer.train(config, train_copy, _options(), config_path='my.config')
  message = str(error.value)
  assert message.startswith('my.config: %s = ' % field) and '%s: %s' % (field, change) in message, message
  assert saved in message and '\n' not in message
  with open(saved, 'rb') as f:
    assert f.read() == before


def test_a_safe_config_change_resumes_and_is_logged(cityscapes_records, train_copy, log_lines):
  config = tiny_pipeline(cityscapes_records, num_steps=4, batch_size=4, extra="""
      train_config { optimizer { adam_optimizer { learning_rate { constant_learning_rate {
        learning_rate: 0.001 } } } } }""")
  assert trainer.train(config, train_copy, _options()) == 4
  changed = [line for line in log_lines if line.startswith('Resuming %s with a config changed' % train_copy)]
  assert len(changed) == 1
  assert 'train_config.batch_size: 2 -> 4' in changed[0] and 'train_config.num_steps: 3 -> 4' in changed[0]
  assert ('train_config.optimizer.adam_optimizer.learning_rate.constant_learning_rate.learning_rate: '
          '0.003 -> 0.001') in changed[0]
  saved = config_util.load_pipeline_config(os.path.join(train_copy, 'pipeline.config'))
  assert saved.train_config.num_steps == 4


def test_config_changes_lists_field_paths(cityscapes_records):
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  old = tiny_pipeline(cityscapes_records)
  new = tiny_pipeline(cityscapes_records)
  assert train_dir.config_changes(old, new) == []
  new.model.pspnet.num_classes = 19  # Set to its value: no change.
  new.model.pspnet.feature_extractor.num_units_per_block[:] = [3, 4, 6, 3]
  new.train_config.optimizer.Clear()
  text_format.Merge('momentum_optimizer {}', new.train_config.optimizer)
  del new.train_config.preprocessor_step[:]
  paths = [change[0] for change in train_dir.config_changes(old, new)]
  assert paths == ['model.pspnet.feature_extractor.num_units_per_block', 'train_config.preprocessor_step',
                   'train_config.optimizer']


# Item 9: no left-overs, the umask's file modes.

def test_left_overs_of_killed_runs_are_removed_at_the_next_start(cityscapes_records, train_copy, log_lines):
  join = lambda *names: os.path.join(train_copy, *names)  # noqa: E731
  left_overs = ['model.ckpt-4.data-00000-of-00001.tempstate8123', 'model.ckpt-4.index.tempstate77',
                'checkpoint.tmp' + '0123456789abcdef' * 2, '.pipeline.config.tmpab12cd34',
                '.checkpoint.tmpx9y8z7', 'model.ckpt-0.data-00000-of-00001', 'model.ckpt-4_temp']
  for name in left_overs[:5]:
    with open(join(name), 'wb') as f:
      f.write(b'\0' * 100000)
  os.makedirs(join('model.ckpt-4_temp'))
  with open(join('model.ckpt-4_temp', 'part-00000-of-00001.data-00000-of-00001.tempstate5'), 'wb') as f:
    f.write(b'\0' * 1000)
  # Checkpoint 0 half-deleted by retention (its index gone, dropped from the state file); checkpoint 1 dropped
  # from it but complete (as keep_checkpoint_every_n_hours keeps them).
  os.remove(join('model.ckpt-0.index'))
  _write_state(train_copy, [2, 3])
  # The user's files.
  os.makedirs(join('eval'))
  for name in ('notes.txt', os.path.join('eval', 'model.ckpt-0.data-00000-of-00001')):
    with open(join(name), 'w') as f:
      f.write('mine')
  kept = {name: digest for name, digest in _digests(train_copy).items()
          if name.startswith(('model.ckpt-1.', 'model.ckpt-2.', 'model.ckpt-3.', 'eval', 'notes'))}
  assert len(kept) == 8

  assert trainer.train(tiny_pipeline(cityscapes_records, num_steps=10), train_copy, _options(max_steps=1)) == 4
  for name in left_overs:
    assert not os.path.exists(join(name)), name
  after = _digests(train_copy)
  assert {name: after.get(name) for name in kept} == kept
  assert 'model.ckpt-4.index' in after
  removed = [line for line in log_lines if line.startswith('Removed 7 left-over(s) of interrupted runs in %s: ' %
                                                           train_copy)]
  assert len(removed) == 1 and all(name in removed[0] for name in left_overs), log_lines


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_write_gives_files_the_mode_of_the_umask(tmp_path, umask, mode):
  script = ('import os, sys; os.umask(%d); sys.path.insert(0, %r); from libs import config_util; '
            'config_util.atomic_write(sys.argv[1] + "/results.json", "{}"); '
            'config_util.atomic_write(sys.argv[1] + "/graph.pb", b"x"); '
            'config_util.atomic_write(sys.argv[1] + "/graph.pb", b"y"); '
            'print(" ".join("%%o" %% (os.stat(sys.argv[1] + "/" + n).st_mode & 0o777) for n in sorted('
            'os.listdir(sys.argv[1]))))' % (umask, REPO_ROOT))
  result = subprocess.run([sys.executable, '-c', script, str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['%o' % mode] * 2  # graph.pb, results.json; no temporary file left


def test_save_pipeline_config_mode(tmp_path, cityscapes_records):
  umask = os.umask(0o022)
  os.umask(umask)
  path = config_util.save_pipeline_config(tiny_pipeline(cityscapes_records), str(tmp_path))
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
