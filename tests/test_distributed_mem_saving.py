"""train_mem_saving.py --log_memory in a cluster on loopback (one parameter server, two asynchronous workers):
every worker logs its own memory, only the chief writes the Memory/ summaries into the shared logdir."""
import glob
import os
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import tiny_pipeline_text
from tests.test_distributed import TIMEOUT
from tests.test_distributed import _free_ports
from tests.test_distributed import _start
from tests.test_distributed import _wait


def _memory_event_files(logdir):
  """{event file: its scalar tags} of the event files in logdir that hold Memory/ points."""
  found = {}
  for path in glob.glob(os.path.join(str(logdir), 'events.out.tfevents.*')):
    accumulator = EventAccumulator(path, size_guidance={'scalars': 0})
    accumulator.Reload()
    tags = accumulator.Tags()['scalars']
    if any(tag.startswith('Memory/') for tag in tags):
      found[os.path.basename(path)] = tags
  return found


def test_only_the_chief_writes_memory_summaries(cityscapes_records, tmp_path):
  config_path = tmp_path / 'tiny.config'
  config_path.write_text(tiny_pipeline_text(cityscapes_records['train'], cityscapes_records['val'], num_steps=6))
  ps_port, w0_port, w1_port = _free_ports(3)
  spec = {'ps': ['127.0.0.1:%d' % ps_port], 'worker': ['127.0.0.1:%d' % w0_port, '127.0.0.1:%d' % w1_port]}
  logdir = tmp_path / 'train'
  memory_flags = ['--log_memory', '--log_memory_every_n_steps', '1']
  deadline = time.time() + TIMEOUT
  processes = [_start(spec, 'ps', 0, config_path, logdir, tmp_path / 'ps.log', script='train_mem_saving.py')]
  try:
    chief = _start(spec, 'worker', 0, config_path, logdir, tmp_path / 'chief.log', memory_flags,
                   script='train_mem_saving.py')
    worker = _start(spec, 'worker', 1, config_path, logdir, tmp_path / 'worker1.log', memory_flags,
                    script='train_mem_saving.py')
    processes += [chief, worker]
    assert _wait(chief, deadline) == 0, (tmp_path / 'chief.log').read_text()[-3000:]
    assert _wait(worker, deadline) == 0, (tmp_path / 'worker1.log').read_text()[-3000:]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  worker_log = (tmp_path / 'worker1.log').read_text()
  assert 'Memory after step' in (tmp_path / 'chief.log').read_text() and 'Memory after step' in worker_log
  assert 'sec/step' in worker_log, worker_log[-3000:]  # the second worker trained
  written = _memory_event_files(logdir)
  # One event file holds every Memory/ point: the chief's, the one with the training summaries (a worker
  # writing Memory/ would add an event file of its own, without them).
  assert len(written) == 1, written
  assert 'Losses/TotalLoss' in list(written.values())[0], written
