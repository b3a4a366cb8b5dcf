"""Memory-saving gradients: keep a few checkpoint tensors, recompute the rest of the forward pass when backprop
needs it.

Follows Chen, Xu, Zhang & Guestrin, "Training Deep Nets with Sublinear Memory Cost" (arXiv:1604.06174, 2016) and
the interface of OpenAI's gradient-checkpointing package (`gradients(ys, xs, checkpoints=...)` with the modes
'collection', 'memory' and 'speed'). That package needs `tf.contrib.graph_editor`, which no current TensorFlow
has; this is an independent implementation for TF 2.x graph mode (`tf.compat.v1`), no code taken from it.

    from libs import memory_saving_gradients
    grads = memory_saving_gradients.gradients(loss, variables, checkpoints=['PSPModule/Conv_4/Relu6'])
    grads = memory_saving_gradients.gradients(loss, variables, checkpoints='memory')   # chosen automatically
    gradients_fn = memory_saving_gradients.make_gradients_fn('units')                  # for the trainer

How the gradient is built. The checkpoints cut the forward graph between `xs` and `ys` into segments. Backprop
runs segment by segment, from the loss towards the inputs:

1. The segment next to the loss uses the original forward ops (its activations are needed at the start of
   backprop anyway): `tf.gradients(ys, checkpoints + xs, stop_gradients=checkpoints)` gives the gradients of
   the checkpoints and the part of the gradients of `xs` that reaches them without crossing a checkpoint.
2. Every other segment, one checkpoint op at a time in reverse topological order: the forward ops between that
   checkpoint and the earlier checkpoints are copied (copies read the original checkpoints, variables and
   constants), and `tf.gradients(copied checkpoint, other checkpoints + xs, grad_ys=its gradient,
   stop_gradients=other checkpoints)` backprops through the copies. Partial gradients are summed.

So the original activations of a segment are only read by original forward ops and are freed during the forward
pass; only checkpoints stay alive until backprop. Two things make that true at run time:

* Gating. The first copied ops of a segment get a control dependency on a NoOp that waits for *all* gradient ops
  of the segments processed before it (the gradients of the checkpoints and of the variables), not only for the
  checkpoint's gradient: otherwise the executor may run the recomputation early (copies only need the
  checkpoints, available after the forward pass) and hold every segment's activations at once.
* Nothing outside the copies refers to a copy, and the copies are never added to a collection.

Two scheduling constraints inside the gradient lower the peak further (measured figures: README, "Performance" /
bench/results/README.md, "Memory-saving gradients"): each convolution's input gradient waits for its filter
gradient (run concurrently, their workspaces add up), and the gradients of parameter-only losses (weight decay)
are taken in a last pass, each computed when its variable's other partial gradients are ready instead of at the
start of backprop.

What is never copied (its original output is read instead, so it is effectively a checkpoint): stateful ops
(random ops such as dropout's, so recomputation sees the same random values; variable reads; assign ops;
iterators), constants, ops on reference dtypes, and control-flow ops. Batch-norm moving-average updates are
assign ops off the path to the loss: they are neither copied nor duplicated, and UPDATE_OPS is unchanged.

Checkpoints (the `checkpoints` argument):

* a list of tensors, operations, tensor names ('a/b:0') or op names ('a/b': its outputs on the path); names
  are looked up under the caller's name scope first (`clone_1/<name>` inside the trainer's `clone_1` scope),
  then as given, then as `<scope>/<name>` for every single top-level scope on the path to ys (all clones, when
  one gradient covers them). An unknown name fails with the closest existing names; a node that does not feed
  `ys` fails naming it; a node no gradient of `xs` flows through (e.g. in a frozen backbone) is skipped with a
  warning.
* 'collection': the tensors in the graph collection 'checkpoints' (OpenAI's convention).
* 'units': the outputs of residual units (ops named `.../unit_<i>/bottleneck_v<k>/Relu`, TF-Slim ResNets).
* 'memory': Chen et al.'s budgeted greedy cut of the topologically sorted data flow, with the budget chosen to
  minimise the estimated peak: checkpoint bytes + the costliest segment, a segment costing its recomputed
  activations or, at a convolution's gradient, the activations before it plus its workspace (input x kernel
  area, the im2col buffer of CPU kernels) -- about sqrt(n) segments for uniform layers, fewer where one big
  convolution's workspace bounds the peak anyway.
* 'speed': the outputs of convolutions and matrix products, so only cheap ops (batch norm, activations, adds)
  are recomputed.
* [] or None: no checkpoint, exactly tf.gradients.

Which tensors the names and modes select is libs/gradient_checkpoints.py's job.
"""
import collections

from libs import gradient_checkpoints
from libs.gradient_checkpoints import num_bytes as _num_bytes
from libs.gradient_checkpoints import tensor_key as _key
from libs.compat import tf

# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import gradients_impl
from tensorflow.python.ops import resource_variable_ops
from tensorflow.python.ops.unconnected_gradients import UnconnectedGradients
# pylint: enable=g-direct-tensorflow-import

logger = tf.get_logger()

_tf_gradients = gradients_impl.gradients

# ----------------------------------------------------------------------------------------------------------------
# Building the gradient.


def _tensor_ops(gradient):
  if isinstance(gradient, tf.IndexedSlices):
    return [gradient.values.op, gradient.indices.op]
  return [gradient.op]


def _sum(gradients, name):
  """Sums partial gradients; IndexedSlices stay sparse when all are sparse."""
  if len(gradients) == 1:
    return gradients[0]
  if all(isinstance(g, tf.IndexedSlices) for g in gradients):
    return tf.IndexedSlices(tf.concat([g.values for g in gradients], 0, name=name + '_values'),
                            tf.concat([g.indices for g in gradients], 0, name=name + '_indices'),
                            gradients[0].dense_shape)
  return tf.add_n([tf.convert_to_tensor(g) for g in gradients], name=name)


# Gradient ops of a convolution with respect to its input and to its filter; both take the output gradient as
# input 2. CPU kernels allocate an im2col-style workspace of about input size x kernel area for each.
_INPUT_GRADIENT_TYPES = frozenset(['Conv2DBackpropInput', 'DepthwiseConv2dNativeBackpropInput',
                                   'Conv3DBackpropInputV2'])
_FILTER_GRADIENT_TYPES = frozenset(['Conv2DBackpropFilter', 'DepthwiseConv2dNativeBackpropFilter',
                                    'Conv3DBackpropFilterV2'])


def _serialize_convolution_gradients(ops):
  """Makes each convolution's input-gradient op wait for its filter-gradient op.

  Both are ready at the same moment; run concurrently, their workspaces add up (for PSPNet50's 3x3 fusion
  convolution on a CPU: bench/results/README.md, "Memory-saving gradients"). Filter first: it is the last
  reader of the (recomputed) forward input, which is then freed. The kernels use intra-op threads either way.
  """
  filters = {}
  for op in ops:
    if op.type in _FILTER_GRADIENT_TYPES:
      filters[_key(op.inputs[2])] = op
  for op in ops:
    if op.type in _INPUT_GRADIENT_TYPES and _key(op.inputs[2]) in filters:
      op._add_control_inputs([filters[_key(op.inputs[2])]])  # pylint: disable=protected-access


def _segment_ops(seed, fwd, checkpoint_ops):
  """Forward ops to recompute for the checkpoint op `seed`: its ancestors up to the other checkpoints, that can be
  copied. Non-copyable differentiable ops in between are logged: their gradient reads original tensors."""
  if not gradient_checkpoints.is_copyable(seed):
    return []
  members, stack = {seed}, [seed]
  while stack:
    for t in stack.pop().inputs:
      src = t.op
      if src in members or src not in fwd.ops or src in checkpoint_ops:
        continue
      if gradient_checkpoints.is_copyable(src):
        members.add(src)
        stack.append(src)
      elif tf_ops.get_gradient_function(src) is not None and any(i.op in fwd.ops for i in src.inputs):
        logger.warning('Memory-saving gradients: %s (%s) cannot be recomputed; its gradient uses the original '
                       'forward tensors before it, which stay in memory.', src.name, src.type)
  return sorted(members, key=fwd.position.get)


def _copy_ops(ops, gate, graph):
  """Copies `ops` (topologically sorted) with their inputs remapped to the copies; copies whose inputs all come
  from outside wait for `gate`. Returns {original op: copy}."""
  copies = {}
  with graph.control_dependencies(None), tf.name_scope('recompute'):
    for op in ops:
      inputs = [copies[t.op].outputs[t.value_index] if t.op in copies else t for t in op.inputs]
      # _create_op_internal: no collections, no device function (the original's device is set below).
      copy = graph._create_op_internal(  # pylint: disable=protected-access
          op.type, inputs, dtypes=[t.dtype for t in op.outputs], name=op.name,
          attrs=dict(op.node_def.attr.items()), compute_device=False)
      copy._set_device(op.device)  # pylint: disable=protected-access
      for original, copied in zip(op.outputs, copy.outputs):
        copied.set_shape(original.shape)  # Shapes refined with set_shape() in Python.
      controls = [copies.get(c, c) for c in op.control_inputs]
      if not any(t.op in copies for t in op.inputs):
        controls.append(gate)
      copy._add_control_inputs(controls)  # pylint: disable=protected-access
      copies[op] = copy
  return copies


def gradients(ys, xs, grad_ys=None, checkpoints='memory', name='memory_saving_gradients',
              colocate_gradients_with_ops=False, gate_gradients=False, aggregation_method=None,
              stop_gradients=None, unconnected_gradients=UnconnectedGradients.NONE):
  """tf.gradients that keeps only `checkpoints` between the forward and the backward pass.

  Args:
    ys: tensor or list of tensors to differentiate.
    xs: tensor, variable or list of them.
    grad_ys: optional initial gradients of ys, as for tf.gradients.
    checkpoints: a list of tensors / operations / names, one of gradient_checkpoints.MODES, or None / []
      (see the module docstring).
    name: name scope of the gradient and recomputation ops.
    colocate_gradients_with_ops, gate_gradients, aggregation_method, stop_gradients, unconnected_gradients:
      as for tf.gradients.

  Returns:
    list with one gradient (tensor, IndexedSlices or None) per x, equal to tf.gradients(ys, xs).

  Raises:
    ValueError: for an unknown checkpoint name (with the closest names), a checkpoint that does not feed ys, or an
      automatic mode that finds nothing where it must ('collection', 'units').
  """
  ys, xs = gradient_checkpoints.as_list(ys), gradient_checkpoints.as_list(xs)
  ys = [tf_ops.convert_to_tensor(y) for y in ys]
  graph = ys[0].graph
  scope = graph.get_name_scope()
  kwargs = dict(colocate_gradients_with_ops=colocate_gradients_with_ops, gate_gradients=gate_gradients,
                aggregation_method=aggregation_method)
  user_stops = gradient_checkpoints.as_list(stop_gradients) if stop_gradients is not None else []
  unconnected = UnconnectedGradients(unconnected_gradients)
  with graph.as_default():
    fwd = gradient_checkpoints.ForwardGraph(ys, [gradient_checkpoints.graph_tensor(x) for x in xs])
    kept = gradient_checkpoints.checkpoint_tensors(checkpoints, fwd, graph, scope)
    if not kept:
      return _tf_gradients(ys, xs, grad_ys, stop_gradients=stop_gradients, unconnected_gradients=unconnected,
                           **kwargs)
    with tf.name_scope(name):
      return _segmented_gradients(ys, xs, grad_ys, kept, fwd, graph, user_stops, unconnected, kwargs)


def _segmented_gradients(ys, xs, grad_ys, kept, fwd, graph, user_stops, unconnected, kwargs):
  checkpoint_ops = []
  for t in kept:
    if t.op not in checkpoint_ops:
      checkpoint_ops.append(t.op)
  checkpoint_op_set = set(checkpoint_ops)
  logger.info('Memory-saving gradients: %d checkpoint tensors (%.1f MiB at the static shapes), %d segments '
              'recomputed.', len(kept), sum(_num_bytes(t) for t in kept) / 2.0**20, len(checkpoint_ops))
  partial = collections.defaultdict(list)  # checkpoint key -> partial gradients
  x_partials = [[] for _ in xs]

  def record(results, boundary):
    """Stores partial gradients; returns the ops every later segment waits for."""
    done = []
    for t, g in zip(boundary, results[:len(boundary)]):
      if g is not None:
        partial[_key(t)].append(g)
        done += _tensor_ops(g)
    for i, g in enumerate(results[len(boundary):]):
      if g is not None:
        x_partials[i].append(g)
        done += _tensor_ops(g)
    return done

  # The segment next to the loss, on the original forward ops. It stops at the parameter losses too: their
  # gradients are taken last (below).
  parameter_losses = _parameter_losses(fwd)
  first_new = len(graph.get_operations())
  results = _tf_gradients(ys, kept + parameter_losses + xs, grad_ys, name='gradients',
                          stop_gradients=kept + parameter_losses + user_stops,
                          unconnected_gradients=UnconnectedGradients.NONE, **kwargs)
  _serialize_convolution_gradients(graph.get_operations()[first_new:])
  wait_for = record(results, kept + parameter_losses)
  gate = None
  for index, seed in enumerate(reversed(checkpoint_ops)):
    outputs = [t for t in seed.outputs if partial.get(_key(t))]
    if not outputs:
      continue  # No gradient reaches this checkpoint.
    with tf.name_scope('segment_%d' % index):
      with graph.control_dependencies(None), graph.control_dependencies(wait_for + ([gate] if gate else [])):
        gate = tf.no_op(name='wait_for_later_segments')
      copies = _copy_ops(_segment_ops(seed, fwd, checkpoint_op_set), gate, graph)
      seed_ys = [copies[seed].outputs[t.value_index] if seed in copies else t for t in outputs]
      seed_grads = [_sum(partial[_key(t)], 'sum_' + t.op.name.split('/')[-1]) for t in outputs]
      boundary = [t for t in kept if t.op is not seed]
      first_new = len(graph.get_operations())
      results = _tf_gradients(seed_ys, boundary + xs, seed_grads, name='gradients',
                              stop_gradients=boundary + user_stops,
                              unconnected_gradients=UnconnectedGradients.NONE, **kwargs)
      _serialize_convolution_gradients(graph.get_operations()[first_new:])
      wait_for = record(results, boundary)
  _parameter_loss_gradients(parameter_losses, partial, xs, x_partials, graph, user_stops, kwargs)
  with tf.name_scope('sum'):
    grads = [_sum(g, 'x_%d' % i) if g else None for i, g in enumerate(x_partials)]
  if unconnected == UnconnectedGradients.ZERO:
    grads = [g if g is not None else _zeros_for(x) for g, x in zip(grads, xs)]
  return grads


def _parameter_losses(fwd):
  """Scalars computed from parameters only that enter the data flow to ys: weight decay (the regularization
  loss added to the data loss)."""
  data_ops = set(fwd.data_ops())
  losses = []
  for op in fwd.order:
    if op not in data_ops:
      losses += [t for t in op.outputs if t.shape.num_elements() == 1 and _key(t) not in fwd.y_keys
                 and any(c in data_ops for c in t.consumers())]
  return losses


def _parameter_loss_gradients(parameter_losses, partial, xs, x_partials, graph, user_stops, kwargs):
  """Adds the gradients of the parameter losses (weight decay) to x_partials, each computed only when the other
  partial gradients of its variable are ready.

  Otherwise the executor computes them at the start of backprop, and each waits there, as large as its
  variable, for its data gradient (PSPNet50's figure: bench/results/README.md, "Memory-saving gradients").
  """
  losses = [t for t in parameter_losses if partial.get(_key(t))]
  if not losses:
    return
  first_new = len(graph.get_operations())
  with tf.name_scope('parameter_losses'):
    results = _tf_gradients(losses, xs, [_sum(partial[_key(t)], 'sum') for t in losses], name='gradients',
                            stop_gradients=user_stops or None,
                            unconnected_gradients=UnconnectedGradients.NONE, **kwargs)
  new_ops = set(graph.get_operations()[first_new:])
  for g, partials in zip(results, x_partials):
    if g is None:
      continue
    later = [op for p in partials for op in _tensor_ops(p)]
    if later:  # Defer every op of this gradient that holds more than a scalar.
      stack, seen = _tensor_ops(g), set()
      while stack:
        op = stack.pop()
        if op in seen or op not in new_ops:
          continue
        seen.add(op)
        if any(t.shape.num_elements() != 1 for t in op.outputs):
          op._add_control_inputs(later)  # pylint: disable=protected-access
        stack += [t.op for t in op.inputs]
    partials.append(g)


def _zeros_for(x):
  if resource_variable_ops.is_resource_variable(x) or isinstance(x, tf.Variable):
    return tf.zeros(x.shape, x.dtype.base_dtype)
  return tf.zeros_like(x)


# ----------------------------------------------------------------------------------------------------------------
# The trainer's hook.


def make_gradients_fn(checkpoints='memory', **kwargs):
  """fn(ys, xs) -> gradients for trainer.TrainOptions.gradients_fn.

  The trainer calls it inside each clone's name scope, so names resolve to `clone_i/<name>` there.
  """
  def gradients_fn(ys, xs):
    return gradients(ys, xs, checkpoints=checkpoints, **kwargs)
  return gradients_fn
