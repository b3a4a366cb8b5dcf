"""Data-parallel clones in one graph (in-graph replication), with optional synchronized batch norm.

Modelled on the deployment scheme of TF-Slim's model_deploy (research/slim/deployment): clone i is built under
the name scope `clone_i` (no scope with a single clone, so node names stay those of the model, e.g.
`SharedFeatureExtractor/resnet_v1_50/block1/unit_3/bottleneck_v1/Relu`) on its own device, all clones share
the variables, each clone's loss is divided by the number of clones and the gradients are summed, so the update
is the gradient of the mean loss.

With synchronized batch norm (libs/batch_norm.CrossCloneSync) the clones' forward passes are coupled through the
global batch moments, so the gradient of the summed loss is taken in one pass over all clones (gradient ops
colocated with their forward ops, i.e. on each clone's device) instead of one pass per clone.
"""
import collections
import contextlib

from libs import batch_norm as batch_norm_lib
from libs.compat import tf
from libs.config_errors import UserError

Clone = collections.namedtuple('Clone', ['outputs', 'scope', 'device'])


def device_scope(device):
  """tf.device(device), or nothing for None: `tf.device(None)` would clear enclosing device functions such as
  the replica device setter of distributed training."""
  return tf.device(device) if device is not None else contextlib.nullcontext()


def clone_scope(index, num_clones):
  """Name scope of clone `index` ('' for a single clone)."""
  return 'clone_%d' % index if num_clones > 1 else ''


def clone_device(index, num_clones, clone_on_cpu, worker_device=''):
  """Device of clone `index`.

  Args:
    index: clone index.
    num_clones: number of clones.
    clone_on_cpu: place every clone on the CPU.
    worker_device: prefix of this worker's devices in distributed training (e.g. '/job:worker/task:1').

  Returns:
    A device string, or None to leave placement to TensorFlow (one clone and no GPU).

  Raises:
    ValueError: when more GPU clones are asked for than GPUs are visible.
  """
  if clone_on_cpu:
    return worker_device + '/device:CPU:0'
  num_gpus = len(tf.config.list_physical_devices('GPU'))
  if num_gpus == 0 and num_clones == 1:
    return worker_device or None
  if num_gpus < num_clones:
    raise UserError('--num_clones %d needs %d GPUs but %d are visible (CUDA_VISIBLE_DEVICES); use '
                    '--clone_on_cpu to run clones on the CPU' % (num_clones, num_clones, num_gpus))
  return worker_device + '/device:GPU:%d' % index


def variables_device(num_clones, worker_device=''):
  """Where the variables live: the CPU with several clones (no GPU holds them all), else default."""
  if num_clones > 1:
    return worker_device + '/device:CPU:0'
  return None


def create_clones(num_clones, clone_on_cpu, clone_fn, sync_batch_norm=False, worker_device=''):
  """Builds num_clones clones of clone_fn.

  Args:
    num_clones: number of clones (> 0).
    clone_on_cpu: place clones on the CPU.
    clone_fn: fn(index) -> outputs, building one clone (variables created by clone 0, reused by the others).
    sync_batch_norm: synchronize batch-norm moments across clones (layers built with
      sync_across_clones=True).
    worker_device: device prefix of this worker in distributed training.

  Returns:
    list of Clone(outputs, scope, device).
  """
  syncer = batch_norm_lib.CrossCloneSync(num_clones) if sync_batch_norm and num_clones > 1 else None
  clones = []
  for i in range(num_clones):
    scope = clone_scope(i, num_clones)
    device = clone_device(i, num_clones, clone_on_cpu, worker_device)
    with tf.name_scope(scope or None) as name_scope, device_scope(device):
      with tf.variable_scope(tf.get_variable_scope(), reuse=True if i > 0 else None):
        if syncer is not None:
          with syncer.clone(i, device):
            outputs = clone_fn(i)
        else:
          outputs = clone_fn(i)
    clones.append(Clone(outputs, name_scope or '', device))
  if syncer is not None:
    syncer.finalize()
  return clones


def _sum_gradients(per_clone_grads, variables):
  summed = []
  for i, variable in enumerate(variables):
    grads = [grads[i] for grads in per_clone_grads if grads[i] is not None]
    if not grads:
      tf.get_logger().warning('No gradient for %s (not on the path to the loss)', variable.op.name)
      continue
    summed.append((tf.add_n(grads) if len(grads) > 1 else grads[0], variable))
  return summed


def clone_gradients(clones, clone_losses, variables, regularization_loss=None, gradients_fn=None,
                    synchronized=False):
  """Gradients of mean(clone_losses) + regularization_loss, as (gradient, variable) pairs.

  Args:
    clones: from create_clones().
    clone_losses: one scalar loss per clone.
    variables: variables to differentiate.
    regularization_loss: optional scalar added once (to the first clone's loss).
    gradients_fn: fn(ys, xs) -> gradients; tf.gradients with colocation by default.
    synchronized: the clones are coupled (synchronized batch norm): one gradient pass over all of them.

  Returns:
    list of (gradient, variable); variables without gradient are dropped with a warning.
  """
  num_clones = len(clones)
  gradients_fn = gradients_fn or (lambda ys, xs: tf.gradients(ys, xs, colocate_gradients_with_ops=True))
  scaled = [loss / float(num_clones) if num_clones > 1 else loss for loss in clone_losses]
  if regularization_loss is not None:
    scaled[0] = scaled[0] + regularization_loss
  if synchronized and num_clones > 1:
    with tf.name_scope('gradients_all_clones'):
      return _sum_gradients([gradients_fn(tf.add_n(scaled), variables)], variables)
  per_clone = []
  for clone, loss in zip(clones, scaled):
    with tf.name_scope(clone.scope or None), device_scope(clone.device):
      per_clone.append(gradients_fn(loss, variables))
  return _sum_gradients(per_clone, variables)
