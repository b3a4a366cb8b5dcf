"""What the benchmarks of `python -m bench` share: configs, fresh worker processes, timing, memory, the machine.

Measurements run in worker processes (`python -m bench.worker MODULE SPEC_JSON`, one per measurement where
memory matters), each started with TF_CPU_ALLOCATOR_USE_BFC=true so that TensorFlow's CPU allocator keeps
peak statistics. A worker prints its result as one JSON line after RESULT_MARKER.

Timing on a shared machine: other processes may take CPU time at any moment, so variants that are compared
are timed *interleaved* (round-robin, one run of each in turn) in one process, and every timing records the
process CPU time beside the wall time. `cpu_share` = CPU seconds / (wall seconds x cores): close to 1 when the
run had the machine to itself, lower when it waited for another process. The `best` (minimum) of the runs is the
least disturbed one and is what ratios are taken of; the median is reported beside it.
"""
import collections
import json
import os
import platform
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PATH = os.path.join(REPO_ROOT, 'configs', 'pspnet_1.0_713_resnet_v1.config')
DEFAULT_OUT = os.path.join(REPO_ROOT, 'bench', 'results')
RESULT_MARKER = 'BENCH_RESULT '

# --quick: PSPNet's structure at 1/16 of the filters and one unit per block (the tests' tiny model), so that a
# smoke run of every benchmark is quick.
QUICK_MODEL_OVERRIDE = """
pspnet {
  filter_scale: 0.0625
  feature_extractor { num_units_per_block: [1, 1, 1, 1] }
}
"""


def cpu_count():
  """Cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def machine_info():
  """The machine, in words and flags (what bounds the speeds)."""
  info = collections.OrderedDict(cores=cpu_count(), python=platform.python_version())
  flags = set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and 'cpu' not in info:
          info['cpu'] = value.strip()
        elif key == 'cpu MHz' and 'mhz' not in info:
          info['mhz'] = float(value)
        elif key == 'flags' and not flags:
          flags = set(value.split())
  except (IOError, OSError):
    info['cpu'] = platform.processor()
  info['simd'] = sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma')))
  try:
    with open('/proc/meminfo') as f:
      info['memory_gib'] = round(int(f.readline().split()[1]) / 2.0**20, 1)
  except (IOError, OSError, ValueError, IndexError):
    pass
  info['onednn_opts'] = os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(TensorFlow default)')
  return info


def load_pipeline_config(quick, model_override=None):
  """The 713 config with random initialisation (no fine_tune_checkpoint); the tiny model with quick."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from libs import config_util  # pylint: disable=import-outside-toplevel
  config = config_util.load_pipeline_config(CONFIG_PATH)
  config.train_config.ClearField('fine_tune_checkpoint')
  if quick:
    config.model.pspnet.ClearField('feature_extractor')
    config.model.pspnet.feature_extractor.type = 'dilated_resnet50'
    text_format.Merge(QUICK_MODEL_OVERRIDE, config.model)
  if model_override:
    text_format.Merge(model_override, config.model)
  return config


def session_config(intra_op_threads=0, inter_op_threads=0, grappler=True):
  """tf.ConfigProto with the thread pools and grappler switch of a speed variant (0: TensorFlow's default)."""
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  config = tf.ConfigProto(allow_soft_placement=True, intra_op_parallelism_threads=intra_op_threads,
                          inter_op_parallelism_threads=inter_op_threads)
  if not grappler:
    config.graph_options.rewrite_options.disable_meta_optimizer = True
  return config


# ----------------------------------------------------------------------------------------------------------------
# Exported models.

# How an export of drivers/exporter.py is loaded: the frozen graph through libs/frozen_graph.load_session (its
# weights in variables), the frozen graph through a plain tf.import_graph_def (its weights as constants), or the
# SavedModel through the TF1 loader (as TF Serving loads it).
EXPORT_SOURCES = ('frozen', 'frozen_import', 'saved_model')


def load_export(source, export_dir, config=None):
  """(session, input tensor, predictions tensor, graph) of one export loaded as `source` (EXPORT_SOURCES)."""
  # pylint: disable=import-outside-toplevel
  from drivers import exporter
  from libs import frozen_graph
  from libs.compat import tf
  # pylint: enable=import-outside-toplevel
  if source not in EXPORT_SOURCES:
    raise ValueError('source = %r; choose one of %s' % (source, ', '.join(EXPORT_SOURCES)))
  frozen_path = os.path.join(export_dir, exporter.FROZEN_GRAPH_NAME)
  if source == 'frozen':
    sess, graph = frozen_graph.load_session(frozen_path, config)
  else:
    graph = tf.Graph()
    with graph.as_default():
      if source == 'frozen_import':
        tf.import_graph_def(frozen_graph.read_graph_def(frozen_path), name='')
      sess = tf.Session(graph=graph, config=config)
      if source == 'saved_model':
        meta_graph = tf.saved_model.loader.load(sess, [tf.saved_model.tag_constants.SERVING],
                                                os.path.join(export_dir, exporter.SAVED_MODEL_DIR))
        signature = meta_graph.signature_def[exporter.SIGNATURE_NAME]
        return (sess, graph.get_tensor_by_name(signature.inputs[exporter.INPUT_NAME].name),
                graph.get_tensor_by_name(signature.outputs[exporter.OUTPUT_NAME].name), graph)
  return (sess, graph.get_tensor_by_name(exporter.INPUT_NAME + ':0'),
          graph.get_tensor_by_name(exporter.OUTPUT_NAME + ':0'), graph)


# ----------------------------------------------------------------------------------------------------------------
# Timing.


def timed(fn):
  """Runs fn() once; returns (result, wall seconds, process CPU seconds)."""
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  return result, time.perf_counter() - wall, time.process_time() - cpu


def summarize(walls, cpus, work=None):
  """Figures of repeated runs: best/median wall seconds, cpu_share, and work per second when given.

  Args:
    walls, cpus: per-run wall and process CPU seconds.
    work: optional dict {name: amount per run} (e.g. {'gmacs': 350.0}); adds '<name>_per_s' of the best run.
  """
  walls = sorted(walls)
  out = collections.OrderedDict(
      best_s=walls[0], median_s=walls[len(walls) // 2], runs=len(walls),
      cpu_share=sum(cpus) / max(sum(walls), 1e-12) / cpu_count())
  for name, amount in (work or {}).items():
    out[name + '_per_s'] = amount / walls[0]
  return out


def interleaved(fns, runs, warmup=1):
  """Times several functions round-robin (order rotated each round), so a disturbance hits every variant alike.

  Args:
    fns: OrderedDict {name: zero-argument function}.
    runs: timed runs of each.
    warmup: untimed runs of each first (graph optimisation, allocations).

  Returns:
    OrderedDict {name: summarize() of its runs}.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  walls = {name: [] for name in fns}
  cpus = {name: [] for name in fns}
  names = list(fns)
  for round_index in range(runs):
    # Rotated order: every variant takes every position in a round (first after a warm cache, last, ...).
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      _, wall, cpu = timed(fns[name])
      walls[name].append(wall)
      cpus[name].append(cpu)
  return collections.OrderedDict((name, summarize(walls[name], cpus[name])) for name in fns)


# ----------------------------------------------------------------------------------------------------------------
# Memory (libs/memory.py reads the allocator and /proc).


def memory_usage():
  """{'CPU_BFC_Peak', 'CPU_BFC_Current', 'VmHWM', 'VmRSS', ...} in bytes (what this process can measure)."""
  from libs import memory  # pylint: disable=import-outside-toplevel
  return memory.memory_usage()


def reset_peak_memory():
  from libs import memory  # pylint: disable=import-outside-toplevel
  memory.reset_peak_memory()


# ----------------------------------------------------------------------------------------------------------------
# Worker processes.


def run_worker(module, spec, timeout=3600, env=None):
  """Runs bench.<module>.measure(spec) in a fresh Python process.

  Args:
    module: module name under bench/ with a measure(spec) -> dict function.
    spec: JSON-serialisable dict.
    timeout: seconds.
    env: extra environment variables (e.g. TF_ENABLE_ONEDNN_OPTS), set before TensorFlow is imported.

  Returns:
    The worker's dict, or dict(spec, error=...) when it failed (killed for memory, timed out, raised).
  """
  full_env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC='true', TF_CPP_MIN_LOG_LEVEL='2')
  full_env.update(env or {})
  full_env['PYTHONPATH'] = REPO_ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
  command = [sys.executable, '-m', 'bench.worker', module, json.dumps(spec)]
  try:
    proc = subprocess.run(command, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(spec, error='timed out after %d s' % timeout)
  lines = [l[len(RESULT_MARKER):] for l in proc.stdout.splitlines() if l.startswith(RESULT_MARKER)]
  if proc.returncode != 0 or not lines:
    return dict(spec, error='exit status %d: %s' % (proc.returncode, proc.stderr.strip()[-1500:]))
  return json.loads(lines[-1])


def log(message):
  print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Output.


def format_table(header, rows):
  """A Markdown table (strings as given, floats with 3 significant digits)."""
  def cell(value):
    if value is None:
      return '-'
    if isinstance(value, float):
      return '%.3g' % value if abs(value) < 1000 else '{:,.0f}'.format(value)
    if isinstance(value, int):
      return '{:,}'.format(value)
    return str(value)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def write_json(path, data):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=1, default=float)
    f.write('\n')
  os.replace(tmp, path)


MiB = 2.0**20
