"""Training step time, images/s and peak memory: train.py-style and memory-saving training, and a crop sweep.

The graph is drivers/trainer.build_training_graph's (model, losses, L2, momentum optimizer, batch-norm updates,
summaries), run step by step in a plain session. Input is either
  * in memory: one random batch held as a constant and repeated by tf.data (no decoding), or
  * records: the trainer's own tf.data pipeline on TFRecords of synthetic 1024x2048 Cityscapes-format frames
    with the config's preprocessing (random scale 0.5-2, 713 crop, flip), as train.py runs it.

Three kinds of worker:
  * speed: several variants in one process, interleaved step by step (speed options off / on, in-memory vs
    records input), so that their ratios are taken in the same time window. The records variant also runs one
    traced step, in which the time of IteratorGetNext is the time the step waited for input. The CPU allocator
    is chosen per process (TF_CPU_ALLOCATOR_USE_BFC, read when TensorFlow starts), so the plain graph with
    TensorFlow's default allocator runs in a worker of its own right before.
  * memory: one variant alone in a fresh process (TF_CPU_ALLOCATOR_USE_BFC=true): the peak of TensorFlow's CPU
    allocator and VmHWM over the measured steps (peaks reset after warm-up) and VmHWM over the whole process.
  * sweep: memory workers over crop sizes, for time and memory per pixel (the plot).

Training MACs are counted as 3 x the forward convolutions' (the backward pass of a convolution is two
convolutions of the same size), the usual estimate.
"""
import collections
import contextlib

import numpy as np

from architectures import pspnet_architecture
from bench import common

SEED_CHECKPOINT_NODES = list(pspnet_architecture.SEED_CHECKPOINT_NODES)
# The in-graph and session speed and memory options (README, "Performance"). 'off' is the plain graph:
# TensorFlow's own gradients (tf.gradients, its convolution gradients) and defaults; 'on' is the toolkit's default
# training graph (low-memory gradients of the wide 3x3 convs; the backbone's root and blocks 1-3 recomputed in
# backprop, train_config.recompute_backbone_blocks: 3). The allocator (TF_CPU_ALLOCATOR_USE_BFC=true, train.py's
# default) is the process-wide option on top: 'off' runs in a worker of its own with TensorFlow's default
# allocator.
SPEED_OFF = collections.OrderedDict(native_atrous=False, low_memory_grads=False, recompute_blocks=0, intra=0,
                                    inter=0, grappler=True, mixed_precision='none', conv3x3_algorithm='direct')
SPEED_ON = collections.OrderedDict(native_atrous=False, low_memory_grads=True, recompute_blocks=3, intra=0,
                                   inter=0, grappler=True)

FULL = {'crop': 713, 'batch': 1, 'runs': 2, 'warmup': 1, 'sweep': [257, 449, 713], 'checkpoints': 'seed'}
QUICK = {'crop': 65, 'batch': 1, 'runs': 2, 'warmup': 1, 'sweep': [33, 65], 'checkpoints': 'units'}


def _variant(name, input_mode='memory', gradients=None, **speed):
  options = collections.OrderedDict(SPEED_OFF)
  options.update(speed)
  return collections.OrderedDict(name=name, input=input_mode, gradients=gradients, **options)


@contextlib.contextmanager
def _in_memory_input(crop, seed=0, generated=False):
  """Replaces trainer.build_input (while building) with one random batch repeated from memory.

  generated: the batch is drawn once by random ops in the input pipeline (on the CPU) and cached, instead of
  being held as a graph constant (large batches: no constant of batch x crop^2 x 3 floats in the GraphDef)."""
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  from libs.standard_fields import InputDataFields as fields  # pylint: disable=import-outside-toplevel

  def build_input(pipeline_config, num_classes, ignore_label):
    del ignore_label
    batch = pipeline_config.train_config.batch_size
    with tf.device('/cpu:0'):
      if generated:
        dataset = tf.data.Dataset.range(1).map(lambda _: {
            fields.image: tf.random.uniform([batch, crop, crop, 3], 0, 255, seed=seed),
            fields.labels_class: tf.cast(tf.random.uniform([batch, crop, crop, 1], 0, num_classes, tf.int32,
                                                           seed=seed + 1), tf.uint8)}).cache().repeat()
      else:
        rng = np.random.RandomState(seed)
        dataset = tf.data.Dataset.from_tensors({
            fields.image: rng.uniform(0, 255, [batch, crop, crop, 3]).astype(np.float32),
            fields.labels_class: rng.randint(0, num_classes, [batch, crop, crop, 1]).astype(np.uint8),
        }).repeat()
      return tf.data.make_one_shot_iterator(dataset).get_next()

  original = trainer.build_input
  trainer.build_input = build_input
  try:
    yield
  finally:
    trainer.build_input = original


def _pipeline_config(spec, variant):
  config = common.load_pipeline_config(
      spec['quick'], 'pspnet { feature_extractor { native_atrous_conv: %s } low_memory_conv_gradients: %s }' % (
          'true' if variant['native_atrous'] else 'false', 'true' if variant['low_memory_grads'] else 'false'))
  config.train_config.batch_size = spec['batch']
  config.train_config.recompute_backbone_blocks = variant['recompute_blocks']
  config.train_config.mixed_precision = variant.get('mixed_precision', 'none')
  config.model.pspnet.conv3x3_algorithm = variant.get('conv3x3_algorithm', 'direct')
  for step in config.train_config.preprocessor_step:
    if step.HasField('random_image_crop'):
      step.random_image_crop.crop_height = step.random_image_crop.crop_width = spec['crop']
  if spec.get('records'):
    config.train_input_reader.tf_record_input_reader.ClearField('input_path')
    config.train_input_reader.tf_record_input_reader.input_path.append(spec['records'])
    config.train_input_reader.ClearField('num_examples')
  return config


def _gradients_fn(name):
  if not name:
    return None
  from libs import memory_saving_gradients  # pylint: disable=import-outside-toplevel
  return memory_saving_gradients.make_gradients_fn(SEED_CHECKPOINT_NODES if name == 'seed' else name)


def _build(spec, variant):
  """(session, fetches, forward GMACs per step) of one variant in its own graph."""
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  config = _pipeline_config(spec, variant)
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(0)
    options = trainer.default_options(gradients_fn=_gradients_fn(variant['gradients']))
    context = (_in_memory_input(spec['crop'], generated=variant['input'] == 'generated')
               if variant['input'] in ('memory', 'generated') else contextlib.nullcontext())
    with context:
      g = trainer.build_training_graph(config, options)
    # The model's own forward ops: not the gradients, nor memory-saving gradients' recomputed copies.
    forward = [op for op in graph.get_operations()
               if not op.name.startswith(('gradients', 'memory_saving_gradients'))]
    macs = _forward_macs(forward)
    init = tf.global_variables_initializer()
  sess = tf.Session(graph=graph, config=common.session_config(variant['intra'], variant['inter'],
                                                              variant['grappler']))
  sess.run(init)
  return sess, [g.train_op, g.total_loss], macs / 1e9


class _OpsView(object):
  def __init__(self, ops):
    self._ops = ops

  def get_operations(self):
    return self._ops


def _forward_macs(ops):
  """MACs of the forward convolutions (exporter.count_conv_macs over the ops outside the gradients)."""
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  return exporter.count_conv_macs(_OpsView(ops))['total']


def _input_wait_seconds(sess, fetches):
  """Seconds IteratorGetNext took in one traced step (waiting for a batch; ~0 when one is prefetched)."""
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  metadata = tf.RunMetadata()
  sess.run(fetches, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE), run_metadata=metadata)
  micros = 0
  for device in metadata.step_stats.dev_stats:
    for node in device.node_stats:
      if node.node_name.split(':')[0].endswith('IteratorGetNext'):
        micros += node.all_end_rel_micros
  return micros / 1e6


def measure(spec):
  """Worker: spec {quick, crop, batch, variants, runs, warmup, records, memory} -> per-variant figures."""
  out = collections.OrderedDict(crop=spec['crop'], batch=spec['batch'], machine=common.machine_info())
  built = collections.OrderedDict()
  for variant in spec['variants']:
    _, seconds, _ = common.timed(lambda variant=variant: built.__setitem__(variant['name'], _build(spec, variant)))
    out.setdefault('build_seconds', {})[variant['name']] = seconds
  fns = collections.OrderedDict()
  losses = collections.defaultdict(list)
  for name, (sess, fetches, _) in built.items():
    fns[name] = (lambda sess=sess, fetches=fetches, name=name: losses[name].append(float(sess.run(fetches)[1])))
  if spec.get('memory'):
    for fn in fns.values():
      for _ in range(spec['warmup']):
        fn()
    process_peak = common.memory_usage().get('VmHWM')
    common.reset_peak_memory()
    timings = common.interleaved(fns, spec['runs'], warmup=0)
    usage = common.memory_usage()
    out['memory'] = collections.OrderedDict(
        # On a GPU machine the model runs on the GPU: its allocator's peak is the one that matters.
        allocator=('GPU0' if 'GPU0_Peak' in usage else 'CPU_BFC'),
        allocator_peak_bytes=usage.get('GPU0_Peak', usage.get('CPU_BFC_Peak')),
        vmhwm_steps_bytes=usage.get('VmHWM'),
        vmhwm_process_bytes=max(process_peak or 0, usage.get('VmHWM') or 0))
  else:
    timings = common.interleaved(fns, spec['runs'], spec['warmup'])
  pixels = spec['batch'] * spec['crop'] * spec['crop']
  # The work of a step is the first variant's (the plain graph when it is first): the same model for every
  # variant, whatever the variant executes.
  forward_gmacs = next(iter(built.values()))[2]
  for variant in spec['variants']:
    name = variant['name']
    sess, fetches, _ = built[name]
    timing = timings[name]
    timing.update(images_per_s=spec['batch'] / timing['best_s'],
                  us_per_pixel=timing['best_s'] / pixels * 1e6,
                  train_gmacs=3 * forward_gmacs, gmacs_per_s=3 * forward_gmacs / timing['best_s'],
                  losses_finite=bool(np.all(np.isfinite(losses[name]))), variant=variant)
    if variant['input'] == 'records':
      timing['input_wait_s'] = _input_wait_seconds(sess, fetches)
    sess.close()
  out['variants'] = timings
  return out


def run(args, records=None):
  """Driver: the interleaved speed comparison, memory-saving training and the crop sweep."""
  plan = QUICK if args.quick else FULL
  base = {'quick': args.quick, 'batch': plan['batch'], 'runs': plan['runs'], 'warmup': plan['warmup'],
          'records': records}
  results = collections.OrderedDict()
  speed_variants = [_variant('speed options off (plain graph)'),
                    _variant('speed options on', **SPEED_ON),
                    _variant('speed options on, recompute_backbone_blocks 0', **dict(SPEED_ON, recompute_blocks=0))]
  if records:
    speed_variants.append(_variant('speed options on, TFRecord input', 'records', **SPEED_ON))
  common.log('train: %dx%d batch %d, plain graph with the default CPU allocator' % (
      plan['crop'], plan['crop'], plan['batch']))
  results['speed_default_allocator'] = common.run_worker(
      'train_speed', dict(base, crop=plan['crop'], variants=[_variant('speed options off, default allocator')]),
      env={'TF_CPU_ALLOCATOR_USE_BFC': 'false'})
  common.log('train: %dx%d batch %d, BFC allocator: %s, interleaved' % (
      plan['crop'], plan['crop'], plan['batch'], ', '.join(v['name'] for v in speed_variants)))
  results['speed'] = common.run_worker('train_speed', dict(base, crop=plan['crop'], variants=speed_variants))
  results['memory'] = collections.OrderedDict()
  for name, variant in (('train.py', _variant('train.py', **SPEED_ON)),
                        ('train.py, recompute_backbone_blocks: 0',
                         _variant('train.py, no recomputation', **dict(SPEED_ON, recompute_blocks=0))),
                        ('train.py, speed and memory options off (plain graph)', _variant('plain graph')),
                        ('train_mem_saving.py (%s checkpoints)' % plan['checkpoints'],
                         _variant('memory saving', gradients=plan['checkpoints'], **SPEED_ON))):
    common.log('train: %s at %dx%d batch %d, fresh process' % (name, plan['crop'], plan['crop'], plan['batch']))
    results['memory'][name] = common.run_worker(
        'train_speed', dict(base, crop=plan['crop'], variants=[variant], memory=True))
  results['sweep'] = collections.OrderedDict()
  for crop in plan['sweep']:
    if crop == plan['crop']:
      results['sweep'][str(crop)] = results['memory']['train.py']
      continue
    common.log('train: sweep %dx%d, fresh process' % (crop, crop))
    results['sweep'][str(crop)] = common.run_worker(
        'train_speed', dict(base, crop=crop, variants=[_variant('train.py', **SPEED_ON)], memory=True))
  return results


def add_peak_fractions(section, peak):
  for group in ([section.get('speed', {}), section.get('speed_default_allocator', {})] +
                list(section.get('memory', {}).values()) +
                list(section.get('sweep', {}).values())):
    for timing in group.get('variants', {}).values():
      if peak:
        timing['fraction_of_peak'] = timing['gmacs_per_s'] / peak


def table(section):
  lines = []
  speed = section.get('speed', {})
  default = section.get('speed_default_allocator', {})
  if 'error' in speed or 'error' in default:
    lines.append('speed comparison failed: %s' % (speed.get('error') or default.get('error'))[-300:])
  elif speed:
    off = next(iter(default['variants'].values()))['best_s'] if default else None
    rows = []
    for label, group in (('TF_CPU_ALLOCATOR_USE_BFC=false', default), ('BFC allocator', speed)):
      for name, t in group.get('variants', {}).items():
        rows.append(['%s: %s' % (label, name), t['best_s'], t['median_s'], t['best_s'] / off if off else None,
                     t['images_per_s'], t['gmacs_per_s'], t.get('fraction_of_peak'), t.get('input_wait_s'),
                     t['cpu_share']])
    lines.append(common.format_table(
        ['training %dx%d, batch %d' % (speed['crop'], speed['crop'], speed['batch']), 'best s/step', 'median s',
         'vs off', 'images/s', 'GMAC/s (3 x fwd)', 'of fp32 peak', 'IteratorGetNext s', 'cpu share'],
        rows))
  rows = []
  for group, entries in (('', section.get('memory', {})), ('sweep ', section.get('sweep', {}))):
    for name, result in entries.items():
      if 'error' in result:
        rows.append([group + name, 'failed: %s' % result['error'][-100:]] + [None] * 6)
        continue
      t = next(iter(result['variants'].values()))
      memory = result['memory']
      rows.append([group + name, '%dx%d' % (result['crop'], result['crop']), t['best_s'], t['us_per_pixel'],
                   (memory['allocator_peak_bytes'] or 0) / common.MiB,
                   (memory['vmhwm_steps_bytes'] or 0) / common.MiB,
                   (memory['vmhwm_process_bytes'] or 0) / common.MiB, t.get('fraction_of_peak')])
  if rows:
    lines.append('')
    lines.append(common.format_table(['run (fresh process)', 'crop', 'best s/step', 'us/pixel',
                                      'allocator peak MiB', 'VmHWM steps MiB', 'VmHWM process MiB',
                                      'of fp32 peak'], rows))
  return '\n'.join(lines)
