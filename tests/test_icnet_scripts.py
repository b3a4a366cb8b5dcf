"""The real scripts on ICNet (configs/icnet_demo_tiny.config over the tiny records), as for PSPNet: train.py from a
tiny PSPNet training directory and resumed, train_mem_saving.py with ICNet's checkpoint nodes and --log_memory,
two clones with synchronized batch norm, eval.py (padded and sliding-window input), inference.py on the sample
frame, export.py (frozen graph, SavedModel, seed checkpoint); and "classification" initialisation of the full
ICNet from a TF-Slim-layout ResNet50 checkpoint. The scripts are never told which model they run."""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from architectures import icnet_architecture
from builders import model_builder
from drivers import eval_results
from drivers import trainer
from libs import checkpoint_utils
from libs import config_util
from libs.compat import slim
from libs.compat import tf
from tests import testing_utils
from tests.conftest import fast_session_config
from tests.conftest import REPO_ROOT
from tests.conftest import SAMPLE_DIR
from tests.conftest import tiny_pipeline_text
from tests.test_trainer import _write_public_resnet50_checkpoint  # pylint: disable=g-bad-import-order

TINY_CONFIG = os.path.join(REPO_ROOT, 'configs', 'icnet_demo_tiny.config')
FRESH_SCOPES = ('AuxOutput', 'AuxOutput_1', 'CascadeFeatureFusion', 'CascadeFeatureFusion_1', 'Classifier',
                'FastPSPModule', 'FullResolutionBranch')
SAMPLE_IMAGE = os.path.join(SAMPLE_DIR, 'leftImg8bit', 'val', 'frankfurt', 'frankfurt_000000_000294_leftImg8bit.png')


def _script(name, args, cwd, timeout=300):
  result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, name)] + list(args), capture_output=True,
                          text=True, timeout=timeout, cwd=str(cwd))
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def _event_scalars_and_graph_nodes(logdir):
  tags, nodes = set(), set()
  for event_file in glob.glob(os.path.join(str(logdir), 'events.out.tfevents.*')):
    for event in tf.train.summary_iterator(event_file):
      tags.update(value.tag for value in event.summary.value)
      if event.graph_def:
        nodes.update(node.name for node in tf.GraphDef.FromString(event.graph_def).node)
  return tags, nodes


@pytest.fixture(scope='module')
def icnet(cityscapes_records, tmp_path_factory):
  """configs/icnet_demo_tiny.config on the tiny records, trained with train.py from a tiny PSPNet training
  directory for 2 steps, then resumed to 3: {'root', 'config', 'pspnet_dir', 'logdir', 'first_log',
  'resume_log'}."""
  root = tmp_path_factory.mktemp('icnet_scripts')
  pspnet_dir = str(root / 'pspnet')
  pspnet = config_util.parse_pipeline_config(
      tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val'], num_steps=2))
  trainer.train(pspnet, pspnet_dir, trainer.default_options(session_config=fast_session_config()))
  with open(TINY_CONFIG) as f:
    text = f.read()
  for split in ('train', 'val'):
    text = text.replace('demo_output/records/cityscapes_%s.record' % split, cityscapes_records[split])
  config = str(root / 'icnet.config')
  with open(config, 'w') as f:
    f.write(text)
  logdir = root / 'train'
  args = ['--config_path', config, '--logdir', str(logdir), '--log_every_n_steps', '1', '--config_override']
  fine_tune = 'fine_tune_checkpoint: "%s" fine_tune_checkpoint_type: "segmentation-finetune"' % pspnet_dir
  first = _script('train.py', args + ['train_config { num_steps: 2 %s }' % fine_tune], root)
  resume = _script('train.py', args + ['train_config { num_steps: 3 %s }' % fine_tune], root)
  return {'root': root, 'config': config, 'pspnet_dir': pspnet_dir, 'logdir': str(logdir), 'first_log': first,
          'resume_log': resume}


def test_train_script_initialises_from_a_pspnet_training_directory_and_resumes(icnet):
  log, pspnet_checkpoint = icnet['first_log'], tf.train.latest_checkpoint(icnet['pspnet_dir'])
  backbone = [name for name, _ in tf.train.list_variables(pspnet_checkpoint)
              if name.startswith('SharedFeatureExtractor/') and 'Adam' not in name]
  assert 'Initialised %d variables from %s (segmentation-finetune checkpoint).' % (
      len(backbone), pspnet_checkpoint) in log
  fresh = [line for line in log.splitlines() if 'Starting fresh' in line]
  assert len(fresh) == 1 and all(' %s (' % scope in fresh[0] for scope in FRESH_SCOPES), fresh
  assert 'SharedFeatureExtractor' not in fresh[0] and 'step 2/2, loss' in log
  # The step-0 checkpoint holds the PSPNet run's backbone exactly, moving statistics included.
  step0 = tf.train.load_checkpoint(os.path.join(icnet['logdir'], 'model.ckpt-0'))
  source = tf.train.load_checkpoint(pspnet_checkpoint)
  for name in backbone:
    np.testing.assert_array_equal(step0.get_tensor(name), source.get_tensor(name), name)
  # The restart resumes its own checkpoint (the fine-tune checkpoint is not read again).
  resume = icnet['resume_log']
  assert 'Resuming from %s' % os.path.join(icnet['logdir'], 'model.ckpt-2') in resume
  assert 'Training from step 2 to 3' in resume and 'step 3/3, loss' in resume
  assert 'segmentation-finetune checkpoint' not in resume
  assert tf.train.latest_checkpoint(icnet['logdir']).endswith('model.ckpt-3')
  tags, _ = _event_scalars_and_graph_nodes(icnet['logdir'])
  assert {'Losses/MainLoss', 'Losses/FirstBranchLoss', 'Losses/SecondBranchLoss', 'Losses/TotalLoss',
          'LearningRate'} <= tags, tags


def test_mem_saving_script_with_icnet_checkpoint_nodes_and_two_synchronized_clones(icnet):
  # The tiny backbone has one unit per block: its block outputs are unit_1's; the rest are the original's names.
  nodes = list(model_builder.build(config_util.load_pipeline_config(icnet['config']).model,
                                   is_training=True).checkpoint_nodes())
  assert nodes[4:] == list(icnet_architecture.CHECKPOINT_NODES[4:]) == [
      'FastPSPModule/Conv/Relu', 'CascadeFeatureFusion/Relu', 'CascadeFeatureFusion_1/Relu']
  logdir = icnet['root'] / 'mem_saving'
  log = _script('train_mem_saving.py', [
      '--config_path', icnet['config'], '--logdir', str(logdir), '--log_every_n_steps', '1',
      '--config_override', 'train_config { num_steps: 2 }', '--checkpoint_nodes', ','.join(nodes),
      '--log_memory'], icnet['root'])
  assert 'Memory after step 1: CPU_BFC_Peak' in log and 'step 2/2, loss' in log
  assert tf.train.latest_checkpoint(str(logdir)).endswith('model.ckpt-2')
  tags, graph_nodes = _event_scalars_and_graph_nodes(logdir)
  assert {'Memory/CPU_BFC_Peak_MiB', 'Memory/VmHWM_MiB', 'Losses/SecondBranchLoss'} <= tags, tags
  recomputed = [node for node in nodes if any(name.endswith('/recompute/' + node) for name in graph_nodes)]
  assert recomputed == nodes

  # Two clones on the CPU with batch norm synchronized across them (4 images: 2 per clone).
  logdir = icnet['root'] / 'clones'
  log = _script('train.py', [
      '--config_path', icnet['config'], '--logdir', str(logdir), '--log_every_n_steps', '1', '--num_clones', '2',
      '--clone_on_cpu', '--config_override',
      'model { icnet { hyperparams { batch_norm { sync_across_clones: true } } } } train_config { num_steps: 1 }'],
      icnet['root'])
  assert 'step 1/1, loss' in log
  _, graph_nodes = _event_scalars_and_graph_nodes(logdir)
  for clone in ('clone_0', 'clone_1'):
    assert clone + '/CascadeFeatureFusion_1/Relu' in graph_nodes
  # Synchronized: one cross-clone reduction of the moments per batch-norm layer (libs/batch_norm.py), ICNet's
  # branches included.
  moving_means = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(logdir)))
                  if name.endswith('/moving_mean')]
  sync_means = {name for name in graph_nodes if name.startswith('SyncBatchNorm/') and name.endswith('/mean')}
  assert len(sync_means) == len(moving_means) > 0, sorted(sync_means)[:5]
  assert [name for name in sync_means if 'CascadeFeatureFusion_1' in name and 'DilatedConv' in name]
  assert not [name for name in tf.train.list_variables(tf.train.latest_checkpoint(str(logdir)))
              if name[0].startswith('clone_')]


def test_eval_script_padded_and_sliding_window(icnet):
  args = ['--config_path', icnet['config'], '--train_dir', icnet['logdir'], '--evaluate_all_from_checkpoint', '3',
          '--verbose']
  padded_dir, window_dir = icnet['root'] / 'eval_padded', icnet['root'] / 'eval_window'
  padded_log = _script('eval.py', args + ['--eval_dir', str(padded_dir)], icnet['root'])
  window_log = _script('eval.py', args + ['--eval_dir', str(window_dir), '--config_override', """eval_config {
      eval_input_type { sliding_window_eval_input { crop_height: 97 crop_width: 97 stride_height: 64
      stride_width: 64 } } }"""], icnet['root'])
  results = []
  for log, eval_dir in ((padded_log, padded_dir), (window_log, window_dir)):
    assert log.count('Global step 3: mIoU') == 1 and 'traffic light' in log
    assert eval_results.evaluated_steps(str(eval_dir)) == {3}
    with open(eval_results.results_path(str(eval_dir), 3)) as f:
      results.append(json.load(f))
  padded, window = results
  assert 'padded_eval_input' in json.dumps(padded['eval_input'])
  assert 'sliding_window_eval_input' in json.dumps(window['eval_input'])
  # Both score every labelled pixel of the 3 val frames at their own size.
  assert padded['num_images'] == window['num_images'] == 3
  assert padded['num_pixels'] == window['num_pixels'] > 0
  assert np.sum(padded['confusion_matrix']) == np.sum(window['confusion_matrix']) == padded['num_pixels']


def test_inference_script_writes_results_of_the_input_size(icnet):
  inputs = icnet['root'] / 'images'
  os.makedirs(str(inputs / 'frankfurt'))
  shutil.copy(SAMPLE_IMAGE, str(inputs / 'frankfurt'))
  with Image.open(SAMPLE_IMAGE) as image:
    sample = np.asarray(image.convert('RGB'))
  Image.fromarray(sample[10:71, 20:103]).save(str(inputs / 'small.png'))  # 61 x 83: padded into the network
  output = icnet['root'] / 'inference'
  log = _script('inference.py', ['--config_path', icnet['config'], '--trained_checkpoint', icnet['logdir'],
                                 '--input_path', str(inputs), '--output_dir', str(output),
                                 '--input_shape', '128,256,3', '--overlay'], icnet['root'])
  assert 'Segmented 2 of 2 images' in log and '(network 129x257)' in log
  name = os.path.join('frankfurt', os.path.basename(SAMPLE_IMAGE)[:-len('.png')])
  for stem, size in ((name, sample.shape[:2]), ('small', (61, 83))):
    for suffix, shape in (('_trainIds', size), ('_color', size + (3,)), ('_overlay', size + (3,))):
      with Image.open(str(output / (stem + suffix + '.png'))) as result:
        assert np.asarray(result).shape == tuple(shape), stem + suffix
    with Image.open(str(output / (stem + '_trainIds.png'))) as result:
      assert np.asarray(result).max() < 19


def test_export_script_frozen_graph_saved_model_and_seed_checkpoint(icnet, log_lines):
  out = icnet['root'] / 'export'
  _script('export.py', ['--config_path', icnet['config'], '--trained_checkpoint', icnet['logdir'], '--output_dir',
                        str(out), '--input_shape', '1,128,256,3', '--num_timing_runs', '1', '--num_warmup_runs', '0',
                        '--export_checkpoint'], icnet['root'])
  with Image.open(SAMPLE_IMAGE) as image:
    sample = np.asarray(image.convert('RGB'))[None]
  graph_def = tf.GraphDef()
  with open(str(out / 'frozen_inference_graph.pb'), 'rb') as f:
    graph_def.ParseFromString(f.read())
  with tf.Graph().as_default():
    tf.import_graph_def(graph_def, name='')
    with tf.Session(config=fast_session_config()) as sess:
      frozen = sess.run('predictions:0', {'inputs:0': sample})
  with tf.Graph().as_default():
    with tf.Session(config=fast_session_config()) as sess:
      meta = tf.saved_model.loader.load(sess, [tf.saved_model.tag_constants.SERVING], str(out / 'saved_model'))
      signature = meta.signature_def['serving_default']
      saved = sess.run(signature.outputs['predictions'].name, {signature.inputs['inputs'].name: sample})
  assert frozen.shape == (1, 128, 256) and frozen.dtype == np.int32
  np.testing.assert_array_equal(saved, frozen)
  with open(str(out / 'model_figures.json')) as f:
    assert json.load(f)['network_shape'] == [129, 257]

  # The seed checkpoint: every ICNet model variable of the trained checkpoint, nothing else; it initialises a new
  # ICNet entirely ("segmentation" type), nothing starts fresh.
  seed = dict(tf.train.list_variables(str(out / 'model.ckpt')))
  trained = tf.train.load_checkpoint(tf.train.latest_checkpoint(icnet['logdir']))
  seed_reader = tf.train.load_checkpoint(str(out / 'model.ckpt'))
  for name in seed:
    np.testing.assert_array_equal(seed_reader.get_tensor(name), trained.get_tensor(name), name)
  with open(str(out / 'name_map.json')) as f:
    name_map = json.load(f)
  assert list(name_map['parts']) == ['backbone', 'FullResolutionBranch', 'FastPSPModule', 'CascadeFeatureFusion',
                                     'CascadeFeatureFusion_1', 'Classifier', 'AuxOutput', 'AuxOutput_1']
  assert all(part['use'] for part in name_map['parts'].values())
  with tf.Graph().as_default():
    model = model_builder.build(config_util.load_pipeline_config(icnet['config']).model, is_training=True)
    model.predict(model.preprocess(tf.zeros([1, 97, 97, 3])))
    assert set(seed) == {v.op.name for v in slim.get_model_variables()}
    init_fn = checkpoint_utils.build_fine_tune_init(model, checkpoint_utils.resolve_checkpoint(str(out)),
                                                    'segmentation')  # the directory, as train.py takes it
    assert not [line for line in log_lines if 'Starting fresh' in line or 'stays initialised' in line]
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      init_fn(sess)
      name = 'CascadeFeatureFusion_1/DilatedConv/weights'
      np.testing.assert_array_equal(sess.run(slim.get_model_variables(name)[0]), seed_reader.get_tensor(name))


def test_classification_checkpoint_in_public_layout_initialises_the_full_icnet_backbone(tmp_path, log_lines):
  checkpoint = _write_public_resnet50_checkpoint(str(tmp_path / 'resnet_v1_50.ckpt'))
  public = dict(tf.train.list_variables(checkpoint))
  config = config_util.load_pipeline_config(os.path.join(REPO_ROOT, 'configs', 'icnet_1.0_1025_resnet_v1.config'))
  backbone, head = testing_utils.classification_restore(config.model, checkpoint, (65, 65),
                                                        'CascadeFeatureFusion/Conv/weights')
  reader = tf.train.load_checkpoint(checkpoint)
  # Every public variable but the 1000-way logits maps onto the backbone; every backbone variable is restored.
  assert len(backbone) == len(public) - 2 == 265
  for name, value in backbone.items():
    np.testing.assert_array_equal(value, reader.get_tensor(name[len('SharedFeatureExtractor/'):]), name)
  # ICNet's own parts start fresh (random init around 0, not the checkpoint's 0.5 .. 1.5), and the log says so.
  assert np.abs(head['CascadeFeatureFusion/Conv/weights']).mean() < 0.1
  assert 'Initialised 265 variables from %s (classification checkpoint).' % checkpoint in log_lines
  fresh = [line for line in log_lines if line.startswith('Starting fresh')]
  assert len(fresh) == 1 and all(' %s (' % scope in fresh[0] for scope in FRESH_SCOPES)
