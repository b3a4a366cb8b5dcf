"""Tests of libs/memory_saving_gradients.py: gradients equal to tf.gradients (float64 chains, a float32 tiny
PSPNet) for named, automatic and empty checkpoint lists; the seed's node list on the full PSPNet50 graph; name
errors; what is never copied (variables, assign and random ops, collections); gating; the tf.gradients patch for
optimizers and tf-slim; and peak memory measured in a fresh process."""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from google.protobuf import text_format

from architectures import pspnet_architecture
from builders import model_builder
from libs import gradient_checkpoints
from libs import memory_saving_gradients as msg
from libs.compat import tf
from protos import model_pb2
from tests.conftest import REPO_ROOT
from tests.conftest import fast_session_config
from tests.conftest import tiny_model_config
from tests.test_model_builder import FULL_MODEL
from tests.test_model_builder import SEED_CHECKPOINT_NODES

TINY_UNIT_NODES = ['SharedFeatureExtractor/resnet_v1_50/block%d/unit_1/bottleneck_v1/Relu' % i for i in (1, 2, 3)]
TINY_NODES = TINY_UNIT_NODES + ['PSPModule/Conv_4/Relu6']


def _chain(num_layers=10, width=16, dtype=tf.float64, dropout=True):
  """A residual tanh chain with dropout and an L2 term: (loss, weights, input placeholder, layer outputs)."""
  rng = np.random.RandomState(0)
  x = tf.placeholder(dtype, [8, width], name='x')
  weights = [tf.get_variable('w%d' % i, initializer=(rng.randn(width, width) * 0.3).astype(dtype.as_numpy_dtype))
             for i in range(num_layers)]
  h, layers = x, []
  for i, w in enumerate(weights):
    h = tf.tanh(tf.matmul(h, w), name='layer%d' % i) + (h if i % 3 == 2 else 0.0)
    layers.append(h)
  if dropout:
    h = tf.nn.dropout(h, rate=0.3)
  loss = tf.reduce_sum(h * h) + 0.1 * tf.add_n([tf.nn.l2_loss(w) for w in weights])  # weight decay as slim's
  return loss, weights, x, layers


def _recompute_ops(graph):
  """The forward copies (not their gradient ops, whose names contain theirs)."""
  return [op for op in graph.get_operations() if '/recompute/' in op.name and '/gradients/' not in op.name]


@pytest.mark.parametrize('checkpoints', [
    'names', 'memory', 'speed', 'units_like_collection', 'empty', 'none'])
def test_float64_chain_gradients_equal_tf_gradients(checkpoints):
  with tf.Graph().as_default() as graph:
    loss, weights, x, layers = _chain()
    xs = weights + [x]
    expected = tf.gradients(loss, xs)
    if checkpoints == 'names':  # names, a tensor name, a tensor and an operation
      spec = ['layer1', 'layer4:0', layers[6], layers[8].op]
    elif checkpoints == 'units_like_collection':
      for layer in layers[2::3]:
        tf.add_to_collection('checkpoints', layer)
      spec = 'collection'
    else:
      spec = {'empty': [], 'none': None}.get(checkpoints, checkpoints)
    actual = msg.gradients(loss, xs, checkpoints=spec)
    if checkpoints in ('empty', 'none'):
      assert not _recompute_ops(graph)
    else:
      assert _recompute_ops(graph)
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      # One run: the same dropout mask for both (a recomputed mask would differ).
      expected, actual = sess.run([expected, actual], {x: np.random.RandomState(1).randn(8, 16)})
  for e, a in zip(expected, actual):
    np.testing.assert_allclose(a, e, rtol=0, atol=1e-12)


def _tiny_pspnet(crop=33, scope=None):
  model = model_builder.build(tiny_model_config(num_classes=5), is_training=True)
  images = tf.placeholder(tf.float32, [2, crop, crop, 3], name='images')
  labels = tf.placeholder(tf.uint8, [2, crop, crop, 1], name='labels')
  with tf.name_scope(scope):
    predictions = model.predict(model.preprocess(images))
    loss = tf.add_n(list(model.loss(predictions, labels).values()) + tf.losses.get_regularization_losses())
  rng = np.random.RandomState(3)
  feed = {images: rng.uniform(0, 255, images.shape.as_list()), labels: rng.randint(0, 5, labels.shape.as_list())}
  return loss, feed


def test_tiny_pspnet_float32_gradients_equal_tf_gradients_within_float_noise():
  with tf.Graph().as_default():
    loss, feed = _tiny_pspnet()
    variables = tf.trainable_variables()
    expected = tf.gradients(loss, variables)
    variants = {name: msg.gradients(loss, variables, checkpoints=spec)
                for name, spec in [('named', TINY_NODES), ('units', 'units'), ('memory', 'memory'), ('empty', [])]}
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      expected, variants = sess.run([expected, variants], feed)
  for name, actual in variants.items():
    for variable, e, a in zip(variables, expected, actual):
      scale = np.abs(e).max() + 1e-12
      assert np.abs(a - e).max() <= 1e-4 * scale, (name, variable.op.name, np.abs(a - e).max(), scale)


def test_names_resolve_under_the_callers_name_scope():
  # The trainer calls the gradient inside `clone_i`: unscoped names resolve to clone_i/<name>.
  with tf.Graph().as_default() as graph:
    loss, _ = _tiny_pspnet(crop=33, scope='clone_1')
    with tf.name_scope('clone_1'):
      chosen = gradient_checkpoints.select_checkpoints(loss, tf.trainable_variables(), TINY_NODES)
    # Outside the scope the same names match `<scope>/<name>` on the path to the loss.
    assert [t.op.name for t in gradient_checkpoints.select_checkpoints(loss, tf.trainable_variables(), TINY_NODES)] == \
        [t.op.name for t in chosen]
  assert [t.op.name for t in chosen] == ['clone_1/' + name for name in TINY_NODES]
  assert all(t.graph is graph for t in chosen)


def _full_pspnet50_training_loss():
  config = text_format.Parse(FULL_MODEL, model_pb2.Model())
  model = model_builder.build(config, is_training=True)
  images = tf.zeros([1, 97, 97, 3])
  labels = tf.zeros([1, 97, 97, 1], tf.uint8)
  predictions = model.predict(model.preprocess(images))
  return tf.add_n(list(model.loss(predictions, labels).values()) + tf.losses.get_regularization_losses())


def test_seed_nodes_resolve_on_full_pspnet50_and_a_misspelt_one_fails_with_the_suggestion():
  with tf.Graph().as_default() as graph:
    loss = _full_pspnet50_training_loss()
    variables = tf.trainable_variables()
    collections = {key: list(graph.get_collection(key)) for key in graph.get_all_collection_keys()}
    num_variables = len(tf.global_variables())
    # The library's list (what bench/ trains with as 'seed') resolves to the pinned nodes of the built graph.
    assert [t.op.name for t in gradient_checkpoints.select_checkpoints(
        loss, variables, pspnet_architecture.SEED_CHECKPOINT_NODES)] == SEED_CHECKPOINT_NODES
    grads = msg.gradients(loss, variables, checkpoints=SEED_CHECKPOINT_NODES)
    assert len(grads) == len(variables) and all(g is not None for g in grads)
    # Recomputation copies nothing stateful and adds nothing to any collection (UPDATE_OPS included).
    copies = _recompute_ops(graph)
    assert copies
    assert not [op for op in copies if op._is_stateful or op.type in ('VarHandleOp', 'ReadVariableOp')]  # pylint: disable=protected-access
    assert {key: list(graph.get_collection(key)) for key in collections} == collections
    assert len(tf.global_variables()) == num_variables
    # Each convolution's input gradient waits for its filter gradient (their CPU workspaces would add up).
    input_grads = [op for op in graph.get_operations() if op.type == 'Conv2DBackpropInput'
                   and op.name.startswith('memory_saving_gradients/')]
    assert input_grads and all('Conv2DBackpropFilter' in [c.type for c in op.control_inputs] for op in input_grads)
    misspelt = SEED_CHECKPOINT_NODES[:2] + ['SharedFeatureExtractor/resnet_v1_50/block3/unit_6/botleneck_v1/Relu']
    with pytest.raises(ValueError) as error:
      msg.gradients(loss, variables, checkpoints=misspelt)
  message = str(error.value)
  assert "'SharedFeatureExtractor/resnet_v1_50/block3/unit_6/botleneck_v1/Relu' is not in the graph" in message
  assert "Closest existing names: 'SharedFeatureExtractor/resnet_v1_50/block3/unit_6/bottleneck_v1/Relu'" in message


def test_checkpoint_errors_name_the_node():
  with tf.Graph().as_default():
    loss, weights, _, layers = _chain(dropout=False)
    side = tf.identity(layers[3] * 2.0, name='side_branch')  # computed, but not used by the loss
    with pytest.raises(ValueError, match=r"'side_branch'.*not on the path to the loss"):
      msg.gradients(loss, weights, checkpoints=['side_branch'])
    del side
    with pytest.raises(ValueError, match=r"'layer13' is not in the graph.*Closest existing names: .*'layer1'"):
      msg.gradients(loss, weights, checkpoints=['layer13'])
    with pytest.raises(ValueError, match=r"collection 'checkpoints' holds no tensor"):
      msg.gradients(loss, weights, checkpoints='collection')
    with pytest.raises(ValueError, match='no residual unit output'):
      msg.gradients(loss, weights, checkpoints='units')
    with pytest.raises(TypeError, match='tensors, operations or names'):
      msg.gradients(loss, weights, checkpoints=[3])


def test_segments_wait_for_all_gradients_of_later_segments_and_copy_no_random_op():
  with tf.Graph().as_default() as graph:
    loss, weights, _, _ = _chain()
    msg.gradients(loss, weights, checkpoints=['layer3', 'layer6'])
    copies = _recompute_ops(graph)
    assert not [op for op in copies if op.type.startswith('Random')]
    gates = [op for op in graph.get_operations() if op.name.endswith('wait_for_later_segments')]
    assert len(gates) == 2
    for op in copies:  # Every copy waits for a gate, directly or through a copied input.
      assert any('/recompute/' in t.op.name for t in op.inputs) or any(c in gates for c in op.control_inputs)
    # The first gate waits for the gradients of the weights after layer6 (not only for layer6's gradient),
    # the second also for the first.
    waited = [set(c.name for c in gate.control_inputs) for gate in gates]
    later_weight_grads = set('memory_saving_gradients/gradients/MatMul_%d_grad/MatMul_1' % i for i in (7, 8, 9))
    assert later_weight_grads <= set().union(*[_ancestor_names(graph, name) for name in waited[0]])
    assert gates[0].name in waited[1]
    # Weight decay of the recomputed layers is computed when their data gradient is ready, and no gate waits for
    # it (it would otherwise sit in memory from the start of backprop).
    decay = [op for op in graph.get_operations() if op.name.startswith('memory_saving_gradients/parameter_losses/')
             and re.search(r'/L2Loss(_\d+)?_grad/mul$', op.name)]
    assert len(decay) == 10 and all(op.control_inputs for op in decay)
    gate_ancestors = set().union(*[_ancestor_names(graph, gate.name) for gate in gates])
    assert not [op.name for op in decay if op.name in gate_ancestors]


def _ancestor_names(graph, name):
  seen, stack = set(), [graph.get_operation_by_name(name)]
  while stack:
    op = stack.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    stack += [t.op for t in op.inputs] + list(op.control_inputs)
  return seen


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, %(root)r)
    from libs import memory
    from libs import memory_saving_gradients as msg
    from libs.compat import tf

    def peak(checkpoints):
      with tf.Graph().as_default():
        x = tf.random.normal([4096, 512], seed=1)
        weights = [tf.get_variable('w%%d' %% i, [512, 512], initializer=tf.random_normal_initializer(stddev=0.04))
                   for i in range(30)]
        h = x
        for i, w in enumerate(weights):
          h = tf.tanh(tf.matmul(h, w), name='layer%%d' %% i)
        loss = tf.reduce_sum(h * h)
        grads = tf.gradients(loss, weights) if checkpoints is None else msg.gradients(loss, weights, checkpoints=checkpoints)
        # An update that uses the gradients (grappler prunes gradients that nothing consumes).
        step = tf.train.GradientDescentOptimizer(1e-3).apply_gradients(list(zip(grads, weights)))
        with tf.Session() as sess:
          sess.run(tf.global_variables_initializer())
          sess.run(step)
          memory.reset_peak_memory()
          sess.run(step)
          return memory.memory_usage()['CPU_BFC_Peak']

    print(json.dumps({'plain': peak(None), 'named': peak(['layer%%d' %% i for i in range(4, 30, 5)]),
                      'memory': peak('memory')}))
""")


def test_checkpointing_lowers_peak_memory_of_a_deep_chain():
  # 30 layers of [4096, 512] activations (8 MiB each): plain backprop keeps all of them, checkpointing ~sqrt(30).
  env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC='true')
  result = subprocess.run([sys.executable, '-c', _MEMORY_SCRIPT % {'root': REPO_ROOT}], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  peaks = json.loads(result.stdout.strip().splitlines()[-1])
  assert peaks['plain'] > 200 * 2**20, peaks  # the measurement sees the activations at all
  assert peaks['named'] < 0.6 * peaks['plain'], peaks
  assert peaks['memory'] < 0.6 * peaks['plain'], peaks
