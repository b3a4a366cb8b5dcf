"""Training tests: loss decreases on a fixed batch, resume, fine-tune initialisation from public-layout and
toolkit checkpoints, frozen backbone, clones, config errors, and the train.py command line."""
import copy
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from architectures import pspnet_architecture
from drivers import trainer
from libs import config_util
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from protos import model_pb2
from tests import testing_utils
from tests.conftest import fast_session_config
from tests.conftest import fixed_batch_pipeline
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline
from tests.conftest import tiny_pipeline_text
from tests.testing_utils import assert_steps_equal
from tests.testing_utils import StepRunner

from tf_slim.nets import resnet_v1  # pylint: disable=g-bad-import-order


def _pipeline(records, extra='', **kwargs):
  return tiny_pipeline(records, extra, **kwargs)


def _options(**kwargs):
  kwargs.setdefault('session_config', fast_session_config())
  kwargs.setdefault('log_every_n_steps', 1)
  return trainer.default_options(**kwargs)


def _checkpoint_value(checkpoint_dir, name):
  return tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint_dir)).get_tensor(name)


def test_training_steps_on_a_fixed_batch_lower_the_loss(cityscapes_records):
  # One fixed, deterministic batch: the same frame resized, no random augmentation.
  config = _pipeline(cityscapes_records, batch_size=2, extra="""
      train_config { preprocessor_step { resize_image { new_height: 65 new_width: 129 } } }
      train_input_reader { num_examples: 1 }""")
  del config.train_config.preprocessor_step[0]  # the tiny config's random crop
  with tf.Graph().as_default():
    graph = trainer.build_training_graph(config, _options())
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      losses = [sess.run([graph.train_op, graph.total_loss])[1] for _ in range(12)]
      step = sess.run(graph.global_step)
  assert step == 12
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_total_loss_is_main_plus_aux_plus_regularization_each_once(cityscapes_records):
  config = _pipeline(cityscapes_records)
  with tf.Graph().as_default():
    graph = trainer.build_training_graph(config, _options())
    reg = tf.add_n(tf.losses.get_regularization_losses())
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      # Read without training (no train op), all in one run so the input batch is the same.
      total, losses, reg_value = sess.run([graph.total_loss, graph.losses, reg])
  assert set(losses) == {'main_loss', 'aux_loss', 'regularization_loss'}
  assert losses['regularization_loss'] == pytest.approx(reg_value, rel=1e-6)
  assert total == pytest.approx(losses['main_loss'] + losses['aux_loss'] + reg_value, rel=1e-5)
  # The aux loss is weighted by 0.4 and computed from a different head: it is neither the main loss nor zero.
  assert 0 < losses['aux_loss'] < losses['main_loss']


def test_resume_continues_global_step_and_optimizer_state(cityscapes_records, tmp_path):
  logdir = str(tmp_path / 'train')
  assert trainer.train(_pipeline(cityscapes_records, num_steps=2), logdir, _options()) == 2
  first = tf.train.latest_checkpoint(logdir)
  assert first.endswith('model.ckpt-2')
  adam_slot = [n for n, _ in tf.train.list_variables(first) if n.endswith('Logits/Conv/weights/Adam')]
  assert adam_slot
  # Same logdir, more steps: resumes at 2 instead of re-initialising.
  assert trainer.train(_pipeline(cityscapes_records, num_steps=3), logdir, _options()) == 3
  assert tf.train.latest_checkpoint(logdir).endswith('model.ckpt-3')
  # Already finished: nothing to do, step unchanged.
  assert trainer.train(_pipeline(cityscapes_records, num_steps=3), logdir, _options()) == 3
  # The effective config was written.
  saved = config_util.load_pipeline_config(os.path.join(logdir, 'pipeline.config'))
  assert saved.train_config.num_steps == 3


def test_resume_restores_weights_not_a_fresh_init(cityscapes_records, tmp_path):
  logdir = str(tmp_path / 'train')
  trainer.train(_pipeline(cityscapes_records, num_steps=1), logdir, _options())
  before = _checkpoint_value(logdir, 'PSPModule/Conv_4/weights')
  # lr 0 in the second run: weights must stay what the checkpoint holds.
  config = _pipeline(cityscapes_records, num_steps=2, extra="""train_config { optimizer { adam_optimizer {
      learning_rate { constant_learning_rate { learning_rate: 1e-30 } } } } }""")
  trainer.train(config, logdir, _options())
  np.testing.assert_allclose(_checkpoint_value(logdir, 'PSPModule/Conv_4/weights'), before, atol=1e-12)


def _write_public_resnet50_checkpoint(path):
  """A checkpoint in the layout of the public resnet_v1_50_2016_08_28/resnet_v1_50.ckpt, written by tf-slim's
  own resnet_v1_50 classifier (1000-way logits, slim batch norm with gamma)."""
  with tf.Graph().as_default():
    images = tf.zeros([1, 64, 64, 3])
    normalizer = {'updates_collections': [tf.GraphKeys.UPDATE_OPS], 'scale': True, 'epsilon': 1e-5}
    with slim.arg_scope([slim.conv2d], normalizer_fn=slim.batch_norm, normalizer_params=normalizer):
      resnet_v1.resnet_v1_50(images, num_classes=1000, is_training=False)
    variables = tf.global_variables()
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      rng = np.random.RandomState(0)
      # Distinctive values everywhere, moving statistics included.
      for v in variables:
        v.load(rng.uniform(0.5, 1.5, v.shape.as_list()).astype(np.float32), sess)
      tf.train.Saver(variables).save(sess, path, write_meta_graph=False)
  return path


def test_classification_checkpoint_in_public_layout_initialises_the_full_backbone(tmp_path):
  checkpoint = _write_public_resnet50_checkpoint(str(tmp_path / 'resnet_v1_50.ckpt'))
  public = dict(tf.train.list_variables(checkpoint))
  assert 'resnet_v1_50/logits/weights' in public
  assert 'resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/BatchNorm/gamma' in public
  model_config = text_format.Parse("""pspnet { num_classes: 19 feature_extractor { type: "dilated_resnet50" }
      hyperparams { batch_norm { scale: true epsilon: 0.00001 } } loss { classification_loss { softmax {} } } }""",
                                   model_pb2.Model())
  backbone, head = testing_utils.classification_restore(model_config, checkpoint, (33, 33), 'PSPModule/Conv_4/weights')
  reader = tf.train.load_checkpoint(checkpoint)
  # Every public variable but the logits maps onto the backbone, and every backbone variable is restored.
  assert len(backbone) == len(public) - 2
  for name, value in backbone.items():
    np.testing.assert_array_equal(value, reader.get_tensor(name[len('SharedFeatureExtractor/'):]), name)
  # The pyramid module is not in a classification checkpoint: it keeps its random init (values around 0,
  # not the checkpoint's 0.5..1.5).
  assert np.abs(head['PSPModule/Conv_4/weights']).mean() < 0.1


def test_missing_fine_tune_checkpoint_is_an_error_not_a_random_init(cityscapes_records, tmp_path):
  config = _pipeline(cityscapes_records, extra='train_config { fine_tune_checkpoint: "%s" }'
                     % (tmp_path / 'nope.ckpt'))
  with pytest.raises(ValueError, match=r'train_config.fine_tune_checkpoint = .*nope.ckpt.*no such checkpoint'):
    trainer.train(config, str(tmp_path / 'train'), _options())
  assert not glob.glob(str(tmp_path / 'train' / 'model.ckpt*'))


def test_segmentation_checkpoint_init_and_frozen_backbone(cityscapes_records, tmp_path):
  first = str(tmp_path / 'first')
  trainer.train(_pipeline(cityscapes_records, num_steps=2), first, _options())
  second = str(tmp_path / 'second')
  config = _pipeline(cityscapes_records, num_steps=2, extra="""train_config {
      fine_tune_checkpoint: "%s" fine_tune_checkpoint_type: "segmentation" freeze_fine_tune_backbone: true }"""
                     % first)
  assert trainer.train(config, second, _options()) == 2  # starts at 0: initialised, not resumed
  backbone = 'SharedFeatureExtractor/resnet_v1_50/block2/unit_1/bottleneck_v1/conv2/weights'
  moving = 'SharedFeatureExtractor/resnet_v1_50/block2/unit_1/bottleneck_v1/conv2/BatchNorm/moving_mean'
  head = 'PSPModule/Conv_4/weights'
  for name in (backbone, moving):  # Frozen: exactly the first run's values.
    np.testing.assert_array_equal(_checkpoint_value(second, name), _checkpoint_value(first, name))
  assert not np.allclose(_checkpoint_value(second, head), _checkpoint_value(first, head))


def test_two_clones_on_cpu(cityscapes_records, tmp_path):
  config = _pipeline(cityscapes_records, batch_size=4, num_steps=2)
  with tf.Graph().as_default() as graph:
    g = trainer.build_training_graph(config, _options(num_clones=2, clone_on_cpu=True))
    names = {op.name for op in graph.get_operations()}
    assert 'clone_0/SharedFeatureExtractor/resnet_v1_50/block1/unit_1/bottleneck_v1/Relu' in names
    assert 'clone_1/PSPModule/Conv_4/Relu6' in names
    # Variables are shared, not duplicated per clone.
    assert not [v for v in tf.global_variables() if 'clone_' in v.op.name]
    # Batch-norm moving averages are updated once (first clone), not per clone.
    all_updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    assert g.update_ops and len(g.update_ops) == len(all_updates) // 2
    assert all(op.name.startswith('clone_0/') for op in g.update_ops)
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      step, loss = sess.run([g.train_op, g.total_loss])
  assert step == 1 and np.isfinite(loss)


@pytest.mark.parametrize('extra,num_clones,message', [
    ('train_config { batch_size: 3 }', 2, 'train_config.batch_size = 3: must be a multiple of --num_clones'),
    ('train_config { batch_size: 0 }', 1, 'train_config.batch_size = 0: must be > 0'),
    ('train_config { fine_tune_checkpoint: "x" fine_tune_checkpoint_type: "detection" }', 1,
     "train_config.fine_tune_checkpoint_type = 'detection': allowed: 'classification', 'segmentation'"),
    ('train_config { freeze_fine_tune_backbone: true }', 1, 'train_config.freeze_fine_tune_backbone'),
    ('train_input_reader { tf_record_input_reader { input_path: "/nonexistent/*.record" } }', 1,
     'train_input_reader.tf_record_input_reader.input_path[1]'),
    ('train_config { recompute_backbone_blocks: 5 }', 1,
     'train_config.recompute_backbone_blocks = 5: allowed: 0 (keep every activation) to 4'),
])
def test_config_errors_name_file_field_and_value(cityscapes_records, tmp_path, extra, num_clones, message):
  config = _pipeline(cityscapes_records, extra=extra)
  with pytest.raises(ConfigError) as error:
    trainer.train(config, str(tmp_path / 'train'), _options(num_clones=num_clones, clone_on_cpu=True),
                  config_path='my.config')
  assert str(error.value).startswith('my.config: ')
  assert message in str(error.value)


def test_train_script_end_to_end_writes_checkpoint_config_and_summaries(cityscapes_records, tmp_path):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val']))
  logdir = tmp_path / 'train'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'train.py'), '--config_path', str(config_path), '--logdir',
       str(logdir), '--config_override', 'train_config { num_steps: 2 }', '--log_every_n_steps', '1',
       '--image_summaries', '--test_image_summaries'],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stderr
  assert 'training from random initialisation' in log
  assert 'step 2/2, loss' in log and 'sec/step' in log and 'ETA' in log
  assert log.count('step 2/2, loss') == 1  # one logger, no duplicated lines
  assert tf.train.latest_checkpoint(str(logdir)).endswith('model.ckpt-2')
  assert config_util.load_pipeline_config(str(logdir / 'pipeline.config')).train_config.num_steps == 2
  tags = set()
  for event_file in glob.glob(str(logdir / 'events.out.tfevents.*')):
    for event in tf.train.summary_iterator(event_file):
      tags.update(value.tag for value in event.summary.value)
  for tag in ('Losses/TotalLoss', 'Losses/MainLoss', 'Losses/AuxLoss', 'Losses/RegularizationLoss',
              'LearningRate'):
    assert tag in tags
  assert any(t.startswith('Images/Prediction') for t in tags)
  assert any(t.startswith('TestImages/Prediction') for t in tags)


def test_train_script_reports_config_errors_with_file_and_field(tmp_path):
  config_path = tmp_path / 'bad.config'
  config_path.write_text('model { pspnet { num_clases: 19 } }')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'train.py'), '--config_path', str(config_path), '--logdir',
       str(tmp_path / 'train')], capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert str(config_path) in result.stderr and 'num_clases' in result.stderr


def _one_step_state(config, num_clones, init_checkpoint):
  """Restores init_checkpoint, runs one training step, returns (total loss, {variable name: value})."""
  with tf.Graph().as_default():
    graph = trainer.build_training_graph(config, _options(num_clones=num_clones, clone_on_cpu=True))
    names = ['PSPModule/Conv_4/weights', 'Logits/Conv/weights',
             'SharedFeatureExtractor/resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/moving_mean',
             'PSPModule/Conv_4/BatchNorm/moving_variance']
    variables = {v.op.name: v for v in tf.global_variables() if v.op.name in names}
    session_config = fast_session_config()
    session_config.device_count['CPU'] = 2
    with tf.Session(config=session_config) as sess:
      sess.run(tf.global_variables_initializer())
      tf.train.Saver(slim.get_model_variables()).restore(sess, init_checkpoint)
      _, loss = sess.run([graph.train_op, graph.total_loss])
      return loss, sess.run(variables)


def test_synchronized_batch_norm_clones_train_like_one_clone_with_the_whole_batch(cityscapes_records, tmp_path):
  # A deterministic batch of 4 different frames; SGD so that one step's update is linear in the gradient.
  text = """
      model { pspnet { hyperparams { batch_norm { sync_across_clones: true } } } }
      train_config {
        preprocessor_step { resize_image { new_height: 33 new_width: 65 } }
        optimizer { momentum_optimizer { learning_rate { constant_learning_rate { learning_rate: 0.1 } } } }
      }"""
  config = _pipeline(cityscapes_records, batch_size=4, extra=text)
  unsynced = copy.deepcopy(config)
  unsynced.model.pspnet.hyperparams.batch_norm.sync_across_clones = False
  for c in (config, unsynced):
    del c.train_config.preprocessor_step[0]  # the tiny config's random crop
    assert c.train_config.optimizer.WhichOneof('optimizer') == 'momentum_optimizer'
  # Same initial weights everywhere.
  init = str(tmp_path / 'init.ckpt')
  with tf.Graph().as_default():
    trainer.build_training_graph(config, _options())
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      tf.train.Saver(slim.get_model_variables()).save(sess, init)
  one_loss, one = _one_step_state(config, 1, init)
  sync_loss, synced = _one_step_state(config, 2, init)
  plain_loss, plain = _one_step_state(unsynced, 2, init)
  assert sync_loss == pytest.approx(one_loss, rel=1e-4)
  for name in one:
    np.testing.assert_allclose(synced[name], one[name], rtol=1e-3, atol=1e-5, err_msg=name)
  # Per-clone batch norm (the original toolkit's behaviour) is visibly different: in the loss (by how much depends
  # on the random initial weights, so only its existence is asserted), and by an order of magnitude more than the
  # synchronized clones in the updated weights and the moving statistics.
  assert abs(plain_loss - one_loss) > 10 * abs(sync_loss - one_loss)
  for name in ('PSPModule/Conv_4/weights', 'Logits/Conv/weights'):
    assert np.abs(plain[name] - one[name]).max() > 10 * np.abs(synced[name] - one[name]).max(), name
  moving = 'SharedFeatureExtractor/resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/moving_mean'
  assert np.abs(plain[moving] - one[moving]).max() > 10 * np.abs(synced[moving] - one[moving]).max()


_BACKBONE = 'SharedFeatureExtractor/resnet_v1_50/'
_FORWARD_SCOPES = ('SharedFeatureExtractor/', 'PSPModule/', 'Logits/', 'AuxHead/')


def _backprop_reads(graph, clone=''):
  """{forward op name (without the clone scope): gradient ops reading its outputs} for the 4-D float activations
  of `clone`: the forward activations that stay alive until backprop needs them. Gradient ops are those under a
  '*gradients*' scope (tf.gradients', the memory-saving gradients' and their recomputed copies)."""
  reads = {}
  for op in graph.get_operations():
    if not any('gradients' in part for part in op.name.split('/')):
      continue
    for t in op.inputs:
      if not t.op.name.startswith(clone) or t.op.type == 'ReadVariableOp':
        continue  # another clone's; weights
      name = t.op.name[len(clone):]
      if name == _BACKBONE + 'Pad':
        continue  # the zero-padded input image: data before the first parameter, nothing to recompute
      if name.startswith(_FORWARD_SCOPES) and t.dtype == tf.float32 and t.shape.rank == 4:
        reads.setdefault(name, set()).add(op.name)
  return reads


def _block_of(name):
  """'root', 'block1' .. 'block4' for backbone ops, None elsewhere."""
  if not name.startswith(_BACKBONE):
    return None
  part = name[len(_BACKBONE):].split('/')[0]
  return part if part.startswith('block') else 'root'


@pytest.mark.parametrize('blocks', [0, 2, 3, 4])
def test_recompute_backbone_blocks_keeps_only_block_outputs_of_the_recomputed_blocks(cityscapes_records, blocks):
  config = _pipeline(cityscapes_records, extra='train_config { recompute_backbone_blocks: %d }' % blocks)
  with tf.Graph().as_default() as graph:
    trainer.build_training_graph(config, _options())
    reads = _backprop_reads(graph)
  recomputed = {'root'} | {'block%d' % b for b in range(1, blocks + 1)} if blocks else set()
  outputs = set(pspnet_architecture.block_output_nodes([1, 1, 1, 1]))
  # Backprop reads no activation of a recomputed block except the block outputs (the checkpoints)...
  kept = sorted(name for name in reads if _block_of(name) in recomputed and name not in outputs)
  assert not kept, kept[:5]
  # ... and still reads the activations of the blocks it does not recompute (they are kept, as before).
  for block in ('root', 'block1', 'block2', 'block3', 'block4'):
    read = [name for name in reads if _block_of(name) == block and name not in outputs]
    assert bool(read) == (block not in recomputed), (block, read[:3])
  copies = [op.name for op in graph.get_operations() if '/recompute/' + _BACKBONE in op.name]
  assert bool(copies) == bool(blocks)
  assert not [name for name in copies if '/block%d/' % (blocks + 1) in name or 'PSPModule' in name]


def test_recomputed_backbone_trains_like_tf_gradients(cityscapes_records):
  config = fixed_batch_pipeline(cityscapes_records, momentum_sgd=True)
  assert config.train_config.recompute_backbone_blocks == 3  # the default
  plain_config = copy.deepcopy(config)
  plain_config.train_config.recompute_backbone_blocks = 0
  plain, recomputed = StepRunner(plain_config), StepRunner(config)
  try:
    assert recomputed.num_update_ops == plain.num_update_ops
    assert_steps_equal(plain, recomputed)
  finally:
    plain.close()
    recomputed.close()


def test_recompute_backbone_blocks_per_clone_synchronized_and_frozen(cityscapes_records, tmp_path, log_lines):
  # Clones: each clone recomputes its own blocks (names resolved in the clone scope); with synchronized batch
  # norm one gradient covers both clones. A frozen backbone keeps no activation: nothing to recompute.
  for sync in ('false', 'true'):
    config = _pipeline(cityscapes_records, batch_size=4, extra=(
        'model { pspnet { hyperparams { batch_norm { sync_across_clones: %s } } } }' % sync))
    with tf.Graph().as_default() as graph:
      g = trainer.build_training_graph(config, _options(num_clones=2, clone_on_cpu=True))
      for clone in ('clone_0/', 'clone_1/'):
        reads = _backprop_reads(graph, clone)
        assert reads, clone
        assert not [name for name in reads if _block_of(name) in ('root', 'block1')
                    and name not in pspnet_architecture.block_output_nodes([1, 1, 1, 1])], (sync, clone)
      with tf.Session(config=fast_session_config()) as sess:
        sess.run(tf.global_variables_initializer())
        step, loss = sess.run([g.train_op, g.total_loss])
    assert step == 1 and np.isfinite(loss)
  init = str(tmp_path / 'init.ckpt')
  with tf.Graph().as_default():
    trainer.build_training_graph(_pipeline(cityscapes_records), _options())
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      tf.train.Saver(slim.get_model_variables()).save(sess, init)
  frozen = _pipeline(cityscapes_records, extra='''train_config { fine_tune_checkpoint: "%s"
      fine_tune_checkpoint_type: "segmentation" freeze_fine_tune_backbone: true }''' % init)
  del log_lines[:]
  with tf.Graph().as_default() as graph:
    trainer.build_training_graph(frozen, _options())
    assert not [op for op in graph.get_operations() if '/recompute/' in op.name]
  # Said once, plainly, instead of a skipped-checkpoint warning per block output.
  assert any('recompute_backbone_blocks (3) not used: the backbone is frozen' in line for line in log_lines)
  assert not [line for line in log_lines if 'Memory-saving gradients' in line]
