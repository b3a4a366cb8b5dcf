"""libs/frozen_graph.py on the tiny model's inference graph with random weights: freezing keeps the predictions
exactly."""
import numpy as np

from drivers import inference_graph
from libs import frozen_graph
from libs.compat import tf
from tests.conftest import tiny_model_config
from tests.testing_utils import random_weights_inference_session

SIZE = [65, 97]


def _run_frozen(graph_def, image):
  """(predictions, logits) of a frozen GraphDef of the inference graph."""
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name='')
    with tf.Session() as sess:
      return sess.run(['predictions:0', graph.get_operation_by_name('Postprocessor/ArgMax').inputs[0]],
                      {'inputs:0': image})


def test_freeze_replaces_the_variables_by_their_values_and_keeps_the_predictions():
  image = np.random.RandomState(4).randint(0, 256, [1] + SIZE + [3]).astype(np.uint8)
  sess, endpoints, logits = random_weights_inference_session(tiny_model_config(num_classes=5), SIZE)
  with sess:
    expected_predictions, expected_logits = sess.run([endpoints.predictions, logits], {endpoints.inputs: image})
    frozen = frozen_graph.freeze(sess, sess.graph.as_graph_def(), [inference_graph.OUTPUT_NAME])
  assert not [n.name for n in frozen.node if n.op in ('VarHandleOp', 'VariableV2', 'ReadVariableOp')]
  assert not [n.name for n in frozen.node if n.device]
  predictions, frozen_logits = _run_frozen(frozen, image)
  np.testing.assert_array_equal(frozen_logits, expected_logits)
  np.testing.assert_array_equal(predictions, expected_predictions)
