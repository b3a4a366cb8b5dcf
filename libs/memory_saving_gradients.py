"""Memory-saving gradients: keep a few checkpoint tensors, recompute the rest of the forward pass when backprop
needs it.

Follows Chen, Xu, Zhang & Guestrin, "Training Deep Nets with Sublinear Memory Cost" (arXiv:1604.06174, 2016) and
the interface of OpenAI's gradient-checkpointing package (`gradients(ys, xs, checkpoints=...)` with the modes
'collection', 'memory' and 'speed'). That package needs `tf.contrib.graph_editor`, which no current TensorFlow
has; this is an independent implementation for TF 2.x graph mode (`tf.compat.v1`), no code taken from it.

    from libs import memory_saving_gradients
    grads = memory_saving_gradients.gradients(loss, variables, checkpoints=['PSPModule/Conv_4/Relu6'])
    grads = memory_saving_gradients.gradients(loss, variables, checkpoints='memory')   # chosen automatically
    with memory_saving_gradients.patched_gradients(checkpoints='units'):               # for optimizer.minimize,
      train_op = slim.learning.create_train_op(loss, optimizer)                         # slim's helpers, ...

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

Two scheduling constraints inside the gradient lower the peak further (measured on PSPNet50, 385x385, batch 2,
CPU; see README "Memory-saving training"): each convolution's input gradient waits for its filter gradient (run
concurrently, their workspaces add up), and the gradients of parameter-only losses (weight decay) are taken in a
last pass, each computed when its variable's other partial gradients are ready instead of at the start of
backprop.

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

Not thread-safe while patched_gradients() is active (it swaps module attributes).
"""
import collections
import contextlib
import difflib
import heapq
import os
import re

from libs.compat import tf

# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import indexed_slices
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import gradients as gradients_module
from tensorflow.python.ops import gradients_impl
from tensorflow.python.ops import resource_variable_ops
from tensorflow.python.ops.unconnected_gradients import UnconnectedGradients
# pylint: enable=g-direct-tensorflow-import

logger = tf.get_logger()

# The unpatched function: every gradient below is built with it, also while patched_gradients() is active.
_tf_gradients = gradients_impl.gradients

MODES = ('collection', 'units', 'memory', 'speed')
CHECKPOINTS_COLLECTION = 'checkpoints'
# Residual unit outputs of TF-Slim ResNets (v1 and v2): `.../block2/unit_4/bottleneck_v1/Relu`.
UNIT_OUTPUT_PATTERN = re.compile(r'(^|/)unit_\d+/bottleneck_v\d+/Relu$')
# Ops whose outputs mode 'speed' keeps: the expensive ones.
EXPENSIVE_OP_TYPES = frozenset([
    'Conv2D', 'Conv3D', 'DepthwiseConv2dNative', 'Conv2DBackpropInput', 'MatMul', 'BatchMatMul',
    'BatchMatMulV2', 'BatchMatMulV3', 'Einsum'])

# Never recomputed (besides stateful ops): constants are free to keep; v1 control flow only works inside its
# frame; functional control flow rewrites its forward op when differentiated.
_NEVER_COPIED_TYPES = frozenset([
    'Const', 'Placeholder', 'PlaceholderWithDefault', 'VarHandleOp', 'VariableV2', 'Variable',
    'Switch', 'RefSwitch', 'Merge', 'RefMerge', 'Enter', 'RefEnter', 'Exit', 'RefExit', 'NextIteration',
    'RefNextIteration', 'LoopCond', 'ControlTrigger', 'If', 'StatelessIf', 'While', 'StatelessWhile', 'Case',
    'StatelessCase', 'PartitionedCall', 'StatefulPartitionedCall'])
# Stateful ops that read parameters rather than produce data: not where the data flow starts.
_VARIABLE_OP_TYPES = frozenset([
    'VarHandleOp', 'ReadVariableOp', 'VariableV2', 'Variable', 'VarIsInitializedOp', 'ResourceGather',
    'ResourceGatherNd'])


# ----------------------------------------------------------------------------------------------------------------
# The forward graph between xs and ys.


def _key(tensor):
  return tensor.op, tensor.value_index


def _is_copyable(op):
  """Whether recomputing `op` gives the same value without side effects."""
  if op.type in _NEVER_COPIED_TYPES or op._is_stateful:  # pylint: disable=protected-access
    return False
  if op._get_control_flow_context() is not None:  # pylint: disable=protected-access
    return False
  return not any(t.dtype._is_ref_dtype or t.dtype == tf.resource  # pylint: disable=protected-access
                 for t in list(op.inputs) + list(op.outputs))


def _num_bytes(tensor):
  """Static size of a tensor; unknown dimensions count as 1 (the same batch factor for all tensors)."""
  shape = tensor.shape
  if shape.ndims is None:
    return tensor.dtype.size
  size = tensor.dtype.size
  for dim in shape.as_list():
    size *= dim if dim is not None else 1
  return size


def _is_feature_map(tensor):
  """Tensors that matter for memory: floating point and of rank >= 2 (not shapes, scalars or statistics)."""
  return tensor.dtype.is_floating and (tensor.shape.ndims is None or tensor.shape.ndims >= 2)


def _topological_order(ops):
  """Kahn's algorithm over data edges inside `ops`, ties broken by creation order (deterministic)."""
  ops = set(ops)
  pending = {op: sum(1 for t in op.inputs if t.op in ops) for op in ops}
  ready = [(op._id, op) for op, count in pending.items() if count == 0]  # pylint: disable=protected-access
  heapq.heapify(ready)
  order = []
  while ready:
    _, op = heapq.heappop(ready)
    order.append(op)
    for out in op.outputs:
      for consumer in out.consumers():
        if consumer in pending:
          pending[consumer] -= 1
          if pending[consumer] == 0:
            heapq.heappush(ready, (consumer._id, consumer))  # pylint: disable=protected-access
  if len(order) < len(ops):  # Cycles (v1 while loops): keep creation order for the rest.
    placed = set(order)
    order += sorted((op for op in ops if op not in placed), key=lambda op: op._id)  # pylint: disable=protected-access
  return order


class _ForwardGraph(object):
  """The ops that feed `ys` (`cone`) and those of them that depend on `xs` (`ops`, in topological order)."""

  def __init__(self, ys, x_tensors):
    self.ys = ys
    self.y_keys = set(_key(y) for y in ys)
    self.x_keys = set(_key(x) for x in x_tensors)
    self.x_ops = set(x.op for x in x_tensors)
    cone = set(y.op for y in ys)
    stack = list(cone)
    while stack:
      for t in stack.pop().inputs:
        if t.op not in cone:
          cone.add(t.op)
          stack.append(t.op)
    self.cone = cone
    reached, stack = set(), list(self.x_ops)
    while stack:
      for out in stack.pop().outputs:
        for consumer in out.consumers():
          if consumer in cone and consumer not in reached:
            reached.add(consumer)
            stack.append(consumer)
    self.order = [op for op in _topological_order(cone) if op in reached and op not in self.x_ops]
    self.ops = set(self.order)
    self.position = {op: i for i, op in enumerate(self.order)}
    self._data_ops = None

  def is_forward_tensor(self, tensor):
    """Whether gradients can flow from ys to xs through `tensor`."""
    return tensor.op in self.ops and (
        _key(tensor) in self.y_keys or any(c in self.ops for c in tensor.consumers()))

  def data_ops(self):
    """The forward ops that depend on the data (placeholders, input iterators, random ops), not only on
    parameters: the activations. Falls back to all forward ops for graphs without such a source."""
    if self._data_ops is None:
      is_data = {}
      for op in _topological_order(self.cone):
        source = op._is_stateful and op.type not in _VARIABLE_OP_TYPES  # pylint: disable=protected-access
        is_data[op] = source or op.type in ('Placeholder', 'PlaceholderWithDefault') or any(
            is_data.get(t.op, False) for t in op.inputs)
      self._data_ops = [op for op in self.order if is_data[op]] or list(self.order)
    return self._data_ops


# ----------------------------------------------------------------------------------------------------------------
# Choosing checkpoints.


def _lookup(graph, name, scope, fwd):
  """Tensors named `name` (an op name, or a tensor name 'op:index'); None if there is no such node.

  Looked up under the caller's name scope first (`clone_1/<name>` inside the trainer's clone scope), then as
  given, then under any single top-level scope on the path to ys (every `clone_<i>/<name>` when one gradient
  covers all clones, as with synchronized batch norm).
  """
  op_name, _, index = name.partition(':')
  ops = []
  for candidate in ([scope + '/' + op_name] if scope else []) + [op_name]:
    try:
      ops = [graph.get_operation_by_name(candidate)]
      break
    except KeyError:
      continue
  if not ops:
    suffix = '/' + op_name
    ops = [op for op in fwd.cone if op.name.endswith(suffix) and '/' not in op.name[:-len(suffix)]]
    ops.sort(key=lambda op: op.name)
  if not ops:
    return None
  if not index:
    return [t for op in ops for t in op.outputs]
  if not index.isdigit() or int(index) >= len(ops[0].outputs):
    raise ValueError('Checkpoint %r: %s has %d outputs, no output %r' % (name, ops[0].name, len(ops[0].outputs),
                                                                          index))
  return [op.outputs[int(index)] for op in ops]


def _unknown_name_error(name, scope, fwd, graph):
  pool = [op.name for op in fwd.order] or [op.name for op in graph.get_operations()]
  if scope:
    prefix = scope + '/'
    pool = [n[len(prefix):] if n.startswith(prefix) else n for n in pool]
  base = name.split(':')[0]
  close = difflib.get_close_matches(base, sorted(set(pool)), n=5, cutoff=0.6)
  looked = (['%s/%s' % (scope, name)] if scope else []) + [name, '<scope>/%s' % name]
  return ValueError('Checkpoint node %r is not in the graph (looked for %s). %s' % (
      name, ', '.join(repr(n) for n in looked),
      'Closest existing names: %s.' % ', '.join(repr(c) for c in close) if close
      else 'No similar name on the path to the loss.'))


def _as_tensors(item, graph, scope, fwd):
  """A checkpoint given as tensor, operation or name -> (label, [tensors])."""
  if isinstance(item, tf.Tensor):
    return item.name, [item]
  if isinstance(item, tf.Operation):
    return item.name, list(item.outputs)
  if isinstance(item, str):
    tensors = _lookup(graph, item, scope, fwd)
    if tensors is None:
      raise _unknown_name_error(item, scope, fwd, graph)
    return item, tensors
  raise TypeError('Checkpoints must be tensors, operations or names, got %r (%s)' % (item, type(item).__name__))


def _named_checkpoints(items, graph, scope, fwd):
  """Resolves and checks user-given checkpoints; returns the forward tensors to keep."""
  tensors = []
  for item in items:
    label, candidates = _as_tensors(item, graph, scope, fwd)
    if not any(t.op in fwd.cone for t in candidates):
      raise ValueError('Checkpoint node %r (%s) is not on the path to the loss %s: nothing computed from it '
                       'feeds it, so it cannot save memory; choose a node of the network that computes the loss.'
                       % (label, candidates[0].op.name if candidates else '?', ', '.join(y.name for y in fwd.ys)))
    if candidates[0].op in fwd.x_ops or any(_key(t) in fwd.x_keys for t in candidates):
      logger.warning('Checkpoint %r is one of the xs; ignored.', label)
      continue
    on_path = [t for t in candidates if fwd.is_forward_tensor(t)]
    if not on_path:
      logger.warning('Checkpoint %r: no gradient of the %d xs flows through it (e.g. it is in a frozen part of '
                     'the network); ignored.', label, len(fwd.x_keys))
      continue
    tensors += on_path
  return tensors


def _collection_checkpoints(graph, fwd):
  tensors = []
  for item in graph.get_collection(CHECKPOINTS_COLLECTION):
    tensors += [t for t in (item.outputs if isinstance(item, tf.Operation) else [item])
                if t.graph is graph and fwd.is_forward_tensor(t)]
  if not tensors:
    raise ValueError("checkpoints='collection', but the graph collection %r holds no tensor on the path from xs "
                     "to ys; add some with tf.add_to_collection(%r, tensor) or use one of %s."
                     % (CHECKPOINTS_COLLECTION, CHECKPOINTS_COLLECTION, ', '.join(repr(m) for m in MODES)))
  return tensors


def _unit_checkpoints(fwd):
  tensors = [op.outputs[0] for op in fwd.data_ops() if UNIT_OUTPUT_PATTERN.search(op.name)]
  if not tensors:
    raise ValueError("checkpoints='units': no residual unit output (an op matching %r) on the path from xs to "
                     "ys; name the nodes or use checkpoints='memory'." % UNIT_OUTPUT_PATTERN.pattern)
  return tensors


def _speed_checkpoints(fwd):
  return [op.outputs[0] for op in fwd.data_ops()
          if op.type in EXPENSIVE_OP_TYPES and _is_feature_map(op.outputs[0])]


def _workspace_bytes(op):
  """Backward workspace of an op: a convolution's filter gradient im2col-expands its input (input bytes x kernel
  area) on a CPU; other ops need none beyond their tensors."""
  if op.type not in ('Conv2D', 'DepthwiseConv2dNative', 'Conv3D') or len(op.inputs) < 2:
    return 0
  kernel = op.inputs[1].shape.as_list()
  if None in kernel:
    return 0
  area = 1
  for dim in kernel[:-2]:
    area *= dim
  return _num_bytes(op.inputs[0]) * area


def _segment_cost(produced, workspace, first, last):
  """Estimated peak of recomputing and differentiating ops first..last: all their activations at the start of
  the segment's backprop, or, at op j's gradient, the activations up to j's input plus j's workspace (those
  after j are freed by then)."""
  total, cost = 0, 0
  for j in range(first, last + 1):
    cost = max(cost, total + workspace[j])
    total += produced[j]
  return max(cost, total)


def _greedy_cuts(produced, crossing, sizes, budget, workspace):
  """Chen et al.'s greedy segmentation for one budget: a segment ends once it has produced `budget` bytes, at
  the cheapest cut (fewest new bytes to keep) among the positions where it holds budget..2*budget bytes.

  Returns:
    (estimated peak bytes: kept bytes + the costliest segment, set of tensor keys to keep).
  """
  kept, costs = set(), []
  start, total, best, first = 0, 0, None, 0
  i = 0
  while i < len(produced):
    total += produced[i]
    segment = total - start
    if segment >= budget and crossing[i] is not None:
      cost = sum(sizes[k] for k in crossing[i] if k not in kept)
      if best is None or cost < best[0]:
        best = (cost, i, total)
    if best is not None and segment >= 2 * budget:
      _, cut, cut_total = best
      kept.update(crossing[cut])
      costs.append(_segment_cost(produced, workspace, first, cut))
      start, total, best, first = cut_total, cut_total, None, cut + 1
      i = cut + 1
      continue
    i += 1
  costs.append(_segment_cost(produced, workspace, first, len(produced) - 1))
  return sum(sizes[k] for k in kept) + max(costs), kept


def _memory_checkpoints(fwd):
  """Budgeted cuts of the topologically sorted activations (Chen et al. 2016, Sec. 4.3), budget chosen by the
  estimated peak."""
  order = fwd.data_ops()
  position = {op: i for i, op in enumerate(order)}
  last_use, sizes, produced = {}, {}, []
  workspace = [_workspace_bytes(op) for op in order]
  for i, op in enumerate(order):
    produced.append(0)
    for t in op.outputs:
      if not _is_feature_map(t):
        continue
      k = _key(t)
      sizes[k] = _num_bytes(t)
      produced[i] += sizes[k]
      last_use[k] = max([position[c] for c in t.consumers() if c in position] or [i])
  # Tensors alive across the boundary after each position: a cut there keeps them (None: nothing to cut).
  crossing, alive = [], {}
  for i, op in enumerate(order):
    for t in op.outputs:
      k = _key(t)
      if k in sizes and last_use[k] > i:
        alive[k] = last_use[k]
    for k in [k for k, last in alive.items() if last <= i]:
      del alive[k]
    # Outputs of ops that are never recomputed stay in memory anyway: they need no checkpoint.
    keep = tuple(k for k in alive if _is_copyable(k[0]))
    crossing.append(keep if keep and not any(k in fwd.y_keys for k in keep) else None)
  total = sum(produced)
  if not total:
    return []
  smallest = max(1, min(s for s in sizes.values() if s))
  best = None
  budget = float(total)
  while budget >= smallest:
    peak, kept = _greedy_cuts(produced, crossing, sizes, budget, workspace)
    if best is None or peak < best[0] or (peak == best[0] and len(kept) < len(best[1])):
      best = (peak, kept)
    budget /= 1.25
  kept = best[1]
  return [op.outputs[index] for op, index in sorted(kept, key=lambda k: (position[k[0]], k[1]))]


def select_checkpoints(ys, xs, checkpoints='memory'):
  """The checkpoint tensors gradients() would keep (for inspection and logging).

  Args:
    ys, xs, checkpoints: as for gradients().

  Returns:
    list of tf.Tensor in topological order.
  """
  ys, xs = _as_list(ys), _as_list(xs)
  fwd = _ForwardGraph(ys, [_graph_tensor(x) for x in xs])
  graph = ys[0].graph
  return _checkpoint_tensors(checkpoints, fwd, graph, graph.get_name_scope())


def _checkpoint_tensors(checkpoints, fwd, graph, scope):
  """Resolves `checkpoints` (see the module docstring) to forward tensors, completed to whole ops and sorted."""
  if checkpoints is None:
    tensors = []
  elif isinstance(checkpoints, str) and checkpoints in MODES:
    tensors = {'collection': lambda: _collection_checkpoints(graph, fwd),
               'units': lambda: _unit_checkpoints(fwd),
               'memory': lambda: _memory_checkpoints(fwd),
               'speed': lambda: _speed_checkpoints(fwd)}[checkpoints]()
  elif isinstance(checkpoints, (str, tf.Tensor, tf.Operation)):
    tensors = _named_checkpoints([checkpoints], graph, scope, fwd)
  else:
    tensors = _named_checkpoints(list(checkpoints), graph, scope, fwd)
  # Backprop stops at ops, not tensors: keep every forward output of a checkpoint op, or gradients through its
  # other outputs would be lost. Ops that produce a y are left out (there is nothing after them to save).
  ops = set(t.op for t in tensors) - set(k[0] for k in fwd.y_keys)
  ordered = sorted(ops, key=fwd.position.get)
  return [t for op in ordered for t in op.outputs if fwd.is_forward_tensor(t)]


# ----------------------------------------------------------------------------------------------------------------
# Building the gradient.


def _as_list(value):
  return list(value) if isinstance(value, (list, tuple)) else [value]


def _graph_tensor(x):
  """The graph tensor tf.gradients differentiates with respect to for x (a resource variable's handle)."""
  if resource_variable_ops.is_resource_variable(x):
    return x.handle
  return indexed_slices.internal_convert_to_tensor_or_indexed_slices(x, as_ref=True)


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

  Both are ready at the same moment; run concurrently, their workspaces add up (822 MiB for PSPNet50's 3x3
  fusion convolution at batch 2, 385x385, on a CPU, more than all checkpoints). Filter first: it is the last
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
  if not _is_copyable(seed):
    return []
  members, stack = {seed}, [seed]
  while stack:
    for t in stack.pop().inputs:
      src = t.op
      if src in members or src not in fwd.ops or src in checkpoint_ops:
        continue
      if _is_copyable(src):
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
    checkpoints: a list of tensors / operations / names, one of MODES, or None / [] (see the module docstring).
    name: name scope of the gradient and recomputation ops.
    colocate_gradients_with_ops, gate_gradients, aggregation_method, stop_gradients, unconnected_gradients:
      as for tf.gradients.

  Returns:
    list with one gradient (tensor, IndexedSlices or None) per x, equal to tf.gradients(ys, xs).

  Raises:
    ValueError: for an unknown checkpoint name (with the closest names), a checkpoint that does not feed ys, or an
      automatic mode that finds nothing where it must ('collection', 'units').
  """
  ys, xs = _as_list(ys), _as_list(xs)
  ys = [tf_ops.convert_to_tensor(y) for y in ys]
  graph = ys[0].graph
  scope = graph.get_name_scope()
  kwargs = dict(colocate_gradients_with_ops=colocate_gradients_with_ops, gate_gradients=gate_gradients,
                aggregation_method=aggregation_method)
  user_stops = _as_list(stop_gradients) if stop_gradients is not None else []
  unconnected = UnconnectedGradients(unconnected_gradients)
  with graph.as_default():
    fwd = _ForwardGraph(ys, [_graph_tensor(x) for x in xs])
    kept = _checkpoint_tensors(checkpoints, fwd, graph, scope)
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
  variable, for its data gradient: ~240 MiB of PSPNet50's weight decay at the peak.
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
# Hooks for the trainer and for code that calls tf.gradients itself.


def make_gradients_fn(checkpoints='memory', **kwargs):
  """fn(ys, xs) -> gradients for trainer.TrainOptions.gradients_fn.

  The trainer calls it inside each clone's name scope, so names resolve to `clone_i/<name>` there.
  """
  def gradients_fn(ys, xs):
    return gradients(ys, xs, checkpoints=checkpoints, **kwargs)
  return gradients_fn


@contextlib.contextmanager
def patched_gradients(checkpoints='memory'):
  """Routes tf.gradients, tf.compat.v1.gradients and the internal gradients_impl.gradients (what
  Optimizer.compute_gradients, optimizer.minimize and slim.learning.create_train_op use) through gradients().

      with patched_gradients(checkpoints=['PSPModule/Conv_4/Relu6']):
        train_op = slim.learning.create_train_op(total_loss, optimizer)

  Only graph construction inside the block is affected; the originals are restored on exit.
  """
  def v1(ys, xs, grad_ys=None, name='gradients', colocate_gradients_with_ops=False, gate_gradients=False,
         aggregation_method=None, stop_gradients=None, unconnected_gradients=UnconnectedGradients.NONE):
    return gradients(ys, xs, grad_ys=grad_ys, checkpoints=checkpoints, name=name,
                     colocate_gradients_with_ops=colocate_gradients_with_ops, gate_gradients=gate_gradients,
                     aggregation_method=aggregation_method, stop_gradients=stop_gradients,
                     unconnected_gradients=unconnected_gradients)

  def v2(ys, xs, grad_ys=None, name='gradients', gate_gradients=False, aggregation_method=None,
         stop_gradients=None, unconnected_gradients=UnconnectedGradients.NONE):
    return v1(ys, xs, grad_ys=grad_ys, name=name, gate_gradients=gate_gradients,
              aggregation_method=aggregation_method, stop_gradients=stop_gradients,
              unconnected_gradients=unconnected_gradients)

  import tensorflow as tf_root  # pylint: disable=import-outside-toplevel
  targets = [(gradients_impl, v1), (gradients_module, v1), (tf, v1), (tf_root, v2)]
  saved = [(module, module.gradients) for module, _ in targets]
  try:
    for module, replacement in targets:
      module.gradients = replacement
    yield
  finally:
    for module, original in saved:
      module.gradients = original


# ----------------------------------------------------------------------------------------------------------------
# Measuring memory.


def memory_usage():
  """Memory of this process in bytes, by name (only what can be measured here).

  GPU<i>_Peak / GPU<i>_Current: TensorFlow's GPU allocator (tf.config.experimental.get_memory_info), peak since
  start or the last reset_memory_stats. CPU_BFC_Peak / CPU_BFC_Current: the same for the CPU allocator when
  TF_CPU_ALLOCATOR_USE_BFC=true (the default CPU allocator keeps no statistics). VmHWM / VmRSS: peak and current
  resident memory of the process (/proc/self/status, Linux).

  Returns:
    collections.OrderedDict {name: bytes}.
  """
  usage = collections.OrderedDict()
  devices = [('GPU%d' % i, 'GPU:%d' % i) for i in range(len(tf.config.list_physical_devices('GPU')))]
  if os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '').lower() in ('true', '1'):
    devices.append(('CPU_BFC', 'CPU:0'))
  for label, device in devices:
    try:
      info = tf.config.experimental.get_memory_info(device)
    except (ValueError, RuntimeError, tf.errors.OpError):  # Allocator without statistics.
      continue
    usage[label + '_Peak'] = int(info['peak'])
    usage[label + '_Current'] = int(info['current'])
  try:
    with open('/proc/self/status') as status:
      for line in status:
        field, _, value = line.partition(':')
        if field in ('VmHWM', 'VmRSS'):
          usage[field] = int(value.split()[0]) * 1024
  except (IOError, OSError):  # Not Linux.
    pass
  return usage


def reset_peak_memory():
  """Restarts the peaks of memory_usage() (allocator statistics and VmHWM) where the platform allows it."""
  devices = ['GPU:%d' % i for i in range(len(tf.config.list_physical_devices('GPU')))]
  if os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '').lower() in ('true', '1'):
    devices.append('CPU:0')
  for device in devices:
    try:
      tf.config.experimental.reset_memory_stats(device)
    except (ValueError, RuntimeError, tf.errors.OpError):
      pass
  try:
    with open('/proc/self/clear_refs', 'w') as clear_refs:
      clear_refs.write('5')  # Resets VmHWM to the current RSS (Linux >= 4.0).
  except (IOError, OSError):
    pass
