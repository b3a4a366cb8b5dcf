r"""Two (or more) models side by side in one run: the seed's PSPNet50-against-ICNet comparison.

    python -m bench compare --config_path configs/pspnet_1.0_713_resnet_v1.config \
        --config_path configs/icnet_1.0_1025_resnet_v1.config --input_shape 1024,2048 \
        [--eval_dir EVAL_A --eval_dir EVAL_B] [--checkpoint CKPT_A --checkpoint CKPT_B] [--quick] [--out DIR]

For each model (in order; ratios are against the first):
  * parameters of the inference graph, total and per network part (drivers/exporter.compute_figures, the parts
    of the model object), and without the batch-norm gamma/beta;
  * multiply-accumulates of its convolutions at the network shape export.py would build for --input_shape
    (drivers/inference_graph.resolve_network_shape with the model's output stride: 1024x2048 -> 1025x2049), and
    at the anchors' 1025x2049;
  * batch-1 latency of the checkpoint graph, timed interleaved (common.interleaved: one run of each model in
    turn, every model in its own session, all in one fresh worker process), with the trained weights of
    --checkpoint (a checkpoint prefix or a training directory) or random ones;
  * peak memory of a batch-1 run, each model in a fresh worker process of its own (VmHWM of the run and the CPU
    allocator's peak, as bench/common measures them);
  * with --eval_dir: mIoU and per-class IoU of the best evaluated checkpoint there (drivers/eval_results).
Beside them: the original toolkit's published figures (ANCHORS) and how our counts relate to them.

Writes DIR/compare[_quick].json (every figure) and .md (the tables, also printed).
"""
import argparse
import collections
import datetime
import os

from bench import common

QUICK = {'runs': 2, 'warmup': 1}
FULL = {'runs': 3, 'warmup': 1}
ANCHOR_SHAPE = (1025, 2049)
# The original TF1 toolkit's docs/model_zoo.md (Cityscapes val, the whole 1025x2049 image) and the ICNet paper
# (Zhao et al., "ICNet for Real-Time Semantic Segmentation on High-Resolution Images", ECCV 2018, Table 2 / 3).
# Published figures, quoted for comparison; ours are measured by this module.
ANCHORS = [
    collections.OrderedDict(source='original toolkit, docs/model_zoo.md', model='PSPNet50', miou=73.8,
                            parameters=46.53e6, flops=2942.59e9, latency=None),
    collections.OrderedDict(source='original toolkit, docs/model_zoo.md', model='ICNet 1.0', miou=69.8,
                            parameters=26.82e6, flops=246.95e9, latency=None),
    collections.OrderedDict(source='original toolkit, docs/model_zoo.md', model='ICNet 0.5', miou=65.8,
                            parameters=6.71e6, flops=63.20e9, latency=None),
    collections.OrderedDict(source='ICNet paper (Zhao et al., ECCV 2018)', model='ICNet', miou=67.7,
                            parameters=None, flops=None, latency='33 ms at 1024x2048 on a TitanX'),
]
# An anchor describes one of our models when their parameter counts (ours without batch-norm gamma/beta, which
# the anchors leave out) agree this closely.
ANCHOR_MATCH_TOLERANCE = 0.01
NOTE = """How our counts relate to the anchors'. Parameters: ours count every learned variable of the inference
graph, batch-norm gamma and beta included (moving statistics excluded); the anchors' leave gamma/beta out, so
the column "without BN gamma/beta" is the one to hold against them. MACs: ours are the multiply-accumulates of
the convolutions as executed (drivers/exporter.count_conv_macs), at the network shape and at the anchors'
1025x2049. The anchors' "FLOPs" are not defined in their docs; the last table gives, for each of our models an
anchor matches (by parameter count), their FLOPs over our MACs and over TensorFlow's profiler FLOPs (all ops) at
1025x2049, as measured here: a ratio near 2 means their FLOPs are about two per MAC of the same convolutions."""


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m bench compare', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config_path', action='append', required=True,
                      help='a pipeline config; give it once per model (ratios are against the first)')
  parser.add_argument('--eval_dir', action='append', default=[],
                      help='per model (as many as --config_path, "" for none): its eval.py directory')
  parser.add_argument('--checkpoint', action='append', default=[],
                      help='per model (as many as --config_path, "" for none): checkpoint prefix or training '
                      'directory to time with; none: random weights')
  parser.add_argument('--input_shape', default=None,
                      help='HEIGHT,WIDTH of the image (default 1024,2048; 129,257 with --quick)')
  parser.add_argument('--runs', type=int, default=None,
                      help='interleaved timed rounds (default %d; %d with --quick)' % (FULL['runs'], QUICK['runs']))
  parser.add_argument('--quick', action='store_true', help='fewer rounds and a small default size: a smoke run')
  parser.add_argument('--out', default=common.DEFAULT_OUT, help='directory for compare[_quick].json and .md')
  args = parser.parse_args(argv)
  count = len(args.config_path)
  for name in ('eval_dir', 'checkpoint'):
    values = getattr(args, name)
    if values and len(values) != count:
      parser.error('--%s given %d times: give it once per --config_path (%d), "" for a model without one'
                   % (name, len(values), count))
    setattr(args, name, [v or None for v in values] or [None] * count)
  for path in args.config_path:
    if not os.path.isfile(path):
      parser.error('--config_path %r: no such file' % path)
  for path in args.eval_dir:
    if path and not os.path.isdir(path):
      parser.error('--eval_dir %r: no such directory' % path)
  for path in args.checkpoint:
    if path and not (os.path.isdir(path) or os.path.exists(path + '.index')):
      parser.error('--checkpoint %r: neither a training directory nor a checkpoint prefix (%s.index)'
                   % (path, path))
  text = args.input_shape or ('129,257' if args.quick else '1024,2048')
  try:
    args.input_shape = [int(v) for v in text.split(',')]
  except ValueError:
    args.input_shape = None
  if not args.input_shape or len(args.input_shape) != 2 or min(args.input_shape) <= 0:
    parser.error('--input_shape %r: expected HEIGHT,WIDTH (positive integers, e.g. 1024,2048)' % text)
  plan = QUICK if args.quick else FULL
  args.warmup = plan['warmup']
  args.runs = plan['runs'] if args.runs is None else args.runs
  if args.runs < 1:
    parser.error('--runs %d: at least 1' % args.runs)
  return args


# ----------------------------------------------------------------------------------------------------------------
# Workers (fresh processes, bench/worker.py).


def _model_config(path):
  from libs import config_util  # pylint: disable=import-outside-toplevel
  return config_util.load_pipeline_config(path).model


def _network_shape(model_config, input_shape):
  """What export.py builds for an image of input_shape without --pad_to_shape."""
  from builders import model_builder  # pylint: disable=import-outside-toplevel
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  return inference_graph.resolve_network_shape(tuple(input_shape), None, model_builder.output_stride(model_config))


def _session(model_config, input_shape, checkpoint):
  """(session, feed tensor, predictions tensor) of the batch-1 checkpoint graph in a graph of its own."""
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  from libs import checkpoint_utils  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(0)
    endpoints = inference_graph.build_inference_graph(
        inference_graph.build_inference_model(model_config), [1] + list(input_shape) + [3],
        _network_shape(model_config, input_shape))
    sess = tf.Session(graph=graph, config=common.session_config())
    sess.run(tf.global_variables_initializer())
    if checkpoint:
      checkpoint_utils.restore_model_variables(
          sess, checkpoint_utils.resolve_checkpoint(checkpoint, '--checkpoint'), '--checkpoint')
  return sess, endpoints.inputs, endpoints.predictions


def _image(input_shape):
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.random.RandomState(0).randint(0, 256, [1] + list(input_shape) + [3]).astype(np.uint8)


def _figures(spec):
  """Parameters, MACs (network shape and 1025x2049), memory of one run, and the eval dir's best results."""
  from drivers import eval_results  # pylint: disable=import-outside-toplevel
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  from libs.compat import slim  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  model_config = _model_config(spec['config_path'])
  input_shape = tuple(spec['input_shape'])
  network_shape = _network_shape(model_config, input_shape)
  model = inference_graph.build_inference_model(model_config)
  out = collections.OrderedDict(architecture=type(model).__name__, input_shape=list(input_shape),
                                network_shape=list(network_shape), weights='checkpoint' if spec['checkpoint']
                                else 'random', checkpoint=spec['checkpoint'])
  figures = exporter.compute_figures(model_config, input_shape, network_shape)
  out['parameters'] = figures['parameters']
  out['macs'] = figures['macs']
  out['gmacs'] = figures['gmacs']
  out['profiler_total_gflops'] = figures['profiler']['total_flops'] / 1e9
  out['profiler_conv_flops_equal_2x_macs'] = figures['profiler']['conv_flops_equal_2x_macs']
  with tf.Graph().as_default():
    inference_graph.build_inference_graph(inference_graph.build_inference_model(model_config),
                                          [1] + list(input_shape) + [3], network_shape)
    out['batch_norm_gamma_beta'] = sum(int(v.shape.num_elements()) for v in slim.get_model_variables()
                                       if v.op.name.endswith(('/gamma', '/beta')))
  out['parameters_without_batch_norm_gamma_beta'] = out['parameters']['total'] - out['batch_norm_gamma_beta']
  if tuple(network_shape) == ANCHOR_SHAPE:
    out['anchor_shape'] = collections.OrderedDict(gmacs=out['gmacs'],
                                                  profiler_total_gflops=out['profiler_total_gflops'])
  else:
    at_anchor = exporter.compute_figures(model_config, ANCHOR_SHAPE, ANCHOR_SHAPE)
    out['anchor_shape'] = collections.OrderedDict(gmacs=at_anchor['gmacs'],
                                                  profiler_total_gflops=at_anchor['profiler']['total_flops'] / 1e9)
  out['anchor_shape']['size'] = '%dx%d' % ANCHOR_SHAPE

  # Memory of one batch-1 run after a warm-up run, in this fresh process.
  sess, inputs, predictions = _session(model_config, input_shape, spec['checkpoint'])
  image = _image(input_shape)
  sess.run(predictions, {inputs: image})
  process_peak = common.memory_usage().get('VmHWM')
  common.reset_peak_memory()
  sess.run(predictions, {inputs: image})
  usage = common.memory_usage()
  sess.close()
  out['memory'] = collections.OrderedDict(
      allocator=('GPU0' if 'GPU0_Peak' in usage else 'CPU_BFC'),
      allocator_peak_bytes=usage.get('GPU0_Peak', usage.get('CPU_BFC_Peak')),
      vmhwm_run_bytes=usage.get('VmHWM'),
      vmhwm_process_bytes=max(process_peak or 0, usage.get('VmHWM') or 0))

  if spec.get('eval_dir'):
    best = eval_results.best_results(spec['eval_dir'])
    out['eval'] = None if best is None else collections.OrderedDict(
        eval_dir=spec['eval_dir'], global_step=best.get('global_step'), checkpoint=best.get('checkpoint'),
        mIoU=best['mIoU'], class_iou=best.get('class_iou'), num_images=best.get('num_images'),
        eval_input=best.get('eval_input'))
  return out


def _latency(spec):
  """Every model in its own session, timed interleaved on the same random image."""
  fns = collections.OrderedDict()
  sessions = []
  image = _image(spec['input_shape'])
  for model in spec['models']:
    sess, inputs, predictions = _session(_model_config(model['config_path']), spec['input_shape'],
                                         model['checkpoint'])
    sessions.append(sess)
    fns[model['label']] = (lambda sess=sess, inputs=inputs, predictions=predictions:
                           sess.run(predictions, {inputs: image}))
  timings = common.interleaved(fns, spec['runs'], spec['warmup'])
  for sess in sessions:
    sess.close()
  for timing in timings.values():
    timing['images_per_s'] = 1.0 / timing['best_s']
  return collections.OrderedDict(machine=common.machine_info(), runs=spec['runs'], warmup=spec['warmup'],
                                 timings=timings)


def measure(spec):
  """Worker: spec {'action': 'figures' | 'latency', ...}."""
  return _figures(spec) if spec['action'] == 'figures' else _latency(spec)


# ----------------------------------------------------------------------------------------------------------------
# The comparison.


def labels(config_paths):
  """A name per model: its config file's name without .config (numbered when two are the same)."""
  names = [os.path.splitext(os.path.basename(p))[0] for p in config_paths]
  return [name if names.count(name) == 1 else '%s (%d)' % (name, i + 1) for i, name in enumerate(names)]


def matching_anchor(parameters_without_gamma_beta):
  """The ANCHORS entry whose parameter count is ours (within ANCHOR_MATCH_TOLERANCE), or None."""
  for anchor in ANCHORS:
    if anchor['parameters'] and abs(parameters_without_gamma_beta / anchor['parameters'] - 1) <= \
        ANCHOR_MATCH_TOLERANCE:
      return anchor
  return None


def run(args):
  """Measures every model; returns the results dict (written by main)."""
  names = labels(args.config_path)
  paths = [os.path.abspath(p) for p in args.config_path]
  checkpoints = [os.path.abspath(c) if c else None for c in args.checkpoint]
  eval_dirs = [os.path.abspath(e) if e else None for e in args.eval_dir]
  results = collections.OrderedDict(
      date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'), quick=args.quick, input_shape=args.input_shape,
      runs=args.runs, warmup=args.warmup, machine=common.machine_info(), models=collections.OrderedDict())
  for name, path, checkpoint, eval_dir in zip(names, paths, checkpoints, eval_dirs):
    common.log('compare: %s: parameters, MACs, memory of a %dx%d run (fresh process)'
               % (name, args.input_shape[0], args.input_shape[1]))
    entry = common.run_worker('compare', {'action': 'figures', 'config_path': path, 'checkpoint': checkpoint,
                                          'eval_dir': eval_dir, 'input_shape': args.input_shape})
    results['models'][name] = collections.OrderedDict([('config_path', os.path.relpath(path, common.REPO_ROOT))]
                                                       + list(entry.items()))
    if entry.get('eval'):
      entry['eval']['eval_dir'] = args.eval_dir[names.index(name)]  # as given
  common.log('compare: latency of %s, %d warm-up + %d interleaved rounds (one process, a session each)'
             % (', '.join(names), args.warmup, args.runs))
  latency = common.run_worker('compare', {
      'action': 'latency', 'input_shape': args.input_shape, 'runs': args.runs, 'warmup': args.warmup,
      'models': [{'label': n, 'config_path': p, 'checkpoint': c} for n, p, c in zip(names, paths, checkpoints)]})
  if 'error' in latency:
    results['latency_error'] = latency['error']
  else:
    results['latency_cpu_share'] = {n: t['cpu_share'] for n, t in latency['timings'].items()}
    first = latency['timings'][names[0]]
    for name, timing in latency['timings'].items():
      timing['best_vs_first'] = timing['best_s'] / first['best_s']
      timing['median_vs_first'] = timing['median_s'] / first['median_s']
      results['models'][name]['latency'] = timing
  for entry in results['models'].values():
    if 'error' in entry:
      continue
    anchor = matching_anchor(entry['parameters_without_batch_norm_gamma_beta'])
    entry['anchor'] = None if anchor is None else collections.OrderedDict(
        model=anchor['model'], parameters=anchor['parameters'], flops=anchor['flops'],
        parameters_ours_without_gamma_beta_over_theirs=(
            entry['parameters_without_batch_norm_gamma_beta'] / anchor['parameters']),
        flops_theirs_over_our_macs=anchor['flops'] / (entry['anchor_shape']['gmacs'] * 1e9),
        flops_theirs_over_our_profiler_flops=anchor['flops'] / (entry['anchor_shape']['profiler_total_gflops'] * 1e9))
  results['anchors'] = ANCHORS
  results['note'] = ' '.join(NOTE.split())
  return results


def _gb(value):
  return value / 1e9 if value else None


def tables(results):
  """The Markdown text of a run."""
  models = results['models']
  names = list(models)
  first = names[0]
  ok = [n for n in names if 'error' not in models[n]]
  machine = results['machine']
  shares = results.get('latency_cpu_share') or {}
  header = ('%s, %s: %s, %d cores, %s GiB; input %dx%d, batch 1; latency: %d warm-up + %d interleaved rounds, '
            'cpu share %s' % (
                results['date'], 'quick' if results['quick'] else 'full', machine.get('cpu'), machine['cores'],
                machine.get('memory_gib'), results['input_shape'][0], results['input_shape'][1],
                results['warmup'], results['runs'],
                ', '.join('%.2f' % s for s in shares.values()) or '-'))
  rows = []
  for name in names:
    entry = models[name]
    if 'error' in entry:
      rows.append([name, 'failed: %s' % entry['error'][-120:].replace('\n', ' ')] + [None] * 12)
      continue
    timing = entry.get('latency') or {}
    evaluation = entry.get('eval')
    rows.append([
        name, entry['architecture'].replace('Architecture', ''), entry['weights'],
        entry['parameters']['total'], entry['parameters_without_batch_norm_gamma_beta'],
        '%dx%d' % tuple(entry['network_shape']), entry['gmacs'], timing.get('best_s'), timing.get('median_s'),
        timing.get('images_per_s'), timing.get('best_vs_first'), _gb(entry['memory']['vmhwm_run_bytes']),
        (entry['memory']['allocator_peak_bytes'] or 0) / 2.0**30 or None,
        ('%.2f %% (step %s)' % (100 * evaluation['mIoU'], evaluation['global_step'])) if evaluation else None])
  text = [header, '## Models\n\n' + common.format_table(
      ['model', 'architecture', 'weights', 'parameters', 'without BN gamma/beta', 'network', 'GMACs', 'best s',
       'median s', 'images/s', 'best vs %s' % first, 'VmHWM of a run (GB)', 'allocator peak (GiB)',
       'mIoU (best checkpoint)'], rows)]
  if results.get('latency_error'):
    text.append('Latency failed: %s' % results['latency_error'][-300:])

  part_rows = []
  for name in ok:
    entry = models[name]
    for part, count in entry['parameters'].items():
      if part != 'total':
        part_rows.append([name, part, count, entry['macs'].get(part, 0) / 1e9])
  text.append('## Parameters and MACs per part (at the network shape)\n\n' + common.format_table(
      ['model', 'part', 'parameters', 'GMACs'], part_rows))

  evaluated = [n for n in ok if models[n].get('eval')]
  if evaluated:
    classes = list(models[evaluated[0]]['eval']['class_iou'] or {})
    class_rows = [[c] + [_percent((models[n]['eval']['class_iou'] or {}).get(c)) for n in evaluated]
                  for c in classes]
    class_rows.append(['**mIoU**'] + [_percent(models[n]['eval']['mIoU']) for n in evaluated])
    text.append('## Per-class IoU (%%) of the best evaluated checkpoint\n\n%s\n\n%s' % (
        '; '.join('%s: %s, step %s' % (n, models[n]['eval']['eval_dir'], models[n]['eval']['global_step'])
                  for n in evaluated),
        common.format_table(['class'] + evaluated, class_rows)))

  anchor_rows = [[a['model'], a['source'], '%.1f %%' % a['miou'],
                  '%.2f M' % (a['parameters'] / 1e6) if a['parameters'] else None,
                  '%.2f B' % (a['flops'] / 1e9) if a['flops'] else None, a['latency']] for a in results['anchors']]
  text.append('## Anchors (published: Cityscapes val, whole 1025x2049 image)\n\n' + common.format_table(
      ['model', 'source', 'mIoU', 'parameters', 'FLOPs', 'latency'], anchor_rows))
  ratio_rows = []
  for name in ok:
    entry = models[name]
    anchor = entry.get('anchor')
    ratio_rows.append([name, anchor['model'] if anchor else 'none (no anchor within 1 % of its parameters)',
                       entry['parameters_without_batch_norm_gamma_beta'], entry['anchor_shape']['gmacs'],
                       entry['anchor_shape']['profiler_total_gflops'],
                       anchor and anchor['parameters_ours_without_gamma_beta_over_theirs'],
                       anchor and anchor['flops_theirs_over_our_macs'],
                       anchor and anchor['flops_theirs_over_our_profiler_flops']])
  readings = []
  for name in ok:
    entry, anchor = models[name], models[name].get('anchor')
    if anchor:
      readings.append('%s against %s: %s parameters with BN gamma/beta, %s without (theirs %.2f M); their '
                      '%.2f B FLOPs are %.3f x our %.2f GMACs at 1025x2049.' % (
                          name, anchor['model'], '{:,}'.format(entry['parameters']['total']),
                          '{:,}'.format(entry['parameters_without_batch_norm_gamma_beta']),
                          anchor['parameters'] / 1e6, anchor['flops'] / 1e9,
                          anchor['flops_theirs_over_our_macs'], entry['anchor_shape']['gmacs']))
  text.append('## Ours against the anchors (at 1025x2049)\n\n%s\n\n%s' % (common.format_table(
      ['model', 'anchor', 'parameters without BN gamma/beta', 'GMACs', 'profiler GFLOPs (all ops)',
       'parameters ours / theirs', 'their FLOPs / our MACs', 'their FLOPs / our profiler FLOPs'], ratio_rows),
      NOTE))
  if readings:
    text.append('\n'.join(readings))
  return '\n\n'.join(text)


def _percent(value):
  return None if value is None else '%.1f' % (100 * value)


def main(argv):
  args = parse_args(argv)
  started = datetime.datetime.now()
  results = run(args)
  results['seconds'] = (datetime.datetime.now() - started).total_seconds()
  command = 'python -m bench compare ' + ' '.join(
      ['--config_path %s' % os.path.relpath(os.path.abspath(p), common.REPO_ROOT) for p in args.config_path]
      + ['--input_shape %d,%d' % tuple(args.input_shape)] + (['--quick'] if args.quick else []))
  text = '# %s\n\n%s' % (command, tables(results))
  print(text)
  suffix = '_quick' if args.quick else ''
  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, 'compare%s.json' % suffix)
  common.write_json(json_path, results)
  with open(os.path.join(args.out, 'compare%s.md' % suffix), 'w') as f:
    f.write(text + '\n')
  print('Results: %s (%.0f s)' % (json_path, results['seconds']))
  failed = [n for n, e in results['models'].items() if 'error' in e] + (
      ['latency'] if results.get('latency_error') else [])
  return 1 if failed else 0
