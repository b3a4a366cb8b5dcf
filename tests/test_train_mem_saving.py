"""Tests of train_mem_saving.py: its checkpoint flags, training equal to train.py's from the same start on the same
batch, checkpoint names resolved per clone, and the command line with the seed's flags (checkpoint, Memory/
summaries, errors)."""
import copy
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app

import train_mem_saving
from drivers import trainer
from libs import config_util
from libs import memory_saving_gradients
from libs.compat import tf
from tests.conftest import fast_session_config
from tests.conftest import fixed_batch_pipeline
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline_text
from tests.test_memory_saving_gradients import TINY_NODES
from tests.testing_utils import assert_steps_equal
from tests.testing_utils import StepRunner


@pytest.mark.parametrize('nodes,mode,expected', [
    (['a/Relu', ' b/Relu '], None, ['a/Relu', 'b/Relu']),
    (['auto-units'], None, 'units'),
    (['auto'], None, 'memory'),
    ([], 'speed', 'speed'),
    ([], None, 'memory'),
])
def test_checkpoint_flags(nodes, mode, expected):
  assert train_mem_saving.checkpoints_from_flags(nodes, mode) == expected


@pytest.mark.parametrize('nodes,mode,message', [
    (['auto-fast'], None, 'auto-fast: allowed automatic values: auto, auto-collection, auto-units'),
    (['auto-units', 'a/Relu'], None, 'cannot be combined'),
    (['a/Relu'], 'memory', '--checkpoint_nodes (1 names) and --checkpoint_mode memory'),
])
def test_checkpoint_flag_errors_name_the_values(nodes, mode, message):
  with pytest.raises(app.UsageError) as error:
    train_mem_saving.checkpoints_from_flags(nodes, mode)
  assert message in str(error.value)


def test_memory_saving_training_equals_plain_training_from_the_same_start(cityscapes_records):
  config = fixed_batch_pipeline(cityscapes_records, momentum_sgd=True)
  plain_config = copy.deepcopy(config)
  plain_config.train_config.recompute_backbone_blocks = 0  # tf.gradients itself
  plain = StepRunner(plain_config)
  saving = StepRunner(config, memory_saving_gradients.make_gradients_fn(TINY_NODES))
  try:
    assert saving.num_update_ops == plain.num_update_ops  # batch-norm updates are not duplicated by recomputation
    assert not [op for op in plain.graph.get_operations() if '/recompute/' in op.name]
    initial, final = assert_steps_equal(plain, saving)
  finally:
    plain.close()
    saving.close()
  moved = [name for name, value in final.items() if not np.array_equal(value, initial[name])]
  assert len(moved) > len(final) // 2  # the steps did train


def test_checkpoint_names_resolve_in_each_clone(cityscapes_records):
  config = config_util.parse_pipeline_config(
      tiny_pipeline_text(cityscapes_records['train'], batch_size=4, crop=49))
  options = trainer.default_options(num_clones=2, clone_on_cpu=True, session_config=fast_session_config(),
                                    gradients_fn=memory_saving_gradients.make_gradients_fn(TINY_NODES))
  with tf.Graph().as_default() as graph:
    g = trainer.build_training_graph(config, options)
    copies = [op.name for op in graph.get_operations() if '/recompute/' in op.name and '/gradients/' not in op.name]
    for clone in ('clone_0', 'clone_1'):
      for node in TINY_NODES:  # each clone recomputes its own nodes
        assert any(name.endswith('/recompute/%s/%s' % (clone, node)) for name in copies), (clone, node)
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      step, loss = sess.run([g.train_op, g.total_loss])
  assert step == 1 and np.isfinite(loss)


def _run_script(args, tmp_path, records):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(records['train'], records['val']))
  env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC='true')
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'train_mem_saving.py'), '--config_path', str(config_path),
       '--logdir', str(tmp_path / 'train'), '--config_override', 'train_config { num_steps: 2 }',
       '--log_every_n_steps', '1'] + args,
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)


def test_script_with_the_seeds_flags_writes_checkpoint_and_memory_summaries(cityscapes_records, tmp_path):
  result = _run_script(['--checkpoint_nodes', ','.join(TINY_NODES), '--test_image_summaries', '--log_memory'],
                       tmp_path, cityscapes_records)
  assert result.returncode == 0, result.stderr[-3000:]
  # --log_memory's lines (its summaries are checked below).
  assert 'Memory after step 1: CPU_BFC_Peak' in result.stderr and 'VmHWM' in result.stderr
  logdir = tmp_path / 'train'
  assert tf.train.latest_checkpoint(str(logdir)).endswith('model.ckpt-2')
  tags, graph_nodes = set(), set()
  for event_file in glob.glob(str(logdir / 'events.out.tfevents.*')):
    for event in tf.train.summary_iterator(event_file):
      tags.update(value.tag for value in event.summary.value)
      if event.graph_def:
        graph_nodes.update(node.name for node in tf.GraphDef.FromString(event.graph_def).node)
  assert {'Memory/CPU_BFC_Peak_MiB', 'Memory/VmHWM_MiB', 'Losses/TotalLoss'} <= tags, tags
  assert any(t.startswith('TestImages/Prediction') for t in tags)
  # The trained graph (as TensorBoard shows it) has the memory-saving recomputation at every --checkpoint_nodes
  # name, PSPModule/Conv_4/Relu6 included (not one of train.py's default recompute_backbone_blocks nodes).
  assert graph_nodes
  recomputed = sorted(node for node in TINY_NODES if any(name.endswith('/recompute/' + node) for name in graph_nodes))
  assert recomputed == sorted(TINY_NODES), recomputed


def test_script_reports_a_misspelt_node_with_the_closest_name(cityscapes_records, tmp_path):
  result = _run_script(['--checkpoint_nodes', 'PSPModule/Conv_4/Relu7'], tmp_path, cityscapes_records)
  assert result.returncode != 0
  assert "'PSPModule/Conv_4/Relu7' is not in the graph" in result.stderr
  assert "Closest existing names: 'PSPModule/Conv_4/Relu6'" in result.stderr
  assert not glob.glob(str(tmp_path / 'train' / 'model.ckpt*'))  # stopped before training
