"""The device tests (`pytest -m gpu`, run by `python -m bench gpu`): what only a GPU machine can check.

A single clone trains on /gpu:0 while the input pipeline stays on the CPU; synchronized batch norm of two clones
on one GPU equals batch norm of the whole batch; float16 and bfloat16 steps run their convolutions on the GPU in
the half type and lower the loss; the GPU allocator's statistics are read; the GPU's predictions equal the
CPU's. Skipped without a GPU, unless PSPNET_REQUIRE_GPU=1 (set by `python -m bench gpu`), which turns the skip
into a failure.
"""
import os

import numpy as np
import pytest

from drivers import trainer
from libs import deployment
from libs import memory
from libs.compat import tf
from tests import testing_utils
from tests.conftest import fixed_batch_pipeline
from tests.conftest import tiny_model_config
from tests.test_sync_batch_norm import run_clones

pytestmark = pytest.mark.gpu

HALF_TYPES = {'float16': tf.float16, 'bfloat16': tf.bfloat16}


@pytest.fixture(scope='module', autouse=True)
def gpu():
  if not tf.config.list_physical_devices('GPU'):
    message = 'no GPU visible to TensorFlow %s (built with CUDA: %s)' % (tf.__version__,
                                                                        tf.test.is_built_with_cuda())
    if os.environ.get('PSPNET_REQUIRE_GPU') == '1':
      pytest.fail('PSPNET_REQUIRE_GPU=1 but ' + message)
    pytest.skip(message)


def _session_config():
  """The tests' config with soft placement, as train.py runs (the traces check where the convolutions ran)."""
  config = testing_utils.session_config()
  config.allow_soft_placement = True
  return config


def _traced_training_steps(config, steps=4):
  """Runs `steps` training steps, the last one traced: (losses, {op type: set of device names})."""
  with tf.Graph().as_default() as graph:
    g = trainer.build_training_graph(config, trainer.default_options(session_config=_session_config()))
    types = {op.name: op.type for op in graph.get_operations()}
    dtypes = {op.name: op.inputs[0].dtype for op in graph.get_operations() if op.type == 'Conv2D'}
    with tf.Session(config=_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      losses = [sess.run([g.train_op, g.total_loss])[1] for _ in range(steps - 1)]
      metadata = tf.RunMetadata()
      losses.append(sess.run([g.train_op, g.total_loss], run_metadata=metadata,
                             options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))[1])
  placed = {}
  for device in metadata.step_stats.dev_stats:
    for node in device.node_stats:
      op_type = types.get(node.node_name.split(':')[0])
      if op_type:
        placed.setdefault(op_type, set()).add(device.device.lower())
  return losses, placed, dtypes


def _on_gpu(devices):
  return any('gpu:0' in d for d in devices)


def test_a_single_clone_trains_on_the_gpu_with_the_input_pipeline_on_the_cpu(cityscapes_records):
  assert deployment.clone_device(0, 1, clone_on_cpu=False).endswith('GPU:0')
  losses, placed, _ = _traced_training_steps(fixed_batch_pipeline(cityscapes_records, batch_size=2))
  assert np.all(np.isfinite(losses))
  assert _on_gpu(placed['Conv2D']), placed['Conv2D']
  assert not any('cpu' in d for d in placed['Conv2D']), 'convolutions fell back to the CPU: %s' % placed['Conv2D']
  assert all('cpu' in d for d in placed['IteratorGetNext']), placed['IteratorGetNext']


def test_more_clones_than_gpus_are_refused_with_the_flag_named():
  num_gpus = len(tf.config.list_physical_devices('GPU'))
  with pytest.raises(Exception, match='--num_clones %d needs %d GPUs but %d are visible' % (
      num_gpus + 1, num_gpus + 1, num_gpus)):
    deployment.clone_device(num_gpus, num_gpus + 1, clone_on_cpu=False)


def test_synchronized_batch_norm_of_two_clones_on_one_gpu_equals_the_whole_batch():
  rng = np.random.RandomState(0)
  images = rng.randn(6, 8, 8, 2).astype(np.float32)
  images[3:] = images[3:] * 3.0 + 2.0
  targets = rng.randn(6, 8, 8, 2).astype(np.float32)
  out_1, loss_1, grads_1, moving_1 = run_clones(images, targets, num_clones=1, sync=False, device='/gpu:0')
  out_2, loss_2, grads_2, moving_2 = run_clones(images, targets, num_clones=2, sync=True, device='/gpu:0')
  np.testing.assert_allclose(out_2, out_1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(loss_2, loss_1, rtol=1e-4)
  for name, value in grads_1.items():
    np.testing.assert_allclose(grads_2[name], value, rtol=1e-3, atol=1e-4, err_msg=name)
  for name, value in moving_1.items():
    np.testing.assert_allclose(moving_2[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize('mode', sorted(HALF_TYPES))
def test_half_precision_steps_run_on_the_gpu_and_lower_the_loss(cityscapes_records, mode):
  config = fixed_batch_pipeline(cityscapes_records, batch_size=2)
  config.train_config.mixed_precision = mode
  losses, placed, dtypes = _traced_training_steps(config, steps=10)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
  assert _on_gpu(placed['Conv2D']) and not any('cpu' in d for d in placed['Conv2D']), placed['Conv2D']
  forward = [name for name in dtypes if not name.startswith('gradients')]
  assert forward and all(dtypes[name] == HALF_TYPES[mode] for name in forward)


def test_gpu_memory_statistics_are_read_and_reset():
  with tf.Graph().as_default():
    with tf.device('/gpu:0'):
      product = tf.reduce_sum(tf.matmul(tf.ones([1024, 1024]), tf.ones([1024, 1024])))
    with tf.Session(config=_session_config()) as sess:
      sess.run(product)
      usage = memory.memory_usage()
      assert usage['GPU0_Peak'] >= 2 * 1024 * 1024 * 4, usage
      memory.reset_peak_memory()
      assert memory.memory_usage()['GPU0_Peak'] <= usage['GPU0_Peak']


def test_gpu_predictions_equal_the_cpu_predictions():
  size = [65, 97]
  image = np.random.RandomState(3).randint(0, 256, [1] + size + [3]).astype(np.uint8)
  outputs = {}
  for device, config in (('gpu', None), ('cpu', tf.ConfigProto(device_count={'GPU': 0}))):
    sess, endpoints, logits = testing_utils.random_weights_inference_session(
        tiny_model_config(num_classes=5), size, session_config=config)
    with sess:
      outputs[device] = sess.run([endpoints.predictions, logits], {endpoints.inputs: image})
  np.testing.assert_allclose(outputs['gpu'][1], outputs['cpu'][1], rtol=1e-3, atol=1e-3)
  assert np.mean(outputs['gpu'][0] == outputs['cpu'][0]) > 0.999
