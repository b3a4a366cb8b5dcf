"""libs/winograd: F(2x2, 3x3) equals tf.nn.conv2d (values and gradients, float64 and float32, SAME and VALID, odd
sizes, batches, channel-concat parts, chunked tile rows); its gradient keeps no forward transform alive; the
backbone's dilated form equals slim.conv2d(rate=r); in the model (pspnet.conv3x3_algorithm) it keeps the variables
and node names, computes the same network, and trains like the direct convolution (tf.gradients, recomputed
backbone blocks, memory-saving gradients, float16)."""
import copy

import numpy as np
import pytest

from architectures import dilated_resnet_v1
from architectures import pspnet_architecture
from builders import model_builder
from libs import memory_saving_gradients
from libs import winograd
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from tests.conftest import fixed_batch_pipeline
from tests.conftest import tiny_model_config
from tests.test_memory_saving_gradients import TINY_NODES
from tests.testing_utils import assert_close_to_scale
from tests.testing_utils import random_weights_inference_session
from tests.testing_utils import StepRunner
from tests.testing_utils import training_graph_outputs


def _compare(x_shape, c_out, padding, dtype=tf.float64, parts=None, max_transform_bytes=None):
  """(direct, winograd) outputs and gradients wrt the input (parts) and the kernel, on random values."""
  rng = np.random.RandomState(0)
  graph = tf.Graph()
  with graph.as_default():
    x = tf.constant(rng.normal(size=x_shape), dtype)
    kernel = tf.constant(rng.normal(size=[3, 3, x_shape[3], c_out]), dtype)
    pieces = tf.split(x, parts, axis=3) if parts else [x]
    inputs = pieces if parts else x
    kwargs = {'max_transform_bytes': max_transform_bytes} if max_transform_bytes else {}
    y_winograd = winograd.conv2d_winograd(inputs, kernel, padding, **kwargs)
    y_direct = tf.nn.conv2d(tf.concat(pieces, axis=3) if parts else x, kernel, 1, padding)
    weights = tf.constant(rng.normal(size=y_direct.shape.as_list()), dtype)
    grads = [tf.gradients(tf.reduce_sum(y * weights), pieces + [kernel]) for y in (y_direct, y_winograd)]
    ops = {op.type for op in graph.get_operations()}
    with tf.Session(graph=graph) as sess:
      direct, wino = sess.run([[y_direct] + grads[0], [y_winograd] + grads[1]])
  return direct, wino, ops


def _max_relative(actual, expected):
  return np.abs(actual - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
@pytest.mark.parametrize('x_shape,c_out', [
    ([1, 8, 8, 3], 4),     # even sizes: whole tiles
    ([2, 9, 7, 5], 3),     # odd sizes (a partial tile row and column), batch 2
    ([3, 5, 12, 2], 6),
    ([1, 3, 4, 1], 1),     # VALID: a single output row
])
def test_equals_conv2d_in_float64(x_shape, c_out, padding):
  direct, wino, ops = _compare(x_shape, c_out, padding)
  for name, d, w in zip(['output', 'input gradient', 'kernel gradient'], direct, wino):
    assert w.shape == d.shape, name
    assert _max_relative(w, d) < 1e-12, name
  assert 'Conv2D' in ops  # (only the direct reference's)


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_equals_conv2d_in_float32(padding):
  direct, wino, _ = _compare([2, 11, 10, 16], 8, padding, dtype=tf.float32)
  for name, d, w in zip(['output', 'input gradient', 'kernel gradient'], direct, wino):
    assert _max_relative(w, d) < 1e-5, name


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_channel_concat_parts_and_chunks_of_tile_rows(padding):
  # The PSP module's case: parts of unequal width; chunks of one tile row (5 chunks for 9 output rows).
  per_row = 16 * 2 * 4 * 7 * 8  # V bytes of one tile row: 16 x batch x tile_cols x C_in x float64
  direct, wino, _ = _compare([2, 9, 8, 7], 3, padding, parts=[4, 1, 2], max_transform_bytes=per_row)
  assert len(wino) == 1 + 4  # output, three part gradients, kernel gradient
  for d, w in zip(direct, wino):
    assert _max_relative(w, d) < 1e-12


def test_gradient_recomputes_the_transforms_and_scatters_nothing():
  per_row = 16 * 2 * 4 * 7 * 8
  _, _, ops = _compare([2, 9, 8, 7], 3, 'SAME', parts=[4, 1, 2], max_transform_bytes=per_row)
  assert 'UnsortedSegmentSum' not in ops and 'Conv2DBackpropFilter' in ops  # (the direct reference's)
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([2, 9, 8, 7])
    kernel = tf.zeros([3, 3, 7, 3])
    y = winograd.conv2d_winograd(tf.split(x, [4, 3], axis=3), kernel, max_transform_bytes=per_row)
    forward = set(graph.get_operations())
    tf.gradients(tf.reduce_sum(y), [x, kernel])
  # Backprop reads the forward's inputs, filter and output, never a transform (V, U, M) or a window gather.
  reads = {t.op for op in set(graph.get_operations()) - forward for t in op.inputs if t.op in forward}
  transforms = [op.name for op in reads if op.type in ('GatherV2', 'MatMul', 'BatchMatMulV2', 'AddV2')]
  assert not transforms, transforms
  assert y.op.type == 'IdentityN' and y.op.get_attr('_gradient_op_type') == winograd.GRADIENT_NAME.encode()


def _ancestors(op):
  """Every op `op` waits for, by data or control edges."""
  seen, stack = set(), [op]
  while stack:
    current = stack.pop()
    for parent in [t.op for t in current.inputs] + list(current.control_inputs):
      if parent not in seen:
        seen.add(parent)
        stack.append(parent)
  return seen


def _chained_graph(parts_channels=(4, 1, 2), per_row=16 * 2 * 4 * 7 * 8):
  """A variable kernel, parts computed from a placeholder (as a network's activations), chunked conv, gradients."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.placeholder(tf.float32, [2, 9, 8, sum(parts_channels)], name='x')
    kernel = tf.Variable(tf.zeros([3, 3, sum(parts_channels), 3]), name='kernel')
    parts = [tf.nn.relu(p) for p in tf.split(x, list(parts_channels), axis=3)]
    y = winograd.conv2d_winograd(parts, kernel, max_transform_bytes=per_row)
    dy = tf.identity(tf.ones_like(y) * tf.reduce_sum(x), name='dy')
    grads = tf.gradients(y, [x, kernel], grad_ys=dy)
  return graph, parts, dy, grads


def test_nothing_of_the_gradient_runs_before_dy_nor_a_filter_transform_before_its_input():
  # Weight-only ops (the filter transforms of the flipped kernel, the padding of the forward's inputs) would
  # otherwise run at the start of the step and be held through the forward pass.
  graph, parts, dy, _ = _chained_graph()
  ops = graph.get_operations()
  gradient_ops = [op for op in ops if '/winograd_' in op.name and op.type != 'Const']
  assert gradient_ops
  early = [op.name for op in gradient_ops if dy.op not in _ancestors(op)]
  assert not early, early
  forward = [op for op in ops if op.name.startswith('conv2d_winograd/') and '/with_gradient' not in op.name
             and op.type not in ('Const', 'ReadVariableOp')]
  part_ops = {p.op for p in parts}
  unfed = [op.name for op in forward if not part_ops & _ancestors(op)]
  assert not unfed, unfed


def test_running_sums_stay_chains_under_grappler():
  # grappler's AddOpsRewrite turns a chain of adds into one AddN (every product alive at once) unless the adds
  # drive control dependencies.
  graph, _, _, grads = _chained_graph()
  with graph.as_default():
    init = tf.global_variables_initializer()
  metadata = tf.RunMetadata()
  with tf.Session(graph=graph) as sess:  # grappler on, as in training
    sess.run(init)
    sess.run(grads, {graph.get_tensor_by_name('x:0'): np.ones([2, 9, 8, 7], np.float32)},
             options=tf.RunOptions(output_partition_graphs=True), run_metadata=metadata)
  rewritten = [node.name for g in metadata.partition_graphs for node in g.node
               if 'winograd' in node.name and 'AddOpsRewrite' in node.name]
  assert not rewritten, rewritten


def test_chunk_rows_bound_the_transformed_input():
  geometry = winograd.Geometry([1, 90, 90, 4096], 'SAME')
  assert (geometry.tile_rows, geometry.tile_cols, geometry.pads[1]) == (45, 45, [1, 1])
  assert winograd.chunk_rows(geometry, 4096, 4, 2**29) == 45  # 530 MB: one chunk of 512 MiB
  assert winograd.chunk_rows(geometry, 4096, 4, 2**26) == 5  # 9 chunks of <= 64 MiB
  large = winograd.Geometry([1, 128, 256, 4096], 'SAME')
  rows = winograd.chunk_rows(large, 4096, 4, winograd.DEFAULT_MAX_TRANSFORM_BYTES)
  assert 16 * rows * large.tile_cols * 4096 * 4 <= winograd.DEFAULT_MAX_TRANSFORM_BYTES < (
      16 * (rows + 1) * large.tile_cols * 4096 * 4)


@pytest.mark.parametrize('rate,x_shape', [
    (1, [2, 9, 8, 3]),
    (2, [2, 10, 10, 3]),   # even sizes
    (2, [2, 9, 11, 3]),    # odd sizes: SpaceToBatchND pads to whole phases, BatchToSpaceND crops
    (4, [2, 13, 10, 2]),
    (3, [2, 7, 8, 2]),     # an odd rate
])
def test_dilated_winograd_layer_equals_slim_conv2d_in_float64(rate, x_shape):
  """The backbone's conv2: conv2d_as_slim(winograd_atrous_conv2d) against slim.conv2d(rate=rate), same weights;
  outputs and gradients (input, weights, biases)."""
  rng = np.random.RandomState(0)
  kernel = rng.normal(size=[3, 3, x_shape[3], 4])
  with tf.Graph().as_default() as graph:
    x = tf.constant(rng.normal(size=x_shape), tf.float64)
    with slim.arg_scope([slim.conv2d], activation_fn=None, weights_initializer=tf.constant_initializer(kernel),
                        biases_initializer=tf.constant_initializer(0.5)):
      y_direct = slim.conv2d(x, 4, 3, rate=rate, scope='direct')
      y_winograd = dilated_resnet_v1.conv2d_as_slim(
          x, 4, 3, lambda inputs, weights: dilated_resnet_v1.winograd_atrous_conv2d(inputs, weights, rate),
          scope='winograd')
    names = {scope: sorted(v.op.name[len(scope):] for v in tf.global_variables(scope))
             for scope in ('direct', 'winograd')}
    assert names['direct'] == names['winograd'] == ['/biases', '/weights']
    assert y_winograd.shape.as_list() == y_direct.shape.as_list() == x_shape[:3] + [4]
    weights = tf.constant(rng.normal(size=x_shape[:3] + [4]), tf.float64)
    grads = [tf.gradients(tf.reduce_sum(y * weights), [x] + tf.trainable_variables(scope))
             for y, scope in ((y_direct, 'direct'), (y_winograd, 'winograd'))]
    assert not [op for op in graph.get_operations() if op.name.startswith('winograd/') and op.type == 'Conv2D']
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      direct, wino = sess.run([[y_direct] + grads[0], [y_winograd] + grads[1]])
  for d, w in zip(direct, wino):
    assert _max_relative(w, d) < 1e-12


def test_dilated_winograd_rejects_a_rate_below_one():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='rate must be >= 1, got 0'):
      dilated_resnet_v1.winograd_atrous_conv2d(tf.zeros([1, 6, 6, 2]), tf.zeros([3, 3, 2, 2]), 0)


def test_errors_name_what_is_wrong():
  with tf.Graph().as_default():
    x = tf.zeros([1, 6, 6, 4])
    with pytest.raises(ValueError, match='3x3 kernel'):
      winograd.conv2d_winograd(x, tf.zeros([5, 5, 4, 2]))
    with pytest.raises(ValueError, match="'SAME' or 'VALID'"):
      winograd.conv2d_winograd(x, tf.zeros([3, 3, 4, 2]), padding='FULL')
    with pytest.raises(ValueError, match='static 4-D shape'):
      winograd.conv2d_winograd(tf.placeholder(tf.float32, [1, None, None, 4]), tf.zeros([3, 3, 4, 2]))
    with pytest.raises(ValueError, match='do not match a kernel of 4 input channels'):
      winograd.conv2d_winograd([x, x], tf.zeros([3, 3, 4, 2]))
    with pytest.raises(ValueError, match='no VALID 3x3 convolution output'):
      winograd.conv2d_winograd(tf.zeros([1, 2, 6, 4]), tf.zeros([3, 3, 4, 2]), padding='VALID')


# ----------------------------------------------------------------------------------------------------------------
# The model option.

WINOGRAD = 'pspnet { conv3x3_algorithm: "winograd" }'


def test_model_option_keeps_variables_and_values_of_the_training_graph():
  direct = training_graph_outputs(tiny_model_config(5))
  wino = training_graph_outputs(tiny_model_config(5, extra=WINOGRAD))
  assert wino['variables'] == direct['variables']
  assert wino['model_variables'] == direct['model_variables']
  assert (wino['regularization_losses'], wino['update_ops']) == (
      direct['regularization_losses'], direct['update_ops'])
  forward_direct = dict(direct['forward'])
  forward_wino = dict(wino['forward'])
  assert forward_direct['PSPModule/Conv_4/Conv2D'] == 'Conv2D'
  assert 'PSPModule/concat' in forward_direct and 'PSPModule/concat' not in forward_wino
  assert any(name.startswith('PSPModule/Conv_4/Conv2D/') and kind == 'GatherV2'
             for name, kind in forward_wino.items())
  # The auxiliary head's 3x3 conv (training graphs only).
  assert forward_direct['AuxHead/Conv/Conv2D'] == 'Conv2D' and 'AuxHead/Conv/Conv2D' not in forward_wino
  assert any(name.startswith('AuxHead/Conv/Conv2D/') and kind == 'GatherV2' for name, kind in forward_wino.items())
  # The backbone (one unit per block): block1's unit has stride 2 and block2 runs at rate 1, both direct; the
  # conv2 of block3 (rate 2) and block4 (rate 4) by Winograd inside slim's SpaceToBatchND form.
  backbone = 'SharedFeatureExtractor/resnet_v1_50/block%d/unit_1/bottleneck_v1/'
  for block, winograd_conv in ((1, False), (2, False), (3, True), (4, True)):
    conv2 = backbone % block + 'conv2/'
    assert forward_direct[conv2 + 'Conv2D'] == 'Conv2D'
    assert (conv2 + 'Conv2D' not in forward_wino) == winograd_conv, block
    assert any(name.startswith(conv2 + 'Conv2D/') and kind == 'GatherV2'
               for name, kind in forward_wino.items()) == winograd_conv, block
    if winograd_conv:
      assert [forward_wino[conv2 + kind] for kind in ('SpaceToBatchND', 'BatchToSpaceND')] == [
          'SpaceToBatchND', 'BatchToSpaceND']
    # The unit outputs that memory-saving checkpoints name (SEED_CHECKPOINT_NODES' form).
    assert forward_wino[backbone % block + 'Relu'] == forward_direct[backbone % block + 'Relu'] == 'Relu'
  assert all(node.endswith('/bottleneck_v1/Relu') or node.startswith('PSPModule/')
             for node in pspnet_architecture.SEED_CHECKPOINT_NODES)
  # Logits, aux logits and loss (float32; the Winograd convs round differently).
  for d, w in zip(direct['values'][:3], wino['values'][:3]):
    assert _max_relative(np.asarray(w), np.asarray(d)) < 1e-4
  # Every gradient: backprop through the tiny maps' batch norms amplifies rounding: up to 1.4e-4 of a tensor's
  # largest entry (native_atrous_conv, the same function in another rounding, reaches 5e-5): bounded relative to
  # the tensor's norm, and loosely entry by entry.
  for d, w in zip(direct['values'][3:], wino['values'][3:]):
    d, w = np.asarray(d, np.float64), np.asarray(w, np.float64)
    assert np.linalg.norm(w - d) / max(np.linalg.norm(d), 1e-30) < 5e-4  # measured: up to 1.3e-4
    assert _max_relative(w, d) < 1e-3


def test_model_option_inference_logits():
  sessions = [random_weights_inference_session(tiny_model_config(5, extra=extra), (65, 97))
              for extra in ('', WINOGRAD)]
  image = np.random.RandomState(0).randint(0, 256, [1, 65, 97, 3]).astype(np.uint8)
  (logits_d, pred_d), (logits_w, pred_w) = [
      sess.run([logits, endpoints.predictions], {endpoints.inputs: image})
      for sess, endpoints, logits in sessions]
  assert _max_relative(logits_w, logits_d) < 1e-4  # float32 rounding, through BN, ReLU6 and the classifier
  assert np.mean(pred_w == pred_d) > 0.999
  for sess, _, _ in sessions:
    sess.close()


def test_invalid_algorithm_names_the_field():
  with pytest.raises(ConfigError) as error:
    model_builder.build(tiny_model_config(5, extra='pspnet { conv3x3_algorithm: "fft" }'), is_training=False)
  assert str(error.value) == "model.pspnet.conv3x3_algorithm = 'fft': allowed: direct, winograd"


def test_model_option_in_bfloat16():
  # The inference graph's --compute_dtype bfloat16: the transforms' constants follow the input's dtype.
  image = np.random.RandomState(0).randint(0, 256, [1, 65, 65, 3]).astype(np.uint8)
  predictions = []
  for extra in ('', WINOGRAD):
    sess, endpoints, _ = random_weights_inference_session(tiny_model_config(5, extra=extra), (65, 65),
                                                          compute_dtype='bfloat16')
    predictions.append(sess.run(endpoints.predictions, {endpoints.inputs: image}))
    sess.close()
  # bfloat16 rounding (the transforms round too, in the fusion conv and block3/block4), random weights.
  assert np.mean(predictions[0] == predictions[1]) > 0.98


# ----------------------------------------------------------------------------------------------------------------
# Training steps: the winograd option against the direct convolution (its low-memory gradient), from one state.

def _winograd(config):
  config = copy.deepcopy(config)
  config.model.pspnet.conv3x3_algorithm = 'winograd'
  return config


def _update(before, after, names):
  return np.concatenate([(after[n] - before[n]).ravel() for n in names])


def _cosine(a, b):
  return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize('gradients', ['tf.gradients', 'recompute_backbone_blocks', 'memory_saving'])
def test_training_step_equals_direct(cityscapes_records, gradients):
  direct = fixed_batch_pipeline(cityscapes_records, momentum_sgd=True)
  direct.train_config.recompute_backbone_blocks = 0
  candidate = _winograd(direct)
  if gradients == 'recompute_backbone_blocks':
    candidate.train_config.recompute_backbone_blocks = 3
  reference = StepRunner(direct)
  wino = StepRunner(candidate, memory_saving_gradients.make_gradients_fn(TINY_NODES)
                    if gradients == 'memory_saving' else None)
  try:
    assert not [op for op in wino.graph.get_operations() if op.type == 'UnsortedSegmentSum']
    # Recomputation copies the Winograd convs it recomputes (block3's conv2 with recompute_backbone_blocks 3; the
    # segments of the memory-saving checkpoints) with their gradient's op, which reads the copies' inputs.
    copied = [op for op in wino.graph.get_operations() if '/recompute/' in op.name and op.type == 'IdentityN']
    assert bool(copied) == (gradients != 'tf.gradients')
    # One step from the same state. float32 rounding of the two algorithms (~1e-6 per layer) is amplified by the
    # tiny network's batch norm over four frames (a gradient through it grows like 1 / |x1 - x2|): single entries
    # of small betas differ by up to ~5e-3 of their scale between runs, so the whole update's direction is
    # compared tightly and each variable loosely (the exact checks are the layer tests above, float64 to 1e-12).
    state = reference.values()
    loss_direct, after_direct = reference.step(state)
    loss_wino, after_wino = wino.step(state)
    assert loss_wino == pytest.approx(loss_direct, rel=1e-5)
    assert_close_to_scale(after_wino, after_direct, 2e-2)
    trainable = [name for name in state if name.endswith(('weights', 'biases', 'beta', 'gamma'))]
    cosine = _cosine(_update(state, after_wino, trainable), _update(state, after_direct, trainable))
    assert cosine > 0.9999, cosine
  finally:
    reference.close()
    wino.close()


def test_float16_training_step_updates_like_float32_and_direct(cityscapes_records):
  # One step of each from the same state: float32 direct, float16 direct, float16 winograd. Single entries are
  # dominated by float16 rounding amplified by the tiny network's batch norm (block1's batch-norm slots differ by
  # 0.2-0.3 of their scale between any two of the three), so the whole update's direction is compared, as
  # tests/test_mixed_precision.py does for float16 itself.
  float32 = fixed_batch_pipeline(cityscapes_records, momentum_sgd=True)
  float32.train_config.recompute_backbone_blocks = 0
  direct = copy.deepcopy(float32)
  direct.train_config.mixed_precision = 'float16'
  runners = [StepRunner(float32), StepRunner(direct), StepRunner(_winograd(direct))]
  try:
    conv = [op for op in runners[2].graph.get_operations() if op.type == 'IdentityN' and 'PSPModule' in op.name]
    assert conv and conv[0].outputs[0].dtype == tf.float16
    state = runners[0].values()
    (loss32, after32), (loss_direct, after_direct), (loss_wino, after_wino) = [
        runner.step(dict(state, **{k: v for k, v in runner.values().items() if k not in state}))
        for runner in runners]
    assert loss_wino == pytest.approx(loss_direct, rel=1e-3)
    assert loss_wino == pytest.approx(loss32, rel=0.02)
    trainable = [name for name in state if name.endswith(('weights', 'biases', 'beta', 'gamma'))]
    update32, update_direct, update_wino = [_update(state, after, trainable)
                                            for after in (after32, after_direct, after_wino)]
    # float16 against float32: as tests/test_mixed_precision.py's (measured 0.992-0.998 on a CPU computing in
    # float16 itself, AVX512-FP16); Winograd against direct, both in float16: 0.9988-0.9995.
    vs32 = (_cosine(update_wino, update32), _cosine(update_direct, update32))
    assert min(vs32) > 0.97, vs32
    assert _cosine(update_wino, update_direct) > 0.99
  finally:
    for runner in runners:
      runner.close()
