"""GPU-sharing flags of the scripts (train.py, eval.py): one definition, one ConfigProto builder.

Running the trainer and the evaluator on one GPU needs both to leave memory to the other: --allow_growth, or
--gpu_memory_fraction.
"""
from absl import flags

from libs.compat import tf

FLAGS = flags.FLAGS


def define_device_flags(other_process):
  """Defines --allow_growth and --gpu_memory_fraction; other_process names who the GPU is shared with."""
  flags.DEFINE_boolean('allow_growth', False, 'Let TensorFlow grow GPU memory as needed instead of taking it '
                       'all (to share a GPU with %s).' % other_process)
  flags.DEFINE_float('gpu_memory_fraction', 0.0, 'If > 0, cap the GPU memory this process takes.')


def session_config_from_flags():
  """tf.ConfigProto with soft placement and the GPU memory flags applied."""
  config = tf.ConfigProto(allow_soft_placement=True)
  config.gpu_options.allow_growth = FLAGS.allow_growth
  if FLAGS.gpu_memory_fraction > 0:
    config.gpu_options.per_process_gpu_memory_fraction = FLAGS.gpu_memory_fraction
  return config
