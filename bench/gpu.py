r"""The GPU check: `python -m bench gpu [--budget_s 450] [--out DIR] [--quick] [--allow_cpu]`.

One command for a short lease of a GPU machine (with `tensorflow[and-cuda]==2.21.0`, see scripts/setup.sh's
PSPNET_TF_PACKAGE). In order, each stage in fresh worker processes, within --budget_s seconds in all:

  probe      the GPUs TensorFlow sees (name, compute capability, memory limit), CUDA and cuDNN versions. Without
             a visible GPU the command stops here: one `error:` line, exit status 2 (--allow_cpu goes on, on the
             CPU: a smoke run of the command itself).
  tests      the device tests, `pytest -m gpu tests` (tests/test_gpu.py: a clone on /gpu:0 with the input
             pipeline on the CPU, synchronized batch norm of two clones on one GPU, float16 / bfloat16 steps on
             the GPU, GPU memory statistics, GPU vs CPU predictions) with PSPNET_REQUIRE_GPU=1, so that a test
             skipped for want of a GPU counts as a failure.
  train      the 713x713 batch-1 training step (bench/train_speed.py's graph: drivers/trainer.py with a random
             batch cached in the input pipeline) of float32 / float16 / bfloat16 x recompute_backbone_blocks 3 / 0,
             low_memory_conv_gradients on / off, and train_mem_saving.py's gradients, one variant after the other
             in one process: seconds per step (best and median of the timed steps) and the GPU allocator's peak
             over the timed steps (GPU0_Peak, reset after the warm-up steps).
  inference  batch-1 latency at 1024x2048 of the checkpoint graph, the frozen graph and the SavedModel, float32
             and bfloat16, interleaved (bench/inference_speed.py's worker).
  batch      the largest batch of the train.py default setting at 713x713 that fits in GPU memory: estimated
             from the batch-1 peak, then at most MAX_BATCH_TRIES tries (an OOM is tf.errors.ResourceExhaustedError).

Each stage runs only if the time left allows it; what was measured before a failure, a timeout or Ctrl-C is
kept. Writes DIR/gpu[_quick].json (all figures) and .md (the tables); DIR is bench/results by default.
"""
import argparse
import collections
import datetime
import math
import os
import re
import subprocess
import sys
import time

from bench import common
from bench import inference_speed
from bench import train_speed

EXIT_NO_GPU = 2
MAX_BATCH_TRIES = 4
# Seconds each stage may take at most, and the least it needs to be worth starting (full size).
STAGES = collections.OrderedDict([('tests', (150, 40)), ('train', (240, 60)), ('inference', (120, 45)),
                                  ('batch', (150, 45))])
FULL = {'crop': 713, 'warmup': 2, 'runs': 5, 'inference_size': [1024, 2048], 'inference_runs': 5}
QUICK = {'crop': 33, 'warmup': 1, 'runs': 2, 'inference_size': [33, 65], 'inference_runs': 1}
DEFAULT = 'float32, recompute 3 (train.py default)'


def _variant(name, mixed_precision='none', recompute_blocks=3, low_memory_grads=True, gradients=None):
  return train_speed._variant(  # pylint: disable=protected-access
      name, 'generated', gradients=gradients,
      **dict(train_speed.SPEED_ON, mixed_precision=mixed_precision, recompute_blocks=recompute_blocks,
             low_memory_grads=low_memory_grads))


# In order of importance: the stage stops adding variants when its time is up.
TRAIN_VARIANTS = [
    _variant(DEFAULT),
    _variant('float32, recompute 0', recompute_blocks=0),
    _variant('float32, recompute 0, low_memory_conv_gradients off', recompute_blocks=0, low_memory_grads=False),
    _variant('float16, recompute 3', 'float16'),
    _variant('float16, recompute 0, low_memory_conv_gradients off', 'float16', 0, False),
    _variant('bfloat16, recompute 3', 'bfloat16'),
    _variant('bfloat16, recompute 0, low_memory_conv_gradients off', 'bfloat16', 0, False),
    _variant('train_mem_saving.py float32 (seed checkpoints)', gradients='seed'),
    _variant('float16, recompute 0', 'float16', 0),
    _variant('bfloat16, recompute 0', 'bfloat16', 0),
]
INFERENCE_VARIANTS = inference_speed.MAIN_VARIANTS
# --quick (a smoke run of the command): one variant per code path.
QUICK_TRAIN_VARIANTS = [TRAIN_VARIANTS[i] for i in (0, 3, 6, 7)]
QUICK_INFERENCE_VARIANTS = [v for v in INFERENCE_VARIANTS if v['dtype'] == 'float32']


# ----------------------------------------------------------------------------------------------------------------
# Workers (python -m bench.worker gpu SPEC): measure(spec) by spec['action'].


def _probe():
  from tensorflow.python.client import device_lib  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  build = tf.sysconfig.get_build_info()
  out = collections.OrderedDict(
      tensorflow=tf.__version__, built_with_cuda=bool(tf.test.is_built_with_cuda()),
      cuda=build.get('cuda_version'), cudnn=build.get('cudnn_version'),
      cuda_visible_devices=os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), gpus=[])
  physical = tf.config.list_physical_devices('GPU')
  limits = {d.name: d.memory_limit for d in device_lib.list_local_devices() if d.device_type == 'GPU'} \
      if physical else {}
  for index, device in enumerate(physical):
    details = tf.config.experimental.get_device_details(device)
    out['gpus'].append(collections.OrderedDict(
        device='/device:GPU:%d' % index, name=details.get('device_name', '?'),
        compute_capability='.'.join(str(c) for c in details.get('compute_capability', ())) or '?',
        memory_limit_bytes=limits.get('/device:GPU:%d' % index)))
  return out


def _allocator_peak(usage):
  return usage.get('GPU0_Peak', usage.get('CPU_BFC_Peak'))


def _train_step_figures(spec, variant, runs, warmup):
  """Builds one variant and runs it: {'best_s', 'median_s', 'peak_bytes', 'loss', ...} or {'error'}."""
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  if variant['gradients'] and spec['quick']:
    variant = dict(variant, gradients=train_speed.QUICK['checkpoints'])  # the tiny model has no seed nodes
  try:
    sess, fetches, forward_gmacs = train_speed._build(spec, variant)  # pylint: disable=protected-access
  except tf.errors.ResourceExhaustedError as e:
    return collections.OrderedDict(error='out of memory while building: %s' % str(e).split('\n')[0][:200])
  except Exception as e:  # pylint: disable=broad-except
    # One variant that cannot be built (a missing kernel, say) must not cost the others' figures.
    return collections.OrderedDict(error='%s: %s' % (type(e).__name__, str(e).split('\n')[0][:300]))
  out = collections.OrderedDict(build_s=time.perf_counter() - started)
  try:
    losses = []
    for _ in range(warmup):
      losses.append(float(sess.run(fetches)[1]))
    common.reset_peak_memory()
    walls = []
    for _ in range(runs):
      _, wall, _ = common.timed(lambda: losses.append(float(sess.run(fetches)[1])))
      walls.append(wall)
    usage = common.memory_usage()
  except tf.errors.ResourceExhaustedError as e:
    out['error'] = 'out of memory: %s' % str(e).split('\n')[0][:200]
    return out
  except tf.errors.OpError as e:
    out['error'] = '%s: %s' % (type(e).__name__, str(e).split('\n')[0][:300])
    return out
  finally:
    sess.close()
  walls.sort()
  pixels = spec['batch'] * spec['crop'] ** 2
  out.update(best_s=walls[0], median_s=walls[len(walls) // 2], runs=len(walls),
             images_per_s=spec['batch'] / walls[0], us_per_pixel=walls[0] / pixels * 1e6,
             train_gmacs_per_s=3 * forward_gmacs / walls[0], peak_bytes=_allocator_peak(usage),
             allocator='GPU0_Peak' if 'GPU0_Peak' in usage else 'CPU_BFC_Peak',
             losses_finite=all(math.isfinite(l) for l in losses), last_loss=losses[-1])
  return out


def _train(spec):
  """Variants one after the other until spec['seconds'] are used up."""
  deadline = time.perf_counter() + spec['seconds']
  out = collections.OrderedDict(crop=spec['crop'], batch=spec['batch'], variants=collections.OrderedDict(),
                                skipped=[])
  per_variant = None
  for variant in spec['variants']:
    left = deadline - time.perf_counter()
    if per_variant is not None and left < per_variant:
      out['skipped'].append(variant['name'])
      continue
    common.log('gpu train: %s' % variant['name'])
    started = time.perf_counter()
    result = _train_step_figures(spec, variant, spec['runs'], spec['warmup'])
    per_variant = max(per_variant or 0.0, time.perf_counter() - started)
    result['variant'] = variant
    out['variants'][variant['name']] = result
  return out


def next_batch_to_try(tried, estimate):
  """The next batch size of the largest-batch search, or None when it is settled.

  Args:
    tried: {batch: (fits, peak_bytes or None)} so far.
    estimate: batch size expected to be the largest that fits (>= 1).

  Returns:
    The estimate while it lies above every batch that fit and below every one that failed; else bisection
    between the largest batch that fit and the smallest that failed; with no failure yet and the estimate
    reached, 10 % more (at least one more).
  """
  fit = [b for b, (ok, _) in tried.items() if ok]
  failed = [b for b, (ok, _) in tried.items() if not ok]
  low = max(fit) if fit else 0
  high = min(failed) if failed else None
  if high is not None and high - low <= 1:
    return None
  estimate = max(1, int(estimate))
  if estimate > low and (high is None or estimate < high) and estimate not in tried:
    return estimate
  if high is not None:
    return (low + high) // 2
  return low + max(1, low // 10)


def estimate_largest_batch(limit_bytes, peak_1, peak_b=None, batch_b=None):
  """Largest batch expected to fit in limit_bytes from the peak at batch 1 (and at a larger batch_b).

  With one point every byte of the batch-1 peak is counted per image (a safe under-estimate); with two, the
  fixed part (weights, gradients, optimizer slots) is separated from the per-image part, and 3 % of the limit
  is left for fragmentation."""
  if not limit_bytes or not peak_1:
    return 1
  if peak_b and batch_b and batch_b > 1 and peak_b > peak_1:
    per_image = (peak_b - peak_1) / float(batch_b - 1)
    fixed = max(0.0, peak_1 - per_image)
    return max(1, int((0.97 * limit_bytes - fixed) / per_image))
  return max(1, int(0.9 * limit_bytes / peak_1))


def search_largest_batch(try_batch, limit_bytes, peak_1, max_tries, time_for_another=lambda: True):
  """Largest batch that fits: the estimate from the batch-1 peak, re-estimated from each batch that fit.

  Args:
    try_batch: batch -> (fits, peak_bytes or None).
    limit_bytes, peak_1: the device's memory limit and the batch-1 peak.
    max_tries: at most this many calls of try_batch.
    time_for_another: () -> whether another try fits in the time left.

  Returns:
    OrderedDict {batch: (fits, peak_bytes)} in the order tried.
  """
  tried = collections.OrderedDict()
  estimate = estimate_largest_batch(limit_bytes, peak_1)
  while len(tried) < max_tries and (not tried or time_for_another()):
    batch = next_batch_to_try(tried, estimate)
    if batch is None:
      break
    tried[batch] = try_batch(batch)
    fits, peak = tried[batch]
    if fits and batch > 1 and batch == max(b for b, (ok, _) in tried.items() if ok):
      estimate = estimate_largest_batch(limit_bytes, peak_1, peak, batch)
  return tried


def _largest_batch(spec):
  """Largest-batch search of one variant (up to spec['max_tries'] tries, within spec['seconds'])."""
  deadline = time.perf_counter() + spec['seconds']
  out = collections.OrderedDict(variant=spec['variant']['name'], crop=spec['crop'],
                                first_estimate=estimate_largest_batch(spec['memory_limit_bytes'], spec['peak_1']),
                                memory_limit_bytes=spec['memory_limit_bytes'], tries=[])
  per_try = [0.0]

  def try_batch(batch):
    common.log('gpu batch: %dx%d batch %d' % (spec['crop'], spec['crop'], batch))
    started = time.perf_counter()
    result = _train_step_figures(dict(spec, batch=batch), spec['variant'], runs=1, warmup=1)
    per_try[0] = max(per_try[0], time.perf_counter() - started)
    fits = 'error' not in result
    out['tries'].append(collections.OrderedDict(batch=batch, fits=fits, **{
        k: result[k] for k in ('best_s', 'images_per_s', 'peak_bytes', 'error') if k in result}))
    return fits, result.get('peak_bytes')

  tried = search_largest_batch(try_batch, spec['memory_limit_bytes'], spec['peak_1'], spec['max_tries'],
                               lambda: deadline - time.perf_counter() > 1.5 * per_try[0])
  fit = [b for b, (ok, _) in tried.items() if ok]
  failed = [b for b, (ok, _) in tried.items() if not ok]
  out['largest_fitting'] = max(fit) if fit else None
  out['smallest_failing'] = min(failed) if failed else None
  out['settled'] = bool(fit and failed and min(failed) - max(fit) == 1)
  return out


def measure(spec):
  action = spec['action']
  if action == 'probe':
    return _probe()
  if action == 'train':
    return _train(spec)
  if action == 'batch':
    return _largest_batch(spec)
  raise ValueError('unknown action %r' % action)


# ----------------------------------------------------------------------------------------------------------------
# Driver.


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m bench gpu', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--budget_s', type=float, default=450.0,
                      help='seconds for all stages together (default 450: the check fits in 8 minutes with the '
                      'start-up); a stage that would not fit is skipped')
  parser.add_argument('--out', default=common.DEFAULT_OUT, help='directory for gpu[_quick].json and .md')
  parser.add_argument('--quick', action='store_true', help='the tiny model at small sizes: a smoke run')
  parser.add_argument('--allow_cpu', action='store_true',
                      help='go on without a GPU (on the CPU): to check the command itself, not to measure')
  parser.add_argument('--cpu_memory_limit_mb', type=float, default=None,
                      help='with --allow_cpu and no GPU: the memory limit the batch stage searches against (the '
                      'CPU allocator has none, so without it that stage is skipped on the CPU)')
  parser.add_argument('--skip', action='append', default=[], choices=list(STAGES),
                      help='a stage not to run (repeatable)')
  args = parser.parse_args(argv)
  if args.budget_s <= 0:
    parser.error('--budget_s must be > 0, got %s' % args.budget_s)
  return args


def _no_gpu_message(probe):
  if 'error' in probe:
    return 'TensorFlow could not be started to look for a GPU: %s' % probe['error'].splitlines()[-1][:300]
  if not probe['built_with_cuda']:
    return ('TensorFlow %s is a build without CUDA (tensorflow-cpu); install the CUDA build: '
            "PSPNET_TF_PACKAGE='tensorflow[and-cuda]==2.21.0' bash scripts/setup.sh" % probe['tensorflow'])
  return ('no GPU is visible to TensorFlow %s (CUDA %s, cuDNN %s, CUDA_VISIBLE_DEVICES=%s): check nvidia-smi and '
          'the driver' % (probe['tensorflow'], probe['cuda'], probe['cudnn'], probe['cuda_visible_devices']))


def _run_tests(args, timeout):
  """pytest -m gpu in a fresh process: {'passed', 'failed', 'skipped', 'errors', 'summary', 'rc', 'seconds'}."""
  env = dict(os.environ, PYTHONPATH=common.REPO_ROOT)
  if not args.allow_cpu:
    env['PSPNET_REQUIRE_GPU'] = '1'
  command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'gpu',
             os.path.join('tests', 'test_gpu.py') if args.quick else 'tests']
  started = time.perf_counter()
  try:
    proc = subprocess.run(command, cwd=common.REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    tail = (e.stdout or b'')
    tail = tail.decode() if isinstance(tail, bytes) else tail
    return collections.OrderedDict(rc=None, error='timed out after %d s' % timeout, output_tail=tail[-2000:])
  lines = proc.stdout.strip().splitlines()
  summary = lines[-1] if lines else ''
  out = collections.OrderedDict(rc=proc.returncode, summary=summary, seconds=time.perf_counter() - started)
  counts = dict((word, int(n)) for n, word in re.findall(r'(\d+) (passed|failed|skipped|error|deselected)',
                                                        summary))
  for word in ('passed', 'failed', 'skipped', 'error', 'deselected'):
    out[word + 's' if word == 'error' else word] = counts.get(word, 0)
  if proc.returncode not in (0, 5):  # 5: nothing collected
    out['output_tail'] = (proc.stdout + proc.stderr)[-3000:]
  return out


class _Budget(object):
  def __init__(self, seconds):
    self._deadline = time.perf_counter() + seconds

  def left(self):
    return self._deadline - time.perf_counter()

  def stage_seconds(self, name, later, quick):
    """Seconds stage `name` may use (None: not enough left), keeping the minimum of the stages after it."""
    cap, minimum = STAGES[name]
    reserve = sum(STAGES[s][1] for s in later)
    if quick:
      cap, minimum, reserve = cap, 5, 0
    seconds = min(cap, self.left() - reserve)
    return seconds if seconds >= minimum else None


def _ms(seconds):
  return None if seconds is None else seconds * 1000.0


def _mib(value):
  return None if not value else value / common.MiB


def tables(results):
  """Markdown sections of the results."""
  sections = collections.OrderedDict()
  probe = results.get('probe') or {}
  rows = [[g['device'], g['name'], g['compute_capability'], _mib(g.get('memory_limit_bytes'))]
          for g in probe.get('gpus', [])]
  sections['device'] = ('TensorFlow %s, CUDA %s, cuDNN %s\n\n' % (
      probe.get('tensorflow'), probe.get('cuda'), probe.get('cudnn'))) + (common.format_table(
          ['device', 'name', 'compute capability', 'TF memory limit MiB'], rows) if rows else 'no GPU (CPU run)')
  tests = results.get('tests')
  if tests:
    sections['tests'] = 'pytest -m gpu: %s (rc %s)%s' % (
        tests.get('summary') or tests.get('error'), tests.get('rc'),
        '\n\n```\n%s\n```' % tests['output_tail'][-1500:] if tests.get('output_tail') else '')
  train = results.get('train')
  if train:
    variants = train.get('variants', {})
    base = (variants.get(DEFAULT) or {}).get('best_s')
    base_peak = (variants.get(DEFAULT) or {}).get('peak_bytes')
    rows = []
    for name, t in variants.items():
      if 'error' in t:
        rows.append([name, 'failed: %s' % t['error'][:120]] + [None] * 5)
        continue
      rows.append([name, _ms(t['best_s']), _ms(t['median_s']), t['images_per_s'],
                   t['best_s'] / base if base else None, _mib(t['peak_bytes']),
                   t['peak_bytes'] / base_peak if base_peak and t['peak_bytes'] else None])
    text = common.format_table(
        ['training %dx%d batch %d' % (train['crop'], train['crop'], train['batch']), 'best ms/step', 'median ms',
         'images/s', 'time vs default', 'peak MiB (%s)' % next(
             (t['allocator'] for t in variants.values() if 'allocator' in t), 'GPU0_Peak'), 'peak vs default'],
        rows)
    if train.get('skipped'):
      text += '\n\nnot run (time budget): %s' % ', '.join(train['skipped'])
    sections['train'] = text
  inference = results.get('inference')
  if inference:
    sections['inference'] = inference_speed.table({inference.get('size', '?'): inference})
  batch = results.get('batch')
  if batch:
    rows = [[t['batch'], 'yes' if t['fits'] else 'no', _ms(t.get('best_s')), t.get('images_per_s'),
             _mib(t.get('peak_bytes')), t.get('error', '')[:100]] for t in batch.get('tries', [])]
    sections['batch'] = ('largest batch of "%s" at %dx%d: %s fits%s (memory limit %s MiB, first estimate %s)\n\n'
                         % (batch['variant'], batch['crop'], batch['crop'], batch.get('largest_fitting'),
                            ', %s does not' % batch['smallest_failing'] if batch.get('smallest_failing') else
                            ' (larger not tried)', '%.0f' % _mib(batch['memory_limit_bytes'])
                            if batch.get('memory_limit_bytes') else '?', batch.get('first_estimate'))) + \
        common.format_table(['batch', 'fits', 'ms/step', 'images/s', 'peak MiB', 'error'], rows)
  for name in STAGES:
    if name in results.get('skipped_stages', {}):
      sections.setdefault(name, 'not run: %s' % results['skipped_stages'][name])
  return sections


def _write(results, args, final):
  suffix = '_quick' if args.quick else ''
  path = os.path.join(args.out, 'gpu%s%s.json' % (suffix, '' if final else '.partial'))
  common.write_json(path, results)
  if final:
    partial = os.path.join(args.out, 'gpu%s.partial.json' % suffix)
    if os.path.exists(partial):
      os.remove(partial)
  return path


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  budget = _Budget(args.budget_s)
  started = datetime.datetime.now()
  plan = QUICK if args.quick else FULL
  probe = common.run_worker('gpu', {'action': 'probe'}, timeout=max(30, int(budget.left())))
  if 'error' in probe or not probe.get('gpus'):
    if not args.allow_cpu or 'error' in probe:
      print('error: python -m bench gpu: %s' % _no_gpu_message(probe), file=sys.stderr)
      return EXIT_NO_GPU
    common.log('gpu: no GPU visible; --allow_cpu: running on the CPU (figures are not GPU figures)')
  os.makedirs(args.out, exist_ok=True)
  results = collections.OrderedDict(
      date=started.strftime('%Y-%m-%d %H:%M'), quick=args.quick, budget_s=args.budget_s,
      on_gpu=bool(probe.get('gpus')), probe=probe, machine=common.machine_info(),
      skipped_stages=collections.OrderedDict())
  names = list(STAGES)
  try:
    for index, name in enumerate(names):
      if name in args.skip:
        results['skipped_stages'][name] = '--skip'
        continue
      seconds = budget.stage_seconds(name, names[index + 1:], args.quick)
      if seconds is None:
        results['skipped_stages'][name] = 'time budget (%.0f s left)' % budget.left()
        continue
      common.log('gpu: stage %s (up to %.0f s; %.0f s left in all)' % (name, seconds, budget.left()))
      # Workers get a soft deadline (they stop adding variants) and a hard timeout a little later.
      hard = int(seconds + 60)
      if name == 'tests':
        results['tests'] = _run_tests(args, int(seconds))
      elif name == 'train':
        results['train'] = common.run_worker('gpu', dict(
            action='train', quick=args.quick, crop=plan['crop'], batch=1,
            variants=QUICK_TRAIN_VARIANTS if args.quick else TRAIN_VARIANTS,
            runs=plan['runs'], warmup=plan['warmup'], records=None, seconds=seconds * 0.85), timeout=hard)
      elif name == 'inference':
        results['inference'] = common.run_worker('inference_speed', dict(
            quick=args.quick, size=plan['inference_size'],
            variants=QUICK_INFERENCE_VARIANTS if args.quick else INFERENCE_VARIANTS,
            runs=plan['inference_runs'], warmup=1), timeout=int(seconds))
      elif name == 'batch':
        train = results.get('train') or {}
        default = {} if 'error' in train else train['variants'].get(DEFAULT) or {}
        limit = next((g.get('memory_limit_bytes') for g in probe.get('gpus', [])), None)
        if not probe.get('gpus') and args.cpu_memory_limit_mb:
          limit = args.cpu_memory_limit_mb * common.MiB
        if not default.get('peak_bytes') or not limit:
          results['skipped_stages'][name] = ('no GPU memory limit (CPU run)' if not limit else
                                             'no batch-1 peak of the default setting from the train stage')
          continue
        results['batch'] = common.run_worker('gpu', dict(
            action='batch', quick=args.quick, crop=plan['crop'], variant=TRAIN_VARIANTS[0], records=None,
            memory_limit_bytes=limit, peak_1=default['peak_bytes'], max_tries=MAX_BATCH_TRIES,
            seconds=seconds * 0.85), timeout=hard)
      _write(results, args, final=False)
  except BaseException:
    _write(results, args, final=False)
    raise
  results['seconds'] = (datetime.datetime.now() - started).total_seconds()
  json_path = _write(results, args, final=True)
  gpus = ', '.join('%s (%s)' % (g['name'], g['compute_capability']) for g in probe.get('gpus', [])) or 'no GPU'
  text = '\n\n'.join(['# python -m bench gpu%s' % (' --quick' if args.quick else ''),
                      '%s, %s, %.0f s of a %.0f s budget' % (results['date'], gpus, results['seconds'],
                                                             args.budget_s)] +
                     ['## %s\n\n%s' % (name, table) for name, table in tables(results).items()])
  with open(os.path.join(args.out, 'gpu%s.md' % ('_quick' if args.quick else '')), 'w') as f:
    f.write(text + '\n')
  print(text)
  print('Results: %s (%.0f s)' % (json_path, results['seconds']))
  failed = [n for n in ('train', 'inference', 'batch') if 'error' in (results.get(n) or {})]
  tests = results.get('tests') or {}
  return 1 if failed or tests.get('rc') not in (None, 0, 5) or 'error' in tests else 0
