"""`python -m bench gpu` (bench/gpu.py) on a machine without a GPU: it fails fast with one error line, and with
--allow_cpu its smoke run goes through every stage and writes sane figures (no speed is asserted); the largest-
batch search settles where a fake memory limit lies."""
import json
import os
import subprocess
import sys

import pytest

from bench import gpu
from libs.compat import tf
from tests.conftest import REPO_ROOT

no_gpu = pytest.mark.skipif(bool(tf.config.list_physical_devices('GPU')), reason='this machine has a GPU')


def _bench_gpu(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'bench', 'gpu'] + list(args), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout)


@no_gpu
def test_without_a_gpu_it_stops_with_one_error_line_and_writes_nothing(tmp_path):
  out = str(tmp_path / 'results')
  proc = _bench_gpu('--out', out, timeout=120)
  assert proc.returncode == gpu.EXIT_NO_GPU
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: python -m bench gpu: '), proc.stderr
  assert 'tensorflow[and-cuda]==2.21.0' in lines[0] or 'no GPU is visible' in lines[0]
  assert not proc.stdout.strip() and not os.path.exists(out)


@no_gpu
def test_quick_smoke_run_on_the_cpu_goes_through_every_stage(tmp_path):
  out = str(tmp_path / 'results')
  # The inference stage's worker is bench/inference_speed.py's, smoke-tested in test_bench.py.
  proc = _bench_gpu('--quick', '--allow_cpu', '--cpu_memory_limit_mb', '40', '--skip', 'inference', '--out', out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, 'gpu_quick.json')) as f:
    results = json.load(f)
  with open(os.path.join(out, 'gpu_quick.md')) as f:
    text = f.read()
  assert not os.path.exists(os.path.join(out, 'gpu_quick.partial.json'))
  assert all('## %s' % name in text for name in ('device', 'tests', 'train', 'batch'))
  assert results['on_gpu'] is False and dict(results['skipped_stages']) == {'inference': '--skip'}
  # The device tests ran (and skipped: no GPU, and --allow_cpu does not require one).
  tests = results['tests']
  assert tests['rc'] == 0 and tests['skipped'] >= 7 and tests['failed'] == tests['errors'] == 0, tests
  variants = results['train']['variants']
  assert list(variants) == [v['name'] for v in gpu.QUICK_TRAIN_VARIANTS]
  for name, t in variants.items():
    assert 'error' not in t, (name, t)
    assert t['best_s'] > 0 and t['median_s'] >= t['best_s'] and t['losses_finite'], name
    assert t['peak_bytes'] > 0 and t['allocator'] == 'CPU_BFC_Peak', name
  assert {v['variant']['mixed_precision'] for v in variants.values()} == {'none', 'float16', 'bfloat16'}
  batch = results['batch']
  assert 2 <= len(batch['tries']) <= gpu.MAX_BATCH_TRIES and all(t['fits'] for t in batch['tries'])
  assert batch['largest_fitting'] == max(t['batch'] for t in batch['tries']) > 1


def test_largest_batch_search_brackets_the_limit():
  """The search on a linear memory model: fixed 1000 + 100 per image, limit 5000 (40 images fit)."""
  def peak(batch):
    return 1000 + 100 * batch
  limit, peak_1 = 5000, peak(1)
  first = gpu.estimate_largest_batch(limit, peak_1)
  assert first == int(0.9 * 5000 / 1100)  # every byte of the batch-1 peak counted per image: an under-estimate
  # Two points separate the fixed part: (0.97 * 5000 - 1000) / 100.
  assert gpu.estimate_largest_batch(limit, peak_1, peak(first), first) == 38
  tried = gpu.search_largest_batch(lambda b: (peak(b) <= limit, peak(b)), limit, peak_1, max_tries=8)
  assert list(tried) == [first, 38, 41, 39, 40]  # then settled: 40 fits, 41 does not
  assert list(gpu.search_largest_batch(lambda b: (peak(b) <= limit, peak(b)), limit, peak_1, max_tries=2)) == [
      first, 38]
  assert list(gpu.search_largest_batch(lambda b: (False, None), limit, peak_1, max_tries=4)) == [4, 2, 1]
  assert gpu.next_batch_to_try({}, 0.5) == 1 and gpu.next_batch_to_try({1: (False, None)}, 1) is None
  assert gpu.estimate_largest_batch(None, 100) == 1
