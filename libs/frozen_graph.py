"""Frozen inference graphs: variables turned into constants, and batch norms folded into convolutions.

Works on any GraphDef (nothing here knows the model); drivers/exporter.py writes the results.
"""
import collections

import numpy as np

from libs.compat import tf

# pylint: disable=g-direct-tensorflow-import,g-bad-import-order
# The non-deprecated implementation behind tf.compat.v1.graph_util.convert_variables_to_constants (which
# only wraps it and logs a deprecation warning); it handles resource variables.
from tensorflow.python.framework import convert_to_constants
# The freezer and extract_sub_graph are TF1 helpers that log a deprecation notice on every call; they are the
# intended graph-mode APIs here, so the notices are silenced around them.
from tensorflow.python.util import deprecation
# pylint: enable=g-direct-tensorflow-import,g-bad-import-order


def freeze(sess, graph_def, output_names, fold_batch_norm=False):
  """Returns a GraphDef with the variables replaced by their current values, pruned to the outputs and
  without device placements (so a graph exported on a GPU machine loads anywhere); with fold_batch_norm, the
  inference batch norms are folded into the convolutions before them (fold_batch_norms)."""
  with deprecation.silence():
    frozen = convert_to_constants.convert_variables_to_constants_from_session_graph(
        sess, graph_def, list(output_names))
  for node in frozen.node:
    node.device = ''
  if fold_batch_norm:
    frozen, _ = fold_batch_norms(frozen, output_names)
  return frozen


_BATCH_NORM_TYPES = ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3')
# Ops between a convolution and its batch norm that move pixels but never mix channels, so a per-channel scale
# commutes with them (slim's atrous convolution ends in BatchToSpaceND).
_CHANNEL_PRESERVING_TYPES = ('BatchToSpaceND',)


def fold_batch_norms(graph_def, output_names):
  """Folds inference-mode batch norms into the convolution weights before them, in a frozen GraphDef.

  Each FusedBatchNorm(is_training=false) of y = Conv2D(x, W) (possibly through BatchToSpaceND) becomes

      scale = gamma / sqrt(moving_variance + epsilon)
      Conv2D(x, W * scale) -> BiasAdd(beta - moving_mean * scale)

  under the batch norm's own name (so its consumers are unchanged). W, gamma, beta and the statistics must be
  constants (through Identity/Cast, as freeze() leaves them) used by nothing else; other batch norms are left
  as they are. The arithmetic is done in float64 and stored in each constant's dtype.

  Args:
    graph_def: a frozen GraphDef.
    output_names: nodes to keep; the result is pruned to what they need.

  Returns:
    (new GraphDef, number of batch norms folded).
  """
  graph_def_copy = tf.GraphDef()
  graph_def_copy.CopyFrom(graph_def)
  nodes = {node.name: node for node in graph_def_copy.node}
  consumers = collections.defaultdict(list)
  for node in graph_def_copy.node:
    for name in node.input:
      consumers[name.lstrip('^').split(':')[0]].append(node)

  def producer(input_name):
    return nodes.get(input_name.lstrip('^').split(':')[0])

  def only_consumer(node, consumer):
    return [c.name for c in consumers[node.name]] == [consumer.name]

  def constant_through(node, allowed=('Identity',)):
    """The Const node behind a chain of single-consumer `allowed` nodes, or None."""
    while node is not None and node.op in allowed:
      parent = producer(node.input[0])
      if parent is None or not only_consumer(parent, node):
        return None
      node = parent
    return node if node is not None and node.op == 'Const' else None

  def value(const):
    return tf.make_ndarray(const.attr['value'].tensor)

  folded = 0
  for bn in list(graph_def_copy.node):
    if bn.op not in _BATCH_NORM_TYPES or bn.attr['is_training'].b:
      continue
    if bn.attr['data_format'].s not in (b'', b'NHWC'):
      continue
    if any(':' in c_input and not c_input.endswith(':0')
           for c in consumers[bn.name] for c_input in c.input if c_input.split(':')[0] == bn.name):
      continue  # something reads the batch statistics outputs
    between = []
    conv = producer(bn.input[0])
    while conv is not None and conv.op in _CHANNEL_PRESERVING_TYPES and only_consumer(conv, between[-1] if
                                                                                      between else bn):
      between.append(conv)
      conv = producer(conv.input[0])
    if conv is None or conv.op != 'Conv2D' or not only_consumer(conv, between[-1] if between else bn):
      continue
    if conv.attr['data_format'].s not in (b'', b'NHWC'):
      continue
    weights = constant_through(producer(conv.input[1]), ('Identity', 'Cast'))
    params = [constant_through(producer(name)) for name in bn.input[1:5]]
    if weights is None or None in params:
      continue
    gamma, beta, mean, variance = (value(p).astype(np.float64) for p in params)
    scale = gamma / np.sqrt(variance + bn.attr['epsilon'].f)
    kernel = value(weights)
    weights.attr['value'].tensor.CopyFrom(tf.make_tensor_proto((kernel.astype(np.float64) * scale).astype(
        kernel.dtype)))
    bn_name, data_input, bias_dtype = bn.name, bn.input[0], tf.as_dtype(bn.attr['T'].type)
    bias = (beta - mean * scale).astype(np.float32)
    bias_name = bn_name + '/folded_bias'
    bias_node = graph_def_copy.node.add(name=bias_name, op='Const')
    bias_node.attr['dtype'].type = tf.float32.as_datatype_enum
    bias_node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(bias))
    if bias_dtype != tf.float32:
      cast = graph_def_copy.node.add(name=bias_name + '/Cast', op='Cast', input=[bias_name])
      cast.attr['SrcT'].type = tf.float32.as_datatype_enum
      cast.attr['DstT'].type = bias_dtype.as_datatype_enum
      bias_name = cast.name
    bn.Clear()  # the batch norm node becomes the BiasAdd, keeping its name
    bn.name, bn.op = bn_name, 'BiasAdd'
    bn.input.extend([data_input, bias_name])
    bn.attr['T'].type = bias_dtype.as_datatype_enum
    bn.attr['data_format'].s = b'NHWC'
    folded += 1
  with deprecation.silence():
    pruned = tf.graph_util.extract_sub_graph(graph_def_copy, list(output_names))
  return pruned, folded
