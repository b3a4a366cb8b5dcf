"""Checkpoint files: finding, listing and restoring them, with every decision logged.

Training directories (list_checkpoints, checkpoint_step): tf.train.Saver writes `model.ckpt-<step>.index` /
`.data-*` and then rewrites the `checkpoint` state file; the evaluator reads them while the trainer writes.

Initialisation of training:

Three cases, checked in this order by the trainer (DeepLab's pattern, which never crashes when training from
scratch and never silently ignores a checkpoint the user asked for):

1. the training directory already has a checkpoint -> resume from it (weights, optimizer slots, global step);
2. `fine_tune_checkpoint` is set -> restore the variables the model's restore_map() and the checkpoint have in
   common (same name and shape), log those restored, those absent from the checkpoint and shape mismatches;
   a configured checkpoint that does not exist is an error;
3. neither -> random initialisation, logged.
"""
import glob
import os
import re

from libs.compat import slim
from libs.compat import tf
from libs.config_errors import UserError

logger = tf.get_logger()

_STEP_PATTERN = re.compile(r'-(\d+)$')


def resolve_checkpoint(path, field='train_config.fine_tune_checkpoint'):
  """Turns a checkpoint prefix or a directory into a checkpoint prefix that exists.

  Args:
    path: a checkpoint prefix ('.../model.ckpt-1000', '.../resnet_v1_50.ckpt') or a directory with a
      `checkpoint` state file.
    field: the config field or flag the path came from, for the error message.

  Returns:
    The checkpoint prefix.

  Raises:
    ValueError: naming `field` and `path` when nothing readable is there.
  """
  if os.path.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise UserError('%s = %r: directory holds no checkpoint' % (field, path))
    return latest
  if tf.train.checkpoint_exists(path):
    return path
  raise UserError('%s = %r: no such checkpoint (expected files %s.index/.data-* or a V1 checkpoint file)'
                  % (field, path, path))


def checkpoint_shapes(checkpoint_path):
  """{variable name: shape list} of a checkpoint."""
  reader = tf.train.load_checkpoint(checkpoint_path)
  return reader.get_variable_to_shape_map()


def filter_restore_map(var_map, checkpoint_path, log=True):
  """Keeps the entries of var_map whose name is in the checkpoint with the same shape.

  Args:
    var_map: {checkpoint variable name: graph variable}.
    checkpoint_path: checkpoint prefix.
    log: log each decision.

  Returns:
    (restorable var_map, names missing from the checkpoint, names with mismatched shapes).
  """
  available = checkpoint_shapes(checkpoint_path)
  restorable, missing, mismatched = {}, [], []
  for name, variable in sorted(var_map.items()):
    if name not in available:
      missing.append(name)
    elif list(available[name]) != variable.shape.as_list():
      mismatched.append('%s: checkpoint %s vs model %s' % (name, available[name], variable.shape.as_list()))
    else:
      restorable[name] = variable
  if log:
    logger.info('Checkpoint %s: restoring %d of %d model variables.', checkpoint_path, len(restorable),
                len(var_map))
    for name in missing:
      logger.info('  not in checkpoint, stays initialised: %s', name)
    for text in mismatched:
      logger.warning('  shape mismatch, stays initialised: %s', text)
  return restorable, missing, mismatched


def build_fine_tune_init(model, checkpoint_path, checkpoint_type):
  """Builds a function sess -> None restoring the model from a fine-tune checkpoint.

  Must be called after the model's variables exist (it builds a Saver).

  Besides filter_restore_map's lines, logs by top-level scope what starts fresh (e.g. an ICNet from a PSPNet
  checkpoint: FastPSPModule, the fusion units, the full-resolution branch, the classifiers).

  Raises:
    ValueError: if no model variable at all can be restored (wrong checkpoint type or file), or if a backbone
      variable (under model.backbone_scope) is in the checkpoint with another shape (e.g. another filter_scale):
      a partially restored backbone would silently train from a mix.
  """
  var_map = model.restore_map(checkpoint_type)
  restorable, _, _ = filter_restore_map(var_map, checkpoint_path)
  available = checkpoint_shapes(checkpoint_path)
  backbone_prefix = model.backbone_scope + '/'
  backbone_mismatches = ['%s (checkpoint %s, model %s)' % (name, list(available[name]), v.shape.as_list())
                         for name, v in sorted(var_map.items())
                         if v.op.name.startswith(backbone_prefix) and name in available and name not in restorable]
  if backbone_mismatches:
    raise UserError('fine_tune_checkpoint %s (type %r): %d backbone variables have another shape in the '
                    'checkpoint than in the model (another filter_scale or backbone?): %s%s' % (
                        checkpoint_path, checkpoint_type, len(backbone_mismatches),
                        '; '.join(backbone_mismatches[:5]), '; ...' if len(backbone_mismatches) > 5 else ''))
  if not restorable:
    raise UserError('fine_tune_checkpoint %s (type %r) holds none of the model variables it should '
                    'initialise; is fine_tune_checkpoint_type right?' % (checkpoint_path, checkpoint_type))
  restored = set(id(v) for v in restorable.values())
  fresh = {}
  for v in slim.get_model_variables():
    if id(v) not in restored:
      scope = v.op.name.split('/')[0]
      fresh[scope] = fresh.get(scope, 0) + 1
  if fresh:
    logger.info('Starting fresh (not restored from %s), by scope: %s', checkpoint_path,
                ', '.join('%s (%d variables)' % item for item in sorted(fresh.items())))
  saver = tf.train.Saver(restorable, name='fine_tune_saver')

  def init_fn(sess):
    saver.restore(sess, checkpoint_path)
    logger.info('Initialised %d variables from %s (%s checkpoint).', len(restorable), checkpoint_path,
                checkpoint_type)

  return init_fn


def checked_restore_map(checkpoint_path, flag='--trained_checkpoint'):
  """{name: variable} of every model variable of the default graph, after checking the checkpoint has them all.

  Raises:
    ValueError: if the checkpoint lacks a model variable or holds it with another shape (a checkpoint of a
      different config).
  """
  var_map = {v.op.name: v for v in slim.get_model_variables()}
  restorable, missing, mismatched = filter_restore_map(var_map, checkpoint_path, log=False)
  if missing or mismatched:
    problems = ['not in checkpoint: %s' % name for name in missing[:5]] + mismatched[:5]
    raise UserError('%s = %r does not fit the model of the config: %d of %d model variables missing, %d with '
                    'another shape (e.g. %s)' % (flag, checkpoint_path, len(missing), len(var_map),
                                                  len(mismatched), '; '.join(problems)))
  return restorable


def restore_model_variables(sess, checkpoint_path, flag='--trained_checkpoint'):
  """Restores every model variable of the default graph from a checkpoint (checked_restore_map).

  Returns:
    The number of variables restored.
  """
  restorable = checked_restore_map(checkpoint_path, flag)
  tf.train.Saver(restorable, name='restore_model').restore(sess, checkpoint_path)
  return len(restorable)


def checkpoint_step(path):
  """The global step in a checkpoint name ('.../model.ckpt-1000' -> 1000), or None."""
  match = _STEP_PATTERN.search(os.path.basename(path))
  return int(match.group(1)) if match else None


def checkpoint_exists(path):
  """Whether the index file of a (V2) checkpoint prefix is there."""
  return tf.io.gfile.exists(path + '.index')


def list_checkpoints(train_dir):
  """The checkpoints of a training directory.

  A checkpoint is ready when the `checkpoint` state file (which tf.train.Saver rewrites, atomically, after the
  checkpoint's files are complete) names it or a later one; a newer .index file may still be being written.
  Without a state file every checkpoint found is taken as ready.

  Args:
    train_dir: the trainer's --logdir.

  Returns:
    (ready, pending): lists of (global step, checkpoint prefix in train_dir), sorted by step.
  """
  found = {}
  for index_file in glob.glob(os.path.join(glob.escape(train_dir), '*.index')):
    prefix = index_file[:-len('.index')]
    step = checkpoint_step(prefix)
    if step is not None:
      found[step] = prefix
  try:
    state = tf.train.get_checkpoint_state(train_dir)
  except (tf.errors.OpError, ValueError):  # Unreadable (e.g. replaced under us): treat as absent.
    state = None
  latest_step = None
  if state is not None:
    for path in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
      step = checkpoint_step(path)
      if step is not None:
        # The trainer saves into its own directory; the state file may hold absolute paths of another machine.
        found.setdefault(step, os.path.join(train_dir, os.path.basename(path)))
        latest_step = step if latest_step is None else max(latest_step, step)
  ordered = sorted(found.items())
  if state is None:
    return ordered, []
  return ([c for c in ordered if c[0] <= latest_step], [c for c in ordered if c[0] > latest_step])


_CHECKPOINT_FILE_PATTERN = re.compile(r'^(?P<prefix>.+-(?P<step>\d+))\.(?:index|meta|data-\d{5}-of-(?P<shards>\d{5}))$')


def checkpoint_files(directory):
  """The files of step-numbered checkpoints in a directory, by prefix.

  Returns:
    {checkpoint prefix (in `directory`): sorted list of its files (.index, .data-*, .meta)}.
  """
  found = {}
  for name in tf.io.gfile.listdir(directory):
    match = _CHECKPOINT_FILE_PATTERN.match(name)
    if match:
      found.setdefault(os.path.join(directory, match.group('prefix')), []).append(os.path.join(directory, name))
  return {prefix: sorted(files) for prefix, files in found.items()}


def unreadable_reason(prefix):
  """Why a V2 checkpoint cannot be restored, or None when it can.

  Every tensor is read back (the reader checks each one's CRC), so that a checkpoint passed here restores; for
  PSPNet50 with its optimizer slots this reads a few hundred MB once.

  Args:
    prefix: checkpoint prefix ('.../model.ckpt-1000').

  Returns:
    None, or a phrase naming the file at fault ('data file .../model.ckpt-1000.data-00000-of-00001 missing').
  """
  index = prefix + '.index'
  if not tf.io.gfile.exists(index):
    return 'index file %s missing' % index
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    return 'index file %s unreadable (%s)' % (index, _first_line(e))
  data_files = [f for f in checkpoint_files(os.path.dirname(prefix) or '.').get(prefix, []) if '.data-' in f]
  num_shards = {int(_CHECKPOINT_FILE_PATTERN.match(os.path.basename(f)).group('shards')) for f in data_files}
  expected = ['%s.data-%05d-of-%05d' % (prefix, i, n) for n in num_shards for i in range(n)] or \
      ['%s.data-00000-of-00001' % prefix]
  missing = [f for f in expected if f not in data_files]
  if missing:
    return 'data file %s missing' % missing[0]
  for name in sorted(reader.get_variable_to_shape_map()):
    try:
      reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
      return 'data file %s unreadable (tensor %s: %s)' % (' / '.join(expected), name, _first_line(e))
  return None


def _first_line(error):
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__
