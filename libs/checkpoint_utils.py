"""Checkpoint initialisation with every decision logged.

Three cases, checked in this order by the trainer (DeepLab's pattern, which never crashes when training from
scratch and never silently ignores a checkpoint the user asked for):

1. the training directory already has a checkpoint -> resume from it (weights, optimizer slots, global step);
2. `fine_tune_checkpoint` is set -> restore the variables the model's restore_map() and the checkpoint have in
   common (same name and shape), log those restored, those absent from the checkpoint and shape mismatches;
   a configured checkpoint that does not exist is an error;
3. neither -> random initialisation, logged.
"""
import os

from libs.compat import tf

logger = tf.get_logger()


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
      raise ValueError('%s = %r: directory holds no checkpoint' % (field, path))
    return latest
  if tf.train.checkpoint_exists(path):
    return path
  raise ValueError('%s = %r: no such checkpoint (expected files %s.index/.data-* or a V1 checkpoint file)'
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

  Raises:
    ValueError: if no model variable at all can be restored (wrong checkpoint type or file).
  """
  var_map = model.restore_map(checkpoint_type)
  restorable, _, _ = filter_restore_map(var_map, checkpoint_path)
  if not restorable:
    raise ValueError('fine_tune_checkpoint %s (type %r) holds none of the model variables it should '
                     'initialise; is fine_tune_checkpoint_type right?' % (checkpoint_path, checkpoint_type))
  saver = tf.train.Saver(restorable, name='fine_tune_saver')

  def init_fn(sess):
    saver.restore(sess, checkpoint_path)
    logger.info('Initialised %d variables from %s (%s checkpoint).', len(restorable), checkpoint_path,
                checkpoint_type)

  return init_fn
