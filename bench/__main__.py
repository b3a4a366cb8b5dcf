r"""Benchmarks of the toolkit: `python -m bench [SECTION ...] [--quick] [--out DIR]`.

    python -m bench all                 # everything at full size (how long: README, "Performance")
    python -m bench all --quick         # a smoke run of everything on the tiny model
    python -m bench inference train     # some sections
    python -m bench compare --config_path A --config_path B [--eval_dir EA --eval_dir EB] [--checkpoint CA
        --checkpoint CB] [--input_shape 1024,2048] [--quick]   # models side by side (flags: bench/compare.py)
    python -m bench gpu [--budget_s 450]  # the GPU check, under 8 minutes on a GPU machine (bench/gpu.py)

Sections (each measured in fresh worker processes, see bench/common.py):
  peak       the machine's measured dense peak: large fp32/bf16 matmuls and 3x3 convs through TensorFlow
  model      parameters (with and without the aux head) and MACs, profiler cross-check (bench/model_figures.py)
  inference  batch-1 latency of the checkpoint graph, frozen graph and SavedModel, fp32 and bf16, and the speed
             levers (bench/inference_speed.py)
  train      training step time, images/s and peak memory: train.py-style, memory-saving, speed options off/on,
             a crop sweep (bench/train_speed.py)
  input      the training input pipeline alone, and its share of the training step (bench/input_pipeline.py)
  eval       evaluation throughput and metric overhead (bench/eval_speed.py)
  gpu        (on its own, not part of all) the GPU check for a short lease of a GPU machine: device tests,
             training step time and GPU memory per precision and setting, inference latency, largest batch
             (python -m bench gpu [--budget_s 450] [--quick] [--allow_cpu], flags: bench/gpu.py)
  compare    (on its own, not part of all) parameters, MACs, interleaved latency, memory and mIoU of several
             configs, beside the original toolkit's published figures (bench/compare.py)

Every speed is also reported as a fraction of the fp32 matmul rate measured in the same run (the peak section
always runs first). Writes DIR/bench[_SECTIONS][_quick].json (all figures), .md (the tables) and, with the
train section, DIR/train_sweep[_quick].png (time and memory per step against pixels per step).
"""
import argparse
import collections
import datetime
import os
import shutil
import sys
import tempfile

from libs import cli

# TensorFlow's C++ start-up notices (oneDNN, absl) would precede the bench's own lines (and `bench gpu`'s one
# error line without a GPU).
cli.import_tensorflow_quietly()

from bench import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench import compare
from bench import eval_speed
from bench import gpu
from bench import inference_speed
from bench import input_pipeline
from bench import model_figures
from bench import peak
from bench import plot
from bench import train_speed

SECTIONS = ('peak', 'model', 'inference', 'train', 'input', 'eval')
# Targets of issue 6 (ratios within one run).
TARGETS = collections.OrderedDict([
    ('fp32 inference, fraction of the measured fp32 peak', '>= 0.75 of the fp32 matmul peak'),
    ('training step, speed options on / off', '<= 0.85'),
    ('training step peak memory (VmHWM of the steps)', '<= 3.6 GB (the issue\'s PyTorch figure at 713x713 batch 1)'),
    ('frozen graph and SavedModel latency / checkpoint graph', '<= 1.05'),
    ('input wait, share of the training step', '< 3%'),
    ('training time per pixel across crops, max / min', 'roughly flat (plotted)'),
])


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m bench', description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('sections', nargs='*', default=['all'], help='all or any of: %s' % ', '.join(SECTIONS))
  parser.add_argument('--quick', action='store_true', help='tiny model and small sizes: a smoke run')
  parser.add_argument('--out', default=common.DEFAULT_OUT, help='directory for the JSON, tables and plot')
  parser.add_argument('--onednn', action='store_true',
                      help='also measure peak and 713x713 inference with TF_ENABLE_ONEDNN_OPTS=1 (slow on CPUs '
                      'without AVX-512: its bf16 convolutions did not finish a 713x713 image in 40 minutes on an '
                      'AVX2 EPYC)')
  args = parser.parse_args(argv)
  unknown = [s for s in args.sections if s not in SECTIONS + ('all',)]
  if 'compare' in unknown:
    parser.error('compare runs on its own, with its own flags: python -m bench compare --config_path A '
                 '--config_path B ... (see bench/compare.py)')
  if 'gpu' in unknown:
    parser.error('gpu runs on its own, with its own flags: python -m bench gpu [--budget_s S] (see bench/gpu.py)')
  if unknown:
    parser.error('unknown section(s) %s; choose all or any of: %s' % (', '.join(unknown), ', '.join(SECTIONS)))
  args.sections = list(SECTIONS) if 'all' in args.sections else [s for s in SECTIONS if s in args.sections]
  return args


def _first_variant(result):
  return next(iter(((result or {}).get('variants') or {}).values()), None)


def summarize_targets(results):
  """The issue's targets against what this run measured: {target: {'goal', 'measured', 'met'}}."""
  summary = collections.OrderedDict()

  def put(name, measured, met):
    summary[name] = collections.OrderedDict(goal=TARGETS[name], measured=measured, met=met)

  inference = results.get('inference') or {}
  fractions, exported = {}, {}
  for size, result in inference.items():
    variants = result.get('variants') or {}
    if 'onednn' in size or inference_speed.REFERENCE not in variants:
      continue
    reference = variants[inference_speed.REFERENCE]
    if 'fraction_of_peak' in reference:
      fractions[size] = reference['fraction_of_peak']
    for dtype in ('float32', 'bfloat16'):
      base = variants.get('checkpoint %s' % dtype)
      for source in ('frozen', 'saved_model'):
        other = variants.get('%s %s' % (source, dtype))
        if base and other:
          exported['%s %s %s' % (size, source, dtype)] = other['best_s'] / base['best_s']
  if fractions:
    # The goal is stated against the fp32 *matmul* peak; the bench's reference is the stricter best fp32
    # kernel of the run (the 3x3 conv on the CPU of bench/results/): both are reported, the goal is judged on
    # the matmul peak as the issue defines it.
    default_peak = (results.get('peak') or {}).get('default') or {}
    matmul = default_peak.get('fp32_matmul_gmacs_per_s')
    overall = default_peak.get('fp32_peak_gmacs_per_s')
    of_matmul = {size: f * overall / matmul for size, f in fractions.items()} if matmul and overall else fractions
    put('fp32 inference, fraction of the measured fp32 peak',
        collections.OrderedDict([('of the best fp32 matmul', of_matmul), ('of the best fp32 kernel', fractions)]),
        min(of_matmul.values()) >= 0.75)
  if exported:
    put('frozen graph and SavedModel latency / checkpoint graph', exported, max(exported.values()) <= 1.05)
  train = results.get('train') or {}
  variants = list(((train.get('speed') or {}).get('variants') or {}).values())
  plain = _first_variant(train.get('speed_default_allocator'))
  if len(variants) >= 2 and plain:
    ratio = variants[1]['best_s'] / plain['best_s']
    put('training step, speed options on / off',
        collections.OrderedDict([
            ('on / off', ratio),
            ('BFC allocator alone (separate processes)', variants[0]['best_s'] / plain['best_s']),
            ('in-graph options alone (interleaved)', variants[1]['best_s'] / variants[0]['best_s'])]),
        ratio <= 0.85)
  memory = collections.OrderedDict()
  for name, result in (train.get('memory') or {}).items():
    if (result.get('memory') or {}).get('vmhwm_steps_bytes'):
      memory['%s %dx%d' % (name, result['crop'], result['crop'])] = '%.2f GB' % (
          result['memory']['vmhwm_steps_bytes'] / 1e9)
  if memory:
    default = next(iter(memory.values()))
    put('training step peak memory (VmHWM of the steps)', memory, float(default.split()[0]) <= 3.6)
  share = input_pipeline.input_share(train)
  if share:
    put('input wait, share of the training step', '%.2f%% (IteratorGetNext); records vs in-memory step %+.1f%%'
        % (share[3], share[6]), share[3] < 3.0)
  per_pixel = {crop: _first_variant(r)['us_per_pixel'] for crop, r in (train.get('sweep') or {}).items()
               if _first_variant(r)}
  if per_pixel:
    spread = max(per_pixel.values()) / min(per_pixel.values())
    put('training time per pixel across crops, max / min', {'us_per_pixel': per_pixel, 'max/min': spread},
        spread <= 1.5)
  return summary


def _format_measured(value):
  if isinstance(value, float):
    return '%.3g' % value
  if isinstance(value, dict):
    return '; '.join('%s: %s' % (k, _format_measured(v)) for k, v in value.items())
  return str(value)


def sweep_plot(train, path, footer):
  """Time per pixel and memory against megapixels per step, from the crop sweep."""
  time_points, allocator, vmhwm = [], [], []
  for _, result in sorted((train.get('sweep') or {}).items(), key=lambda item: int(item[0])):
    variant = _first_variant(result)
    if not variant:
      continue
    megapixels = result['batch'] * result['crop']**2 / 1e6
    time_points.append((megapixels, variant['us_per_pixel']))
    allocator.append((megapixels, (result['memory']['allocator_peak_bytes'] or 0) / 2.0**30))
    vmhwm.append((megapixels, (result['memory']['vmhwm_steps_bytes'] or 0) / 2.0**30))
  if not time_points:
    return None
  return plot.write_png(path, [
      plot.Chart('Training step time per pixel (batch 1)', 'megapixels per step', 'us / pixel',
                 [plot.Series('train.py step', time_points)]),
      plot.Chart('Peak memory of a training step', 'megapixels per step', 'GiB',
                 [plot.Series('TF CPU allocator peak', allocator), plot.Series('VmHWM (resident)', vmhwm)]),
  ], footer=footer)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ['compare']:
    return compare.main(argv[1:])
  if argv[:1] == ['gpu']:
    return gpu.main(argv[1:])
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  suffix = ('' if args.sections == list(SECTIONS) else '_' + '_'.join(args.sections)) + (
      '_quick' if args.quick else '')
  started = datetime.datetime.now()
  results = collections.OrderedDict(
      date=started.strftime('%Y-%m-%d %H:%M'), quick=args.quick, sections=args.sections,
      machine=common.machine_info())
  tables = collections.OrderedDict()
  workdir = tempfile.mkdtemp(prefix='bench_')
  try:
    results['peak'] = peak.run(args)
    reference = peak.peak_gmacs(results['peak'])
    results['peak_gmacs_per_s'] = reference
    if 'model' in args.sections:
      results['model'] = model_figures.run(args)
      tables['model'] = model_figures.table(results['model'])
    records = None
    if any(s in args.sections for s in ('input', 'train', 'eval')):
      if 'input' in args.sections:
        results['input'], records = input_pipeline.run(args, workdir)
      else:
        plan = dict(input_pipeline.QUICK if args.quick else input_pipeline.FULL, dir=workdir,
                    action='make_records')
        records = common.run_worker('input_pipeline', plan)
        if 'error' in records:
          results['records_error'], records = records['error'], None
    if 'train' in args.sections:
      results['train'] = train_speed.run(args, records['train'] if records else None)
      train_speed.add_peak_fractions(results['train'], reference)
      tables['train'] = train_speed.table(results['train'])
    if 'input' in args.sections:
      tables['input'] = input_pipeline.table(results['input'], results.get('train'))
    if 'eval' in args.sections and records:
      results['eval'] = eval_speed.run(args, records['val'])
      tables['eval'] = eval_speed.table(results['eval'])
    if 'inference' in args.sections:
      results['inference'] = inference_speed.run(args)
      inference_speed.add_peak_fractions(results['inference'], reference)
      tables['inference'] = inference_speed.table(results['inference'])
    if not args.quick and len(args.sections) > 1:
      # Again at the end: the machine may have been busier (or quieter) at the start.
      results['peak_end'] = peak.run(args)
    tables['peak'] = peak.table(results['peak']) + (
        '\n\nat the end of the run:\n' + peak.table(results['peak_end']) if 'peak_end' in results else '')
  except BaseException:
    # What was measured before the failure (or Ctrl-C) is kept.
    common.write_json(os.path.join(args.out, 'bench%s.partial.json' % suffix), results)
    raise
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  results['targets'] = summarize_targets(results)
  results['seconds'] = (datetime.datetime.now() - started).total_seconds()
  if results['targets']:
    tables['targets'] = common.format_table(
        ['target (ratios within this run)', 'goal', 'measured', 'met'],
        [[name, t['goal'], _format_measured(t['measured']), 'yes' if t['met'] else 'no']
         for name, t in results['targets'].items()])

  machine = results['machine']
  default_peak = (results['peak'] or {}).get('default') or {}
  header = '%s, %s: %s, %d cores, %s GiB, SIMD %s, measured fp32 peak %s GMAC/s (%s; best matmul %s)' % (
      results['date'], 'quick' if args.quick else 'full', machine.get('cpu'), machine['cores'],
      machine.get('memory_gib'), ' '.join(machine.get('simd', [])),
      '%.1f' % reference if reference else '?', default_peak.get('fp32_peak_op', '?'),
      '%.1f' % default_peak['fp32_matmul_gmacs_per_s'] if default_peak.get('fp32_matmul_gmacs_per_s') else '?')
  text = '\n\n'.join(['# python -m bench %s%s' % (' '.join(args.sections), ' --quick' if args.quick else ''),
                      header] + ['## %s\n\n%s' % (name, table) for name, table in tables.items()])
  print(text)
  json_path = os.path.join(args.out, 'bench%s.json' % suffix)
  common.write_json(json_path, results)
  with open(os.path.join(args.out, 'bench%s.md' % suffix), 'w') as f:
    f.write(text + '\n')
  if 'train' in results:
    png = sweep_plot(results['train'], os.path.join(args.out, 'train_sweep%s.png' % suffix), header[:110])
    if png:
      print('\nPlot: %s' % png)
  print('Results: %s (%.0f s)' % (json_path, results['seconds']))
  return 0


if __name__ == '__main__':
  sys.exit(main())
