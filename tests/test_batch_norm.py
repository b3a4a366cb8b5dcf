"""Tests of libs/batch_norm.py against tf-slim's own (fused) batch_norm and against numpy.

tf-slim's `batch_norm` only works here on its fused path, which it takes when `updates_collections` is not the
default UPDATE_OPS key object; so every call of `slim.batch_norm` below passes `[tf.GraphKeys.UPDATE_OPS]`.
"""
import numpy as np
import pytest

from libs import batch_norm as batch_norm_lib
from libs.compat import slim
from libs.compat import tf
from tests.conftest import fast_session_config

DECAY = 0.9
EPSILON = 0.001
SLIM_UPDATES = [tf.GraphKeys.UPDATE_OPS]


def _param_initializers(channels, seed=0):
  """Non-trivial beta and gamma, so that a swapped or missing parameter shows."""
  rng = np.random.default_rng(seed)
  return {
      'beta': tf.constant_initializer(rng.uniform(-1.0, 1.0, channels).astype(np.float32)),
      'gamma': tf.constant_initializer(rng.uniform(0.5, 2.0, channels).astype(np.float32)),
  }


def _bn_kwargs(channels, **overrides):
  kwargs = dict(decay=DECAY, center=True, scale=True, epsilon=EPSILON,
                param_initializers=_param_initializers(channels))
  kwargs.update(overrides)
  return kwargs


def _np_normalize(x, mean, variance, beta, gamma, epsilon):
  return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _np_bessel_variance(x):
  """Biased batch variance over all axes but the last, times n / (n - 1)."""
  n = int(np.prod(x.shape[:-1]))
  axes = tuple(range(x.ndim - 1))
  return x.var(axis=axes) * n / (n - 1)


def _scope_variable_names(scope):
  return [v.op.name[len(scope) + 1:] for v in tf.global_variables() if v.op.name.startswith(scope + '/')]


def _vars(scope):
  return {v.op.name[len(scope) + 1:]: v for v in tf.global_variables() if v.op.name.startswith(scope + '/')}


def test_variables_under_conv2d_match_slim_names_and_order():
  """slim.conv2d(normalizer_fn=...) gives X/weights + X/BatchNorm/{beta, gamma, moving_mean, moving_variance}."""
  expected = ['weights', 'BatchNorm/beta', 'BatchNorm/gamma', 'BatchNorm/moving_mean',
              'BatchNorm/moving_variance']
  with tf.Graph().as_default():
    images = tf.zeros([2, 5, 5, 3])
    slim.conv2d(images, 4, 3, normalizer_fn=batch_norm_lib.batch_norm,
                normalizer_params=_bn_kwargs(4), scope='Ours')
    slim.conv2d(images, 4, 3, normalizer_fn=slim.batch_norm,
                normalizer_params=_bn_kwargs(4, updates_collections=SLIM_UPDATES), scope='Slim')
    assert _scope_variable_names('Ours') == expected
    assert _scope_variable_names('Slim') == expected
    ours_model = [v.op.name for v in slim.get_model_variables('Ours')]
    slim_model = [v.op.name for v in slim.get_model_variables('Slim')]
    assert ours_model == ['Ours/' + name for name in expected]
    assert [n.replace('Slim/', 'Ours/') for n in slim_model] == ours_model
    ours_trainable = [v.op.name for v in tf.trainable_variables('Ours')]
    slim_trainable = [v.op.name.replace('Slim/', 'Ours/') for v in tf.trainable_variables('Slim')]
    assert ours_trainable == slim_trainable == ['Ours/weights', 'Ours/BatchNorm/beta', 'Ours/BatchNorm/gamma']
    for name in ('moving_mean', 'moving_variance'):
      ours = _vars('Ours')['BatchNorm/' + name]
      slims = _vars('Slim')['BatchNorm/' + name]
      assert ours.shape.as_list() == slims.shape.as_list() == [4]
      assert ours.dtype.base_dtype == slims.dtype.base_dtype == tf.float32


def test_training_outputs_and_moving_statistics_match_slim_and_numpy():
  """Same outputs in training, same (Bessel-corrected) moving statistics after several update steps, and the
  same inference outputs with those non-trivial moving statistics."""
  channels = 3
  shape = [4, 5, 6, channels]
  rng = np.random.default_rng(1)
  batches = [rng.normal(loc=[1.0, -2.0, 0.5], scale=[0.5, 3.0, 1.5], size=shape).astype(np.float32)
             for _ in range(3)]
  test_input = rng.normal(loc=2.0, scale=2.0, size=shape).astype(np.float32)
  with tf.Graph().as_default():
    inputs = tf.placeholder(tf.float32, shape)
    ours = batch_norm_lib.batch_norm(inputs, is_training=True, scope='Ours', **_bn_kwargs(channels))
    theirs = slim.batch_norm(inputs, is_training=True, updates_collections=SLIM_UPDATES, scope='Slim',
                             **_bn_kwargs(channels))
    ours_eval = batch_norm_lib.batch_norm(inputs, is_training=False, scope='Ours', reuse=True,
                                          **_bn_kwargs(channels))
    theirs_eval = slim.batch_norm(inputs, is_training=False, updates_collections=SLIM_UPDATES, scope='Slim',
                                  reuse=True, **_bn_kwargs(channels))
    update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    assert len(update_ops) == 4  # mean and variance, for each of the two
    ours_vars, slim_vars = _vars('Ours'), _vars('Slim')
    # The inference layers reused the variables instead of creating new ones.
    assert sorted(ours_vars) == sorted(slim_vars) == ['beta', 'gamma', 'moving_mean', 'moving_variance']
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      beta, gamma = sess.run([ours_vars['beta'], ours_vars['gamma']])
      np.testing.assert_array_equal(beta, sess.run(slim_vars['beta']))
      expected_mean = np.zeros(channels)
      expected_variance = np.ones(channels)
      for batch in batches:
        ours_out, theirs_out, _ = sess.run([ours, theirs, update_ops], {inputs: batch})
        batch64 = batch.astype(np.float64)
        reference = _np_normalize(batch64, batch64.mean(axis=(0, 1, 2)), batch64.var(axis=(0, 1, 2)),
                                  beta, gamma, EPSILON)
        np.testing.assert_allclose(ours_out, reference, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours_out, theirs_out, rtol=1e-5, atol=1e-5)
        expected_mean = DECAY * expected_mean + (1 - DECAY) * batch64.mean(axis=(0, 1, 2))
        expected_variance = DECAY * expected_variance + (1 - DECAY) * _np_bessel_variance(batch64)
      moving = sess.run({k: ours_vars[k] for k in ('moving_mean', 'moving_variance')})
      slim_moving = sess.run({k: slim_vars[k] for k in ('moving_mean', 'moving_variance')})
      np.testing.assert_allclose(moving['moving_mean'], expected_mean, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(moving['moving_variance'], expected_variance, rtol=1e-5)
      np.testing.assert_allclose(moving['moving_mean'], slim_moving['moving_mean'], rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(moving['moving_variance'], slim_moving['moving_variance'], rtol=1e-6)
      # Without Bessel's correction the variance would differ by n / (n - 1) = 120 / 119 in the update.
      biased = DECAY ** 3 + sum((1 - DECAY) * DECAY ** (2 - i) * b.astype(np.float64).var(axis=(0, 1, 2))
                                for i, b in enumerate(batches))
      assert not np.allclose(moving['moving_variance'], biased, rtol=1e-4)
      # Inference: moving statistics (far from the test batch's own), no updates.
      ours_eval_out, theirs_eval_out = sess.run([ours_eval, theirs_eval], {inputs: test_input})
      np.testing.assert_allclose(ours_eval_out, theirs_eval_out, rtol=1e-5, atol=1e-5)
      reference = _np_normalize(test_input.astype(np.float64), moving['moving_mean'],
                                moving['moving_variance'], beta, gamma, EPSILON)
      np.testing.assert_allclose(ours_eval_out, reference, rtol=1e-4, atol=1e-4)
      batch_normalized = _np_normalize(test_input, test_input.mean(axis=(0, 1, 2)),
                                       test_input.var(axis=(0, 1, 2)), beta, gamma, EPSILON)
      assert np.abs(ours_eval_out - batch_normalized).max() > 0.1
      np.testing.assert_allclose(sess.run(ours_vars['moving_mean']), moving['moving_mean'])


def test_first_update_is_bessel_corrected():
  """One step from the initial (0, 1): moving_variance = decay * 1 + (1 - decay) * var * n / (n - 1)."""
  rng = np.random.default_rng(2)
  batch = rng.normal(scale=2.0, size=[2, 2, 2, 2]).astype(np.float32)  # n = 8: the correction is 8/7
  with tf.Graph().as_default():
    batch_norm_lib.batch_norm(tf.constant(batch), decay=DECAY, is_training=True, scope='BN')
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      sess.run(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
      moving_mean, moving_variance = sess.run([_vars('BN')['moving_mean'], _vars('BN')['moving_variance']])
  var = batch.astype(np.float64).var(axis=(0, 1, 2))
  np.testing.assert_allclose(moving_variance, DECAY * 1.0 + (1 - DECAY) * var * 8 / 7, rtol=1e-5)
  np.testing.assert_allclose(moving_mean, (1 - DECAY) * batch.astype(np.float64).mean(axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-7)


def test_center_and_scale_false_create_no_beta_or_gamma():
  rng = np.random.default_rng(3)
  batch = rng.normal(loc=3.0, scale=2.0, size=[2, 3, 3, 4]).astype(np.float32)
  with tf.Graph().as_default():
    outputs = batch_norm_lib.batch_norm(tf.constant(batch), center=False, scale=False, is_training=True,
                                        epsilon=EPSILON, scope='BN')
    assert _scope_variable_names('BN') == ['moving_mean', 'moving_variance']
    assert tf.trainable_variables() == []
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      value = sess.run(outputs)
  reference = _np_normalize(batch.astype(np.float64), batch.mean(axis=(0, 1, 2)), batch.var(axis=(0, 1, 2)),
                            0.0, 1.0, EPSILON)
  np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4)


def test_center_only_and_scale_only():
  with tf.Graph().as_default():
    batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 4]), center=True, scale=False, scope='CenterOnly')
    batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 4]), center=False, scale=True, scope='ScaleOnly')
    assert _scope_variable_names('CenterOnly') == ['beta', 'moving_mean', 'moving_variance']
    assert _scope_variable_names('ScaleOnly') == ['gamma', 'moving_mean', 'moving_variance']


def test_trainable_false_keeps_beta_and_gamma_out_of_trainable_variables():
  with tf.Graph().as_default():
    batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 4]), scale=True, trainable=False, scope='Frozen')
    batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 4]), scale=True, trainable=True, scope='Trained')
    trainable = [v.op.name for v in tf.trainable_variables()]
    assert trainable == ['Trained/beta', 'Trained/gamma']
    model = [v.op.name for v in slim.get_model_variables()]
    assert 'Frozen/beta' in model and 'Frozen/gamma' in model


def test_moving_statistics_are_model_and_moving_average_variables_never_trainable():
  with tf.Graph().as_default():
    batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 4]), scale=True, trainable=True, scope='BN')
    batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 4]), scale=True, trainable=False, scope='Frozen',
                              variables_collections=['extra'])
    moving = ['BN/moving_mean', 'BN/moving_variance', 'Frozen/moving_mean', 'Frozen/moving_variance']
    trainable = {v.op.name for v in tf.trainable_variables()}
    moving_average = [v.op.name for v in tf.get_collection(tf.GraphKeys.MOVING_AVERAGE_VARIABLES)]
    model = {v.op.name for v in tf.get_collection(tf.GraphKeys.MODEL_VARIABLES)}
    global_vars = {v.op.name for v in tf.global_variables()}
    assert moving_average == moving
    for name in moving:
      assert name not in trainable
      assert name in model
      assert name in global_vars
    # beta and gamma are model variables but not moving averages.
    assert 'BN/beta' in model and 'BN/gamma' in model
    assert 'BN/beta' not in moving_average
    # variables_collections adds to, never replaces, the standard collections.
    assert [v.op.name for v in tf.get_collection('extra')] == [
        'Frozen/beta', 'Frozen/gamma', 'Frozen/moving_mean', 'Frozen/moving_variance']


def test_updates_collections_none_forces_the_update():
  rng = np.random.default_rng(4)
  batch = rng.normal(loc=5.0, size=[2, 3, 3, 2]).astype(np.float32)
  with tf.Graph().as_default():
    outputs = batch_norm_lib.batch_norm(tf.constant(batch), decay=DECAY, updates_collections=None,
                                        is_training=True, scope='BN')
    assert tf.get_collection(tf.GraphKeys.UPDATE_OPS) == []
    moving_mean = _vars('BN')['moving_mean']
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      np.testing.assert_array_equal(sess.run(moving_mean), [0.0, 0.0])
      sess.run(outputs)
      after_one = sess.run(moving_mean)
      sess.run(outputs)
      after_two = sess.run(moving_mean)
  batch_mean = batch.astype(np.float64).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(after_one, (1 - DECAY) * batch_mean, rtol=1e-5)
  np.testing.assert_allclose(after_two, (1 - DECAY ** 2) * batch_mean, rtol=1e-5)


def test_default_updates_collection_is_update_ops_and_output_alone_does_not_update():
  with tf.Graph().as_default():
    outputs = batch_norm_lib.batch_norm(tf.fill([2, 3, 3, 2], 7.0), decay=DECAY, is_training=True, scope='BN')
    assert len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)) == 2
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      sess.run(outputs)
      np.testing.assert_array_equal(sess.run(_vars('BN')['moving_mean']), [0.0, 0.0])
      sess.run(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
      np.testing.assert_allclose(sess.run(_vars('BN')['moving_mean']), [0.7, 0.7], rtol=1e-6)


def test_inference_adds_no_update_ops():
  with tf.Graph().as_default():
    batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 2]), is_training=False, scope='BN')
    assert tf.get_collection(tf.GraphKeys.UPDATE_OPS) == []


def test_float64_moments_path_is_numpy_exact_with_bessel_update():
  rng = np.random.default_rng(5)
  batch = rng.normal(loc=[1.0, -4.0, 2.0], scale=[1.0, 0.1, 10.0], size=[3, 4, 5, 3])
  beta = np.array([0.5, -1.0, 2.0])
  gamma = np.array([2.0, 0.5, 1.5])
  epsilon = 1e-5
  with tf.Graph().as_default():
    inputs = tf.constant(batch, dtype=tf.float64)
    outputs = batch_norm_lib.batch_norm(
        inputs, decay=DECAY, center=True, scale=True, epsilon=epsilon, is_training=True, scope='BN',
        param_initializers={'beta': tf.constant_initializer(beta), 'gamma': tf.constant_initializer(gamma)})
    assert outputs.dtype == tf.float64
    variables = _vars('BN')
    assert all(v.dtype.base_dtype == tf.float64 for v in variables.values())
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      value, _ = sess.run([outputs, tf.get_collection(tf.GraphKeys.UPDATE_OPS)])
      moving_mean, moving_variance = sess.run([variables['moving_mean'], variables['moving_variance']])
  reference = _np_normalize(batch, batch.mean(axis=(0, 1, 2)), batch.var(axis=(0, 1, 2)), beta, gamma, epsilon)
  np.testing.assert_allclose(value, reference, rtol=0, atol=1e-12)
  # decay is passed in the statistics' dtype, so the float64 update is exact too.
  np.testing.assert_allclose(moving_mean, (1 - DECAY) * batch.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(moving_variance, DECAY + (1 - DECAY) * _np_bessel_variance(batch), rtol=1e-12)


def test_float64_inference_uses_moving_statistics_exactly():
  rng = np.random.default_rng(6)
  batch = rng.normal(size=[2, 3, 3, 2])
  moving_mean = np.array([0.25, -3.0])
  moving_variance = np.array([4.0, 0.5])
  with tf.Graph().as_default():
    outputs = batch_norm_lib.batch_norm(
        tf.constant(batch), center=False, scale=False, epsilon=1e-3, is_training=False,
        param_initializers={'moving_mean': tf.constant_initializer(moving_mean),
                            'moving_variance': tf.constant_initializer(moving_variance)})
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      value = sess.run(outputs)
  np.testing.assert_allclose(value, (batch - moving_mean) / np.sqrt(moving_variance + 1e-3), rtol=0, atol=1e-12)


def test_two_dimensional_input_matches_numpy_and_slim():
  """[N, C] input: normalised over N, same as slim's (fused, reshaped) 2-D path."""
  rng = np.random.default_rng(7)
  batch = rng.normal(loc=[0.0, 10.0, -3.0], scale=[1.0, 5.0, 0.2], size=[6, 3]).astype(np.float32)
  with tf.Graph().as_default():
    inputs = tf.constant(batch)
    ours = batch_norm_lib.batch_norm(inputs, is_training=True, scope='Ours', **_bn_kwargs(3))
    theirs = slim.batch_norm(inputs, is_training=True, updates_collections=SLIM_UPDATES, scope='Slim',
                             **_bn_kwargs(3))
    assert ours.shape.as_list() == [6, 3]
    assert _scope_variable_names('Ours') == _scope_variable_names('Slim') == [
        'beta', 'gamma', 'moving_mean', 'moving_variance']
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      beta, gamma = sess.run([_vars('Ours')['beta'], _vars('Ours')['gamma']])
      ours_value, theirs_value, _ = sess.run([ours, theirs, tf.get_collection(tf.GraphKeys.UPDATE_OPS)])
      moving = sess.run([_vars('Ours')['moving_mean'], _vars('Ours')['moving_variance']])
      slim_moving = sess.run([_vars('Slim')['moving_mean'], _vars('Slim')['moving_variance']])
  batch64 = batch.astype(np.float64)
  reference = _np_normalize(batch64, batch64.mean(axis=0), batch64.var(axis=0), beta, gamma, EPSILON)
  np.testing.assert_allclose(ours_value, reference, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ours_value, theirs_value, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(moving[0], (1 - DECAY) * batch64.mean(axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(moving[1], DECAY + (1 - DECAY) * batch64.var(axis=0) * 6 / 5, rtol=1e-5)
  np.testing.assert_allclose(moving[0], slim_moving[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(moving[1], slim_moving[1], rtol=1e-5)


def test_activation_fn_and_outputs_collections():
  with tf.Graph().as_default():
    outputs = batch_norm_lib.batch_norm(tf.constant([[-1.0], [1.0]]), activation_fn=tf.nn.relu,
                                        outputs_collections='end_points', scope='BN')
    assert outputs.op.type == 'Relu'
    assert tf.get_collection('end_points') == [outputs]
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      value = sess.run(outputs)
  assert value[0, 0] == 0.0 and value[1, 0] > 0.9


@pytest.mark.parametrize('is_training', ['tensor', 'placeholder', 1, None, np.bool_(True)])
def test_is_training_must_be_a_python_bool(is_training):
  with tf.Graph().as_default():
    if isinstance(is_training, str) and is_training == 'tensor':
      is_training = tf.constant(True)
    elif isinstance(is_training, str) and is_training == 'placeholder':
      is_training = tf.placeholder(tf.bool, [])
    with pytest.raises(ValueError, match='is_training must be a python bool'):
      batch_norm_lib.batch_norm(tf.zeros([2, 3, 3, 2]), is_training=is_training)
    assert tf.global_variables() == []


def test_unknown_channel_count_is_an_error():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='static channel count'):
      batch_norm_lib.batch_norm(tf.placeholder(tf.float32, [None, None, None, None]))
