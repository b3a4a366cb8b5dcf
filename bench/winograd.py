r"""Winograd F(2x2, 3x3) against the direct convolution (issue 13): interleaved timings of the formulations tried.

    PYTHONPATH=. .venv/bin/python -m bench.winograd            # ~10 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python -m bench.winograd --quick    # small shapes, a smoke run

Cases (batch 1 unless said; the model's own shapes at the input sizes named):
  * fusion 713x713: PSPModule/Conv_4, 3x3 SAME 4096 -> 512 over a 90x90 map (153 of PSPNet50's 348 GMACs). Its
    input is the concat of block4's 2048 channels and four upsampled 512-channel pyramid levels: the "from
    parts" rows start from the five parts (the direct one concatenates them first, as the model does);
  * backbone block4 713x713: a block4 unit's conv2 (3x3, 512 -> 512, rate 4) as tf-slim runs it, a VALID 3x3
    conv of the [16, 25, 25, 512] SpaceToBatchND phases;
  * fusion 1024x2048: the fusion conv over a 128x256 map (the full Cityscapes frame), library formulation only.

Formulations of the transformed input V [16, tiles, C] (products and output transform: libs/winograd.py):
  * naive: 16 strided slices d_rs = x[r::2, s::2] of the padded input, B^T d B as sums of them, stacked;
  * pairs: the padded input reshaped [H_p / 2, 2, W_p, C] (even and odd rows), the row transform as sums of the
    contiguous slices rows[:-1, 0], rows[1:, 0], rows[:-1, 1], rows[1:, 1], the same over columns, stacked;
  * gather (the library's): one Gather of the 16 pixels of every window, then a [16, 16] x [16, tiles * C] matmul.
and of the 16 products: one batched tf.matmul [16, tiles, C] x [16, C, K] (the library's), 16 MatMuls,
tf.einsum, or a 1x1 conv2d per component.

Whole model (after the cases): PSPNet50's inference graph (713x713; --model_size) with `pspnet.conv3x3_algorithm`
"direct", "winograd" with the fusion conv only (the backbone's WINOGRAD_BLOCKS emptied while it is built) and
"winograd" (fusion conv + backbone block3/block4; checkpoint graphs), and the frozen graph exported with
"winograd", interleaved, with the share of predicted pixels equal to the direct graph's; each model process times
the backbone's bottleneck 3x3 convs first (BACKBONE_CASES). One process per section, alternating sections
--model_processes times (TF_ENABLE_ONEDNN_OPTS is read at TensorFlow's import). --no_model skips it, --only_model
runs only it.

Every timing includes the filter transform (in the graph, as the library builds it). The sections run in
worker processes: TensorFlow's defaults (oneDNN custom ops on when the CPU has AVX-512 VNNI/BF16, as TensorFlow
decides) and oneDNN off (TF_ENABLE_ONEDNN_OPTS=0, Eigen's kernels). `max rel err` = max |y - y_direct| /
max |y_direct| in float32; `GMAC/s` = the direct convolution's MACs / best time. Writes
bench/results/winograd.{json,md} (winograd_model.{json,md} with --only_model; or --out).

Training (--train, only that): drivers/trainer's training graph (bench/train_speed.py's workers, in-memory
input, the default options: low-memory conv gradients, recompute_backbone_blocks 3) with conv3x3_algorithm
"direct" and "winograd" (libs/winograd.py's gradient), interleaved in one process at 385x385 batch 2 and 713x713
batch 1, then each alone in a fresh process for its peak memory (VmHWM, the BFC allocator's peak); with
--train_onednn_off also the speed under TF_ENABLE_ONEDNN_OPTS=0. Writes bench/results/winograd_train.{json,md}.
"""
import argparse
import collections
import datetime
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

from bench import common  # pylint: disable=wrong-import-position

FUSION_PARTS = [2048, 512, 512, 512, 512]
GATE = 0.85  # the issue's gate: keep Winograd only at <= 0.85x the direct conv's time

# name, input shape, output channels, padding, channel parts (None: one input), variants.
FULL_CASES = [
    ('fusion 713x713', [1, 90, 90, 4096], 512, 'SAME', FUSION_PARTS,
     ['direct', 'direct from parts', 'naive', 'pairs', 'gather', 'gather, 16 MatMuls', 'gather, einsum',
      'gather, 1x1 conv2d', 'gather from parts', 'gather, 9-row chunks']),
    ('backbone block4 713x713', [16, 25, 25, 512], 512, 'VALID', None, ['direct', 'gather']),
    ('fusion 1024x2048', [1, 128, 256, 4096], 512, 'SAME', FUSION_PARTS,
     ['direct from parts', 'gather from parts']),
]
# The backbone's stride-1 bottleneck 3x3 convs at 713x713 (batch 1), as the model runs them: block1 and block2 at
# rate 1 (SAME), block3 (rate 2) and block4 (rate 4) as the VALID conv of their SpaceToBatchND phases. They decide
# which layers pspnet.conv3x3_algorithm "winograd" converts (dilated_resnet_v1.WINOGRAD_MIN_CHANNELS).
BACKBONE_CASES = [
    ('block1 conv2 713x713', [1, 179, 179, 64], 64, 'SAME', None, ['direct', 'gather']),
    ('block2 conv2 713x713', [1, 90, 90, 128], 128, 'SAME', None, ['direct', 'gather']),
    ('block3 conv2 713x713', [4, 47, 47, 256], 256, 'VALID', None, ['direct', 'gather']),
    ('block4 conv2 713x713', [16, 25, 25, 512], 512, 'VALID', None, ['direct', 'gather']),
]
QUICK_CASES = [
    ('fusion (quick)', [1, 18, 18, 256], 32, 'SAME', [128, 32, 32, 32, 32],
     ['direct', 'direct from parts', 'naive', 'pairs', 'gather', 'gather, 16 MatMuls', 'gather, einsum',
      'gather, 1x1 conv2d', 'gather from parts', 'gather, 9-row chunks']),
    ('backbone (quick)', [4, 9, 9, 32], 32, 'VALID', None, ['direct', 'gather']),
]
SECTIONS = (('TensorFlow defaults', {}), ('oneDNN off', {'TF_ENABLE_ONEDNN_OPTS': '0'}))
REFERENCE = ('direct', 'direct from parts')


# ----------------------------------------------------------------------------------------------------------------
# The formulations that are not the library's (its filter and output transforms are reused).


def _naive_transform(padded, geometry):
  """V [16, tiles, C] from 16 strided slices of the padded input."""
  bt = [[int(v) for v in row] for row in _winograd().B_T]
  rows, cols = geometry.tile_rows, geometry.tile_cols
  d = [[padded[:, r:r + 2 * rows:2, s:s + 2 * cols:2] for s in range(4)] for r in range(4)]
  def combine(terms):
    return tf_().add_n([t if sign > 0 else -t for sign, t in terms])
  row_sums = [[combine([(bt[k][r], d[r][s]) for r in range(4) if bt[k][r]]) for s in range(4)]
              for k in range(4)]
  outs = [combine([(bt[l][s], row_sums[k][s]) for s in range(4) if bt[l][s]]) for k in range(4) for l in range(4)]
  return tf_().reshape(tf_().stack(outs), [16, -1, padded.shape.as_list()[-1]])


def _pair_rows(t, axis):
  """B^T along `axis` (1: rows, 2: columns) of t, whose size there is even: 4 tensors of half that size - 1."""
  tf = tf_()
  shape = t.shape.as_list()
  split = shape[:axis] + [shape[axis] // 2, 2] + shape[axis + 1:]
  pairs = tf.reshape(t, split)
  def pick(first, parity):
    begin = [0] * len(split)
    size = [-1] * len(split)
    begin[axis], size[axis] = first, split[axis] - 1
    begin[axis + 1], size[axis + 1] = parity, 1
    return tf.squeeze(tf.slice(pairs, begin, size), [axis + 1])
  e0, e1, o0, o1 = pick(0, 0), pick(1, 0), pick(0, 1), pick(1, 1)
  # B^T rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3 with d0, d1 = pair i and d2, d3 = pair i + 1.
  return [e0 - e1, o0 + e1, e1 - o0, o0 - o1]


def _pairs_transform(padded, geometry):
  del geometry
  outs = [v for r in _pair_rows(padded, 1) for v in _pair_rows(r, 2)]
  return tf_().reshape(tf_().stack(outs), [16, -1, padded.shape.as_list()[-1]])


def _products(v, u, how):
  tf = tf_()
  if how == 'batched':
    return tf.matmul(v, u)
  if how == 'matmuls':
    return tf.stack([tf.matmul(v[i], u[i]) for i in range(16)])
  if how == 'einsum':
    return tf.einsum('ktc,kco->kto', v, u)
  # 1x1 conv2d per component: [1, 1, tiles, C] * [1, 1, C, K].
  return tf.stack([tf.nn.conv2d(v[i][None, None], u[i][None, None], 1, 'VALID')[0, 0] for i in range(16)])


def _winograd_variant(x, w, padding, transform, products):
  """One-chunk Winograd conv with the given input transform and product formulation."""
  wg = _winograd()
  geometry = wg.Geometry(x.shape.as_list(), padding)
  padded = tf_().pad(x, geometry.pads)
  if transform == 'gather':
    v = wg.input_transform(padded, geometry, 0, geometry.tile_rows)
  else:
    v = {'naive': _naive_transform, 'pairs': _pairs_transform}[transform](padded, geometry)
  y = wg.output_transform(_products(v, wg.filter_transform(w), products), geometry, geometry.tile_rows)
  return y[:, :geometry.out_height, :geometry.out_width]


def _variant_output(name, x, parts, w, padding):
  tf = tf_()
  wg = _winograd()
  if name == 'direct':
    return tf.nn.conv2d(x, w, 1, padding)
  if name == 'direct from parts':
    return tf.nn.conv2d(tf.concat(parts, axis=3), w, 1, padding)
  if name == 'gather from parts':
    return wg.conv2d_winograd(parts, w, padding)
  if name == 'gather, 9-row chunks':
    geometry = wg.Geometry(x.shape.as_list(), padding)
    per_row = 16 * geometry.batch * geometry.tile_cols * x.shape.as_list()[-1] * 4
    return wg.conv2d_winograd(x, w, padding, max_transform_bytes=9 * per_row)
  transform, _, products = name.partition(', ')
  how = {'': 'batched', '16 MatMuls': 'matmuls', 'einsum': 'einsum', '1x1 conv2d': 'conv1x1'}[products]
  return _winograd_variant(x, w, padding, transform, how)


def tf_():
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  return tf


def _winograd():
  from libs import winograd  # pylint: disable=import-outside-toplevel
  return winograd


# ----------------------------------------------------------------------------------------------------------------
# Worker.


def _case(case, runs, warmup):
  """Times one case's variants interleaved; their errors against the direct conv."""
  tf = tf_()
  name, shape, c_out, padding, channel_parts, variants = case
  rng = np.random.RandomState(0)
  graph = tf.Graph()
  with graph.as_default():
    x_value = rng.standard_normal(shape).astype(np.float32)
    w_value = (rng.standard_normal([3, 3, shape[3], c_out]) / np.sqrt(9 * shape[3])).astype(np.float32)
    needs_x = any(not v.endswith('from parts') for v in variants)
    needs_parts = any(v.endswith('from parts') for v in variants)
    x = tf.Variable(x_value) if needs_x else None
    parts = [tf.Variable(p) for p in np.split(x_value, np.cumsum(channel_parts)[:-1], axis=3)] if (
        needs_parts) else None
    del x_value
    w = tf.Variable(w_value)
    outputs = collections.OrderedDict((v, _variant_output(v, x, parts, w, padding)) for v in variants)
    sess = tf.Session(graph=graph, config=common.session_config())
    sess.run(tf.global_variables_initializer())
  reference = [v for v in variants if v in REFERENCE][0]
  ref = sess.run(outputs[reference])
  scale = float(np.abs(ref).max())
  errors = {}
  for v in variants:
    errors[v] = float(np.abs(sess.run(outputs[v]) - ref).max()) / scale
  del ref
  with graph.as_default():
    fetches = {v: tf.reduce_sum(t) for v, t in outputs.items()}
  fns = collections.OrderedDict((v, (lambda t: lambda: sess.run(t))(fetches[v])) for v in variants)
  timings = common.interleaved(fns, runs, warmup)
  sess.close()
  gmacs = float(np.prod(shape[:3]) * 9 * shape[3] * c_out) / 1e9
  if padding == 'VALID':
    gmacs *= (shape[1] - 2) * (shape[2] - 2) / float(shape[1] * shape[2])
  direct = timings[reference]['best_s']
  out = collections.OrderedDict(case=name, input_shape=shape, c_out=c_out, padding=padding, direct_gmacs=gmacs,
                                reference=reference, variants=collections.OrderedDict())
  for v in variants:
    t = timings[v]
    t['vs_direct'] = t['best_s'] / direct
    t['max_rel_error'] = errors[v]
    t['gmacs_per_s'] = gmacs / t['best_s']
    out['variants'][v] = t
  return out


def _measure_model(spec):
  """Worker: the whole PSPNet50 inference graph (batch 1, spec['size']), direct against Winograd.

  One random-weights checkpoint (bench/inference_speed.py's), then the checkpoint graph of each algorithm and
  the frozen graph exported with 'winograd', timed interleaved on one random image; the share of pixels whose
  predicted class equals the direct checkpoint graph's.
  """
  import shutil  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  from bench import inference_speed  # pylint: disable=import-outside-toplevel
  from architectures import dilated_resnet_v1  # pylint: disable=import-outside-toplevel
  size = tuple(spec['size'])
  base = common.load_pipeline_config(spec['quick']).model
  configs = {}
  for algorithm in ('direct', 'winograd'):
    configs[algorithm] = inference_speed.with_conv3x3_algorithm(base, algorithm)
  configs['winograd fusion only'] = configs['winograd']
  out = collections.OrderedDict(size='%dx%d' % size, machine=common.machine_info(), layers=[])
  for case in spec.get('layer_cases', []):
    common.log('winograd: %s' % case[0])
    out['layers'].append(_case(case, spec['layer_runs'], spec['warmup']))
  workdir = tempfile.mkdtemp(prefix='bench_winograd_')
  try:
    checkpoint, export_dir = inference_speed.random_checkpoint_and_export(base, configs['winograd'], size, workdir)
    sessions = collections.OrderedDict()
    for name, algorithm, source in (('checkpoint direct', 'direct', 'checkpoint'),
                                    ('checkpoint winograd fusion only', 'winograd fusion only', 'checkpoint'),
                                    ('checkpoint winograd', 'winograd', 'checkpoint'),
                                    ('frozen winograd', 'winograd', 'frozen')):
      variant = inference_speed._variant(name, source)  # pylint: disable=protected-access
      blocks = dilated_resnet_v1.WINOGRAD_BLOCKS
      # The PSP fusion conv alone: no backbone block converted while this graph is built.
      dilated_resnet_v1.WINOGRAD_BLOCKS = () if algorithm == 'winograd fusion only' else blocks
      try:
        sessions[name] = inference_speed._session(  # pylint: disable=protected-access
            variant, configs[algorithm], size, checkpoint, {'float32': export_dir})
      finally:
        dilated_resnet_v1.WINOGRAD_BLOCKS = blocks
    frozen_graph = sessions['frozen winograd'][3]
    fusion_scope = 'PSPModule/Conv_%d/' % (len(base.pspnet.pooling_factors) or 4)
    out['frozen_winograd_ops'] = collections.OrderedDict(
        (kind, sum(1 for op in frozen_graph.get_operations() if op.type == kind
                   and op.name.startswith(fusion_scope))) for kind in ('Conv2D', 'GatherV2', 'BatchMatMulV2'))
    # 3x3 convs of the backbone's bottlenecks by Winograd in each checkpoint graph (conv2 scopes with a Gather).
    out['backbone_winograd_convs'] = collections.OrderedDict(
        (name, len({op.name.split('/conv2/')[0] for op in sessions[name][3].get_operations()
                    if op.type == 'GatherV2' and '/bottleneck_v1/conv2/' in op.name}))
        for name in sessions if name.startswith('checkpoint'))
    gmacs = inference_speed.model_gmacs(base, size)
    out['gmacs'] = gmacs
    timings, first = inference_speed.time_sessions(sessions, inference_speed.random_image(size), spec['runs'],
                                                   spec['warmup'])
    direct = timings['checkpoint direct']['best_s']
    for name, timing in timings.items():
      timing['vs_direct'] = timing['best_s'] / direct
      timing['gmacs_per_s'] = gmacs / timing['best_s']
      timing['agreement_with_direct'] = float(np.mean(first[name] == first['checkpoint direct']))
    out['variants'] = timings
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return out


def measure(spec):
  """Worker: spec {cases: [...], runs: [per case], warmup} -> machine and one result per case; with
  spec['model'], the whole-model comparison (_measure_model) instead."""
  if spec.get('model'):
    return _measure_model(spec)
  out = collections.OrderedDict(machine=common.machine_info(), cases=[])
  for case, runs in zip(spec['cases'], spec['runs']):
    common.log('winograd: %s, %d variants x %d runs' % (case[0], len(case[5]), runs))
    out['cases'].append(_case(case, runs, spec['warmup']))
  return out


# ----------------------------------------------------------------------------------------------------------------
# Report.


def _markdown(results, command, started):
  lines = ['# Winograd F(2x2, 3x3) against the direct 3x3 convolution (issue 13)', '',
           '`%s`, %s.' % (command, started), '']
  for section, result in results['sections'].items():
    lines.append('## %s' % section)
    lines.append('')
    if 'error' in result:
      lines += ['failed: %s' % result['error'], '']
      continue
    m = result['machine']
    lines.append('%s, %d cores, %s MHz, SIMD %s, oneDNN opts: %s.' % (
        m.get('cpu'), m['cores'], m.get('mhz'), ' '.join(m.get('simd', [])), m.get('onednn_opts')))
    lines.append('')
    for case in result['cases']:
      lines.append('### %s: input %s, 3x3 %s, -> %d channels (%.1f GMACs direct)' % (
          case['case'], 'x'.join(map(str, case['input_shape'])), case['padding'], case['c_out'],
          case['direct_gmacs']))
      lines.append('')
      rows = [[v, t['best_s'], t['median_s'], t['runs'], t['vs_direct'], t['max_rel_error'], t['gmacs_per_s'],
               t['cpu_share']] for v, t in case['variants'].items()]
      lines.append(common.format_table(['formulation', 'best s', 'median s', 'runs', 'vs direct', 'max rel err',
                                        'GMAC/s (direct MACs)', 'cpu share'], rows))
      lines.append('')
  for index, model in enumerate(results.get('models', [])):
    lines.append('## Whole model, process %d (%s): PSPNet50 inference, batch 1, %s' % (
        index + 1, model.get('section'), model.get('size')))
    lines.append('')
    if 'error' in model:
      lines += ['failed: %s' % model['error'], '']
      continue
    m = model['machine']
    lines.append('oneDNN opts: %s. The backbone\'s bottleneck 3x3 convs first (batch 1 at 713x713; dilated ones as '
                 'the VALID conv of their SpaceToBatchND phases), Winograd = the library\'s gather formulation:'
                 % m.get('onednn_opts'))
    lines.append('')
    rows = [[c['case'], 'x'.join(map(str, c['input_shape'])), c['padding'], c['variants']['direct']['best_s'],
             c['variants']['direct']['median_s'], c['variants']['gather']['best_s'],
             c['variants']['gather']['median_s'], c['variants']['gather']['vs_direct'],
             c['variants']['gather']['max_rel_error'], c['variants']['gather']['cpu_share']]
            for c in model['layers']]
    if rows:
      lines.append(common.format_table(['layer', 'input', 'padding', 'direct best s', 'direct median s',
                                        'winograd best s', 'winograd median s', 'vs direct', 'max rel err',
                                        'cpu share'], rows))
      lines.append('')
    lines.append('%.1f GMACs (direct); random weights; `winograd fusion only`: the PSP fusion conv alone; '
                 '`winograd`: fusion conv + backbone (bottleneck convs by Winograd: %s); the frozen graph exported '
                 'with `conv3x3_algorithm: "winograd"` (its fusion conv scope\'s ops: %s).' % (
                     model['gmacs'], ', '.join('%s %d' % kv for kv in model['backbone_winograd_convs'].items()),
                     ', '.join('%s %d' % kv for kv in model['frozen_winograd_ops'].items())))
    lines.append('')
    rows = [[v, t['best_s'], t['median_s'], t['runs'], t['vs_direct'], t['median_s'] / direct_median,
             t['gmacs_per_s'], t['agreement_with_direct'], t['cpu_share']]
            for direct_median in [model['variants']['checkpoint direct']['median_s']]
            for v, t in model['variants'].items()]
    lines.append(common.format_table(['graph', 'best s', 'median s', 'runs', 'vs direct (best)',
                                      'vs direct (median)', 'GMAC/s', 'pixels = direct', 'cpu share'], rows))
    lines.append('')
  lines.append('Gate (issue 13): a formulation at <= %.2fx the direct conv on the 713x713 fusion conv. %s' % (
      GATE, results['gate']))
  lines.append('')
  return '\n'.join(lines)


def _gate(results):
  verdicts = []
  for section, result in results['sections'].items():
    for case in result.get('cases', []):
      if case['case'].startswith('fusion 713'):
        best = min((t['vs_direct'], v) for v, t in case['variants'].items() if v not in REFERENCE)
        verdicts.append('%s: best %s at %.2fx (%s)' % (section, best[1], best[0],
                                                         'passes' if best[0] <= GATE else 'fails'))
  return '; '.join(verdicts) or '(no 713x713 fusion case run)'


TRAIN_SHAPES = [(385, 2), (713, 1)]  # (crop, batch)
TRAIN_QUICK_SHAPES = [(65, 2)]


def _train_variants():
  from bench import train_speed  # pylint: disable=import-outside-toplevel
  return [train_speed._variant('direct (default options)', **train_speed.SPEED_ON),  # pylint: disable=protected-access
          train_speed._variant('winograd', **dict(train_speed.SPEED_ON, conv3x3_algorithm='winograd'))]  # pylint: disable=protected-access


def run_train(args):
  """The training-step section: {shape: {'speed': interleaved worker, 'memory': {variant: worker}, ...}}."""
  variants = _train_variants()
  results = collections.OrderedDict()
  for crop, batch in TRAIN_QUICK_SHAPES if args.quick else TRAIN_SHAPES:
    base = {'quick': args.quick, 'crop': crop, 'batch': batch, 'records': None}
    shape = collections.OrderedDict()
    common.log('winograd --train: %dx%d batch %d, interleaved' % (crop, crop, batch))
    shape['speed'] = common.run_worker('train_speed', dict(base, variants=variants, warmup=1,
                                                           runs=2 if args.quick else args.train_runs))
    if args.train_onednn_off:
      common.log('winograd --train: %dx%d batch %d, interleaved, oneDNN off' % (crop, crop, batch))
      shape['speed_onednn_off'] = common.run_worker(
          'train_speed', dict(base, variants=variants, warmup=1, runs=2 if args.quick else args.train_runs),
          env={'TF_ENABLE_ONEDNN_OPTS': '0'})
    shape['memory'] = collections.OrderedDict()
    for variant in variants:
      common.log('winograd --train: %dx%d batch %d, %s, fresh process' % (crop, crop, batch, variant['name']))
      shape['memory'][variant['name']] = common.run_worker(
          'train_speed', dict(base, variants=[variant], warmup=1, runs=1, memory=True))
    results['%dx%d batch %d' % (crop, crop, batch)] = shape
  return results


def _train_markdown(results, command, started):
  lines = ['# Winograd F(2x2, 3x3) in training: the PSP fusion conv, direct vs winograd', '',
           '`%s`, %s. drivers/trainer\'s graph with the default options (low-memory conv gradients, '
           'recompute_backbone_blocks 3), in-memory input; speed interleaved in one process, memory of each '
           'variant alone in a fresh process (BFC allocator).' % (command, started), '']
  for shape, result in results['train'].items():
    lines += ['## %s' % shape, '']
    for key, title in (('speed', 'oneDNN as TensorFlow decides'), ('speed_onednn_off', 'TF_ENABLE_ONEDNN_OPTS=0')):
      speed = result.get(key)
      if speed is None:
        continue
      if 'error' in speed:
        lines += ['%s: failed: %s' % (title, speed['error']), '']
        continue
      timings = speed['variants']
      direct = next(iter(timings.values()))
      rows = [[name, t['best_s'], t['median_s'], t['runs'], t['best_s'] / direct['best_s'],
               t['median_s'] / direct['median_s'], t['cpu_share'], 'yes' if t['losses_finite'] else 'no']
              for name, t in timings.items()]
      lines += ['Step time, %s (oneDNN opts: %s):' % (title, speed['machine'].get('onednn_opts')), '',
                common.format_table(['variant', 'best s', 'median s', 'runs', 'best vs direct',
                                     'median vs direct', 'cpu share', 'losses finite'], rows), '']
    rows = []
    for name, worker in result['memory'].items():
      if 'error' in worker:
        rows.append([name, 'failed: %s' % worker['error'][-200:], None, None])
        continue
      memory = worker['memory']
      rows.append([name, memory['allocator_peak_bytes'] / 2**30, memory['vmhwm_steps_bytes'] / 2**30,
                   next(iter(worker['variants'].values()))['best_s']])
    lines += ['Peak memory, each variant alone:', '',
              common.format_table(['variant', 'allocator peak GiB', 'VmHWM GiB', 'step s (alone)'], rows), '']
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='small shapes, 2 runs (a smoke run)')
  parser.add_argument('--runs', type=int, default=5, help='timed runs per variant (713x713 cases)')
  parser.add_argument('--large_runs', type=int, default=3, help='timed runs per variant at 1024x2048')
  parser.add_argument('--no_onednn_off', action='store_true', help='skip the oneDNN-off section')
  parser.add_argument('--model_runs', type=int, default=5, help='timed runs per graph of the whole model')
  parser.add_argument('--no_model', action='store_true', help='skip the whole-model comparison')
  parser.add_argument('--only_model', action='store_true', help='only the whole-model comparison')
  parser.add_argument('--model_size', type=int, nargs=2, default=[713, 713], metavar=('H', 'W'),
                      help='input size of the whole-model comparison')
  parser.add_argument('--model_processes', type=int, default=1,
                      help='model processes per section, the sections alternating')
  parser.add_argument('--train', action='store_true', help='only the training-step section (winograd_train.*)')
  parser.add_argument('--train_runs', type=int, default=3, help='timed steps per variant in --train')
  parser.add_argument('--train_onednn_off', action='store_true', help='--train: also the speed with oneDNN off')
  parser.add_argument('--out', default=common.DEFAULT_OUT, help='directory for winograd.json and winograd.md')
  args = parser.parse_args(argv)
  started = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
  command = 'python -m bench.winograd' + ' '.join([''] + (argv if argv is not None else sys.argv[1:]))
  if args.train:
    results = collections.OrderedDict(train=run_train(args), command=command, started=started)
    base = 'winograd_train' + ('_quick' if args.quick else '')
    common.write_json(os.path.join(args.out, base + '.json'), results)
    with open(os.path.join(args.out, base + '.md'), 'w') as f:
      f.write(_train_markdown(results, command, started))
    print(_train_markdown(results, command, started))
    return 0
  cases = QUICK_CASES if args.quick else FULL_CASES
  runs = [2 if args.quick else (args.large_runs if '1024' in c[0] else args.runs) for c in cases]
  results = collections.OrderedDict(sections=collections.OrderedDict())
  for section, env in [] if args.only_model else SECTIONS[:1] if args.no_onednn_off else SECTIONS:
    common.log('winograd: section %s' % section)
    results['sections'][section] = common.run_worker('winograd', {'cases': cases, 'runs': runs, 'warmup': 1},
                                                     env=env)
  if not args.no_model:
    size = [65, 65] if args.quick else list(args.model_size)
    results['models'] = []
    for process in range(args.model_processes):
      for section, env in SECTIONS[:1] if args.no_onednn_off else SECTIONS:
        common.log('winograd: whole model %dx%d, %s, process %d' % (tuple(size) + (section, process + 1)))
        spec = {'model': True, 'quick': args.quick, 'size': size, 'runs': 2 if args.quick else args.model_runs,
                'warmup': 1, 'layer_cases': [] if args.quick else BACKBONE_CASES,
                'layer_runs': 2 if args.quick else 7}
        results['models'].append(dict(common.run_worker('winograd', spec, env=env), section=section))
  results['gate'] = _gate(results)
  results['command'], results['started'] = command, started
  base = ('winograd_model' if args.only_model else 'winograd') + ('_quick' if args.quick else '')
  if args.only_model and not args.quick and list(args.model_size) != [713, 713]:
    base += '_%dx%d' % tuple(args.model_size)  # beside the 713x713 results, not over them
  common.write_json(os.path.join(args.out, base + '.json'), results)
  with open(os.path.join(args.out, base + '.md'), 'w') as f:
    f.write(_markdown(results, command, started))
  print(_markdown(results, command, started))
  return 0


if __name__ == '__main__':
  sys.exit(main())
