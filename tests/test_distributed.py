"""Multi-machine training on loopback: one parameter server and two workers (TF_CONFIG), then eval.py on the
chief's checkpoint; a killed worker restarts and rejoins. Bounded in time; only 127.0.0.1 is used."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from libs import cluster
from libs.compat import tf
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline_text

TIMEOUT = 240


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start(cluster_spec, job, index, config_path, logdir, log_path, extra_args=(), script='train.py'):
  env = dict(os.environ, TF_CONFIG=json.dumps({'cluster': cluster_spec, 'task': {'type': job, 'index': index}}),
             CUDA_VISIBLE_DEVICES='')
  log = open(log_path, 'w')
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, script), '--config_path', str(config_path), '--logdir',
       str(logdir), '--log_every_n_steps', '1', '--save_interval_secs', '5'] + list(extra_args),
      env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(process, deadline):
  process.wait(timeout=max(1, deadline - time.time()))
  return process.returncode


def test_one_ps_two_workers_train_and_eval_evaluates_the_chief_checkpoint(cityscapes_records, tmp_path):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val'],
                                            num_steps=6))
  ps_port, w0_port, w1_port = _free_ports(3)
  spec = {'ps': ['127.0.0.1:%d' % ps_port], 'worker': ['127.0.0.1:%d' % w0_port, '127.0.0.1:%d' % w1_port]}
  logdir = tmp_path / 'train'
  deadline = time.time() + TIMEOUT
  ps = _start(spec, 'ps', 0, config_path, logdir, tmp_path / 'ps.log')
  chief = worker = None
  try:
    # Synchronous replicas: the first step aggregates a gradient from both workers, so both must train even
    # when the second worker joins late: it is started only once the chief is already in its training loop.
    chief = _start(spec, 'worker', 0, config_path, logdir, tmp_path / 'chief.log', ['--sync_replicas'])
    while 'Training from step' not in (tmp_path / 'chief.log').read_text():
      assert time.time() < deadline and chief.poll() is None, (tmp_path / 'chief.log').read_text()[-3000:]
      time.sleep(0.5)
    worker = _start(spec, 'worker', 1, config_path, logdir, tmp_path / 'worker1.log', ['--sync_replicas'])
    assert _wait(chief, deadline) == 0, (tmp_path / 'chief.log').read_text()[-3000:]
    assert _wait(worker, deadline) == 0, (tmp_path / 'worker1.log').read_text()[-3000:]
    assert ps.poll() is None, (tmp_path / 'ps.log').read_text()[-3000:]  # it serves until it is killed
  finally:
    for process in (ps, chief, worker):
      if process is not None and process.poll() is None:
        process.kill()
        process.wait()
  chief_log = (tmp_path / 'chief.log').read_text()
  worker_log = (tmp_path / 'worker1.log').read_text()
  assert 'the first step waits for gradients from all 2 workers' in chief_log
  # Both workers trained (progress lines), the late one from step 0: the chief's first step waited for it.
  assert 'sec/step' in chief_log and 'sec/step' in worker_log
  assert 'Training from step 0' in worker_log, worker_log[-3000:]
  latest = tf.train.latest_checkpoint(str(logdir))
  assert latest is not None
  step = int(tf.train.load_checkpoint(latest).get_tensor('global_step'))
  assert step >= 6
  # Only the chief writes: one checkpoint state, events from one writer.
  assert len([f for f in os.listdir(str(logdir)) if f.startswith('events.out')]) == 1

  eval_dir = tmp_path / 'eval'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'eval.py'), '--config_path', str(config_path), '--train_dir',
       str(logdir), '--eval_dir', str(eval_dir), '--max_evals', '1', '--eval_interval_secs', '1'],
      capture_output=True, text=True, timeout=max(30, deadline - time.time() + 60), env=dict(
          os.environ, CUDA_VISIBLE_DEVICES=''))
  assert result.returncode == 0, result.stderr[-3000:]
  results = os.listdir(str(eval_dir / 'results'))
  assert any(str(step) in name for name in results), results


def test_killed_worker_restarts_and_rejoins(cityscapes_records, tmp_path):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val'],
                                            num_steps=100000))  # runs until killed
  ps_port, w0_port, w1_port = _free_ports(3)
  spec = {'ps': ['127.0.0.1:%d' % ps_port], 'worker': ['127.0.0.1:%d' % w0_port, '127.0.0.1:%d' % w1_port]}
  logdir = tmp_path / 'train'
  deadline = time.time() + TIMEOUT
  processes = [_start(spec, 'ps', 0, config_path, logdir, tmp_path / 'ps.log')]
  try:
    processes.append(_start(spec, 'worker', 0, config_path, logdir, tmp_path / 'chief.log'))
    worker = _start(spec, 'worker', 1, config_path, logdir, tmp_path / 'worker1.log')
    processes.append(worker)
    while 'sec/step' not in (tmp_path / 'worker1.log').read_text():
      assert time.time() < deadline and worker.poll() is None, (tmp_path / 'worker1.log').read_text()[-3000:]
      time.sleep(1)
    worker.kill()
    worker.wait()
    restarted = _start(spec, 'worker', 1, config_path, logdir, tmp_path / 'worker1_restarted.log')
    processes.append(restarted)
    log_path = tmp_path / 'worker1_restarted.log'
    while 'sec/step' not in log_path.read_text():
      assert time.time() < deadline and restarted.poll() is None, log_path.read_text()[-3000:]
      time.sleep(1)
    # It rejoined the running job: it continues from the shared global step, not from 0.
    first_line = [l for l in log_path.read_text().splitlines() if 'Training from step' in l][0]
    assert int(first_line.split('Training from step ')[1].split()[0].rstrip(';')) > 0
    # The chief kept training through the loss of the worker.
    assert processes[1].poll() is None
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.parametrize('tf_config,message', [
    ('{not json', 'not valid JSON'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}', 'at least one "ps"'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "evaluator", "index": 0}}',
     'task.type'),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 3}}', 'no such task'),
])
def test_bad_tf_config_is_reported(tf_config, message):
  with pytest.raises(ValueError, match=message):
    cluster.resolve(environ={'TF_CONFIG': tf_config})


def test_cluster_roles_from_tf_config_and_flags():
  spec = {'ps': ['a:1', 'b:1'], 'worker': ['c:1', 'd:1']}
  config = cluster.resolve(environ={'TF_CONFIG': json.dumps({'cluster': spec,
                                                             'task': {'type': 'worker', 'index': 1}})})
  assert not config.is_chief and config.num_ps_tasks == 2 and config.num_replicas == 2
  assert config.device_filters() == ['/job:ps', '/job:worker/task:1']
  with_chief = dict(spec, chief=['e:1'])
  chief = cluster.resolve(environ={'TF_CONFIG': json.dumps({'cluster': with_chief,
                                                            'task': {'type': 'chief', 'index': 0}})})
  assert chief.is_chief and chief.worker_device == '/job:chief/task:0' and chief.num_replicas == 3
  flagged = cluster.resolve('grpc://w0:2222', 0, 1, 2, environ={})
  assert flagged.is_chief and flagged.target == 'grpc://w0:2222'
  assert cluster.resolve(environ={}) is None
  with pytest.raises(ValueError, match='--num_ps_tasks 1 needs --master'):
    cluster.resolve('', 0, 1, 2, environ={})
  with pytest.raises(ValueError, match='Both TF_CONFIG and --master'):
    cluster.resolve('grpc://x:1', environ={'TF_CONFIG': json.dumps({'cluster': spec,
                                                                     'task': {'type': 'ps', 'index': 0}})})
