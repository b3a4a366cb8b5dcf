"""Synchronized batch norm: 2 clones x batch b must equal 1 clone x batch 2b (float64, two CPU devices)."""
import numpy as np
import pytest

from libs import batch_norm as batch_norm_lib
from libs.compat import slim
from libs.compat import tf
from tests.conftest import fast_session_config

BATCH = 3
DECAY = 0.9


def _network(images, sync):
  """conv -> BN -> relu -> conv -> BN -> relu -> conv: [N, 8, 8, 2] -> [N, 8, 8, 2], in the images' dtype."""
  params = {'decay': DECAY, 'scale': True, 'epsilon': 1e-5, 'is_training': True,
            'sync_across_clones': sync}
  with slim.arg_scope([slim.conv2d], normalizer_fn=batch_norm_lib.batch_norm, normalizer_params=params,
                      weights_initializer=tf.truncated_normal_initializer(stddev=0.5, seed=1, dtype=images.dtype)):
    net = slim.conv2d(images, 4, 3, scope='conv1')
    net = slim.conv2d(net, 5, 3, scope='conv2')
    return slim.conv2d(net, 2, 1, activation_fn=None, normalizer_fn=None, scope='out')


def run_clones(images_value, targets_value, num_clones, sync, device='/cpu:%d'):
  """Builds num_clones clones over the split batch, clone i on `device % i` (tests/test_gpu.py: '/gpu:0');
  returns outputs, loss, gradients and moving stats."""
  with tf.Graph().as_default():
    images = tf.constant(images_value)
    targets = tf.constant(targets_value)
    split_images = tf.split(images, num_clones)
    split_targets = tf.split(targets, num_clones)
    syncer = batch_norm_lib.CrossCloneSync(num_clones)
    outputs, losses = [], []
    for i in range(num_clones):
      with tf.name_scope('clone_%d' % i if num_clones > 1 else None):
        clone_device = device % i if '%' in device else device
        with syncer.clone(i, device=clone_device), tf.device(clone_device):
          with tf.variable_scope(tf.get_variable_scope(), reuse=True if i else None):
            out = _network(split_images[i], sync)
            outputs.append(out)
            losses.append(tf.reduce_mean(tf.square(out - split_targets[i])))
    syncer.finalize()
    loss = tf.add_n(losses) / num_clones
    variables = tf.trainable_variables()
    grads = tf.gradients(loss, variables)
    first_clone = 'clone_0' if num_clones > 1 else None
    updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS, first_clone)
    moving = {v.op.name: v for v in tf.global_variables() if 'moving' in v.op.name}
    config = fast_session_config()
    config.device_count['CPU'] = 2
    with tf.Session(config=config) as sess:
      sess.run(tf.global_variables_initializer())
      out_value, loss_value, grad_values = sess.run([tf.concat(outputs, 0), loss, grads])
      sess.run(updates)
      moving_values = sess.run(moving)
  return out_value, loss_value, dict(zip([v.op.name for v in variables], grad_values)), moving_values


@pytest.fixture(scope='module')
def data():
  rng = np.random.RandomState(0)
  # Clone halves with different statistics, so per-clone normalisation visibly differs from the joint one.
  images = rng.randn(2 * BATCH, 8, 8, 2)
  images[BATCH:] = images[BATCH:] * 3.0 + 2.0
  return images, rng.randn(2 * BATCH, 8, 8, 2)


@pytest.fixture(scope='module')
def joint(data):
  return run_clones(*data, num_clones=1, sync=False)


def test_two_synchronized_clones_equal_one_clone_with_the_whole_batch(data, joint):
  out, loss, grads, moving = run_clones(*data, num_clones=2, sync=True)
  ref_out, ref_loss, ref_grads, ref_moving = joint
  np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-10)
  assert loss == pytest.approx(ref_loss, rel=1e-12)
  assert set(grads) == set(ref_grads)
  for name in grads:
    np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-10, atol=1e-10, err_msg=name)
  assert set(moving) == set(ref_moving) and len(moving) == 4
  for name in moving:
    np.testing.assert_allclose(moving[name], ref_moving[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_unsynchronized_clones_differ_from_the_whole_batch(data, joint):
  out, loss, _, moving = run_clones(*data, num_clones=2, sync=False)
  ref_out, ref_loss, _, ref_moving = joint
  assert np.abs(out - ref_out).max() > 1e-2
  assert abs(loss - ref_loss) > 1e-3
  # Clone 0 updates the moving averages from its own half only.
  assert np.abs(moving['conv1/BatchNorm/moving_variance'] - ref_moving['conv1/BatchNorm/moving_variance']).max() \
      > 1e-3


def test_one_clone_sync_is_plain_batch_norm(data, joint):
  out, loss, _, _ = run_clones(*data, num_clones=1, sync=True)
  np.testing.assert_allclose(out, joint[0], rtol=0, atol=1e-12)
  assert loss == pytest.approx(joint[1], rel=1e-12)


def test_layers_missing_from_a_clone_are_reported():
  with tf.Graph().as_default():
    syncer = batch_norm_lib.CrossCloneSync(2)
    with syncer.clone(0):
      batch_norm_lib.batch_norm(tf.zeros([2, 3], tf.float64), sync_across_clones=True, scope='only_clone_0')
    with pytest.raises(ValueError, match='only_clone_0.* built by 1 of 2 clones'):
      syncer.finalize()
