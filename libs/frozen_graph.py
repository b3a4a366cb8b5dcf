"""Frozen inference graphs: variables turned into constants (freeze), and a lean loader of them (load_session).

Works on any GraphDef (nothing here knows the model); drivers/exporter.py writes the frozen graphs.

Why a loader: a frozen graph keeps its weights in Const nodes, and TensorFlow copies a Const's value wherever it
copies the graph: the parsed GraphDef, import_graph_def, the session's own graph, and grappler, whose constant
folding and other optimizers hold further copies while they run. load_session moves the large float constants
into variables before the import, so every one of those copies is of a graph without weights, and fills the
variables afterwards a slice at a time. The file on disk stays a plain frozen graph.
"""
# pylint: disable=g-direct-tensorflow-import,g-bad-import-order
import ctypes

import numpy as np

from libs.compat import tf
# The non-deprecated implementation behind tf.compat.v1.graph_util.convert_variables_to_constants (which
# only wraps it and logs a deprecation warning); it handles resource variables.
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.framework import tensor_shape
# The freezer logs a TF1 deprecation notice on every call; it is the intended graph-mode API here, so the notice
# is silenced around it.
from tensorflow.python.util import deprecation
# pylint: enable=g-direct-tensorflow-import,g-bad-import-order

# load_session: float constants whose stored value has at least this many bytes become variables (smaller ones,
# and the integer shapes, paddings and axes that shape inference needs as constants, stay constants).
MIN_VARIABLE_BYTES = 64
# load_session: the variables are filled in session runs of about this many bytes of values each.
LOAD_BATCH_BYTES = 32 * 2**20
# The variable holding the value of constant X is X + VARIABLE_SUFFIX; X itself becomes its read.
VARIABLE_SUFFIX = '/FrozenValue'
LOAD_SCOPE = 'FrozenValueLoad'
_FLOAT_TYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
# TensorFlow's CPU tensors are aligned to 64 bytes (EIGEN_MAX_ALIGN_BYTES on AVX-512 builds).
_ALIGNMENT = 64


def freeze(sess, graph_def, output_names):
  """Returns a GraphDef with the variables replaced by their current values, pruned to the outputs and
  without device placements (so a graph exported on a GPU machine loads anywhere).

  The batch norms stay as they are: folding them into the convolutions did not win in interleaved runs on
  CPU (bench/results/README.md) and was removed."""
  with deprecation.silence():
    frozen = convert_to_constants.convert_variables_to_constants_from_session_graph(
        sess, graph_def, list(output_names))
  for node in frozen.node:
    node.device = ''
  return frozen


def read_graph_def(path):
  """The tf.GraphDef of a local binary .pb file (a frozen graph).

  Read with Python's open rather than tf.io.gfile.GFile, whose read() holds the file twice (a C++ string and
  its Python copy) while the GraphDef is parsed: a third copy of the weights at the peak."""
  graph_def = tf.GraphDef()
  with open(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  return graph_def


def _aligned_copy(content, dtype, shape):
  """A writable copy of the bytes `content` as an array of dtype and shape whose data starts at a multiple of
  _ALIGNMENT bytes: TensorFlow feeds such an array without copying it (an unaligned one it first copies into its
  CPU allocator, and those copies, freed after the fill, leave holes among the variables)."""
  raw = np.empty(len(content) + _ALIGNMENT, np.uint8)
  start = -raw.ctypes.data % _ALIGNMENT
  array = raw[start:start + len(content)].view(dtype)
  array[...] = np.frombuffer(content, dtype)
  return array.reshape(shape)


def _release_freed_heap():
  """Returns the C heap that parsing the GraphDef freed to the system (glibc keeps it otherwise, and the first
  run's activations then come on top of it); nothing where the C library has no malloc_trim."""
  try:
    ctypes.CDLL(None).malloc_trim(0)
  except (AttributeError, OSError):
    pass


def constants_to_variables(graph_def, min_bytes=MIN_VARIABLE_BYTES):
  """Turns the large float constants of graph_def into variables, in place, and hands their values out.

  Constant X (a float Const whose stored tensor_content has at least min_bytes) becomes a ReadVariableOp named X
  reading a new resource variable X + VARIABLE_SUFFIX of X's dtype and shape, so the tensor X:0 keeps its name,
  dtype and static shape. Its control inputs are kept.

  Args:
    graph_def: tf.GraphDef, modified in place.
    min_bytes: smallest stored value (bytes) that is moved.

  Returns:
    List of (variable name, np.ndarray value of the variable's dtype and shape) in graph order; the arrays are
    copies, aligned so that a session is fed them without another copy.

  Raises:
    ValueError: a node named X + VARIABLE_SUFFIX exists already.
  """
  names = {node.name for node in graph_def.node}
  moved = []
  for node in list(graph_def.node):
    if node.op != 'Const':
      continue
    dtype = tf.as_dtype(node.attr['dtype'].type)
    tensor = node.attr['value'].tensor
    content = tensor.tensor_content
    if dtype not in _FLOAT_TYPES or len(content) < min_bytes:
      continue
    variable = node.name + VARIABLE_SUFFIX
    if variable in names:
      raise ValueError('cannot move constant %s into a variable: the graph already has a node named %s'
                       % (node.name, variable))
    shape = tensor_shape.TensorShape(tensor.tensor_shape)
    moved.append((variable, _aligned_copy(content, dtype.as_numpy_dtype, shape.as_list())))
    del content
    node.op = 'ReadVariableOp'
    node.ClearField('attr')
    node.attr['dtype'].type = dtype.as_datatype_enum
    node.input.insert(0, variable)
    handle = graph_def.node.add(name=variable, op='VarHandleOp', device=node.device)
    handle.attr['dtype'].type = dtype.as_datatype_enum
    handle.attr['shape'].shape.CopyFrom(shape.as_proto())
    handle.attr['shared_name'].s = variable.encode('utf-8')
  return moved


def load_session(path, session_config=None, min_bytes=MIN_VARIABLE_BYTES, batch_bytes=LOAD_BATCH_BYTES):
  """Loads a frozen graph (.pb) into a new graph and session without the copies of its weights that
  tf.import_graph_def and grappler make of constants.

  The large float constants become variables (constants_to_variables); the graph, now small, is imported and
  the variables are filled through placeholders, batch_bytes of values per session run, each value dropped
  once assigned. Each value is copied once into TensorFlow's allocator (DeepCopy) and the variable keeps that
  buffer, as a SavedModel's restore op gives its variables theirs: variables left holding the fed numpy
  buffers made the first run's activations take more resident memory (bench/results/README.md). Every tensor
  keeps its name (`inputs:0`, `predictions:0`, ...), dtype and static shape, and the predictions are those of
  the checkpoint graph the frozen graph was made from (its weights are read from variables, as there).

  The graph also holds the filling ops (placeholders, DeepCopy and AssignVariableOps under LOAD_SCOPE/); they
  are not needed again.

  Args:
    path: a binary GraphDef file, e.g. frozen_inference_graph.pb of drivers/exporter.py.
    session_config: optional tf.ConfigProto of the session.
    min_bytes: smallest stored constant (bytes) moved into a variable.
    batch_bytes: bytes of values assigned per session run.

  Returns:
    (tf.Session, tf.Graph); the caller closes the session.
  """
  graph_def = read_graph_def(path)
  moved = constants_to_variables(graph_def, min_bytes)
  graph = tf.Graph()
  with graph.as_default():
    tf.import_graph_def(graph_def, name='')
  del graph_def
  sess = tf.Session(graph=graph, config=session_config)
  with graph.as_default(), tf.name_scope(LOAD_SCOPE):
    batch, feed, size = [], {}, 0
    while moved:
      variable, value = moved.pop(0)
      placeholder = tf.placeholder(value.dtype, value.shape)
      batch.append(tf.raw_ops.AssignVariableOp(resource=graph.get_tensor_by_name(variable + ':0'),
                                               value=tf.raw_ops.DeepCopy(x=placeholder)))
      feed[placeholder] = value
      size += value.nbytes
      del value
      if size >= batch_bytes or not moved:
        sess.run(batch, feed)
        batch, feed, size = [], {}, 0
  _release_freed_heap()
  return sess, graph
