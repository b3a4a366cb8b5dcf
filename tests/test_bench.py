"""Correctness of the speed options (native atrous convolution, batch-norm folding, bfloat16 inference) and a smoke
run of the benchmarks (`python -m bench ... --quick`). Speeds themselves are measured by `python -m bench`,
never asserted here."""
import json
import os
import subprocess
import sys

import numpy as np
from google.protobuf import text_format

from bench import plot
from builders import model_builder
from libs import exporter
from libs.compat import slim
from libs.compat import tf
from protos import model_pb2
from tests.conftest import REPO_ROOT
from tests.conftest import TINY_MODEL


def _tiny_model_config(num_classes=5, native_atrous_conv=False, low_memory_conv_gradients=True):
  config = model_pb2.Model()
  text = TINY_MODEL % {'num_classes': num_classes}
  text_format.Merge(text[text.index('{') + 1:text.rindex('}')], config)
  config.pspnet.feature_extractor.native_atrous_conv = native_atrous_conv
  config.pspnet.low_memory_conv_gradients = low_memory_conv_gradients
  return config


def _randomize(sess, variables, seed=0):
  """Gives every variable random values (batch-norm statistics and scales near their usual ranges)."""
  rng = np.random.RandomState(seed)
  for v in sorted(variables, key=lambda v: v.op.name):
    shape = v.shape.as_list()
    if v.op.name.endswith(('moving_variance', 'gamma')):
      v.load(rng.uniform(0.5, 1.5, shape).astype(np.float32), sess)
    elif v.op.name.endswith(('moving_mean', 'beta')):
      v.load(rng.normal(0, 0.2, shape).astype(np.float32), sess)
    elif v.dtype.base_dtype == tf.float32:
      v.load((rng.normal(0, 1, shape) * np.sqrt(2.0 / max(1, np.prod(shape[:-1])))).astype(np.float32), sess)


def _training_outputs(native_atrous_conv, low_memory_conv_gradients=True):
  """Variables, outputs, losses and gradients of the tiny training graph with fixed random weights."""
  with tf.Graph().as_default() as graph:
    model = model_builder.build(_tiny_model_config(native_atrous_conv=native_atrous_conv,
                                                   low_memory_conv_gradients=low_memory_conv_gradients),
                                is_training=True)
    images = tf.constant(np.random.RandomState(1).uniform(0, 255, [2, 65, 65, 3]).astype(np.float32))
    outputs = model.predict(model.preprocess(images))
    loss = (tf.reduce_sum(tf.square(outputs['logits'])) + tf.reduce_sum(tf.square(outputs['aux_logits'])) +
            tf.add_n(tf.losses.get_regularization_losses()))
    trainable = tf.trainable_variables()
    gradients = tf.gradients(loss, trainable)
    ops = graph.get_operations()
    dilated = [op.name for op in ops if op.type == 'Conv2D' and max(op.get_attr('dilations')) > 1]
    forward_space_to_batch = [op.name for op in ops if op.type == 'SpaceToBatchND' and
                              not op.name.startswith('gradients')]
    backprop = sorted(op.name for op in ops if op.type in ('Conv2DBackpropInput', 'Conv2DBackpropFilter'))
    forward = [(op.name, op.type) for op in ops if not op.name.startswith('gradients')]
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      _randomize(sess, tf.global_variables())
      values = sess.run([outputs['logits'], outputs['aux_logits'], loss] + gradients)
    return dict(variables=[(v.op.name, v.shape.as_list(), v.trainable) for v in tf.global_variables()],
                model_variables=[v.op.name for v in slim.get_model_variables()],
                regularization_losses=len(tf.losses.get_regularization_losses()),
                update_ops=len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)), values=values,
                dilated=dilated, forward_space_to_batch=forward_space_to_batch, backprop=backprop,
                forward=forward)


def test_native_atrous_conv_same_variables_outputs_and_gradients():
  plain = _training_outputs(False)
  native = _training_outputs(True)
  # Checkpoint compatibility: exactly the same variables, in the same order, under the same names.
  assert native['variables'] == plain['variables']
  assert native['model_variables'] == plain['model_variables']
  assert (native['regularization_losses'], native['update_ops']) == (plain['regularization_losses'],
                                                                      plain['update_ops'])
  # The tiny model has one unit in block3 and block4: slim's two atrous convs become dilated Conv2Ds.
  assert plain['dilated'] == [] and len(plain['forward_space_to_batch']) == 2
  assert [name.split('resnet_v1_50/')[1] for name in native['dilated']] == [
      'block3/unit_1/bottleneck_v1/conv2/Conv2D', 'block4/unit_1/bottleneck_v1/conv2/Conv2D']
  assert native['forward_space_to_batch'] == []
  for a, b in zip(plain['values'], native['values']):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max())))


def test_low_memory_conv_gradients_only_change_the_two_wide_convs_gradients():
  plain = _training_outputs(False, low_memory_conv_gradients=False)
  low = _training_outputs(False, low_memory_conv_gradients=True)
  # The forward graph (names and types), the variables and the forward values are untouched.
  assert low['forward'] == plain['forward']
  assert low['variables'] == plain['variables']
  # TensorFlow's im2col backprop kernels are gone for exactly the PSP fusion conv and the aux head conv.
  gone = sorted(set(plain['backprop']) - set(low['backprop']))
  assert gone == ['gradients/AuxHead/Conv/Conv2D_grad/Conv2DBackpropFilter',
                  'gradients/AuxHead/Conv/Conv2D_grad/Conv2DBackpropInput',
                  'gradients/PSPModule/Conv_4/Conv2D_grad/Conv2DBackpropFilter',
                  'gradients/PSPModule/Conv_4/Conv2D_grad/Conv2DBackpropInput'], gone
  assert set(low['backprop']) < set(plain['backprop'])
  np.testing.assert_array_equal(low['values'][0], plain['values'][0])
  np.testing.assert_array_equal(low['values'][1], plain['values'][1])
  # Gradients: equal up to float32 re-association.
  for a, b in zip(plain['values'][2:], low['values'][2:]):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())))


def _inference_session(model_config, size, compute_dtype=None):
  graph = tf.Graph()
  with graph.as_default():
    endpoints = exporter.build_inference_graph(exporter.build_inference_model(model_config), [1] + size + [3],
                                               size, compute_dtype=compute_dtype)
    logits = graph.get_operation_by_name('Postprocessor/ArgMax').inputs[0]
    sess = tf.Session(graph=graph)
    sess.run(tf.global_variables_initializer())
    _randomize(sess, tf.global_variables())
  return sess, endpoints, logits


def test_fold_batch_norms_keeps_predictions():
  size = [65, 97]
  image = np.random.RandomState(2).randint(0, 256, [1] + size + [3]).astype(np.uint8)
  sess, endpoints, logits = _inference_session(_tiny_model_config(), size)
  with sess:
    expected_predictions, expected_logits = sess.run([endpoints.predictions, logits], {endpoints.inputs: image})
    graph_def = sess.graph.as_graph_def()
    plain = exporter.freeze(sess, graph_def)
    folded = exporter.freeze(sess, graph_def, fold_batch_norm=True)
  _, count = exporter.fold_batch_norms(plain)
  batch_norms = [n for n in plain.node if n.op.startswith('FusedBatchNorm')]
  assert count == len(batch_norms) == 22  # every conv + batch norm of the tiny model (the classifier has none)
  assert not [n for n in folded.node if n.op.startswith('FusedBatchNorm')]
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(folded, name='')
    with tf.Session() as sess:
      predictions, folded_logits = sess.run(
          ['predictions:0', graph.get_operation_by_name('Postprocessor/ArgMax').inputs[0]], {'inputs:0': image})
  np.testing.assert_allclose(folded_logits, expected_logits, rtol=1e-4,
                             atol=1e-4 * float(np.abs(expected_logits).max()))
  assert np.mean(predictions == expected_predictions) > 0.999


def test_bfloat16_inference_agrees_with_float32_and_keeps_float32_variables(tmp_path):
  size = [65, 97]
  model_config = _tiny_model_config()
  image = np.random.RandomState(3).randint(0, 256, [1] + size + [3]).astype(np.uint8)
  sess, endpoints, _ = _inference_session(model_config, size)
  with sess:
    expected = sess.run(endpoints.predictions, {endpoints.inputs: image})
    with sess.graph.as_default():
      checkpoint = tf.train.Saver(slim.get_model_variables()).save(sess, str(tmp_path / 'model.ckpt'))
  export_dir = str(tmp_path / 'export')
  exporter.export(model_config, export_dir, trained_checkpoint=checkpoint, input_shape=(1, size[0], size[1], 3),
                  num_timing_runs=0, compute_dtype='bfloat16')
  with open(os.path.join(export_dir, exporter.FIGURES_NAME)) as f:
    assert json.load(f)['compute_dtype'] == 'bfloat16'
  graph_def = tf.GraphDef()
  with open(os.path.join(export_dir, exporter.FROZEN_GRAPH_NAME), 'rb') as f:
    graph_def.ParseFromString(f.read())
  assert any(n.op == 'Conv2D' and n.attr['T'].type == tf.bfloat16.as_datatype_enum for n in graph_def.node)
  with tf.Graph().as_default():
    tf.import_graph_def(graph_def, name='')
    with tf.Session() as sess:
      frozen = sess.run('predictions:0', {'inputs:0': image})
  # bf16 keeps 8 bits of mantissa: most pixels keep their class (random weights, 5 classes).
  assert np.mean(frozen == expected) > 0.9
  # The bfloat16 checkpoint graph restores the float32 checkpoint: same variable names and dtypes.
  with tf.Graph().as_default():
    endpoints = exporter.build_inference_graph(exporter.build_inference_model(model_config), [1] + size + [3],
                                               size, compute_dtype='bfloat16')
    assert {v.dtype.base_dtype for v in tf.global_variables()} == {tf.float32}
    with tf.Session() as sess:
      exporter.restore_model_variables(sess, checkpoint)
      restored = sess.run(endpoints.predictions, {endpoints.inputs: image})
  assert np.mean(restored == expected) > 0.9


def test_compute_dtype_errors_name_the_flag():
  try:
    exporter.compute_dtype_of('float16')
  except ValueError as e:
    assert '--compute_dtype' in str(e) and 'bfloat16' in str(e)
  else:
    raise AssertionError('float16 accepted')


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
  from libs import trainer  # pylint: disable=import-outside-toplevel
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
