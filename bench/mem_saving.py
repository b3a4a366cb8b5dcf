r"""Benchmark of memory-saving training (train_mem_saving.py) against plain training (train.py).

    python -m bench.mem_saving                      # PSPNet50, 385x385 crops, batch 2 (bench/results/README.md)
    python -m bench.mem_saving --quick              # a 1/4-width PSPNet50 at 161x161, for a quick look
    python -m bench.mem_saving --crop 473 --batch 2 --memory_cap_gb 6 --configs plain,seed,auto-memory,auto-units

For every configuration, each measurement runs in a fresh process with TF_CPU_ALLOCATOR_USE_BFC=true (so the CPU
allocator keeps statistics): it builds the training graph with the real model, trainer and gradient code
(drivers/trainer.build_training_graph; only the input pipeline is replaced by random in-memory batches, no
TFRecords needed), runs warm-up steps, resets the peaks, runs the measured steps and reports

  * peak bytes of TensorFlow's CPU allocator during the measured steps (tf.config.experimental.get_memory_info),
  * VmHWM (peak resident memory) over the measured steps and over the whole process,
  * the median seconds per step,

with --repeats rounds interleaving the configurations (the fastest step time and the highest peak are kept), and
then searches, for each configuration, the largest batch whose measured peak fits under --memory_cap_gb
(default: the peak of plain training at --batch). Configurations: plain (tf.gradients: train.py with
train_config.recompute_backbone_blocks: 0), train.py (its default: root and blocks 1-3 recomputed), seed (the
five checkpoint nodes of ../shared/seed/pspnet.md), auto-memory, auto-speed, auto-units (automatic checkpoints).

Prints a table and writes JSON to bench/results/mem_saving.json (or --out). Targets of the memory-saving
gradients (issue 4): peak <= 0.5x plain at <= 1.3x the step time, and >= 2x the batch under the same cap.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

from architectures import pspnet_architecture

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PATH = os.path.join(REPO_ROOT, 'configs', 'pspnet_1.0_713_resnet_v1.config')
DEFAULT_OUT = os.path.join(REPO_ROOT, 'bench', 'results', 'mem_saving.json')

SEED_CHECKPOINT_NODES = list(pspnet_architecture.SEED_CHECKPOINT_NODES)
CONFIGS = {  # name -> checkpoints of the memory-saving gradients (None: the trainer's own gradients)
    'plain': None,
    'train.py': None,
    'seed': SEED_CHECKPOINT_NODES,
    'auto-memory': 'memory',
    'auto-speed': 'speed',
    'auto-units': 'units',
}
QUICK_FILTER_SCALE = 0.25
MAX_BATCH = 64
MiB = 2.0**20


# ----------------------------------------------------------------------------------------------------------------
# One measurement (runs in its own process).


def _synthetic_input(crop):
  """A replacement for trainer.build_input: random images and labels of the configured batch size."""
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  from libs.standard_fields import InputDataFields as fields  # pylint: disable=import-outside-toplevel

  def build_input(pipeline_config, num_classes, ignore_label):
    del ignore_label
    batch = pipeline_config.train_config.batch_size
    with tf.device('/cpu:0'):
      images = tf.random.uniform([batch, crop, crop, 3], 0.0, 255.0, seed=1)
      labels = tf.random.uniform([batch, crop, crop, 1], 0, num_classes, dtype=tf.int32, seed=2)
    return {fields.image: images, fields.labels_class: tf.cast(labels, tf.uint8)}
  return build_input


def _measure_here(spec):
  """Builds and runs one training configuration in this process; returns the measurements."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from libs import config_util  # pylint: disable=import-outside-toplevel
  from libs import gradient_checkpoints  # pylint: disable=import-outside-toplevel
  from libs import memory  # pylint: disable=import-outside-toplevel
  from libs import memory_saving_gradients as msg  # pylint: disable=import-outside-toplevel
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel

  config = config_util.load_pipeline_config(CONFIG_PATH)
  config.train_config.batch_size = spec['batch']
  config.train_config.ClearField('fine_tune_checkpoint')  # random initialisation
  if spec['config'] == 'plain':
    config.train_config.recompute_backbone_blocks = 0
  if spec['quick']:
    text_format.Merge('pspnet { filter_scale: %g }' % QUICK_FILTER_SCALE, config.model)
  trainer.build_input = _synthetic_input(spec['crop'])  # the only part of the trainer replaced

  checkpoints = CONFIGS[spec['config']]
  chosen = []
  gradients_fn = None
  if checkpoints is not None:
    def gradients_fn(ys, xs):
      chosen.extend(gradient_checkpoints.select_checkpoints(ys, xs, checkpoints))
      return msg.gradients(ys, xs, checkpoints=checkpoints)

  start = time.time()
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    graph = trainer.build_training_graph(config, trainer.default_options(gradients_fn=gradients_fn))
    init = tf.global_variables_initializer()
    build_seconds = time.time() - start
    with tf.Session(config=tf.ConfigProto(allow_soft_placement=True)) as sess:
      sess.run(init)
      fetches = [graph.train_op, graph.total_loss]
      for _ in range(spec['warmup']):
        sess.run(fetches)
      vmhwm_total = memory.memory_usage().get('VmHWM')
      memory.reset_peak_memory()
      times, losses = [], []
      for _ in range(spec['steps']):
        step_start = time.time()
        losses.append(float(sess.run(fetches)[1]))
        times.append(time.time() - step_start)
      usage = memory.memory_usage()
  times.sort()
  return {
      'config': spec['config'], 'batch': spec['batch'], 'crop': spec['crop'], 'quick': spec['quick'],
      'peak_bytes': usage.get('CPU_BFC_Peak'),
      'vmhwm_steps_bytes': usage.get('VmHWM'),
      'vmhwm_process_bytes': max(vmhwm_total or 0, usage.get('VmHWM') or 0),
      'sec_per_step': times[len(times) // 2],
      'step_seconds': times,
      'graph_build_seconds': build_seconds,
      'num_checkpoints': len(chosen),
      'checkpoint_bytes': sum(_static_bytes(t) for t in chosen),
      'losses': losses,
  }


def _static_bytes(tensor):
  size = tensor.dtype.size
  for dim in tensor.shape.as_list():
    size *= dim or 1
  return size


# ----------------------------------------------------------------------------------------------------------------
# Driver.


def measure(config, batch, args, steps, warmup):
  """Runs one measurement in a fresh process; {'error': ...} if it fails (e.g. killed for memory)."""
  spec = {'config': config, 'batch': batch, 'crop': args.crop, 'quick': args.quick, 'steps': steps,
          'warmup': warmup}
  env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC='true', TF_CPP_MIN_LOG_LEVEL='2')
  started = time.time()
  try:
    result = subprocess.run([sys.executable, '-m', 'bench.mem_saving', '--worker', json.dumps(spec)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
  except subprocess.TimeoutExpired:
    return dict(spec, error='timeout after %d s' % args.timeout)
  lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
  if result.returncode != 0 or not lines:
    return dict(spec, error='exit %d: %s' % (result.returncode, result.stderr[-600:]))
  out = json.loads(lines[-1])
  print('  %-12s batch %2d: peak %7.0f MiB, %.2f s/step (%.0f s)' % (
      config, batch, out['peak_bytes'] / MiB, out['sec_per_step'], time.time() - started), flush=True)
  return out


def _combine(runs):
  """One result from repeated runs: the fastest median step time (the least disturbed by other processes) and
  the highest peak (a memory cap has to hold for every schedule the executor may pick)."""
  ok = [run for run in runs if 'error' not in run]
  if not ok:
    return runs[-1]
  combined = dict(min(ok, key=lambda run: run['sec_per_step']))
  for key in ('peak_bytes', 'vmhwm_steps_bytes', 'vmhwm_process_bytes'):
    combined[key] = max(run[key] for run in ok)
  combined['repeats'] = len(ok)
  return combined


def largest_batch(config, base, cap, args):
  """Largest batch whose measured peak is <= cap: a linear fit of two measurements, then +-1 steps."""
  peaks = {base['batch']: base['peak_bytes']}

  def peak(batch):
    if batch not in peaks:
      out = measure(config, batch, args, steps=1, warmup=1)
      peaks[batch] = out.get('peak_bytes') or math.inf
    return peaks[batch]

  b0 = base['batch']
  b1 = b0 * 2 if peaks[b0] <= cap else max(1, b0 // 2)
  if b1 != b0 and peak(b1) < math.inf and peak(b1) != peaks[b0]:
    slope = (peaks[b1] - peaks[b0]) / float(b1 - b0)
    guess = int((cap - (peaks[b0] - slope * b0)) // slope) if slope > 0 else b1
  else:
    guess = b0
  batch = min(max(1, guess), MAX_BATCH)
  while batch > 1 and peak(batch) > cap:
    batch -= 1
  if peak(batch) > cap:
    return 0, peaks
  while batch < MAX_BATCH and peak(batch + 1) <= cap:
    batch += 1
  return batch, peaks


def _table(results, cap):
  plain = results.get('plain', {}).get('base', {})
  lines = ['| config | checkpoints | peak MiB (CPU allocator) | vs plain | VmHWM MiB (steps / process) | sec/step '
           '| vs plain | largest batch <= %.2f GiB |' % (cap / 2.0**30),
           '|---|---|---|---|---|---|---|---|']
  for name, entry in results.items():
    base = entry['base']
    if 'error' in base:
      lines.append('| %s | | failed: %s | | | | | |' % (name, base['error'][:60]))
      continue
    peak_ratio = base['peak_bytes'] / plain['peak_bytes'] if plain.get('peak_bytes') else float('nan')
    time_ratio = base['sec_per_step'] / plain['sec_per_step'] if plain.get('sec_per_step') else float('nan')
    lines.append('| %s | %d (%.0f MiB) | %.0f | %.2fx | %.0f / %.0f | %.2f | %.2fx | %s |' % (
        name, base['num_checkpoints'], base['checkpoint_bytes'] / MiB, base['peak_bytes'] / MiB, peak_ratio,
        base['vmhwm_steps_bytes'] / MiB, base['vmhwm_process_bytes'] / MiB, base['sec_per_step'], time_ratio,
        entry.get('largest_batch', '-')))
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--crop', type=int, default=None, help='square crop size (default 385; 161 with --quick)')
  parser.add_argument('--batch', type=int, default=2, help='batch size of the time and peak comparison')
  parser.add_argument('--steps', type=int, default=3, help='measured steps (after --warmup steps)')
  parser.add_argument('--warmup', type=int, default=1, help='steps before measuring')
  parser.add_argument('--repeats', type=int, default=2,
                      help='rounds of the comparison at --batch, interleaving the configurations')
  parser.add_argument('--configs', default='plain,train.py,seed,auto-memory',
                      help='comma-separated, from: %s' % ', '.join(CONFIGS))
  parser.add_argument('--memory_cap_gb', type=float, default=0.0,
                      help='memory cap (GiB of peak allocator memory) of the batch search; 0: the peak of plain '
                           'training at --batch')
  parser.add_argument('--no_batch_search', action='store_true', help='skip the largest-batch search')
  parser.add_argument('--quick', action='store_true',
                      help='PSPNet50 at filter_scale %g (1/16 of the weights) and 161x161 crops'
                      % QUICK_FILTER_SCALE)
  parser.add_argument('--timeout', type=int, default=3600, help='seconds per measurement process')
  parser.add_argument('--out', default=DEFAULT_OUT, help='JSON output path')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.worker:
    print(json.dumps(_measure_here(json.loads(args.worker))))
    return 0
  args.crop = args.crop or (161 if args.quick else 385)
  names = [name.strip() for name in args.configs.split(',') if name.strip()]
  unknown = [name for name in names if name not in CONFIGS]
  if unknown:
    parser.error('--configs: unknown %s; allowed: %s' % (', '.join(unknown), ', '.join(CONFIGS)))
  if 'plain' in names:  # the reference comes first
    names.remove('plain')
    names.insert(0, 'plain')

  print('PSPNet50%s, %dx%d crops, batch %d, %d measured steps after %d warm-up (each run in a fresh process)' % (
      ' at filter_scale %g' % QUICK_FILTER_SCALE if args.quick else '', args.crop, args.crop, args.batch,
      args.steps, args.warmup), flush=True)
  # Rounds interleave the configurations, so that load from other processes affects all of them alike.
  runs = {name: [] for name in names}
  for _ in range(args.repeats):
    for name in names:
      runs[name].append(measure(name, args.batch, args, args.steps, args.warmup))
  results = {name: {'base': _combine(runs[name]), 'runs': runs[name]} for name in names}
  cap = args.memory_cap_gb * 2.0**30 if args.memory_cap_gb > 0 else (
      results.get('plain', {}).get('base', {}).get('peak_bytes') or 0)
  if not args.no_batch_search and cap:
    print('Largest batch under %.2f GiB:' % (cap / 2.0**30), flush=True)
    for name in names:
      if 'error' in results[name]['base']:
        continue
      batch, peaks = largest_batch(name, results[name]['base'], cap, args)
      results[name]['largest_batch'] = batch
      results[name]['peak_bytes_by_batch'] = {str(b): p for b, p in sorted(peaks.items()) if p < math.inf}
  table = _table(results, cap)
  print(table)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'settings': {k: v for k, v in vars(args).items() if k != 'worker'}, 'memory_cap_bytes': cap,
               'results': results, 'table': table}, f, indent=2)
  print('Wrote %s' % args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
