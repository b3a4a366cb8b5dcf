"""The lifecycle of a training directory (--logdir): one trainer at a time, resumed from its own files only,
with the config it was trained with, and no left-overs of killed runs.

    run_dir = train_dir.prepare(logdir, pipeline_config, is_chief)
    run_dir.resume_checkpoint  # prefix in logdir, or None: train from the start (or fine_tune_checkpoint)

What prepare() does, on the process that writes the directory (the chief), before anything is written:

1. Lock. `train.lock` in the directory is locked with flock(2) for as long as the returned TrainDir lives (the
   trainer keeps it until train() returns); a second trainer on the same directory stops with one line naming
   the first (pid, host, since when). The kernel releases the lock when the process dies, even by SIGKILL, so a
   killed run never leaves the directory locked. Workers of a distributed run do not lock (they write nothing).
2. Choose the checkpoint to resume from: the newest one of the `checkpoint` state file whose files are in this
   directory and read back completely (checkpoint_utils.unreadable_reason); each newer one skipped is logged with
   the reason. Paths in the state file count by their base name only: a copied (`cp -r RUN FORK`) or moved
   directory resumes from its own files. A checkpoint newer than those the state file lists was not recorded by
   its Saver (killed during the save) and is skipped. Without a state file every checkpoint found counts. When
   checkpoints are there but none is usable, prepare() raises instead of training from scratch over them.
3. Compare the config with the directory's saved pipeline.config (when resuming): a change of the model or of
   what the optimizer keeps in the checkpoint (its kind; freeze_fine_tune_backbone, which decides which
   variables have slots) is refused with the differing field paths; other changes (num_steps, learning rates,
   batch size, inputs, eval_config, ...) are logged. The trainer saves the new config only after this.
4. Clean up what killed runs leave behind (each logged): checkpoint data being written (`*.tempstate*`, a
   sharded save's `<prefix>_temp/`), temporary state files (`checkpoint.tmp<hex>`, `.checkpoint.tmp*`) and
   configs (`.pipeline.config.tmp*`), and half-deleted checkpoints (data or meta files without their index, not in the
   state file and older than its newest entry: the Saver deletes index then data). A complete checkpoint
   missing from the state file is kept: keep_checkpoint_every_n_hours keeps such checkpoints.
5. Rewrite the state file with the base names of the checkpoints kept (up to the one resumed from): the
   session restores that one, and the Saver's retention (max_checkpoints_to_keep) deletes only files of this
   directory. The trainer's Saver writes relative paths from then on.

Nothing outside the directory is read, modified or deleted.
"""
import collections
import datetime
import errno
import fcntl
import json
import os
import re
import socket
import sys
import threading
import weakref

from google.protobuf import descriptor
from google.protobuf import text_format
from tensorflow.python.training import checkpoint_state_pb2  # pylint: disable=g-direct-tensorflow-import

from libs import checkpoint_utils
from libs import config_util
from libs.compat import tf
from libs.config_errors import ConfigError

logger = tf.get_logger()

LOCK_NAME = 'train.lock'
STATE_NAME = 'checkpoint'  # tf.train.Saver's state file

# Field paths of the pipeline config that a resumed run may not change: the checkpoints hold the model's
# variables and the optimizer's slots, and train_config.freeze_fine_tune_backbone decides which variables have
# slots. A path refuses itself and everything below it.
FIXED_ON_RESUME = ('model', 'train_config.optimizer', 'train_config.freeze_fine_tune_backbone')
# train_config.optimizer's sub-fields (learning rates, momentum, betas) may change: only its kind is fixed.
_FIXED_EXACTLY = ('train_config.optimizer',)

_STATE_TEMP = re.compile(r'^%s\.tmp[0-9a-f]{32}$' % STATE_NAME)  # file_io.atomic_write_string_to_file
# config_util.atomic_write's temporary files of what the trainer writes here.
_ATOMIC_WRITE_TEMPS = ('.%s.tmp' % config_util.PIPELINE_CONFIG_NAME, '.%s.tmp' % STATE_NAME)
_SHARDED_TEMP = re.compile(r'^.+-\d+_temp$')  # tf.train.Saver(sharded=True) writes <prefix>_temp/part-*


class TrainDirInUseError(RuntimeError):
  """Another trainer holds the directory's lock."""


class TrainDir(collections.namedtuple('TrainDir', ['logdir', 'resume_checkpoint', 'lock'])):
  """A prepared training directory: the checkpoint prefix to resume from (or None), and the lock held (None on
  workers). Keep it for the whole run: dropping the last reference releases the lock."""


def prepare(logdir, pipeline_config, is_chief=True):
  """Locks, inspects, checks and cleans a training directory before a run (see the module docstring).

  Args:
    logdir: the training directory (created if missing).
    pipeline_config: pipeline_pb2.PipelineConfig of this run.
    is_chief: whether this process writes the directory (False: a worker of a distributed run, which neither
      locks nor changes anything).

  Returns:
    TrainDir.

  Raises:
    TrainDirInUseError: when another trainer holds the directory.
    ConfigError: when the config changes the model or the optimizer of the checkpoints resumed.
    ValueError: when checkpoints are there but none can be resumed from.
  """
  tf.gfile.MakeDirs(logdir)
  if not is_chief:
    return TrainDir(logdir, tf.train.latest_checkpoint(logdir), None)
  held = lock(logdir)
  try:
    state, listed = _read_state(logdir)
    resume, skipped = _choose_checkpoint(logdir, state, listed)
    for prefix, reason in skipped:
      logger.warning('Not resuming from checkpoint %s: %s.', prefix, reason)
    if resume is not None:
      check_config_unchanged(pipeline_config, logdir)
    _clean_up(logdir, listed, resume)
    _write_state(logdir, state, listed, resume)
  except BaseException:
    held.release()
    raise
  return TrainDir(logdir, resume, held)


class TrainDirLock(object):
  """flock(2) on <logdir>/train.lock, held until release() or until the object is garbage-collected."""

  def __init__(self, path, fd):
    self.path = path
    self._thread = threading.get_ident()
    self._finalizer = weakref.finalize(self, os.close, fd)

  @property
  def held(self):
    return self._finalizer.alive

  def release(self):
    self._finalizer()  # Closing the descriptor releases the lock; a second call does nothing.


# realpath of a lock file -> weak reference to the TrainDirLock of this process holding it.
_HELD_LOCKS = {}
_HELD_LOCKS_MUTEX = threading.Lock()


def lock(logdir):
  """Takes the directory's trainer lock.

  A lock still held by an earlier prepare() in this same thread belongs to a train() call that has ended (one
  thread runs one train() at a time) but whose frame an exception's traceback still keeps: it is taken over.

  Returns:
    TrainDirLock.

  Raises:
    TrainDirInUseError: naming the holder when another process, or another thread of this one, holds it.
  """
  path = os.path.join(logdir, LOCK_NAME)
  key = os.path.realpath(path)
  with _HELD_LOCKS_MUTEX:
    previous = _HELD_LOCKS.get(key)
    previous = previous() if previous is not None else None
    if previous is not None and previous.held and previous._thread == threading.get_ident():  # pylint: disable=protected-access
      previous.release()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        logger.warning('Cannot lock %s (%s): a second trainer on %s would not be stopped.', path, e, logdir)
        return TrainDirLock(path, os.open(os.devnull, os.O_RDONLY))
      holder = _read_holder(fd)
      os.close(fd)
      raise TrainDirInUseError(
          '%s is in use by another trainer: %s (lock file %s); stop it or train into another --logdir'
          % (logdir, holder, path)) from None
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps({
        'pid': os.getpid(), 'host': socket.gethostname(),
        'since': datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %z'),
        'command': ' '.join(sys.argv)}) + '\n').encode('utf-8'))
    held = TrainDirLock(path, fd)
    _HELD_LOCKS[key] = weakref.ref(held)
  return held


def _read_holder(fd):
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode('utf-8'))
    return 'pid %s on host %s since %s (%s)' % (info['pid'], info['host'], info['since'], info['command'])
  except (OSError, ValueError, KeyError, TypeError):
    return 'a process that has not written its pid yet'


def _read_state(logdir):
  """(CheckpointState or None, {step: prefix in logdir} of the checkpoints it lists, None without a state)."""
  path = os.path.join(logdir, STATE_NAME)
  if not tf.io.gfile.exists(path):
    return None, None
  try:
    state = checkpoint_state_pb2.CheckpointState()
    text_format.Parse(tf.io.gfile.GFile(path).read(), state)
  except (tf.errors.OpError, text_format.ParseError, UnicodeDecodeError) as e:
    logger.warning('Checkpoint state file %s unreadable (%s): using the checkpoints found in %s.', path,
                   checkpoint_utils._first_line(e), logdir)  # pylint: disable=protected-access
    return None, None
  listed = {}
  for listed_path in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
    step = checkpoint_utils.checkpoint_step(listed_path)
    if step is not None:
      # By base name: the files of this directory, whatever directory the paths name (copied or moved).
      listed[step] = os.path.join(logdir, os.path.basename(listed_path))
  return state, listed


def _choose_checkpoint(logdir, state, listed):
  """(prefix to resume from or None, [(prefix, reason skipped)] newest first).

  Raises:
    ValueError: when there are checkpoints but none is usable.
  """
  candidates = {}
  for prefix in checkpoint_utils.checkpoint_files(logdir):
    candidates[checkpoint_utils.checkpoint_step(prefix)] = prefix
  newest_listed = max(listed) if listed else None
  if listed is not None:
    candidates.update(listed)
  skipped = []
  for step in sorted(candidates, reverse=True):
    prefix = candidates[step]
    if newest_listed is not None and step > newest_listed:
      reason = 'not in the state file %s (its save was interrupted)' % os.path.join(logdir, STATE_NAME)
    else:
      reason = checkpoint_utils.unreadable_reason(prefix)
    if reason is None:
      return prefix, skipped
    skipped.append((prefix, reason))
  if skipped:
    raise ValueError('%s: no checkpoint to resume from (%s); remove the broken checkpoint files and the state '
                     'file %s to train from the start, or train into another --logdir'
                     % (logdir, '; '.join('%s: %s' % item for item in skipped), os.path.join(logdir, STATE_NAME)))
  return None, skipped


def _write_state(logdir, state, listed, resume):
  """The state file of the kept checkpoints up to `resume`, by base name (None: remove a stale state file)."""
  path = os.path.join(logdir, STATE_NAME)
  if resume is None:
    if tf.io.gfile.exists(path):
      logger.info('Removing the checkpoint state file %s: no checkpoint to resume from.', path)
      tf.io.gfile.remove(path)
    return
  step = checkpoint_utils.checkpoint_step(resume)
  kept = [os.path.basename(prefix) for s, prefix in sorted((listed or {}).items())
          if s < step and checkpoint_utils.checkpoint_exists(prefix)]
  new_state = tf.train.generate_checkpoint_state_proto(
      os.path.abspath(logdir), os.path.basename(resume), kept + [os.path.basename(resume)])
  if state is not None and text_format.MessageToString(state) == text_format.MessageToString(new_state):
    return
  config_util.atomic_write(path, text_format.MessageToString(new_state))


def _clean_up(logdir, listed, resume):
  """Deletes the left-overs of killed runs (see the module docstring), logging each."""
  removed = []
  for name in sorted(tf.io.gfile.listdir(logdir)):
    name = name.rstrip('/')
    path = os.path.join(logdir, name)
    if os.path.isdir(path):
      if _SHARDED_TEMP.match(name) and _remove_files_then_dir(path):
        removed.append(path + '/')
    elif '.tempstate' in name or _STATE_TEMP.match(name) or name.startswith(_ATOMIC_WRITE_TEMPS):
      os.remove(path)
      removed.append(path)
  newest_listed = max(listed) if listed else None
  for prefix, files in sorted(checkpoint_utils.checkpoint_files(logdir).items()):
    step = checkpoint_utils.checkpoint_step(prefix)
    if newest_listed is None or step >= newest_listed or step in listed:
      continue
    if prefix + '.index' not in files:  # The Saver deletes .meta, .index, then the data: killed in between.
      for path in files:
        os.remove(path)
        removed.append(path)
  if removed:
    logger.info('Removed %d left-over(s) of interrupted runs in %s: %s', len(removed), logdir,
                ', '.join(os.path.basename(p.rstrip('/')) + ('/' if p.endswith('/') else '') for p in removed))


def _remove_files_then_dir(path):
  """Removes a sharded save's temporary directory if it holds only part files (else leaves it, False)."""
  names = os.listdir(path)
  if not all(n.startswith('part-') and os.path.isfile(os.path.join(path, n)) for n in names):
    return False
  for n in names:
    os.remove(os.path.join(path, n))
  os.rmdir(path)
  return True


def check_config_unchanged(pipeline_config, logdir):
  """Compares a config with the one a training directory's checkpoints were trained with.

  Raises:
    ConfigError: naming the first refused field, with every refused change listed (FIXED_ON_RESUME).
    ValueError: when the saved config does not parse.
  """
  path = os.path.join(logdir, config_util.PIPELINE_CONFIG_NAME)
  if not tf.io.gfile.exists(path):
    logger.warning('No %s in %s: the config cannot be compared with the one its checkpoints were trained with.',
                   config_util.PIPELINE_CONFIG_NAME, logdir)
    return
  try:
    saved = config_util.parse_pipeline_config(tf.io.gfile.GFile(path).read(), path)
  except ValueError as e:
    raise ValueError('%s; it is the config the checkpoints of %s were trained with, needed to check that the '
                     'model and optimizer are unchanged: fix it, or train into another --logdir' % (e, logdir)) \
        from None
  changes = config_changes(saved, pipeline_config)
  refused = [c for c in changes if _is_fixed(c[0])]
  if refused:
    field, _, new = refused[0]
    raise ConfigError(
        field, new, 'cannot change when resuming %s, whose checkpoints were trained with %s; changed: %s. Train '
        'into a new --logdir (train_config.fine_tune_checkpoint: "%s" with fine_tune_checkpoint_type: '
        '"segmentation" starts from these weights)' % (logdir, path, _describe(refused), logdir))
  if changes:
    logger.info('Resuming %s with a config changed from its %s: %s.', logdir, config_util.PIPELINE_CONFIG_NAME,
                _describe(changes))


def _is_fixed(path):
  for fixed in FIXED_ON_RESUME:
    if path == fixed or (fixed not in _FIXED_EXACTLY and path.startswith(fixed + '.')):
      return True
  return False


def _describe(changes):
  return ', '.join('%s: %s -> %s' % (path, _format(old), _format(new)) for path, old, new in changes)


class _Choice(str):
  """The field chosen in a oneof: written as a field name, not as a string value."""


def _format(value):
  if isinstance(value, _Choice):
    return str(value)
  if isinstance(value, float):
    return '%.7g' % value
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, str):
    return '"%s"' % value
  if isinstance(value, list):
    return '[%s]' % ', '.join(_format(v) for v in value)
  return str(value)


def config_changes(old, new, path=''):
  """The differences between two messages of the same type, field by field.

  An unset field counts as its default; a oneof whose choice differs is one change at the message's path
  ('train_config.optimizer: adam_optimizer -> momentum_optimizer'); a repeated message field that differs is one
  change (in text format).

  Returns:
    [(field path, old value, new value)] in field order.
  """
  changes = []
  seen_oneofs = set()
  for field in old.DESCRIPTOR.fields:
    field_path = path + '.' + field.name if path else field.name
    oneof = field.containing_oneof
    if oneof is not None:
      if oneof.name in seen_oneofs:
        continue
      seen_oneofs.add(oneof.name)
      old_choice, new_choice = old.WhichOneof(oneof.name), new.WhichOneof(oneof.name)
      if old_choice != new_choice:
        changes.append((path or oneof.name, _Choice(old_choice or '(none)'), _Choice(new_choice or '(none)')))
        continue
      if old_choice is None:
        continue
      field = old.DESCRIPTOR.fields_by_name[old_choice]
      field_path = path + '.' + field.name if path else field.name
    old_value, new_value = getattr(old, field.name), getattr(new, field.name)
    if field.is_repeated:
      if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        old_value = [text_format.MessageToString(m, as_one_line=True) for m in old_value]
        new_value = [text_format.MessageToString(m, as_one_line=True) for m in new_value]
      else:
        old_value, new_value = _scalars(field, old_value), _scalars(field, new_value)
      if old_value != new_value:
        changes.append((field_path, old_value, new_value))
    elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
      if old.HasField(field.name) or new.HasField(field.name):
        changes.extend(config_changes(old_value, new_value, field_path))
    else:
      old_value, new_value = _scalars(field, [old_value])[0], _scalars(field, [new_value])[0]
      if old_value != new_value:
        changes.append((field_path, old_value, new_value))
  return changes


def _scalars(field, values):
  if field.type == descriptor.FieldDescriptor.TYPE_ENUM:
    return [field.enum_type.values_by_number[v].name if v in field.enum_type.values_by_number else v
            for v in values]
  return list(values)
