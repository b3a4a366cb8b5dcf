"""The benchmark tool (bench/): chart plotting, a smoke run of `python -m bench ... --quick` and its workers.
Speeds themselves are measured by `python -m bench`, never asserted here. The correctness of the production
options it times is tested with their modules: native atrous convolution in test_dilated_resnet_v1.py,
low-memory conv gradients in test_conv_gradients.py, freezing in test_frozen_graph.py, bfloat16
inference in test_inference_export.py."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import plot
from tests.conftest import REPO_ROOT


def test_plot_writes_png(tmp_path):
  path = plot.write_png(str(tmp_path / 'chart.png'), [
      plot.Chart('t', 'x', 'y', [plot.Series('a', [(0.1, 1.0), (0.5, 3.0)]), plot.Series('b', [(0.2, 2.0)])]),
      plot.Chart('u', 'x', 'y', [])], footer='footer')
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as image:
    assert image.size == (2 * plot.CHART_SIZE[0], plot.CHART_SIZE[1] + 18)
  assert plot.nice_ticks(7.3) == [0, 2, 4, 6, 8]


def _positive(value):
  return isinstance(value, (int, float)) and np.isfinite(value) and value > 0


def test_bench_quick_smoke_run(tmp_path):
  """`python -m bench peak model inference --quick` runs in a fresh process and writes sane figures (a smoke run:
  no speed is asserted)."""
  out = str(tmp_path / 'results')
  proc = subprocess.run([sys.executable, '-m', 'bench', 'peak', 'model', 'inference', '--quick', '--out', out],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| checkpoint float32 |' in proc.stdout.replace('65x65 ', '')
  with open(os.path.join(out, 'bench_peak_model_inference_quick.json')) as f:
    results = json.load(f)
  assert os.path.exists(os.path.join(out, 'bench_peak_model_inference_quick.md'))
  assert _positive(results['peak_gmacs_per_s'])
  peak = results['peak']['default']
  assert set(peak['results']) == {'matmul512_fp32', 'matmul768_fp32', 'conv3x3_fp32', 'matmul512_bf16',
                                  'matmul768_bf16', 'conv3x3_bf16'}
  # The reference of every fraction is the best fp32 kernel of the run.
  fp32 = {name: r['gmacs_per_s'] for name, r in peak['results'].items() if name.endswith('fp32')}
  assert results['peak_gmacs_per_s'] == peak['fp32_peak_gmacs_per_s'] == max(fp32.values())
  assert peak['fp32_matmul_gmacs_per_s'] == max(fp32['matmul512_fp32'], fp32['matmul768_fp32'])
  model = results['model']
  assert model['parameters']['total'] == 124055  # the tiny model's
  assert model['parameters_with_aux_head']['total'] > model['parameters']['total']
  for entry in model['sizes'].values():
    assert entry['profiler_conv_flops_equal_2x_macs'] and _positive(entry['gmacs'])
  variants = results['inference']['65x65']['variants']
  assert {'checkpoint float32', 'frozen float32', 'saved_model float32', 'checkpoint bfloat16',
          'frozen bfloat16', 'saved_model bfloat16', 'checkpoint float32, native atrous conv'} <= set(variants)
  for name, timing in variants.items():
    assert _positive(timing['best_s']) and timing['median_s'] >= timing['best_s'], name
    assert 0 < timing['fraction_of_peak'] and 0 < timing['cpu_share'] <= 1.05, name
    # Exported graphs compute what the checkpoint graph computes; bf16 agrees on most pixels.
    assert timing['agreement_with_fp32_checkpoint'] >= (0.999 if 'float32' in name else 0.9), name
  assert set(results['targets']) == {'fp32 inference, fraction of the measured fp32 peak',
                                     'frozen graph and SavedModel latency / checkpoint graph'}


def test_training_benchmark_worker_quick():
  """bench/train_speed.py's worker in this process: interleaved speed variants and a memory run."""
  from bench import train_speed  # pylint: disable=import-outside-toplevel
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  build_input = trainer.build_input
  base = {'quick': True, 'crop': 33, 'batch': 2, 'runs': 1, 'warmup': 1, 'records': None}
  speed = train_speed.measure(dict(base, variants=[
      train_speed._variant('off'), train_speed._variant('on', **train_speed.SPEED_ON)]))  # pylint: disable=protected-access
  assert trainer.build_input is build_input  # the in-memory input was only patched in while building
  for timing in speed['variants'].values():
    assert _positive(timing['best_s']) and timing['losses_finite'] and _positive(timing['train_gmacs'])
    assert timing['images_per_s'] == 2 / timing['best_s']
  memory = train_speed.measure(dict(base, memory=True, variants=[
      train_speed._variant('memory saving', gradients='units')]))  # pylint: disable=protected-access
  assert _positive(memory['memory']['vmhwm_steps_bytes'])
  assert memory['variants']['memory saving']['losses_finite']


def test_frozen_memory_workers_quick(tmp_path):
  """bench/frozen_memory.py's workers in this process on the tiny model: the export, one source's memory run,
  the three sources timed interleaved with the same predictions, the ratios and the table."""
  from bench import frozen_memory  # pylint: disable=import-outside-toplevel
  base = {'quick': True, 'size': [33, 33], 'export_dir': str(tmp_path / 'export'), 'warmup': 1, 'runs': 1}
  export = frozen_memory.measure(dict(base, action='export', dir=str(tmp_path)))
  assert _positive(export['frozen_graph_bytes'])
  memory = frozen_memory.measure(dict(base, action='memory', source='frozen'))
  assert 0 <= memory['peak_delta_after_load_bytes'] <= memory['peak_delta_bytes']
  assert _positive(memory['load_s']) and memory['timing']['runs'] == 1
  latency = frozen_memory.measure(dict(base, action='latency'))
  assert list(latency) == list(frozen_memory.SOURCES)
  for timing in latency.values():
    assert _positive(timing['best_s']) and timing['equal_pixels_vs_saved_model'] == 1.0
  results = frozen_memory.add_ratios(collections.OrderedDict([('33x33', {
      'export': export, 'memory': {source: memory for source in frozen_memory.SOURCES}, 'latency': latency})]))
  assert results['33x33']['vs_saved_model']['saved_model'] == {'memory': 1.0, 'latency': 1.0}
  assert isinstance(results['33x33']['targets_met'], bool)
  assert frozen_memory.table(results).count('| 33x33 |') == 3


def test_input_and_evaluation_benchmark_workers(cityscapes_records):
  """bench/input_pipeline.py and bench/eval_speed.py workers on the tests' small records."""
  from bench import eval_speed  # pylint: disable=import-outside-toplevel
  from bench import input_pipeline  # pylint: disable=import-outside-toplevel
  result = input_pipeline.measure({'quick': True, 'records': cityscapes_records['train'], 'batches': 3,
                                   'batch': 1})
  for variant in result['variants'].values():
    assert _positive(variant['images_per_s']) and _positive(variant['cpu_s_per_image'])
    assert variant['image_shape'] == [1, 65, 65, 3]
  result = eval_speed.measure({'quick': True, 'records': cityscapes_records['val'], 'images': 2,
                               'padded': [129, 257]})
  assert result['images'] == 2 and _positive(result['images_per_s'])
  assert 0 < result['metric_overhead_share'] < 1 and _positive(result['metric_graph_s'])
  assert result['probabilities_shape'][2] == 19


def test_bench_compare_quick_on_the_demo_configs(tmp_path):
  """`python -m bench compare --quick` on the tiny PSPNet and ICNet: both models' parameters, MACs, latency and
  memory, an eval dir's best results, and the published anchors (no speed is asserted)."""
  from drivers import eval_results  # pylint: disable=import-outside-toplevel
  eval_dir = str(tmp_path / 'eval_icnet')
  eval_results.write_results(eval_dir, 5, {'global_step': 5, 'mIoU': 0.25, 'class_iou': {'road': 0.5,
                                                                                          'sidewalk': 0.0}})
  out = str(tmp_path / 'results')
  proc = subprocess.run(
      [sys.executable, '-m', 'bench', 'compare', '--config_path', 'configs/pspnet_demo_tiny.config',
       '--config_path', 'configs/icnet_demo_tiny.config', '--eval_dir', '', '--eval_dir', eval_dir,
       '--input_shape', '33,65', '--quick', '--out', out],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '## Anchors' in proc.stdout and os.path.exists(os.path.join(out, 'compare_quick.md'))
  with open(os.path.join(out, 'compare_quick.json')) as f:
    results = json.load(f)
  models = results['models']
  assert list(models) == ['pspnet_demo_tiny', 'icnet_demo_tiny']
  assert models['pspnet_demo_tiny']['parameters']['total'] == 124055  # the tiny model's
  assert set(models['icnet_demo_tiny']['parameters']) > {'total', 'backbone', 'FastPSPModule'}
  for name, entry in models.items():
    assert entry['weights'] == 'random' and entry['input_shape'] == [33, 65], name
    assert 0 < entry['parameters_without_batch_norm_gamma_beta'] < entry['parameters']['total'], name
    assert _positive(entry['gmacs']) and entry['anchor_shape']['gmacs'] > entry['gmacs'], name
    assert entry['anchor'] is None, name  # no published model is this small
    timing = entry['latency']
    assert _positive(timing['best_s']) and timing['median_s'] >= timing['best_s'] and timing['runs'] == 2, name
    assert _positive(timing['best_vs_first']) and _positive(entry['memory']['vmhwm_run_bytes']), name
  assert models['pspnet_demo_tiny']['latency']['best_vs_first'] == 1.0
  assert models['pspnet_demo_tiny']['network_shape'] == [33, 65]  # (s - 1) % 8 == 0 already
  assert models['icnet_demo_tiny']['network_shape'] == [33, 65]  # and % 32
  assert 'eval' not in models['pspnet_demo_tiny']
  assert models['icnet_demo_tiny']['eval']['mIoU'] == 0.25
  assert models['icnet_demo_tiny']['eval']['class_iou'] == {'road': 0.5, 'sidewalk': 0.0}
  assert [a['model'] for a in results['anchors']] == ['PSPNet50', 'ICNet 1.0', 'ICNet 0.5', 'ICNet']
  assert results['anchors'][0]['parameters'] == 46.53e6 and results['anchors'][1]['flops'] == 246.95e9


def test_bench_compare_matches_anchors_by_parameter_count():
  from bench import compare  # pylint: disable=import-outside-toplevel
  assert compare.matching_anchor(46533331)['model'] == 'PSPNet50'  # PSPNet50 without batch-norm gamma/beta
  assert compare.matching_anchor(26816147)['model'] == 'ICNet 1.0'
  assert compare.matching_anchor(124055) is None
  assert compare.labels(['configs/a.config', 'b/a.config', 'c.config']) == ['a (1)', 'a (2)', 'c']


def _run_bench_winograd(*args):
  """`python -m bench.winograd ARGS` in a fresh process; fails the test on a non-zero exit."""
  proc = subprocess.run([sys.executable, '-m', 'bench.winograd'] + list(args), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_bench_winograd_quick(tmp_path):
  """`python -m bench.winograd --quick` (small shapes, the tiny model; oneDNN-off section skipped) writes every
  formulation's figures, errors at float32 rounding, and the whole-model agreement."""
  out = str(tmp_path / 'results')
  _run_bench_winograd('--quick', '--no_onednn_off', '--out', out)
  with open(os.path.join(out, 'winograd_quick.json')) as f:
    results = json.load(f)
  cases = results['sections']['TensorFlow defaults']['cases']
  assert [c['case'] for c in cases] == ['fusion (quick)', 'backbone (quick)']
  for case in cases:
    for name, timing in case['variants'].items():
      assert _positive(timing['best_s']), name
      assert timing['max_rel_error'] < 1e-4, name
  [model] = results['models']
  assert set(model['variants']) == {'checkpoint direct', 'checkpoint winograd fusion only', 'checkpoint winograd',
                                    'frozen winograd'}
  assert all(v['agreement_with_direct'] > 0.999 for v in model['variants'].values())
  assert model['frozen_winograd_ops']['Conv2D'] == 0
  # The tiny model (one unit per block): block3's and block4's conv2.
  assert model['backbone_winograd_convs'] == {'checkpoint direct': 0, 'checkpoint winograd fusion only': 0,
                                              'checkpoint winograd': 2}


def test_bench_winograd_train_quick(tmp_path):
  """`python -m bench.winograd --train --quick` (the tiny model's training step, direct vs winograd): interleaved
  timings, finite losses and the memory of each variant from a fresh process."""
  out = str(tmp_path / 'results')
  _run_bench_winograd('--train', '--quick', '--out', out)
  with open(os.path.join(out, 'winograd_train_quick.json')) as f:
    shape = json.load(f)['train']['65x65 batch 2']
  names = ['direct (default options)', 'winograd']
  assert list(shape['speed']['variants']) == names
  for name, timing in shape['speed']['variants'].items():
    assert _positive(timing['best_s']) and timing['losses_finite'], name
    assert timing['variant']['conv3x3_algorithm'] == ('winograd' if name == 'winograd' else 'direct')
  assert list(shape['memory']) == names
  assert all(_positive(worker['memory']['vmhwm_steps_bytes']) for worker in shape['memory'].values())
  with open(os.path.join(out, 'winograd_train_quick.md')) as f:
    assert '| winograd |' in f.read()


def test_peer_is_the_toolkits_network_in_plain_tf1_ops():
  """bench/peers.py's hand-written PSPNet50 does the toolkit's arithmetic: the same convolution MACs (SpaceToBatch
  padding included) as the toolkit's graph at the tiny scale, in inference and in the training forward (the
  auxiliary head), and none of the toolkit's layers."""
  from bench import common  # pylint: disable=import-outside-toplevel
  from bench import peers  # pylint: disable=import-outside-toplevel
  from bench import train_speed  # pylint: disable=import-outside-toplevel
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  size = (97, 97)
  graph, _, _, peer_gmacs = peers.build_peer_inference(size, **peers.QUICK_PEER)
  assert not [op.name for op in graph.get_operations() if 'resnet_v1_50' in op.name or 'PSPModule' in op.name]
  with tf.Graph().as_default() as ours:
    model = inference_graph.build_inference_model(common.load_pipeline_config(True).model)
    inference_graph.build_inference_graph(model, (1,) + size + (3,), size)
  assert peer_gmacs == pytest.approx(exporter.count_conv_macs(ours)['total'] / 1e9, rel=1e-9)
  _, _, _, peer_train_gmacs = peers.build_peer_training(65, 2, **peers.QUICK_PEER)
  sess, _, our_train_gmacs = train_speed._build(  # pylint: disable=protected-access
      {'quick': True, 'crop': 65, 'batch': 2, 'records': None},
      train_speed._variant('direct', **train_speed.SPEED_ON))  # pylint: disable=protected-access
  sess.close()
  assert peer_train_gmacs == pytest.approx(our_train_gmacs, rel=1e-9)


def test_peer_training_step_learns():
  """The peer's training step (momentum, L2, aux loss, batch-norm moving averages) lowers its loss on a repeated
  batch and moves the moving averages."""
  from bench import peers  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  graph, train_op, loss, _ = peers.build_peer_training(49, 2, **peers.QUICK_PEER)
  with graph.as_default():
    init = tf.global_variables_initializer()
    means = [v for v in tf.global_variables() if v.name.endswith('moving_mean:0')]
  with tf.Session(graph=graph) as sess:
    sess.run(init)
    losses = [sess.run([train_op, loss])[1] for _ in range(8)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any(np.abs(m).max() > 0 for m in sess.run(means))


def test_bench_peers_quick(tmp_path):
  """`python -m bench.peers --quick`: the peer and the toolkit's graphs interleaved (inference and training), each
  with its ratio to the peer and effective GMAC/s, the training rows' memory alone, against the measured peak."""
  out = str(tmp_path / 'results')
  proc = subprocess.run([sys.executable, '-m', 'bench.peers', '--quick', '--out', out], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, 'peers_quick.json')) as f:
    results = json.load(f)
  assert _positive(results['peak']['default']['fp32_peak_gmacs_per_s'])
  [inference] = results['inference'].values()
  assert list(inference['variants']) == [
      'hand-written TF1 PSPNet50, untuned', 'ours: checkpoint graph, direct', 'ours: checkpoint graph, winograd',
      'ours: frozen graph, winograd', 'ours: SavedModel, winograd']
  for name, timing in inference['variants'].items():
    assert _positive(timing['best_s']) and _positive(timing['vs_peer']), name
  assert inference['gmacs'] == pytest.approx(inference['peer_gmacs'], rel=1e-9)
  [train] = results['train'].values()
  assert list(train['speed']['variants']) == ['peer', 'direct', 'winograd']
  for name, timing in train['speed']['variants'].items():
    assert _positive(timing['best_s']) and timing['losses_finite'], name
  assert all(_positive(train['memory'][row]['memory']['vmhwm_steps_bytes']) for row in ('peer', 'direct', 'winograd'))
  with open(os.path.join(out, 'peers_quick.md')) as f:
    assert '| hand-written TF1 PSPNet50, untuned |' in f.read()
