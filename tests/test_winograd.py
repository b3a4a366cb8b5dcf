"""libs/winograd: F(2x2, 3x3) equals tf.nn.conv2d (values and gradients, float64 and float32, SAME and VALID, odd
sizes, batches, channel-concat parts, chunked tile rows); its gradient keeps no forward transform alive; in the
model (pspnet.conv3x3_algorithm) it keeps the variables and computes the same network, and trains like the direct
convolution (tf.gradients, recomputed backbone blocks, memory-saving gradients, float16)."""
import copy

import numpy as np
import pytest

from builders import model_builder
from libs import memory_saving_gradients
from libs import winograd
from libs.compat import tf
from libs.config_errors import ConfigError
from tests.conftest import fixed_batch_pipeline
from tests.conftest import tiny_model_config
from tests.test_memory_saving_gradients import TINY_NODES
from tests.testing_utils import assert_steps_equal
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


def test_chunk_rows_bound_the_transformed_input():
  geometry = winograd.Geometry([1, 90, 90, 4096], 'SAME')
  assert (geometry.tile_rows, geometry.tile_cols, geometry.pads[1]) == (45, 45, [1, 1])
  assert winograd.chunk_rows(geometry, 4096, 4, winograd.DEFAULT_MAX_TRANSFORM_BYTES) == 45  # 530 MB: one chunk
  large = winograd.Geometry([1, 128, 256, 4096], 'SAME')
  rows = winograd.chunk_rows(large, 4096, 4, winograd.DEFAULT_MAX_TRANSFORM_BYTES)
  assert 16 * rows * large.tile_cols * 4096 * 4 <= winograd.DEFAULT_MAX_TRANSFORM_BYTES < (
      16 * (rows + 1) * large.tile_cols * 4096 * 4)


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
  # Logits, aux logits, loss and every gradient (float32; the fusion conv's rounding differs).
  for d, w in zip(direct['values'], wino['values']):
    scale = max(np.abs(d).max(), 1e-30)
    assert np.abs(np.asarray(w) - np.asarray(d)).max() / scale < 1e-4


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
  assert np.mean(predictions[0] == predictions[1]) > 0.99  # bfloat16 rounding, random weights


# ----------------------------------------------------------------------------------------------------------------
# Training steps: the winograd option against the direct convolution (its low-memory gradient), from one state.

def _winograd(config):
  config = copy.deepcopy(config)
  config.model.pspnet.conv3x3_algorithm = 'winograd'
  return config


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
    # Recomputation copies the fusion conv with its gradient's op (which reads the copies' inputs).
    copied = [op for op in wino.graph.get_operations() if '/recompute/' in op.name and op.type == 'IdentityN']
    assert bool(copied) == (gradients == 'memory_saving')
    assert_steps_equal(reference, wino, num_steps=2)
  finally:
    reference.close()
    wino.close()


def _worst_relative_error(actual, expected):
  return max(np.abs(actual[name] - value).max() / (np.abs(value).max() + 1e-12) for name, value in expected.items())


def test_float16_training_step_is_as_close_to_float32_as_direct(cityscapes_records):
  # float16 rounding dominates both algorithms' results: one step of each from the same state, against float32's.
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
    after_direct = {k: after_direct[k] for k in after32}
    after_wino = {k: after_wino[k] for k in after32}
    # Measured: winograd vs direct (both float16) 0.056 of a variable's scale at most (the fusion conv's weight
    # momentum); each against float32: 0.23 and 0.25 (batch-norm momentum slots of block1).
    assert _worst_relative_error(after_wino, after_direct) < 0.1
    assert _worst_relative_error(after_wino, after32) < 1.25 * _worst_relative_error(after_direct, after32)
  finally:
    for runner in runners:
      runner.close()
