"""Tests of builders/hyperparams_builder.py: every regularizer and initializer branch, batch norm settings,
the layers the arg_scope configures, and every config error (naming its full field path and value)."""
import math

import numpy as np
import pytest
from google.protobuf import text_format

from builders import hyperparams_builder
from libs import batch_norm as batch_norm_lib
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from protos import hyperparams_pb2
from tests.conftest import fast_session_config

FIELD = 'model.pspnet.hyperparams'


def _config(text):
  return text_format.Parse(text, hyperparams_pb2.Hyperparams())


def _truncated_std_factor(bound=2.0):
  """Standard deviation of a unit normal truncated to [-bound, bound] (TF's truncated_normal: bound 2)."""
  pdf = math.exp(-bound * bound / 2.0) / math.sqrt(2.0 * math.pi)
  mass = math.erf(bound / math.sqrt(2.0))
  return math.sqrt(1.0 - 2.0 * bound * pdf / mass)


def _conv_weights(text, input_channels=64, kernel=3, depth=256):
  """Builds one conv2d under the arg_scope of `text` and returns its initialised kernel as numpy."""
  with tf.Graph().as_default():
    tf.set_random_seed(1234)
    scope_fn = hyperparams_builder.build(_config(text), is_training=True)
    with slim.arg_scope(scope_fn()):
      slim.conv2d(tf.zeros([1, 4, 4, input_channels]), depth, kernel, scope='Conv')
    weights = [v for v in tf.global_variables() if v.op.name == 'Conv/weights'][0]
    assert weights.shape.as_list() == [kernel, kernel, input_channels, depth]
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(weights.initializer)
      return sess.run(weights).astype(np.float64)


def _regularization(text):
  """(kernel, [regularization loss values]) of one conv2d under the arg_scope of `text`."""
  with tf.Graph().as_default():
    scope_fn = hyperparams_builder.build(_config(text), is_training=True)
    with slim.arg_scope(scope_fn()):
      slim.conv2d(tf.zeros([1, 4, 4, 8]), 16, 3, scope='Conv')
    losses = tf.losses.get_regularization_losses()
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      weights = sess.run([v for v in tf.global_variables() if v.op.name == 'Conv/weights'][0])
      return weights.astype(np.float64), sess.run(losses)


# --- Regularizers ---


def test_l2_regularizer_is_weight_times_half_sum_of_squares():
  weights, losses = _regularization('regularizer { l2_regularizer { weight: 0.25 } }')
  assert len(losses) == 1  # the kernel only: no biases, and batch norm parameters are not regularized
  assert losses[0] == pytest.approx(0.25 * np.sum(weights ** 2) / 2.0, rel=1e-5)
  assert losses[0] != pytest.approx(0.25 * np.sum(weights ** 2), rel=1e-2)


def test_l1_regularizer_is_weight_times_sum_of_absolute_values():
  weights, losses = _regularization('regularizer { l1_regularizer { weight: 0.03 } }')
  assert len(losses) == 1
  assert losses[0] == pytest.approx(0.03 * np.sum(np.abs(weights)), rel=1e-5)


def test_no_regularizer_adds_no_regularization_loss():
  _, losses = _regularization('batch_norm { scale: true }')
  assert losses == []


def test_zero_weight_is_allowed_and_disables_the_regularizer():
  for which in ('l2_regularizer', 'l1_regularizer'):
    _, losses = _regularization('regularizer { %s { weight: 0.0 } }' % which)
    assert losses == []  # slim's regularizers return None for scale 0


# --- Initializers ---


def test_truncated_normal_initializer_statistics():
  mean, stddev = 0.5, 0.2
  weights = _conv_weights('initializer { truncated_normal_initializer { mean: 0.5 stddev: 0.2 } }')
  assert weights.mean() == pytest.approx(mean, abs=0.005)
  # Truncated at two standard deviations: the sample's standard deviation is ~0.88 * stddev.
  assert weights.std() == pytest.approx(_truncated_std_factor() * stddev, rel=0.05)
  assert weights.min() >= mean - 2 * stddev - 1e-6
  assert weights.max() <= mean + 2 * stddev + 1e-6


def test_random_normal_initializer_statistics():
  mean, stddev = -0.1, 0.3
  weights = _conv_weights('initializer { random_normal_initializer { mean: -0.1 stddev: 0.3 } }')
  assert weights.mean() == pytest.approx(mean, abs=0.005)
  assert weights.std() == pytest.approx(stddev, rel=0.05)
  # Not truncated: 147456 normal samples have hundreds beyond 3 standard deviations.
  assert np.sum(np.abs(weights - mean) > 3 * stddev) > 100


def test_variance_scaling_fan_in_is_he_initialisation():
  """slim draws truncated_normal(stddev=sqrt(1.3 * factor / n)); the 1.3 compensates the truncation at 2
  stddevs, so the kernel's standard deviation is ~sqrt(factor / fan_in)."""
  fan_in = 3 * 3 * 64
  weights = _conv_weights('initializer { variance_scaling_initializer { factor: 2.0 mode: FAN_IN } }')
  trunc_stddev = math.sqrt(1.3 * 2.0 / fan_in)
  expected_std = trunc_stddev * _truncated_std_factor()
  assert expected_std == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.01)
  assert weights.std() == pytest.approx(expected_std, rel=0.05)
  assert abs(weights.mean()) < 0.05 * expected_std
  assert np.abs(weights).max() <= 2 * trunc_stddev + 1e-6
  assert np.abs(weights).max() > 1.9 * trunc_stddev


def test_variance_scaling_default_and_unset_initializer_are_he_fan_in():
  fan_in = 3 * 3 * 64
  for text in ('initializer { variance_scaling_initializer {} }', ''):
    weights = _conv_weights(text)
    assert weights.std() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05), text


def test_variance_scaling_fan_out_and_factor():
  fan_out = 3 * 3 * 256
  weights = _conv_weights('initializer { variance_scaling_initializer { factor: 1.0 mode: FAN_OUT } }')
  expected_std = math.sqrt(1.3 * 1.0 / fan_out) * _truncated_std_factor()
  assert weights.std() == pytest.approx(expected_std, rel=0.05)


def test_variance_scaling_fan_avg_uniform():
  fan_avg = 3 * 3 * (64 + 256) / 2.0
  weights = _conv_weights(
      'initializer { variance_scaling_initializer { factor: 3.0 mode: FAN_AVG uniform: true } }')
  limit = math.sqrt(3.0 * 3.0 / fan_avg)
  assert weights.std() == pytest.approx(math.sqrt(3.0 / fan_avg), rel=0.05)
  assert np.abs(weights).max() <= limit + 1e-6
  # Uniform: about a tenth of the samples lie in the outer tenth of the range.
  assert np.mean(np.abs(weights) > 0.9 * limit) == pytest.approx(0.1, abs=0.01)


# --- Batch norm and the layers the scope configures ---


def test_conv2d_gets_batch_norm_without_biases_and_relu():
  text = """
    batch_norm { scale: true center: true }
    regularizer { l2_regularizer { weight: 0.0001 } }
  """
  rng = np.random.default_rng(0)
  images = rng.normal(size=[2, 6, 6, 3]).astype(np.float32)
  with tf.Graph().as_default():
    scope_fn = hyperparams_builder.build(_config(text), is_training=True)
    with slim.arg_scope(scope_fn()):
      net = slim.conv2d(tf.constant(images), 8, 3, scope='Conv')
    names = [v.op.name for v in tf.global_variables()]
    assert names == ['Conv/weights', 'Conv/BatchNorm/beta', 'Conv/BatchNorm/gamma', 'Conv/BatchNorm/moving_mean',
                     'Conv/BatchNorm/moving_variance']
    assert net.op.type == 'Relu'
    assert len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)) == 2
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      value = sess.run(net)
  # ReLU of a batch-normalised (mean 0, variance 1 per channel) conv output.
  assert value.min() == 0.0
  assert 0.3 < np.mean(value == 0.0) < 0.7
  assert np.all(value.max(axis=(0, 1, 2)) > 0.5)


def test_batch_norm_settings_reach_the_layer():
  """decay and epsilon from the config: a large epsilon shrinks the output, decay sets the first update."""
  text = 'batch_norm { decay: 0.5 epsilon: 3.0 center: false scale: false }'
  rng = np.random.default_rng(1)
  batch = rng.normal(loc=2.0, scale=1.0, size=[4, 3, 3, 2]).astype(np.float32)
  with tf.Graph().as_default():
    scope_fn = hyperparams_builder.build(_config(text), is_training=True)
    with slim.arg_scope(scope_fn()):
      outputs = batch_norm_lib.batch_norm(tf.constant(batch), scope='BN')
    names = [v.op.name for v in tf.global_variables()]
    assert names == ['BN/moving_mean', 'BN/moving_variance']
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      value, _ = sess.run([outputs, tf.get_collection(tf.GraphKeys.UPDATE_OPS)])
      moving_mean = sess.run(tf.global_variables()[0])
  batch64 = batch.astype(np.float64)
  expected = (batch64 - batch64.mean(axis=(0, 1, 2))) / np.sqrt(batch64.var(axis=(0, 1, 2)) + 3.0)
  np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(moving_mean, 0.5 * batch64.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_batch_norm_params():
  config = _config('batch_norm { decay: 0.9997 epsilon: 0.00001 scale: true center: false train: true }')
  params = hyperparams_builder.build_batch_norm_params(config.batch_norm, is_training=True)
  assert params == {'decay': pytest.approx(0.9997), 'epsilon': pytest.approx(1e-5), 'center': False,
                    'scale': True, 'is_training': True, 'trainable': True, 'sync_across_clones': False}
  params = hyperparams_builder.build_batch_norm_params(config.batch_norm, is_training=False)
  assert params['is_training'] is False and params['trainable'] is True
  defaults = hyperparams_builder.build_batch_norm_params(hyperparams_pb2.BatchNorm(), is_training=True)
  assert defaults == {'decay': pytest.approx(0.999), 'epsilon': pytest.approx(0.001), 'center': True,
                      'scale': False, 'is_training': True, 'trainable': True, 'sync_across_clones': False}
  synced = _config('batch_norm { sync_across_clones: true }')
  assert hyperparams_builder.build_batch_norm_params(synced.batch_norm, True)['sync_across_clones'] is True


def _frozen_or_not(text, is_training):
  """Runs a BN layer (under the scope) on a batch with preset moving statistics; returns
  (output, input, moving mean, moving variance, epsilon, trainable names, update op count)."""
  rng = np.random.default_rng(2)
  batch = rng.normal(loc=1.0, scale=2.0, size=[2, 4, 4, 3]).astype(np.float32)
  moving_mean = np.array([5.0, -5.0, 0.0], np.float32)
  moving_variance = np.array([0.25, 4.0, 9.0], np.float32)
  with tf.Graph().as_default():
    scope_fn = hyperparams_builder.build(_config(text), is_training=is_training)
    with slim.arg_scope(scope_fn()):
      outputs = slim.conv2d(tf.constant(batch), 3, 1, activation_fn=None, scope='Conv',
                            weights_initializer=tf.constant_initializer(np.eye(3, dtype=np.float32)))
    variables = {v.op.name: v for v in tf.global_variables()}
    trainable = sorted(v.op.name for v in tf.trainable_variables())
    num_updates = len(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      sess.run([variables['Conv/BatchNorm/moving_mean'].assign(moving_mean),
                variables['Conv/BatchNorm/moving_variance'].assign(moving_variance)])
      value = sess.run(outputs)
  return value, batch, moving_mean, moving_variance, trainable, num_updates


def test_batch_norm_train_false_uses_moving_statistics_in_a_training_graph():
  text = 'batch_norm { train: false scale: true center: true epsilon: 0.001 }'
  value, batch, mean, variance, trainable, num_updates = _frozen_or_not(text, is_training=True)
  expected = (batch.astype(np.float64) - mean) / np.sqrt(variance.astype(np.float64) + 0.001)
  np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
  # Frozen: beta and gamma not trained (the kernel still is), no moving-average updates.
  assert trainable == ['Conv/weights']
  assert num_updates == 0


def test_batch_norm_train_true_uses_batch_statistics_in_a_training_graph():
  text = 'batch_norm { train: true scale: true center: true epsilon: 0.001 }'
  value, _, _, _, trainable, num_updates = _frozen_or_not(text, is_training=True)
  np.testing.assert_allclose(value.mean(axis=(0, 1, 2)), [0.0, 0.0, 0.0], atol=1e-4)
  np.testing.assert_allclose(value.std(axis=(0, 1, 2)), [1.0, 1.0, 1.0], rtol=1e-3)
  assert trainable == ['Conv/BatchNorm/beta', 'Conv/BatchNorm/gamma', 'Conv/weights']
  assert num_updates == 2


def test_batch_norm_train_true_uses_moving_statistics_in_an_eval_graph():
  text = 'batch_norm { train: true scale: true center: true epsilon: 0.001 }'
  value, batch, mean, variance, _, num_updates = _frozen_or_not(text, is_training=False)
  expected = (batch.astype(np.float64) - mean) / np.sqrt(variance.astype(np.float64) + 0.001)
  np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
  assert num_updates == 0


def test_max_pool2d_padding_is_same():
  with tf.Graph().as_default():
    scope_fn = hyperparams_builder.build(_config(''), is_training=False)
    images = tf.reshape(tf.range(25, dtype=tf.float32), [1, 5, 5, 1])
    with slim.arg_scope(scope_fn()):
      pooled = slim.max_pool2d(images, 3, stride=2)
    valid = slim.max_pool2d(images, 3, stride=2)  # outside the scope: slim's default VALID
    assert pooled.shape.as_list() == [1, 3, 3, 1]
    assert valid.shape.as_list() == [1, 2, 2, 1]
    with tf.Session(config=fast_session_config()) as sess:
      value = sess.run(pooled)
  # SAME with a 5x5 input pads one pixel each side: windows centred on rows/columns 0, 2, 4.
  np.testing.assert_array_equal(value[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


def test_scope_fn_returns_a_fresh_usable_scope_each_call():
  with tf.Graph().as_default():
    scope_fn = hyperparams_builder.build(_config('batch_norm { scale: true }'), is_training=True)
    with slim.arg_scope(scope_fn()):
      slim.conv2d(tf.zeros([1, 3, 3, 2]), 2, 1, scope='A')
    with slim.arg_scope(scope_fn()):
      slim.conv2d(tf.zeros([1, 3, 3, 2]), 2, 1, scope='B')
    names = [v.op.name for v in tf.global_variables()]
    assert 'A/BatchNorm/gamma' in names and 'B/BatchNorm/gamma' in names
    assert 'A/biases' not in names and 'B/biases' not in names


# --- Errors ---


@pytest.mark.parametrize('text, field', [
    ('regularizer {}', FIELD + '.regularizer'),
    ('initializer {}', FIELD + '.initializer'),
])
def test_empty_oneof_names_the_field_and_the_choices(text, field):
  with pytest.raises(ConfigError) as info:
    hyperparams_builder.build(_config(text), is_training=True)
  assert info.value.field == field
  assert info.value.value is None
  message = str(info.value)
  assert message.startswith(field + ' = None')
  if 'regularizer' in text:
    assert 'l2_regularizer' in message and 'l1_regularizer' in message
  else:
    assert 'truncated_normal_initializer' in message and 'variance_scaling_initializer' in message
    assert 'random_normal_initializer' in message


@pytest.mark.parametrize('text, field, value', [
    ('regularizer { l2_regularizer { weight: -0.5 } }', FIELD + '.regularizer.l2_regularizer.weight', -0.5),
    ('regularizer { l1_regularizer { weight: -2 } }', FIELD + '.regularizer.l1_regularizer.weight', -2.0),
    ('initializer { truncated_normal_initializer { stddev: 0 } }',
     FIELD + '.initializer.truncated_normal_initializer.stddev', 0.0),
    ('initializer { truncated_normal_initializer { stddev: -1 } }',
     FIELD + '.initializer.truncated_normal_initializer.stddev', -1.0),
    ('initializer { random_normal_initializer { stddev: 0 } }',
     FIELD + '.initializer.random_normal_initializer.stddev', 0.0),
    ('initializer { variance_scaling_initializer { factor: 0 } }',
     FIELD + '.initializer.variance_scaling_initializer.factor', 0.0),
    ('initializer { variance_scaling_initializer { factor: -2 } }',
     FIELD + '.initializer.variance_scaling_initializer.factor', -2.0),
    ('batch_norm { decay: 1.0 }', FIELD + '.batch_norm.decay', 1.0),
    ('batch_norm { decay: 1.5 }', FIELD + '.batch_norm.decay', 1.5),
    ('batch_norm { decay: -0.25 }', FIELD + '.batch_norm.decay', -0.25),
    ('batch_norm { epsilon: 0 }', FIELD + '.batch_norm.epsilon', 0.0),
    ('batch_norm { epsilon: -0.001 }', FIELD + '.batch_norm.epsilon', -0.001),
])
def test_invalid_values_name_the_full_field_path_and_value(text, field, value):
  with pytest.raises(ConfigError) as info:
    hyperparams_builder.build(_config(text), is_training=True)
  assert info.value.field == field
  assert info.value.value == pytest.approx(value)
  message = str(info.value)
  assert message.startswith(field + ' = ')
  assert repr(value) in message or ('%g' % value) in message
  # Errors are ValueErrors too, for callers that only catch those.
  assert isinstance(info.value, ValueError)


def test_decay_zero_is_allowed():
  params = hyperparams_builder.build_batch_norm_params(_config('batch_norm { decay: 0.0 }').batch_norm, True)
  assert params['decay'] == 0.0


def test_errors_use_the_field_path_given():
  with pytest.raises(ConfigError, match=r'^custom\.path\.batch_norm\.epsilon = 0\.0'):
    hyperparams_builder.build(_config('batch_norm { epsilon: 0 }'), True, field_path='custom.path')


def test_config_of_another_type_is_rejected():
  with pytest.raises(ValueError, match='Hyperparams'):
    hyperparams_builder.build(hyperparams_pb2.BatchNorm(), is_training=True)
