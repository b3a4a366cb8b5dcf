"""Inference latency and throughput (batch 1): checkpoint graph, frozen graph and SavedModel, fp32 and bf16.

One worker process per resolution:
  1. a checkpoint with random weights (batch-norm statistics and scales randomised too) is written to a temporary directory;
  2. drivers/exporter.export writes the frozen graph and the SavedModel from it, for each compute dtype, exactly as
     export.py does;
  3. every variant gets its own session: the checkpoint graph (inference_graph.build_inference_graph + restore), the
     frozen graph (libs/frozen_graph.load_session, its weights in variables; bench/frozen_memory.py compares it
     with a plain tf.import_graph_def) and the SavedModel (loaded with the TF1 loader, as TF Serving does);
  4. all variants are timed interleaved on the same random uint8 image (common.interleaved), and each
     variant's predictions are compared with the fp32 checkpoint graph's (share of equal pixels).

Lever variants (at the first resolution): native atrous convolution, thread-pool settings and grappler off; a second worker repeats the main ones with oneDNN's custom ops
switched on (TF_ENABLE_ONEDNN_OPTS=1, which must be set before TensorFlow is imported).

Throughput at batch 1 is 1 / latency; `gmacs_per_s` divides the model's analytic MACs at that resolution (the
plain graph's, for every variant) by the best latency.
"""
import collections
import os
import shutil
import tempfile

import numpy as np

from bench import common

FULL = {'sizes': [[713, 713], [1024, 2048]], 'runs': 3, 'warmup': 1}
# At full resolution (the slowest runs; times in bench/results/bench_inference.md): fp32 only (bf16 is compared at
# 713x713).
FULL_LARGE_RUNS = 3
QUICK = {'sizes': [[65, 65]], 'runs': 2, 'warmup': 1}


def _variant(name, source, dtype='float32', native_atrous=False, intra=0, inter=0, grappler=True):
  return collections.OrderedDict(name=name, source=source, dtype=dtype, native_atrous=native_atrous,
                                 intra=intra, inter=inter, grappler=grappler)


MAIN_VARIANTS = [_variant('%s %s' % (source, dtype), source, dtype)
                 for dtype in ('float32', 'bfloat16') for source in ('checkpoint', 'frozen', 'saved_model')]
LEVER_VARIANTS = [
    _variant('checkpoint float32, native atrous conv', 'checkpoint', native_atrous=True),
    _variant('checkpoint float32, inter_op_threads 1', 'checkpoint', inter=1),
    _variant('checkpoint float32, grappler off', 'checkpoint', grappler=False),
]
ONEDNN_VARIANTS = [
    _variant('checkpoint float32', 'checkpoint'),
    _variant('checkpoint bfloat16', 'checkpoint', 'bfloat16'),
    _variant('checkpoint float32, native atrous conv', 'checkpoint', native_atrous=True),
]
FULL_LARGE_VARIANTS = [v for v in MAIN_VARIANTS if v['dtype'] == 'float32']
REFERENCE = 'checkpoint float32'


def _random_checkpoint(model_config, size, directory):
  """Writes model.ckpt of the inference graph's variables with random weights and batch-norm parameters."""
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  from libs.compat import slim  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    inference_graph.build_inference_graph(inference_graph.build_inference_model(model_config),
                                          [1] + list(size) + [3], size)
    variables = slim.get_model_variables()
    rng = np.random.RandomState(0)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      for v in variables:
        shape = v.shape.as_list()
        if v.op.name.endswith(('moving_variance', 'gamma')):
          v.load(rng.uniform(0.8, 1.2, shape).astype(np.float32), sess)
        elif v.op.name.endswith(('moving_mean', 'beta')):
          v.load(rng.normal(0.0, 0.1, shape).astype(np.float32), sess)
      return tf.train.Saver(variables).save(sess, os.path.join(directory, 'model.ckpt'), write_meta_graph=False)


def _session(variant, model_config, size, checkpoint, exports):
  """(session, input tensor, predictions tensor, graph) of one variant."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  from libs import checkpoint_utils  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  config = common.session_config(variant['intra'], variant['inter'], variant['grappler'])
  if variant['source'] != 'checkpoint':
    return common.load_export(variant['source'], exports[variant['dtype']], config)
  graph = tf.Graph()
  with graph.as_default():
    model_config = type(model_config).FromString(model_config.SerializeToString())
    text_format.Merge('pspnet { feature_extractor { native_atrous_conv: %s } }'
                      % ('true' if variant['native_atrous'] else 'false'), model_config)
    endpoints = inference_graph.build_inference_graph(inference_graph.build_inference_model(model_config),
                                                      [1] + list(size) + [3], size, compute_dtype=variant['dtype'])
    sess = tf.Session(graph=graph, config=config)
    checkpoint_utils.restore_model_variables(sess, checkpoint)
  return sess, endpoints.inputs, endpoints.predictions, graph


def with_conv3x3_algorithm(model_config, algorithm):
  """A copy of a PSPNet model config with pspnet.conv3x3_algorithm set."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  config = type(model_config).FromString(model_config.SerializeToString())
  text_format.Merge('pspnet { conv3x3_algorithm: "%s" }' % algorithm, config)
  return config


def random_checkpoint_and_export(model_config, export_config, size, workdir):
  """(checkpoint, export dir): random weights of model_config (_random_checkpoint), exported by export.py's code
  with export_config (same variables) for batch-1 inputs of size (H, W)."""
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  checkpoint = _random_checkpoint(model_config, size, workdir)
  export_dir = os.path.join(workdir, 'export')
  exporter.export(export_config, export_dir, trained_checkpoint=checkpoint, input_shape=(1,) + tuple(size) + (3,),
                  pad_to_shape=tuple(size), num_timing_runs=0)
  return checkpoint, export_dir


def model_gmacs(model_config, size):
  """Convolution GMACs of the model's batch-1 inference graph at size (H, W) (exporter.count_conv_macs)."""
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  with tf.Graph().as_default() as graph:
    inference_graph.build_inference_graph(inference_graph.build_inference_model(model_config),
                                          (1,) + tuple(size) + (3,), tuple(size))
    return exporter.count_conv_macs(graph)['total'] / 1e9


def random_image(size):
  """The one uint8 [1, H, W, 3] image every inference timing runs on."""
  return np.random.RandomState(0).randint(0, 256, (1,) + tuple(size) + (3,)).astype(np.uint8)


def time_sessions(sessions, image, runs, warmup):
  """Times {name: (session, input, predictions, graph)} interleaved on one image, then closes the sessions.

  Returns:
    (OrderedDict {name: common.summarize() figures}, {name: the predictions of its first run}).
  """
  first = {}

  def run_fn(name):
    sess, inputs, predictions, _ = sessions[name]
    return lambda: first.setdefault(name, sess.run(predictions, {inputs: image}))
  try:
    timings = common.interleaved(collections.OrderedDict((n, run_fn(n)) for n in sessions), runs, warmup)
  finally:
    for sess, _, _, _ in sessions.values():
      sess.close()
  return timings, first


def measure(spec):
  """Worker: spec {quick, size [H, W], variants [...], runs, warmup} -> timings and agreement per variant."""
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  size = tuple(spec['size'])
  model_config = common.load_pipeline_config(spec['quick']).model
  variants = spec['variants']
  workdir = tempfile.mkdtemp(prefix='bench_inference_')
  out = collections.OrderedDict(size='%dx%d' % size, machine=common.machine_info())
  try:
    checkpoint = _random_checkpoint(model_config, size, workdir)
    exports = {}
    for variant in variants:
      key = variant['dtype']
      if variant['source'] != 'checkpoint' and key not in exports:
        exports[key] = os.path.join(workdir, 'export_%s' % key)
        _, export_seconds, _ = common.timed(lambda key=key: exporter.export(
            model_config, exports[key], trained_checkpoint=checkpoint, input_shape=(1,) + size + (3,),
            pad_to_shape=size, num_timing_runs=0, compute_dtype=key))
        out.setdefault('export_seconds', {})[key] = export_seconds
    sessions = collections.OrderedDict()
    for variant in variants:
      sessions[variant['name']] = _session(variant, model_config, size, checkpoint, exports)
    gmacs = model_gmacs(model_config, size)
    out['gmacs'] = gmacs
    timings, first_outputs = time_sessions(sessions, random_image(size), spec['runs'], spec['warmup'])
    reference = first_outputs.get(REFERENCE)
    for variant in variants:
      timing = timings[variant['name']]
      timing['gmacs_per_s'] = gmacs / timing['best_s']
      timing['images_per_s'] = 1.0 / timing['best_s']
      if reference is not None:
        timing['agreement_with_fp32_checkpoint'] = float(np.mean(first_outputs[variant['name']] == reference))
      timing['variant'] = variant
    out['variants'] = timings
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return out


def run(args):
  plan = QUICK if args.quick else FULL
  results = collections.OrderedDict()
  for index, size in enumerate(plan['sizes']):
    variants = MAIN_VARIANTS + LEVER_VARIANTS if index == 0 else (
        MAIN_VARIANTS if args.quick else FULL_LARGE_VARIANTS)
    runs = FULL_LARGE_RUNS if (not args.quick and size[0] * size[1] > 10**6) else plan['runs']
    common.log('inference: %dx%d, %d variants x (%d warm-up + %d timed runs), interleaved'
               % (size[0], size[1], len(variants), plan['warmup'], runs))
    results['%dx%d' % tuple(size)] = common.run_worker(
        'inference_speed', {'quick': args.quick, 'size': size, 'variants': variants, 'runs': runs,
                            'warmup': plan['warmup']})
  if not args.quick and args.onednn:
    size = plan['sizes'][0]
    common.log('inference: %dx%d with oneDNN custom ops (TF_ENABLE_ONEDNN_OPTS=1)' % tuple(size))
    results['%dx%d onednn' % tuple(size)] = common.run_worker(
        'inference_speed', {'quick': args.quick, 'size': size, 'variants': ONEDNN_VARIANTS, 'runs': 2,
                            'warmup': plan['warmup']}, env={'TF_ENABLE_ONEDNN_OPTS': '1'})
  return results


def add_peak_fractions(section, peak):
  """Adds fraction_of_peak (GMAC/s of the best run / fp32 matmul GMAC/s) to every timed variant."""
  for result in section.values():
    if 'error' in result:  # a failed worker's spec lists the variants it was given
      continue
    for timing in result['variants'].values():
      if peak:
        timing['fraction_of_peak'] = timing['gmacs_per_s'] / peak


def table(section):
  rows = []
  for size, result in section.items():
    if 'error' in result:
      rows.append([size, 'failed: %s' % result['error'][-100:].replace('\n', ' ')] + [None] * 7)
      continue
    reference = result['variants'].get(REFERENCE, {}).get('best_s')
    for name, t in result['variants'].items():
      rows.append([size, name, t['best_s'], t['median_s'], t['best_s'] / reference if reference else None,
                   t['gmacs_per_s'], t.get('fraction_of_peak'), t.get('agreement_with_fp32_checkpoint'),
                   t['cpu_share']])
  return common.format_table(['input', 'variant', 'best s', 'median s', 'vs fp32 checkpoint', 'GMAC/s',
                              'of fp32 peak', 'pixels = fp32', 'cpu share'], rows)
