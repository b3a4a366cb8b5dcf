r"""Overhead of synchronized batch norm across clones (issue 5).

    python -m bench.sync_bn                 # PSPNet50 at 1/4 width, 2 CPU clones x batch 2, 193x193 crops
    python -m bench.sync_bn --filter_scale 1 --crop 385 --batch_per_clone 1 --steps 5

Builds the real training graph (drivers/trainer.build_training_graph; only the input is replaced by random
in-memory batches) with --num_clones clones on separate CPU devices (a ConfigProto with several CPU devices, the
way tests run clones without GPUs), once with per-clone batch norm and once with
`batch_norm { sync_across_clones: true }`, each in a fresh process, and reports the median step time and the
overhead of synchronization. On CPU devices of one machine the cross-clone reduction is a memory copy; on GPUs it
is a device-to-device transfer per batch-norm layer (106 layers in PSPNet50), so measure there too (the same
command with --devices gpu and CUDA_VISIBLE_DEVICES naming the GPUs).

Prints a table and writes JSON to bench/results/sync_bn.json (or --out).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PATH = os.path.join(REPO_ROOT, 'configs', 'pspnet_1.0_713_resnet_v1.config')
DEFAULT_OUT = os.path.join(REPO_ROOT, 'bench', 'results', 'sync_bn.json')


def _measure_here(spec):
  """One configuration in this process -> measurements."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from bench import mem_saving  # pylint: disable=import-outside-toplevel
  from libs import config_util  # pylint: disable=import-outside-toplevel
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel

  config = config_util.load_pipeline_config(CONFIG_PATH)
  config.train_config.batch_size = spec['batch_per_clone'] * spec['num_clones']
  config.train_config.ClearField('fine_tune_checkpoint')
  text_format.Merge('pspnet { filter_scale: %g hyperparams { batch_norm { sync_across_clones: %s } } }'
                    % (spec['filter_scale'], 'true' if spec['sync'] else 'false'), config.model)
  trainer.build_input = mem_saving._synthetic_input(spec['crop'])  # pylint: disable=protected-access
  on_cpu = spec['devices'] == 'cpu'
  start = time.time()
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    graph = trainer.build_training_graph(
        config, trainer.default_options(num_clones=spec['num_clones'], clone_on_cpu=False)) if not on_cpu \
        else _build_on_cpu_devices(trainer, config, spec['num_clones'])
    init = tf.global_variables_initializer()
    build_seconds = time.time() - start
    session_config = tf.ConfigProto(allow_soft_placement=True)
    if on_cpu:
      session_config.device_count['CPU'] = spec['num_clones']
    with tf.Session(config=session_config) as sess:
      sess.run(init)
      for _ in range(spec['warmup']):
        sess.run(graph.train_op)
      times = []
      for _ in range(spec['steps']):
        step_start = time.time()
        sess.run(graph.train_op)
        times.append(time.time() - step_start)
  times.sort()
  return {'sync': spec['sync'], 'sec_per_step': times[len(times) // 2], 'step_seconds': times,
          'graph_build_seconds': build_seconds}


def _build_on_cpu_devices(trainer, config, num_clones):
  """Clones on /cpu:0, /cpu:1, ... (clone_on_cpu would put them all on /cpu:0)."""
  from libs import deployment  # pylint: disable=import-outside-toplevel
  original = deployment.clone_device
  deployment.clone_device = lambda index, *unused_args, **unused_kwargs: '/device:CPU:%d' % index
  try:
    return trainer.build_training_graph(config, trainer.default_options(num_clones=num_clones))
  finally:
    deployment.clone_device = original


def _measure_in_subprocess(spec):
  result = subprocess.run([sys.executable, '-m', 'bench.sync_bn', '--_measure', json.dumps(spec)],
                          capture_output=True, text=True, cwd=REPO_ROOT, check=False)
  if result.returncode != 0:
    raise RuntimeError('measurement %s failed:\n%s' % (spec, result.stderr[-3000:]))
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_clones', type=int, default=2)
  parser.add_argument('--batch_per_clone', type=int, default=2)
  parser.add_argument('--crop', type=int, default=193)
  parser.add_argument('--filter_scale', type=float, default=0.25)
  parser.add_argument('--devices', choices=['cpu', 'gpu'], default='cpu')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--out', default=DEFAULT_OUT)
  parser.add_argument('--_measure', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._measure:  # pylint: disable=protected-access
    print(json.dumps(_measure_here(json.loads(args._measure))))  # pylint: disable=protected-access
    return 0
  spec = {key: getattr(args, key) for key in ('num_clones', 'batch_per_clone', 'crop', 'filter_scale', 'devices',
                                              'steps', 'warmup')}
  # Interleaved order, so that a change in machine load hits both configurations alike.
  results = [_measure_in_subprocess(dict(spec, sync=sync)) for sync in (False, True)]
  plain, synced = results
  overhead = synced['sec_per_step'] / plain['sec_per_step'] - 1.0
  print('%d clones on %s x batch %d, crop %d, filter_scale %g' % (
      args.num_clones, args.devices, args.batch_per_clone, args.crop, args.filter_scale))
  print('%-22s %12s' % ('batch norm', 'sec/step'))
  print('%-22s %12.3f' % ('per clone', plain['sec_per_step']))
  print('%-22s %12.3f' % ('synchronized', synced['sec_per_step']))
  print('synchronization overhead: %+.1f%%' % (100 * overhead))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'settings': spec, 'per_clone': plain, 'synchronized': synced, 'overhead': overhead,
               'date': time.strftime('%Y-%m-%d')}, f, indent=2)
  print('wrote', args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
