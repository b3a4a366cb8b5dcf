r"""Peak memory and latency of the exported frozen graph, loaded plainly and with the lean loader, against the
SavedModel of the same model (issue 13).

    PYTHONPATH=. .venv/bin/python -m bench.frozen_memory           # PSPNet50 at 713x713 and 1024x2048, batch 1
    PYTHONPATH=. .venv/bin/python -m bench.frozen_memory --quick   # the tiny model at 65x65: a smoke run

Sources (bench/common.EXPORT_SOURCES): `frozen_import` (frozen_inference_graph.pb through tf.import_graph_def:
its weights are Const nodes), `frozen` (the same file through libs/frozen_graph.load_session: its weights moved
into variables before the import) and `saved_model` (the TF1 SavedModel loader, as TF Serving loads it).

For each size, each step in a fresh worker process (bench/common.run_worker, TF_CPU_ALLOCATOR_USE_BFC=true):
  1. export: a checkpoint of random weights (bench/inference_speed._random_checkpoint) exported by
     drivers/exporter.export exactly as export.py does (network shape = the size);
  2. memory, one process per source: after `import tensorflow` (and the toolkit) the resident set is the
     baseline and VmHWM is reset to it; the source is loaded and run (warm-up runs, then timed runs) on a random
     uint8 image. Peak RSS delta = VmHWM - baseline, read after the load, after the first run (which includes
     grappler's optimisation of the graph) and at the end; the seconds of the load, of the first run and the
     best timed run of that process;
  3. latency: all three sources loaded in one process and timed interleaved (common.interleaved, order rotated
     per round); ratios are of the best runs, and every source's predictions are compared with the SavedModel's.

The machine may be shared: every timing records cpu_share (bench/common.py). Writes OUT/frozen_memory[_quick].json
and .md (default OUT: bench/results).
"""
import argparse
import collections
import datetime
import os
import shutil
import sys
import tempfile

import numpy as np

from bench import common

SOURCES = ('frozen_import', 'frozen', 'saved_model')
REFERENCE = 'saved_model'
FULL = {'sizes': [[713, 713], [1024, 2048]], 'warmup': 1, 'memory_runs': 1, 'latency_runs': 5}
QUICK = {'sizes': [[65, 65]], 'warmup': 1, 'memory_runs': 1, 'latency_runs': 2}
# Timed rounds at sizes above a megapixel (the slowest runs).
LARGE_LATENCY_RUNS = 3
# Targets of issue 13: the frozen graph against the SavedModel.
LATENCY_TARGET = 0.05
MEMORY_TARGET = 0.20


def _image(size):
  return np.random.RandomState(0).randint(0, 256, [1] + list(size) + [3]).astype(np.uint8)


def _export(spec):
  """Writes a random-weights checkpoint and its export under spec['dir']; returns the export's figures."""
  # pylint: disable=import-outside-toplevel
  from bench import inference_speed
  from drivers import exporter
  # pylint: enable=import-outside-toplevel
  size = tuple(spec['size'])
  model_config = common.load_pipeline_config(spec['quick']).model
  checkpoint = inference_speed._random_checkpoint(model_config, size, spec['dir'])  # pylint: disable=protected-access
  _, seconds, _ = common.timed(lambda: exporter.export(
      model_config, spec['export_dir'], trained_checkpoint=checkpoint, input_shape=(1,) + size + (3,),
      pad_to_shape=size, num_timing_runs=0))
  frozen = os.path.join(spec['export_dir'], exporter.FROZEN_GRAPH_NAME)
  return collections.OrderedDict(export_seconds=seconds, frozen_graph_bytes=os.path.getsize(frozen))


def _memory(spec):
  """Peak resident memory above the post-import baseline of loading and running one source in this process."""
  # Imported before the baseline is read, so that the modules' own memory is not counted as the source's.
  # pylint: disable=import-outside-toplevel,unused-import
  from drivers import exporter
  from libs import frozen_graph
  from libs.compat import tf
  # pylint: enable=import-outside-toplevel,unused-import
  image = _image(spec['size'])
  common.reset_peak_memory()
  baseline = common.memory_usage()['VmRSS']
  out = collections.OrderedDict(source=spec['source'], baseline_rss_bytes=baseline)

  def peak():
    return common.memory_usage()['VmHWM'] - baseline

  (sess, inputs, predictions, _), out['load_s'], _ = common.timed(
      lambda: common.load_export(spec['source'], spec['export_dir'], common.session_config()))
  out['peak_delta_after_load_bytes'] = peak()
  _, out['first_run_s'], _ = common.timed(lambda: sess.run(predictions, {inputs: image}))
  out['peak_delta_after_first_run_bytes'] = peak()
  walls, cpus = [], []
  for index in range(spec['warmup'] - 1 + spec['runs']):
    _, wall, cpu = common.timed(lambda: sess.run(predictions, {inputs: image}))
    if index >= spec['warmup'] - 1:
      walls.append(wall)
      cpus.append(cpu)
  out['timing'] = common.summarize(walls, cpus)
  usage = common.memory_usage()
  out['peak_delta_bytes'] = usage['VmHWM'] - baseline
  out['allocator_peak_bytes'] = usage.get('CPU_BFC_Peak')
  sess.close()
  return out


def _latency(spec):
  """All sources in one process, timed interleaved; predictions compared with the reference's."""
  image = _image(spec['size'])
  sessions = collections.OrderedDict(
      (source, common.load_export(source, spec['export_dir'], common.session_config())) for source in SOURCES)
  outputs = {}

  def run_fn(source):
    sess, inputs, predictions, _ = sessions[source]
    return lambda: outputs.setdefault(source, sess.run(predictions, {inputs: image}))

  timings = common.interleaved(collections.OrderedDict((s, run_fn(s)) for s in SOURCES), spec['runs'],
                               spec['warmup'])
  for source, timing in timings.items():
    timing['equal_pixels_vs_%s' % REFERENCE] = float(np.mean(outputs[source] == outputs[REFERENCE]))
  for sess, _, _, _ in sessions.values():
    sess.close()
  return timings


def measure(spec):
  """Worker: spec['action'] export / memory / latency (see the module docstring)."""
  action = {'export': _export, 'memory': _memory, 'latency': _latency}[spec['action']]
  return action(spec)


def run(quick, workdir):
  """Every step of every size, each in a fresh worker process; returns {size: results}."""
  plan = QUICK if quick else FULL
  results = collections.OrderedDict()
  for size in plan['sizes']:
    name = '%dx%d' % tuple(size)
    directory = os.path.join(workdir, name)
    os.makedirs(directory)
    base = {'quick': quick, 'size': size, 'export_dir': os.path.join(directory, 'export')}
    common.log('frozen_memory %s: export' % name)
    result = results[name] = collections.OrderedDict(
        export=common.run_worker('frozen_memory', dict(base, action='export', dir=directory)), memory={})
    if 'error' in result['export']:
      continue
    for source in SOURCES:
      common.log('frozen_memory %s: memory of %s (fresh process)' % (name, source))
      result['memory'][source] = common.run_worker('frozen_memory', dict(
          base, action='memory', source=source, warmup=plan['warmup'], runs=plan['memory_runs']))
    runs = LARGE_LATENCY_RUNS if not quick and size[0] * size[1] > 10**6 else plan['latency_runs']
    common.log('frozen_memory %s: latency, %d sources x (%d warm-up + %d timed runs), interleaved'
               % (name, len(SOURCES), plan['warmup'], runs))
    result['latency'] = common.run_worker('frozen_memory', dict(
        base, action='latency', warmup=plan['warmup'], runs=runs))
    shutil.rmtree(directory, ignore_errors=True)
  return results


def add_ratios(results):
  """Adds, per size, each source's peak delta and best latency over the reference's, and whether the targets
  (frozen loader within LATENCY_TARGET and MEMORY_TARGET of the reference) are met."""
  for result in results.values():
    memory, latency = result.get('memory') or {}, result.get('latency') or {}
    reference_memory = (memory.get(REFERENCE) or {}).get('peak_delta_bytes')
    reference_latency = (latency.get(REFERENCE) or {}).get('best_s')
    ratios = collections.OrderedDict()
    for source in SOURCES:
      peak = (memory.get(source) or {}).get('peak_delta_bytes')
      best = (latency.get(source) or {}).get('best_s')
      ratios[source] = collections.OrderedDict(
          memory=peak / reference_memory if peak and reference_memory else None,
          latency=best / reference_latency if best and reference_latency else None)
    result['vs_%s' % REFERENCE] = ratios
    frozen = ratios['frozen']
    if frozen['memory'] is not None and frozen['latency'] is not None:
      result['targets_met'] = (frozen['memory'] <= 1 + MEMORY_TARGET and
                               abs(frozen['latency'] - 1) <= LATENCY_TARGET)
  return results


def table(results):
  """The Markdown table of add_ratios(results)."""
  rows = []
  for size, result in results.items():
    if 'error' in result['export']:
      rows.append([size, 'export failed: %s' % result['export']['error'][-200:].replace('\n', ' ')] + [None] * 9)
      continue
    for source in SOURCES:
      memory = result['memory'].get(source) or {}
      latency = (result.get('latency') or {}).get(source) or {}
      ratios = result['vs_%s' % REFERENCE][source]
      if 'error' in memory:
        memory = {}
      gb = lambda key, memory=memory: memory[key] / 1e9 if key in memory else None
      rows.append([size, source, gb('peak_delta_after_load_bytes'), gb('peak_delta_bytes'), ratios['memory'],
                   memory.get('load_s'), memory.get('first_run_s'), latency.get('best_s'),
                   latency.get('median_s'), ratios['latency'], latency.get('cpu_share')])
  return common.format_table(
      ['size', 'source', 'peak RSS delta after load (GB)', 'peak RSS delta (GB)', 'vs %s' % REFERENCE, 'load s',
       'first run s', 'best s (interleaved)', 'median s', 'vs %s' % REFERENCE, 'cpu share'], rows)


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m bench.frozen_memory', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='the tiny model at 65x65: a smoke run')
  parser.add_argument('--out', default=common.DEFAULT_OUT, help='directory for frozen_memory[_quick].json/.md')
  args = parser.parse_args(argv)
  started = datetime.datetime.now()
  workdir = tempfile.mkdtemp(prefix='bench_frozen_memory_')
  try:
    results = add_ratios(run(args.quick, workdir))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  machine = common.machine_info()
  seconds = (datetime.datetime.now() - started).total_seconds()
  data = collections.OrderedDict(date=started.strftime('%Y-%m-%d %H:%M'), quick=args.quick, seconds=seconds,
                                 machine=machine, sizes=results)
  suffix = '_quick' if args.quick else ''
  text = '\n\n'.join([
      '# python -m bench.frozen_memory%s' % (' --quick' if args.quick else ''),
      '%s, %.0f s: %s, %d cores, %s GiB. Peak RSS delta: VmHWM minus the resident set after `import tensorflow`, '
      'each source in a fresh process (GB = 1e9 bytes). Latency: batch 1, best of the interleaved runs. Ratios '
      'against the SavedModel; target: the frozen graph (`frozen`, libs/frozen_graph.load_session) within %d%% '
      'of its latency and %d%% of its peak memory.' % (
          data['date'], seconds, machine.get('cpu'), machine['cores'], machine.get('memory_gib'),
          LATENCY_TARGET * 100, MEMORY_TARGET * 100),
      table(results)])
  print(text)
  common.write_json(os.path.join(args.out, 'frozen_memory%s.json' % suffix), data)
  with open(os.path.join(args.out, 'frozen_memory%s.md' % suffix), 'w') as f:
    f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
