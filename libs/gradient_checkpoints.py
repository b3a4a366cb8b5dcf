"""Which tensors memory-saving gradients keep between the forward and the backward pass (the checkpoints).

The forward graph between xs and ys (ForwardGraph), and the choice of checkpoints in it (checkpoint_tensors,
select_checkpoints) for libs/memory_saving_gradients.py: named nodes, the 'collection', 'units', 'speed' and
'memory' modes described there (Chen, Xu, Zhang & Guestrin, "Training Deep Nets with Sublinear Memory Cost",
arXiv:1604.06174, 2016, for 'memory').
"""
import difflib
import heapq
import re

from libs.compat import tf
from libs.config_errors import UserError

# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import indexed_slices
from tensorflow.python.ops import resource_variable_ops
# pylint: enable=g-direct-tensorflow-import

logger = tf.get_logger()

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


def tensor_key(tensor):
  return tensor.op, tensor.value_index


def is_copyable(op):
  """Whether recomputing `op` gives the same value without side effects."""
  if op.type in _NEVER_COPIED_TYPES or op._is_stateful:  # pylint: disable=protected-access
    return False
  if op._get_control_flow_context() is not None:  # pylint: disable=protected-access
    return False
  return not any(t.dtype._is_ref_dtype or t.dtype == tf.resource  # pylint: disable=protected-access
                 for t in list(op.inputs) + list(op.outputs))


def num_bytes(tensor):
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


class ForwardGraph(object):
  """The ops that feed `ys` (`cone`) and those of them that depend on `xs` (`ops`, in topological order)."""

  def __init__(self, ys, x_tensors):
    self.ys = ys
    self.y_keys = set(tensor_key(y) for y in ys)
    self.x_keys = set(tensor_key(x) for x in x_tensors)
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
        tensor_key(tensor) in self.y_keys or any(c in self.ops for c in tensor.consumers()))

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
    raise UserError('Checkpoint %r: %s has %d outputs, no output %r' % (name, ops[0].name, len(ops[0].outputs),
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
      raise UserError('Checkpoint node %r (%s) is not on the path to the loss %s: nothing computed from it '
                      'feeds it, so it cannot save memory; choose a node of the network that computes the loss.'
                      % (label, candidates[0].op.name if candidates else '?', ', '.join(y.name for y in fwd.ys)))
    if candidates[0].op in fwd.x_ops or any(tensor_key(t) in fwd.x_keys for t in candidates):
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
    raise UserError("checkpoints='collection', but the graph collection %r holds no tensor on the path from xs "
                    "to ys; add some with tf.add_to_collection(%r, tensor) or use one of %s."
                    % (CHECKPOINTS_COLLECTION, CHECKPOINTS_COLLECTION, ', '.join(repr(m) for m in MODES)))
  return tensors


def _unit_checkpoints(fwd):
  tensors = [op.outputs[0] for op in fwd.data_ops() if UNIT_OUTPUT_PATTERN.search(op.name)]
  if not tensors:
    raise UserError("checkpoints='units': no residual unit output (an op matching %r) on the path from xs to "
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
  return num_bytes(op.inputs[0]) * area


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
      k = tensor_key(t)
      sizes[k] = num_bytes(t)
      produced[i] += sizes[k]
      last_use[k] = max([position[c] for c in t.consumers() if c in position] or [i])
  # Tensors alive across the boundary after each position: a cut there keeps them (None: nothing to cut).
  crossing, alive = [], {}
  for i, op in enumerate(order):
    for t in op.outputs:
      k = tensor_key(t)
      if k in sizes and last_use[k] > i:
        alive[k] = last_use[k]
    for k in [k for k, last in alive.items() if last <= i]:
      del alive[k]
    # Outputs of ops that are never recomputed stay in memory anyway: they need no checkpoint.
    keep = tuple(k for k in alive if is_copyable(k[0]))
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
  ys, xs = as_list(ys), as_list(xs)
  fwd = ForwardGraph(ys, [graph_tensor(x) for x in xs])
  graph = ys[0].graph
  return checkpoint_tensors(checkpoints, fwd, graph, graph.get_name_scope())


def checkpoint_tensors(checkpoints, fwd, graph, scope):
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


def as_list(value):
  return list(value) if isinstance(value, (list, tuple)) else [value]


def graph_tensor(x):
  """The graph tensor tf.gradients differentiates with respect to for x (a resource variable's handle)."""
  if resource_variable_ops.is_resource_variable(x):
    return x.handle
  return indexed_slices.internal_convert_to_tensor_or_indexed_slices(x, as_ref=True)
