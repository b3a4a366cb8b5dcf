"""libs/frozen_graph.py on the tiny model's inference graph with random weights: freezing keeps the weights and
the predictions; load_session gives the same tensors and predictions with the large constants in variables.

Grappler rewrites a graph before it runs (e.g. its remapper fuses a convolution with the batch norm after it),
and what it does to a graph of constants need not be what it does to a graph of variables: compared with
grappler off on both sides, the frozen graph runs the checkpoint graph's kernels in the same order and its logits
are bitwise equal; with grappler on they are compared to the logits' scale.
"""
import numpy as np
import pytest

from drivers import inference_graph
from libs import frozen_graph
from libs.compat import tf
from tests.conftest import fast_session_config
from tests.conftest import tiny_model_config
from tests.testing_utils import random_weights_inference_session

SIZE = [65, 97]
ARGMAX = 'Postprocessor/ArgMax'  # its first input is the logits [1, H, W, classes]
# Grappler on against off: |logits difference| / max |logit| (measured 4e-5 on the tiny model).
GRAPPLER_TOLERANCE = 1e-3


def _image():
  return np.random.RandomState(4).randint(0, 256, [1] + SIZE + [3]).astype(np.uint8)


def _frozen_model(config=None):
  """The tiny model frozen: (GraphDef, {variable name: value}, (predictions, logits) of the checkpoint graph in a
  session of config)."""
  sess, endpoints, logits = random_weights_inference_session(tiny_model_config(num_classes=5), SIZE,
                                                            session_config=config)
  with sess:
    expected = sess.run([endpoints.predictions, logits], {endpoints.inputs: _image()})
    with sess.graph.as_default():
      variables = tf.global_variables()
    values = dict(zip([v.op.name for v in variables], sess.run(variables)))
    frozen = frozen_graph.freeze(sess, sess.graph.as_graph_def(), [inference_graph.OUTPUT_NAME])
  return frozen, values, expected


def _run(sess, graph):
  """(predictions, logits) of an imported frozen graph."""
  return sess.run(['predictions:0', graph.get_operation_by_name(ARGMAX).inputs[0]], {'inputs:0': _image()})


def _run_imported(graph_def, config=None):
  """(predictions, logits) of a GraphDef imported with tf.import_graph_def."""
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name='')
    with tf.Session(config=config) as sess:
      return _run(sess, graph)


def _run_loaded(path, config=None, **kwargs):
  """(predictions, logits, graph) of a .pb file loaded with frozen_graph.load_session."""
  sess, graph = frozen_graph.load_session(path, session_config=config, **kwargs)
  with sess:
    return _run(sess, graph) + [graph]


def _is_moved(node):
  """Whether load_session turns this frozen-graph node into a variable."""
  return (node.op == 'Const' and tf.as_dtype(node.attr['dtype'].type).is_floating and
          len(node.attr['value'].tensor.tensor_content) >= frozen_graph.MIN_VARIABLE_BYTES)


def test_freeze_replaces_the_variables_by_their_values_and_keeps_the_predictions():
  frozen, values, (expected_predictions, expected_logits) = _frozen_model(fast_session_config())
  assert not [n.name for n in frozen.node if n.op in ('VarHandleOp', 'VariableV2', 'ReadVariableOp')]
  assert not [n.name for n in frozen.node if n.device]
  constants = {n.name: tf.make_ndarray(n.attr['value'].tensor) for n in frozen.node if n.op == 'Const'}
  for name, value in values.items():
    np.testing.assert_array_equal(constants[name], value, err_msg=name)

  predictions, logits = _run_imported(frozen, fast_session_config())
  np.testing.assert_array_equal(logits, expected_logits)
  np.testing.assert_array_equal(predictions, expected_predictions)

  # Grappler on: the same logits to its rounding, the same class wherever the two best logits are further apart.
  predictions, logits = _run_imported(frozen)
  tolerance = GRAPPLER_TOLERANCE * np.abs(expected_logits).max()
  np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=tolerance)
  top_two = np.sort(expected_logits, axis=-1)[..., -2:]
  clear = top_two[..., 1] - top_two[..., 0] > 2 * tolerance
  assert clear.mean() > 0.9
  np.testing.assert_array_equal(predictions[clear], expected_predictions[clear])


def test_load_session_keeps_the_tensors_and_the_predictions_with_the_weights_in_variables(tmp_path):
  frozen, _, (expected_predictions, expected_logits) = _frozen_model()
  path = str(tmp_path / 'frozen_inference_graph.pb')
  with open(path, 'wb') as f:
    f.write(frozen.SerializeToString())

  # Grappler on: the weights are read from variables as in the checkpoint graph, which it rewrites alike.
  # batch_bytes: several fill runs on the tiny model.
  predictions, logits, graph = _run_loaded(path, batch_bytes=4096)
  np.testing.assert_array_equal(logits, expected_logits)
  np.testing.assert_array_equal(predictions, expected_predictions)
  # Grappler off: what tf.import_graph_def of the same file computes.
  predictions, logits, _ = _run_loaded(path, fast_session_config())
  imported_predictions, imported_logits = _run_imported(frozen, fast_session_config())
  np.testing.assert_array_equal(logits, imported_logits)
  np.testing.assert_array_equal(predictions, imported_predictions)

  # Every tensor keeps its name, dtype and static shape; the large float constants are read from variables
  # holding their values, the others (integer shapes and axes, small floats) stay constants.
  with tf.Graph().as_default() as imported:
    tf.import_graph_def(frozen, name='')
  for op in imported.get_operations():
    for tensor in op.outputs:
      loaded = graph.get_tensor_by_name(tensor.name)
      assert (loaded.dtype, str(loaded.shape)) == (tensor.dtype, str(tensor.shape)), tensor.name
  for name in ('inputs', 'predictions'):
    assert graph.get_operation_by_name(name).type == imported.get_operation_by_name(name).type
  moved = [n for n in frozen.node if _is_moved(n)]
  kept = [n for n in frozen.node if n.op == 'Const' and not _is_moved(n)]
  assert len(moved) > 50 and any(tf.as_dtype(n.attr['dtype'].type) == tf.int32 for n in kept)
  for node in moved:
    op = graph.get_operation_by_name(node.name)
    assert op.type == 'ReadVariableOp' and op.inputs[0].op.name == node.name + frozen_graph.VARIABLE_SUFFIX
  assert all(graph.get_operation_by_name(n.name).type == 'Const' for n in kept)
  large = [op.name for op in graph.get_operations()
           if op.type == 'Const' and op.outputs[0].shape.num_elements() * op.outputs[0].dtype.size >= 64]
  assert not large


def test_constants_to_variables_moves_large_float_constants_only_and_keeps_control_inputs():
  with tf.Graph().as_default() as graph:
    trigger = tf.no_op(name='trigger')
    tf.constant(np.arange(16, dtype=np.float32), name='large')  # 64 bytes
    tf.constant(np.arange(15, dtype=np.float32), name='small')
    tf.constant(np.arange(64, dtype=np.int32), name='integers')
    with tf.control_dependencies([trigger]):
      tf.constant(np.ones([4, 8], np.float64), name='after_trigger')
  graph_def = graph.as_graph_def()
  moved = frozen_graph.constants_to_variables(graph_def)
  assert [name for name, _ in moved] == ['large/FrozenValue', 'after_trigger/FrozenValue']
  np.testing.assert_array_equal(moved[0][1], np.arange(16, dtype=np.float32))
  assert moved[1][1].dtype == np.float64 and moved[1][1].shape == (4, 8)
  nodes = {n.name: n for n in graph_def.node}
  assert nodes['after_trigger'].op == 'ReadVariableOp'
  assert list(nodes['after_trigger'].input) == ['after_trigger/FrozenValue', '^trigger']
  assert nodes['after_trigger/FrozenValue'].op == 'VarHandleOp'
  assert [nodes[n].op for n in ('small', 'integers')] == ['Const', 'Const']

  with tf.Graph().as_default() as graph:
    tf.constant(np.arange(16, dtype=np.float32), name='weights')
    tf.no_op(name='weights/FrozenValue')
  with pytest.raises(ValueError, match='cannot move constant weights into a variable: the graph already has a '
                                       'node named weights/FrozenValue'):
    frozen_graph.constants_to_variables(graph.as_graph_def())
