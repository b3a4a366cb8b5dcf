"""Mixed-precision training (train_config.mixed_precision) of the tiny PSPNet on the CPU: float16 (emulated on a
CPU) and bfloat16 steps lower the loss; the network really runs in the half type while the checkpoint holds the
float32 variables of float32 training (plus the loss scale); the loss scale is checkpointed and resumed, backs
off on a forced overflow (the update skipped); clones with synchronized batch norm, train_mem_saving.py's
gradients and the recomputed backbone compose with it; the checkpoint evaluates in float32; config errors name
the field."""
import os

import numpy as np
import pytest

from builders import mixed_precision_builder
from drivers import trainer
from libs import config_util
from libs import memory_saving_gradients
from libs.compat import tf
from libs.config_errors import ConfigError
from protos import train_pb2
from tests import testing_utils
from tests.conftest import fast_session_config
from tests.conftest import fixed_batch_pipeline
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline
from tests.test_memory_saving_gradients import TINY_NODES

from google.protobuf import text_format  # pylint: disable=g-bad-import-order

HALF = ('float16', 'bfloat16')


def _options(**kwargs):
  kwargs.setdefault('session_config', fast_session_config())
  kwargs.setdefault('log_every_n_steps', 1)
  return trainer.default_options(**kwargs)


def _mixed(config, mode, loss_scale=''):
  config.train_config.mixed_precision = mode
  if loss_scale:
    text_format.Merge(loss_scale, config.train_config.loss_scale)
  return config


def _variables(checkpoint_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint_dir))
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize('mode', HALF)
def test_half_precision_steps_on_a_fixed_batch_lower_the_loss(cityscapes_records, mode):
  config = _mixed(fixed_batch_pipeline(cityscapes_records, batch_size=2), mode)
  with tf.Graph().as_default() as graph:
    g = trainer.build_training_graph(config, _options())
    # The network runs in the half type: its convolutions, not only the input cast.
    convs = [op for op in graph.get_operations() if op.type == 'Conv2D' and not op.name.startswith('gradients')]
    assert convs and all(op.inputs[0].dtype == mixed_precision_builder.MODES[mode] for op in convs)
    assert all(v.dtype.base_dtype in (tf.float32, tf.int64) for v in tf.global_variables())
    assert (g.loss_scale is not None) == (mode == 'float16')
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      losses = [sess.run([g.train_op, g.total_loss])[1] for _ in range(10)]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def test_checkpoint_holds_float32_variables_and_the_loss_scale_resumes(cityscapes_records, tmp_path, log_lines):
  float32_dir, half_dir = str(tmp_path / 'float32'), str(tmp_path / 'float16')
  trainer.train(tiny_pipeline(cityscapes_records, num_steps=2), float32_dir, _options())
  # growth_steps 1: the scale doubles after every finite step, so the resumed value is visible.
  config = _mixed(tiny_pipeline(cityscapes_records, num_steps=2), 'float16',
                  'initial_scale: 256 growth_steps: 1')
  assert trainer.train(config, half_dir, _options()) == 2
  reference, half = _variables(float32_dir), _variables(half_dir)
  assert set(half) - set(reference) == {'LossScale/loss_scale', 'LossScale/good_steps'}
  assert set(reference) == set(half) - {'LossScale/loss_scale', 'LossScale/good_steps'}
  for name, value in reference.items():
    assert half[name].dtype == value.dtype and half[name].shape == value.shape, name
  assert half['LossScale/loss_scale'] == 1024.0
  assert any('loss scale 512' in line for line in log_lines)  # progress line of step 2 (its scale)
  config.train_config.num_steps = 4
  assert trainer.train(config, half_dir, _options()) == 4
  assert _variables(half_dir)['LossScale/loss_scale'] == 4096.0
  # Evaluation reads the float16-trained checkpoint like any other (float32, model variables only).
  matrix = testing_utils.padded_eval_confusion_matrix(config, tf.train.latest_checkpoint(half_dir))
  assert matrix.sum() > 0


def test_forced_overflow_skips_steps_and_backs_off(cityscapes_records, tmp_path, log_lines):
  # A scale of 1e30 keeps the float32 loss finite but overflows float16 in backprop.
  config = _mixed(tiny_pipeline(cityscapes_records, num_steps=3), 'float16', 'initial_scale: 1e30')
  with tf.Graph().as_default():
    g = trainer.build_training_graph(config, _options())
    weights = [v for v in tf.trainable_variables() if v.op.name == 'PSPModule/Conv_4/weights'][0]
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      before = sess.run(weights)
      step, finite, scale = sess.run([g.train_op, g.grads_finite, g.loss_scale])
      np.testing.assert_array_equal(sess.run(weights), before)
      assert (step, finite) == (1, False)
      assert scale == pytest.approx(1e30)
      assert sess.run(g.loss_scale) == pytest.approx(0.5e30)
  logdir = str(tmp_path / 'train')
  assert trainer.train(config, logdir, _options()) == 3
  skipped = [line for line in log_lines if 'overflowed' in line]
  assert len(skipped) == 3 and 'update skipped, scale halved' in skipped[0]
  assert '(3 steps skipped)' in [line for line in log_lines if line.startswith('step 3/3')][0]
  assert _variables(logdir)['LossScale/loss_scale'] == pytest.approx(1e30 / 8, rel=1e-6)


def test_synchronized_clones_reduce_moments_in_float32(cityscapes_records, mode='float16'):
  config = _mixed(tiny_pipeline(cityscapes_records, batch_size=4, extra="""
      model { pspnet { hyperparams { batch_norm { sync_across_clones: true } } } }"""), mode)
  with tf.Graph().as_default() as graph:
    g = trainer.build_training_graph(config, _options(num_clones=2, clone_on_cpu=True))
    moments = [op for op in graph.get_operations()
               if op.name.startswith('SyncBatchNorm/') and op.name.endswith(('/mean', '/variance'))]
    assert moments and all(op.outputs[0].dtype == tf.float32 for op in moments)
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      losses = [sess.run([g.train_op, g.total_loss])[1] for _ in range(3)]
  assert np.all(np.isfinite(losses))


@pytest.mark.parametrize('mode', HALF)
def test_memory_saving_gradients_and_recomputation_match_plain_gradients(cityscapes_records, mode):
  # One step of each from the same state: same loss, nearly the same update (train_mem_saving.py's gradients,
  # and the default recompute_backbone_blocks: 3, against tf.gradients, all in the half type).
  config = _mixed(fixed_batch_pipeline(cityscapes_records, momentum_sgd=True), mode)
  plain = type(config)()
  plain.CopyFrom(config)
  plain.train_config.recompute_backbone_blocks = 0
  reference = testing_utils.StepRunner(plain)
  for candidate in (testing_utils.StepRunner(config),
                    testing_utils.StepRunner(config, memory_saving_gradients.make_gradients_fn(TINY_NODES))):
    # The partial gradients are added in another order, in the half type: agreement to its rounding (measured
    # 2e-3 of the variables' scale for float16, 3e-2 for bfloat16), not to float32's.
    testing_utils.assert_steps_equal(reference, candidate, num_steps=1, tolerance=0.1 if mode == 'bfloat16'
                                     else 1e-2, loss_rtol=1e-2)
    candidate.close()
  reference.close()


@pytest.mark.parametrize('mode', HALF)
def test_one_half_precision_step_updates_like_float32(cityscapes_records, mode):
  config32 = fixed_batch_pipeline(cityscapes_records, momentum_sgd=True)
  config_half = _mixed(fixed_batch_pipeline(cityscapes_records, momentum_sgd=True), mode)
  reference, half = testing_utils.StepRunner(config32), testing_utils.StepRunner(config_half)
  state = reference.values()
  loss32, after32 = reference.step(state)
  loss_half, after_half = half.step(dict(state, **{k: v for k, v in half.values().items() if k not in state}))
  assert loss_half == pytest.approx(loss32, rel=0.02)
  trainable = [name for name in state if name.endswith(('weights', 'biases', 'beta', 'gamma'))]
  update32 = np.concatenate([(after32[n] - state[n]).ravel() for n in trainable])
  update_half = np.concatenate([(after_half[n] - state[n]).ravel() for n in trainable])
  # The direction of the update is float32's; its size per variable differs by the half type's rounding,
  # amplified by the tiny network's batch norm over four frames, and by the order of multi-threaded reductions
  # from run to run. Measured cosines: 0.996-0.998 for float16 and ~0.98 for bfloat16 on an AVX2 CPU (half
  # types computed in float32); 0.988-0.998 and 0.895-0.987 in 8 runs on a CPU with AVX512-FP16/BF16 and AMX,
  # where oneDNN computes in the half types themselves.
  cosine = np.dot(update_half, update32) / np.linalg.norm(update_half) / np.linalg.norm(update32)
  assert cosine > (0.85 if mode == 'bfloat16' else 0.97), cosine
  reference.close()
  half.close()


@pytest.mark.parametrize('text,message', [
    ('mixed_precision: "half"', 'train_config.mixed_precision = \'half\': allowed: "none", "float16", "bfloat16"'),
    ('mixed_precision: "bfloat16" loss_scale { initial_scale: 8 }',
     'train_config.loss_scale = \'initial_scale: 8\': only used with mixed_precision: "float16"'),
    ('mixed_precision: "float16" loss_scale { initial_scale: 0.5 }',
     'train_config.loss_scale.initial_scale = 0.5: must be >= 1'),
    ('mixed_precision: "float16" loss_scale { growth_steps: 0 }',
     'train_config.loss_scale.growth_steps = 0: must be > 0'),
])
def test_config_errors_name_the_field(text, message):
  with pytest.raises(ConfigError) as error:
    mixed_precision_builder.build(text_format.Parse(text, train_pb2.TrainConfig()))
  assert message in str(error.value)


def test_defaults_and_config_file_errors(cityscapes_records, tmp_path):
  setting = mixed_precision_builder.build(train_pb2.TrainConfig())
  assert (setting.mode, setting.compute_dtype, setting.loss_scale_config) == ('none', None, None)
  setting = mixed_precision_builder.build(text_format.Parse('mixed_precision: "float16"', train_pb2.TrainConfig()))
  assert setting.loss_scale_config.initial_scale == 2.0**15 and setting.loss_scale_config.growth_steps == 2000
  config = _mixed(tiny_pipeline(cityscapes_records), 'float64')
  with pytest.raises(ConfigError) as error:
    trainer.train(config, str(tmp_path / 'train'), _options(), config_path='my.config')
  assert str(error.value).startswith("my.config: train_config.mixed_precision = 'float64'")
  assert not (tmp_path / 'train').exists()  # refused before the training directory is made


def test_float16_is_refused_with_synchronous_replicas(cityscapes_records):
  config = _mixed(tiny_pipeline(cityscapes_records), 'float16')
  with pytest.raises(ConfigError, match='not with --sync_replicas'):
    trainer.validate_train_config(config, 1, sync_replicas=True)
  trainer.validate_train_config(_mixed(tiny_pipeline(cityscapes_records), 'bfloat16'), 1, sync_replicas=True)


def test_seed_config_with_a_mixed_precision_override():
  # train.py --config_override 'train_config { mixed_precision: "float16" }' on the seed's config.
  config = config_util.load_pipeline_config(os.path.join(REPO_ROOT, 'configs', 'pspnet_1.0_713_resnet_v1.config'),
                                            overrides='train_config { mixed_precision: "float16" }')
  assert mixed_precision_builder.build(config.train_config).mode == 'float16'
  assert config.train_config.batch_size == 8  # the rest of the config as it was
