"""Peers in the same run (issue 13): a hand-written, untuned TF1 PSPNet50 beside the toolkit's graphs.

`python -m bench.peers [--quick] [--only inference|train] [--inference_sizes 713x713,1024x2048]
[--train_shapes 385x2,713x1]`

The peer is what a user writes with plain TensorFlow 1 ops and no tuning: none of the toolkit's code (its own
layers below, `tensorflow.compat.v1` only), TensorFlow's defaults (oneDNN as TensorFlow decides, grappler on, the
default thread pools, tf.gradients through the optimizer). Its network is the toolkit's PSPNet50 layer for layer,
so that the two do the same arithmetic (the MACs of both graphs are counted and reported):
  * TF-Slim's ResNet50 v1 layout: a 7x7 stride-2 root conv (explicitly padded, VALID, as slim's conv2d_same),
    3x3 stride-2 max pool, bottlenecks 1x1 -> 3x3 -> 1x1 with the stride on the last unit of blocks 1-3; output
    stride 8: block2's last unit at stride 1, block3 at rate 2, block4 at rate 4 (tf.nn.atrous_conv2d, i.e.
    SpaceToBatchND -> Conv2D -> BatchToSpaceND, as slim builds it); fused batch norm after every conv;
  * the pyramid pooling module: average pools to 1, 2, 3, 6 bins (tf.nn.avg_pool with a fixed kernel), a 1x1
    conv (512) + batch norm + ReLU6 each,
    bilinear resize back, concat with the features (4096 channels), a 3x3 conv (512) + batch norm + ReLU6;
  * classifier: dropout (training), 1x1 conv to the classes with a bias, logits resized bilinearly to the input;
  * training: the auxiliary head on block3 (3x3 conv 256 + batch norm + ReLU, dropout, 1x1 conv, weight 0.4),
    softmax cross entropy over the upsampled logits with ignored pixels weighted 0, L2 1e-4 on the weights,
    SGD momentum 0.9, the batch norm moving averages updated every step.

Rows (one worker process per shape, every row timed interleaved with the others in that process; every worker
runs with the BFC allocator, bench/common.run_worker, so the rows share one allocator):
  inference (batch 1): the peer; the toolkit's checkpoint graph with conv3x3_algorithm direct and winograd; the
    frozen graph and the SavedModel exported with winograd; all on one random image, with random weights.
  training: the peer's step; drivers/trainer's step (default options) with direct and with winograd; in-memory
    input. Then each alone in a fresh process (BFC allocator) for its peak memory.
Every row also gives its "effective" GMAC/s, the direct convolution's MACs of the toolkit's graph over the time
(training: 3x the forward's), against the measured fp32 peak of bench/peak.py run in the same invocation.

PyTorch eager, the other peer of the issue, is not installed with the toolkit and cannot be installed here (its
CPU wheels are not on PyPI); when `import torch` works a note says it was not measured rather than a number.
Writes bench/results/peers[_inference|_train][_quick].{json,md}.
"""
import argparse
import collections
import datetime
import importlib.util
import os
import sys

import numpy as np

from bench import common

MEAN_RGB = (123.68, 116.78, 103.94)
RESNET50_UNITS = (3, 4, 6, 3)
PSP_BINS = (1, 2, 3, 6)
INFERENCE_SIZES = ((713, 713), (1024, 2048))
TRAIN_SHAPES = ((385, 2), (713, 1))
QUICK_INFERENCE_SIZES = ((97, 97),)
QUICK_TRAIN_SHAPES = ((65, 1),)
# The peer's scale in --quick runs (the toolkit's tiny bench model: bench/common.QUICK_MODEL_OVERRIDE).
QUICK_PEER = {'filter_scale': 0.0625, 'units': (1, 1, 1, 1)}


def _tf1():
  import tensorflow.compat.v1 as tf1  # pylint: disable=import-outside-toplevel
  return tf1


class UntunedPSPNet50(object):
  """The peer network (module docstring), plain tf.compat.v1 ops.

  Args:
    is_training: batch norm in training mode with moving-average updates, dropout, the auxiliary head.
    num_classes: output classes.
    filter_scale: multiplier of every layer's filters (1.0: PSPNet50).
    units: residual units per block (ResNet50: 3, 4, 6, 3).
  """

  def __init__(self, is_training, num_classes=19, filter_scale=1.0, units=RESNET50_UNITS):
    self.is_training = is_training
    self.num_classes = num_classes
    self.scale = filter_scale
    self.units = units
    self.update_ops = []
    self.weights = []

  def _depth(self, depth):
    return max(1, int(depth * self.scale))

  def conv(self, x, depth, size, name, stride=1, rate=1, bias=False):
    """[N, H, W, C] -> [N, H / stride, W / stride, depth]."""
    tf1 = _tf1()
    with tf1.variable_scope(name):
      kernel = tf1.get_variable('weights', [size, size, int(x.shape[-1]), depth],
                                initializer=tf1.variance_scaling_initializer())
      self.weights.append(kernel)
      if stride > 1 and size > 1:
        total = size - 1
        x = tf1.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
        y = tf1.nn.conv2d(x, kernel, [1, stride, stride, 1], 'VALID')
      elif rate > 1:
        y = tf1.nn.atrous_conv2d(x, kernel, rate, 'SAME')
      else:
        y = tf1.nn.conv2d(x, kernel, [1, stride, stride, 1], 'SAME')
      if bias:
        y = tf1.nn.bias_add(y, tf1.get_variable('biases', [depth], initializer=tf1.zeros_initializer()))
    return y

  def batch_norm(self, x, name, activation=None, decay=0.9997):
    tf1 = _tf1()
    channels = int(x.shape[-1])
    with tf1.variable_scope(name):
      gamma = tf1.get_variable('gamma', [channels], initializer=tf1.ones_initializer())
      beta = tf1.get_variable('beta', [channels], initializer=tf1.zeros_initializer())
      mean = tf1.get_variable('moving_mean', [channels], initializer=tf1.zeros_initializer(), trainable=False)
      variance = tf1.get_variable('moving_variance', [channels], initializer=tf1.ones_initializer(),
                                  trainable=False)
      if self.is_training:
        y, batch_mean, batch_variance = tf1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-5, is_training=True)
        self.update_ops += [tf1.assign_sub(mean, (1 - decay) * (mean - batch_mean)),
                            tf1.assign_sub(variance, (1 - decay) * (variance - batch_variance))]
      else:
        y, _, _ = tf1.nn.fused_batch_norm(x, gamma, beta, mean, variance, epsilon=1e-5, is_training=False)
    return activation(y) if activation else y

  def conv_bn(self, x, depth, size, name, stride=1, rate=1, activation=None):
    tf1 = _tf1()
    activation = tf1.nn.relu if activation is None else activation
    with tf1.variable_scope(name):
      return self.batch_norm(self.conv(x, depth, size, 'conv', stride, rate), 'bn', activation)

  def bottleneck(self, x, depth, stride, rate, name):
    tf1 = _tf1()
    with tf1.variable_scope(name):
      if int(x.shape[-1]) == depth * 4:
        shortcut = tf1.nn.max_pool(x, [1, 1, 1, 1], [1, stride, stride, 1], 'SAME') if stride > 1 else x
      else:
        shortcut = self.batch_norm(self.conv(x, depth * 4, 1, 'shortcut', stride), 'shortcut_bn')
      y = self.conv_bn(x, depth, 1, 'conv1')
      y = self.conv_bn(y, depth, 3, 'conv2', stride, rate)
      y = self.batch_norm(self.conv(y, depth * 4, 1, 'conv3'), 'conv3_bn')
      return tf1.nn.relu(shortcut + y)

  def backbone(self, x):
    """[N, H, W, 3] -> (block3 [N, H/8, W/8, 1024 s], block4 [N, H/8, W/8, 2048 s])."""
    tf1 = _tf1()
    x = self.conv_bn(x, self._depth(64), 7, 'conv1', stride=2)
    x = tf1.nn.max_pool(x, [1, 3, 3, 1], [1, 2, 2, 1], 'SAME')
    stride, rate, outputs = 4, 1, []
    for b, (base, units, block_stride) in enumerate(zip((64, 128, 256, 512), self.units, (2, 2, 2, 1))):
      for u in range(units):
        unit_stride = block_stride if u == units - 1 else 1
        if stride >= 8:  # output stride 8 reached: later strides become rates
          x = self.bottleneck(x, self._depth(base), 1, rate, 'block%d/unit_%d' % (b + 1, u + 1))
          rate *= unit_stride
        else:
          x = self.bottleneck(x, self._depth(base), unit_stride, 1, 'block%d/unit_%d' % (b + 1, u + 1))
          stride *= unit_stride
      outputs.append(x)
    return outputs[2], outputs[3]

  def pyramid(self, features):
    tf1 = _tf1()
    height, width = int(features.shape[1]), int(features.shape[2])
    if min(height, width) < max(PSP_BINS):
      raise ValueError('the peer needs a feature map of at least %d pixels a side, got %dx%d'
                       % (max(PSP_BINS), height, width))
    branches = [features]
    for bins in PSP_BINS:
      # The usual fixed-kernel stand-in for adaptive pooling: stride floor(h / bins), kernel h - (bins - 1)
      # stride, exactly `bins` cells (the adaptive cells where bins divides h, e.g. 90 at 713x713).
      sh, sw = max(1, height // bins), max(1, width // bins)
      kh, kw = height - (bins - 1) * sh, width - (bins - 1) * sw
      pooled = tf1.nn.avg_pool(features, [1, kh, kw, 1], [1, sh, sw, 1], 'VALID')
      pooled = self.conv_bn(pooled, self._depth(512), 1, 'psp_pool%d' % bins, activation=tf1.nn.relu6)
      branches.append(tf1.image.resize_bilinear(pooled, [height, width], align_corners=True))
    return self.conv_bn(tf1.concat(branches, axis=3), self._depth(512), 3, 'psp_fusion', activation=tf1.nn.relu6)

  def classifier(self, x, name):
    tf1 = _tf1()
    if self.is_training:
      x = tf1.nn.dropout(x, rate=0.1)
    return self.conv(x, self.num_classes, 1, name, bias=True)

  def __call__(self, images):
    """uint8/float [N, H, W, 3] RGB -> (logits [N, H, W, classes], aux logits or None)."""
    tf1 = _tf1()
    size = [int(images.shape[1]), int(images.shape[2])]
    x = tf1.cast(images, tf1.float32) - tf1.constant(MEAN_RGB)
    block3, block4 = self.backbone(x)
    logits = tf1.image.resize_bilinear(self.classifier(self.pyramid(block4), 'logits'), size, align_corners=True)
    aux = None
    if self.is_training:
      aux = self.classifier(self.conv_bn(block3, self._depth(256), 3, 'aux_conv'), 'aux_logits')
      aux = tf1.image.resize_bilinear(aux, size, align_corners=True)
    return logits, aux


def _loss(logits, labels, num_classes, ignore=255):
  tf1 = _tf1()
  labels = tf1.reshape(tf1.cast(labels, tf1.int32), [-1])
  weights = tf1.cast(tf1.not_equal(labels, ignore), tf1.float32)
  labels = tf1.where(tf1.equal(labels, ignore), tf1.zeros_like(labels), labels)
  return tf1.losses.sparse_softmax_cross_entropy(labels, tf1.reshape(logits, [-1, num_classes]), weights,
                                                 loss_collection=None)


def build_peer_training(crop, batch, num_classes=19, filter_scale=1.0, units=RESNET50_UNITS, seed=0):
  """(graph, train_op, loss, forward GMACs): the peer's training step on one random batch repeated by tf.data."""
  tf1 = _tf1()
  graph = tf1.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    rng = np.random.RandomState(seed)
    dataset = tf1.data.Dataset.from_tensors((
        rng.uniform(0, 255, [batch, crop, crop, 3]).astype(np.float32),
        rng.randint(0, num_classes, [batch, crop, crop, 1]).astype(np.uint8))).repeat()
    images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
    model = UntunedPSPNet50(True, num_classes, filter_scale, units)
    logits, aux = model(images)
    forward_gmacs = _conv_gmacs(graph)
    loss = (_loss(logits, labels, num_classes) + 0.4 * _loss(aux, labels, num_classes)
            + 1e-4 * tf1.add_n([tf1.nn.l2_loss(w) for w in model.weights]))
    with tf1.control_dependencies(model.update_ops):
      train_op = tf1.train.MomentumOptimizer(0.01, 0.9).minimize(loss)
  return graph, train_op, loss, forward_gmacs


def build_peer_inference(size, num_classes=19, filter_scale=1.0, units=RESNET50_UNITS):
  """(graph, uint8 input [1, H, W, 3], int predictions [1, H, W], GMACs)."""
  tf1 = _tf1()
  graph = tf1.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf1.uint8, [1, size[0], size[1], 3], name='image')
    logits, _ = UntunedPSPNet50(False, num_classes, filter_scale, units)(images)
    predictions = tf1.argmax(logits, axis=3)
  return graph, images, predictions, _conv_gmacs(graph)


def _conv_gmacs(graph):
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  return exporter.count_conv_macs(graph)['total'] / 1e9


def _peer_scale(quick):
  return dict(QUICK_PEER) if quick else {'filter_scale': 1.0, 'units': RESNET50_UNITS}


# ----------------------------------------------------------------------------------------------------------------
# Workers.


def _measure_inference(spec):
  import shutil  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  from bench import inference_speed  # pylint: disable=import-outside-toplevel
  tf1 = _tf1()
  size = tuple(spec['size'])
  base = common.load_pipeline_config(spec['quick']).model
  configs = {a: inference_speed.with_conv3x3_algorithm(base, a) for a in ('direct', 'winograd')}
  out = collections.OrderedDict(size='%dx%d' % size, machine=common.machine_info())
  workdir = tempfile.mkdtemp(prefix='bench_peers_')
  try:
    checkpoint, export_dir = inference_speed.random_checkpoint_and_export(base, configs['winograd'], size, workdir)
    sessions = collections.OrderedDict()
    graph, images, predictions, peer_gmacs = build_peer_inference(size, **_peer_scale(spec['quick']))
    with graph.as_default():
      init = tf1.global_variables_initializer()
    sessions['hand-written TF1 PSPNet50, untuned'] = (tf1.Session(graph=graph), images, predictions, graph)
    sessions['hand-written TF1 PSPNet50, untuned'][0].run(init)
    for name, algorithm, source in (('ours: checkpoint graph, direct', 'direct', 'checkpoint'),
                                    ('ours: checkpoint graph, winograd', 'winograd', 'checkpoint'),
                                    ('ours: frozen graph, winograd', 'winograd', 'frozen'),
                                    ('ours: SavedModel, winograd', 'winograd', 'saved_model')):
      variant = inference_speed._variant(name, source)  # pylint: disable=protected-access
      sessions[name] = inference_speed._session(  # pylint: disable=protected-access
          variant, configs[algorithm], size, checkpoint, {'float32': export_dir})
    gmacs = inference_speed.model_gmacs(base, size)
    out.update(gmacs=gmacs, peer_gmacs=peer_gmacs)
    timings, _ = inference_speed.time_sessions(sessions, inference_speed.random_image(size), spec['runs'],
                                               spec['warmup'])
    reference = timings['hand-written TF1 PSPNet50, untuned']['best_s']
    for timing in timings.values():
      timing.update(vs_peer=timing['best_s'] / reference, effective_gmacs_per_s=gmacs / timing['best_s'])
    out['variants'] = timings
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return out


def _measure_train(spec):
  from bench import train_speed  # pylint: disable=import-outside-toplevel
  tf1 = _tf1()
  fns, gmacs = collections.OrderedDict(), {}
  losses = collections.defaultdict(list)
  names = spec['rows']
  if 'peer' in names:
    graph, train_op, loss, gmacs['peer'] = build_peer_training(spec['crop'], spec['batch'],
                                                               **_peer_scale(spec['quick']))
    with graph.as_default():
      init = tf1.global_variables_initializer()
    sess = tf1.Session(graph=graph, config=common.session_config())
    sess.run(init)
    fns['peer'] = lambda sess=sess: losses['peer'].append(float(sess.run([train_op, loss])[1]))
  for name in names:
    if name == 'peer':
      continue
    variant = train_speed._variant(name, **dict(train_speed.SPEED_ON, conv3x3_algorithm=name))  # pylint: disable=protected-access
    sess, fetches, gmacs[name] = train_speed._build(  # pylint: disable=protected-access
        dict(spec, records=None), variant)
    fns[name] = lambda sess=sess, fetches=fetches, name=name: losses[name].append(float(sess.run(fetches)[1]))
  out = collections.OrderedDict(crop=spec['crop'], batch=spec['batch'], machine=common.machine_info(),
                                forward_gmacs=gmacs)
  if spec.get('memory'):
    for fn in fns.values():
      fn()
    common.reset_peak_memory()
    timings = common.interleaved(fns, spec['runs'], warmup=0)
    usage = common.memory_usage()
    out['memory'] = collections.OrderedDict(allocator_peak_bytes=usage.get('CPU_BFC_Peak'),
                                            vmhwm_steps_bytes=usage.get('VmHWM'))
  else:
    timings = common.interleaved(fns, spec['runs'], spec['warmup'])
  # The toolkit's direct graph's MACs, the work of every row (the same network).
  work = 3 * gmacs.get('direct', next(iter(gmacs.values())))
  reference = timings['peer']['best_s'] if 'peer' in timings else None
  for name, timing in timings.items():
    timing.update(effective_gmacs_per_s=work / timing['best_s'],
                  losses_finite=bool(np.all(np.isfinite(losses[name]))))
    if reference:
      timing['vs_peer'] = timing['best_s'] / reference
  out['variants'] = timings
  return out


def measure(spec):
  """Worker: spec {kind: 'inference' | 'train', quick, ...} -> that row set's figures."""
  return _measure_inference(spec) if spec['kind'] == 'inference' else _measure_train(spec)


# ----------------------------------------------------------------------------------------------------------------
# Driver and report.

TRAIN_ROWS = ('peer', 'direct', 'winograd')
ROW_NAMES = {'peer': 'hand-written TF1 PSPNet50, untuned', 'direct': 'ours: train.py defaults, direct',
             'winograd': 'ours: train.py defaults, winograd'}


def run(args):
  results = collections.OrderedDict()
  common.log('peers: the measured peak (bench/peak.py)')
  from bench import peak  # pylint: disable=import-outside-toplevel
  results['peak'] = {'default': common.run_worker('peak', peak.QUICK if args.quick else peak.FULL)}
  results['inference'] = collections.OrderedDict()
  for size in (args.inference_sizes if args.only != 'train' else ()):
    common.log('peers: inference %dx%d, interleaved' % size)
    results['inference']['%dx%d' % size] = common.run_worker('peers', {
        'kind': 'inference', 'quick': args.quick, 'size': list(size), 'runs': args.runs, 'warmup': 1})
  results['train'] = collections.OrderedDict()
  for crop, batch in (args.train_shapes if args.only != 'inference' else ()):
    base = {'kind': 'train', 'quick': args.quick, 'crop': crop, 'batch': batch,
            'checkpoints': 'units' if args.quick else 'seed'}
    shape = collections.OrderedDict()
    common.log('peers: training %dx%d batch %d, interleaved' % (crop, crop, batch))
    shape['speed'] = common.run_worker('peers', dict(base, rows=list(TRAIN_ROWS), runs=args.train_runs, warmup=1))
    shape['memory'] = collections.OrderedDict()
    for row in TRAIN_ROWS:
      common.log('peers: training %dx%d batch %d, %s alone' % (crop, crop, batch, row))
      shape['memory'][row] = common.run_worker('peers', dict(base, rows=[row], runs=1, memory=True))
    results['train']['%dx%d batch %d' % (crop, crop, batch)] = shape
  return results


def _fmt(value, digits=3):
  return None if value is None else float('%.*g' % (digits, value))


def markdown(results, command, started):
  from bench import peak  # pylint: disable=import-outside-toplevel
  peak_rate = peak.peak_gmacs(results['peak'])
  lines = ['# Peers side by side: a hand-written untuned TF1 PSPNet50 and the toolkit (issue 13)', '',
           '`%s`, %s. Measured fp32 peak of this machine in the same run: %s GMAC/s (bench/peak.py). '
           '"Effective GMAC/s" is the direct convolution\'s MACs of the toolkit\'s graph over the time (training: '
           '3x the forward\'s); above the peak means less arithmetic than the direct convolution.' % (
               command, started, _fmt(peak_rate)), '']
  for size, result in results['inference'].items():
    lines += ['## Inference %s, batch 1, fp32' % size, '']
    if 'error' in result:
      lines += ['failed: %s' % result['error'][-300:], '']
      continue
    lines.append('%.1f GMACs (ours, direct), %.1f GMACs (the peer). Random weights; one random image.' % (
        result['gmacs'], result['peer_gmacs']))
    lines.append('')
    rows = [[name, t['best_s'], t['median_s'], t['runs'], _fmt(t['vs_peer']), _fmt(t['effective_gmacs_per_s']),
             _fmt(t['effective_gmacs_per_s'] / peak_rate if peak_rate else None)]
            for name, t in result['variants'].items()]
    lines += [common.format_table(['graph', 'best s', 'median s', 'runs', 'vs peer (best)', 'effective GMAC/s',
                                   'of peak'], rows), '']
  for shape, result in results['train'].items():
    lines += ['## Training step %s, fp32' % shape, '']
    speed = result['speed']
    if 'error' in speed:
      lines += ['failed: %s' % speed['error'][-300:], '']
      continue
    rows = []
    for key, t in speed['variants'].items():
      memory = result['memory'].get(key, {}).get('memory', {})
      rows.append([ROW_NAMES[key], t['best_s'], t['median_s'], t['runs'], _fmt(t.get('vs_peer')),
                   _fmt(t['effective_gmacs_per_s']),
                   _fmt(t['effective_gmacs_per_s'] / peak_rate if peak_rate else None),
                   _fmt((memory.get('allocator_peak_bytes') or 0) / 2**30),
                   _fmt((memory.get('vmhwm_steps_bytes') or 0) / 2**30), 'yes' if t['losses_finite'] else 'NO'])
    lines += [common.format_table(['step', 'best s', 'median s', 'runs', 'vs peer (best)', 'effective GMAC/s',
                                   'of peak', 'allocator peak GiB (alone)', 'VmHWM GiB (alone)',
                                   'losses finite'], rows), '']
  if importlib.util.find_spec('torch') is not None:
    lines += ['PyTorch is importable here but was not measured (no PyTorch PSPNet50 in this benchmark).', '']
  else:
    lines += ['PyTorch eager: not installed (its CPU wheels are not on PyPI, which is all this machine reaches); '
              'not measured.', '']
  return '\n'.join(lines) + '\n'


def _pairs(text, kind):
  out = []
  for item in text.split(','):
    a, b = item.lower().split('x')
    out.append((int(a), int(b)))
  if not out:
    raise argparse.ArgumentTypeError('no %s given' % kind)
  return tuple(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='the tiny model at small sizes (a smoke run)')
  parser.add_argument('--inference_sizes', type=lambda t: _pairs(t, 'sizes'), default=None,
                      help='HxW[,HxW...] (default 713x713,1024x2048)')
  parser.add_argument('--train_shapes', type=lambda t: _pairs(t, 'shapes'), default=None,
                      help='CROPxBATCH[,...] (default 385x2,713x1)')
  parser.add_argument('--only', choices=('inference', 'train'), default=None,
                      help='one section (writes peers_<section>[_quick].*)')
  parser.add_argument('--runs', type=int, default=5, help='timed inference runs per row')
  parser.add_argument('--train_runs', type=int, default=3, help='timed training steps per row')
  parser.add_argument('--out', default=os.path.join(common.REPO_ROOT, 'bench', 'results'))
  args = parser.parse_args(argv)
  if args.inference_sizes is None:
    args.inference_sizes = QUICK_INFERENCE_SIZES if args.quick else INFERENCE_SIZES
  if args.train_shapes is None:
    args.train_shapes = QUICK_TRAIN_SHAPES if args.quick else TRAIN_SHAPES
  if args.quick:
    args.runs, args.train_runs = min(args.runs, 2), min(args.train_runs, 2)
  started = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
  command = 'python -m bench.peers ' + ' '.join(argv if argv is not None else sys.argv[1:])
  results = run(args)
  results.update(command=command.strip(), started=started)
  base = os.path.join(args.out, 'peers' + ('_' + args.only if args.only else '') + ('_quick' if args.quick else ''))
  os.makedirs(args.out, exist_ok=True)
  common.write_json(base + '.json', results)
  text = markdown(results, command.strip(), started)
  with open(base + '.md', 'w') as f:
    f.write(text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
