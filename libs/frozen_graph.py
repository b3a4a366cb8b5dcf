"""Frozen inference graphs: variables turned into constants.

Works on any GraphDef (nothing here knows the model); drivers/exporter.py writes the results.
"""
# pylint: disable=g-direct-tensorflow-import,g-bad-import-order
# The non-deprecated implementation behind tf.compat.v1.graph_util.convert_variables_to_constants (which
# only wraps it and logs a deprecation warning); it handles resource variables.
from tensorflow.python.framework import convert_to_constants
# The freezer logs a TF1 deprecation notice on every call; it is the intended graph-mode API here, so the notice
# is silenced around it.
from tensorflow.python.util import deprecation
# pylint: enable=g-direct-tensorflow-import,g-bad-import-order


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
