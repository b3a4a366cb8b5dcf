"""Measuring the memory of this process: allocator peaks (GPU, and CPU with the BFC allocator) and VmHWM.

    usage = memory.memory_usage()   # {'GPU0_Peak': bytes, ..., 'CPU_BFC_Peak': ..., 'VmHWM': ..., 'VmRSS': ...}

The CPU allocator keeps statistics only when TensorFlow starts with TF_CPU_ALLOCATOR_USE_BFC=true (train.py
sets it unless the variable is given); VmHWM is the kernel's peak resident set of the whole process.
"""
import collections
import os

from libs.compat import tf

BFC_VARIABLE = 'TF_CPU_ALLOCATOR_USE_BFC'


def bfc_enabled():
  """Whether TensorFlow's CPU allocator is the BFC allocator (it is read once, when TensorFlow starts)."""
  return os.environ.get(BFC_VARIABLE, '').lower() in ('true', '1')


def cpu_allocator_description():
  """'BFC (TF_CPU_ALLOCATOR_USE_BFC=true)' or 'default (TF_CPU_ALLOCATOR_USE_BFC=unset)', for the logs."""
  return '%s (%s=%s)' % ('BFC' if bfc_enabled() else 'default', BFC_VARIABLE, os.environ.get(BFC_VARIABLE, 'unset'))


def memory_usage():
  """Memory of this process in bytes, by name (only what can be measured here).

  GPU<i>_Peak / GPU<i>_Current: TensorFlow's GPU allocator (tf.config.experimental.get_memory_info), peak since
  start or the last reset_memory_stats. CPU_BFC_Peak / CPU_BFC_Current: the same for the CPU allocator when
  TF_CPU_ALLOCATOR_USE_BFC=true (the default CPU allocator keeps no statistics). VmHWM / VmRSS: peak and current
  resident memory of the process (/proc/self/status, Linux).

  Returns:
    collections.OrderedDict {name: bytes}.
  """
  usage = collections.OrderedDict()
  devices = [('GPU%d' % i, 'GPU:%d' % i) for i in range(len(tf.config.list_physical_devices('GPU')))]
  if bfc_enabled():
    devices.append(('CPU_BFC', 'CPU:0'))
  for label, device in devices:
    try:
      info = tf.config.experimental.get_memory_info(device)
    except (ValueError, RuntimeError, tf.errors.OpError):  # Allocator without statistics.
      continue
    usage[label + '_Peak'] = int(info['peak'])
    usage[label + '_Current'] = int(info['current'])
  try:
    with open('/proc/self/status') as status:
      for line in status:
        field, _, value = line.partition(':')
        if field in ('VmHWM', 'VmRSS'):
          usage[field] = int(value.split()[0]) * 1024
  except (IOError, OSError):  # Not Linux.
    pass
  return usage


def reset_peak_memory():
  """Restarts the peaks of memory_usage() (allocator statistics and VmHWM) where the platform allows it."""
  devices = ['GPU:%d' % i for i in range(len(tf.config.list_physical_devices('GPU')))]
  if bfc_enabled():
    devices.append('CPU:0')
  for device in devices:
    try:
      tf.config.experimental.reset_memory_stats(device)
    except (ValueError, RuntimeError, tf.errors.OpError):
      pass
  try:
    with open('/proc/self/clear_refs', 'w') as clear_refs:
      clear_refs.write('5')  # Resets VmHWM to the current RSS (Linux >= 4.0).
  except (IOError, OSError):
    pass


def format_usage(usage):
  """'VmHWM 812.3 MiB, VmRSS 790.0 MiB' of memory_usage()."""
  return ', '.join('%s %.1f MiB' % (name, value / 2.0**20) for name, value in usage.items())


class MemoryLogger(object):
  """Trainer step callback (TrainOptions.step_callback): logs memory_usage() after the first FIRST_STEPS steps
  and every every_n_steps steps, and writes it to TensorBoard as Memory/<name>_MiB in logdir."""

  FIRST_STEPS = 3

  def __init__(self, logdir, every_n_steps, write_summaries=True):
    """Args:
      logdir: the training directory (its summary writer is shared with the trainer's SummarySaverHook).
      every_n_steps: steps between lines after the first ones.
      write_summaries: write Memory/ summaries (only the chief of a distributed run writes summaries).
    """
    self._logdir = logdir
    self._every_n_steps = max(1, every_n_steps)
    self._write_summaries = write_summaries
    self._calls = 0

  def __call__(self, unused_session, step):
    self._calls += 1
    if self._calls > self.FIRST_STEPS and step % self._every_n_steps:
      return
    usage = memory_usage()
    tf.get_logger().info('Memory after step %d: %s', step, format_usage(usage))
    if self._write_summaries:
      # The writer SummarySaverHook uses for this logdir (cached), so there is one event file.
      writer = tf.summary.FileWriterCache.get(self._logdir)
      writer.add_summary(tf.Summary(value=[
          tf.Summary.Value(tag='Memory/%s_MiB' % name, simple_value=value / 2.0**20)
          for name, value in usage.items()]), step)
      writer.flush()
