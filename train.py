r"""Trains the model of a pipeline config, PSPNet50 or ICNet (`model { pspnet {...} }` or `model { icnet {...} }`;
see README and ../shared/seed/pspnet.md).

    python train.py \
        --config_path configs/pspnet_1.0_713_resnet_v1.config \
        --logdir /tmp/pspnet_1.0_713_resnet_v1_TRAIN

The script does not know which model it trains: the config and builders/model_builder.py decide (README,
"ICNet"). Restarting with the same --logdir resumes from its latest checkpoint. Ctrl-C (or SIGTERM) stops after
the current step and writes a checkpoint, then exits with status 130 (143 for SIGTERM).
"""
import os
import sys

# TensorFlow's BFC allocator for CPU memory (read once, when TensorFlow starts): a training step reuses the
# same large activation buffers every step, which the default allocator hands back to the system and faults
# in again (README, "Performance": faster steps on CPU). TF_CPU_ALLOCATOR_USE_BFC=false opts out.
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

# pylint: disable=wrong-import-position
from absl import flags

from libs import cli

cli.import_tensorflow_quietly()  # before the imports below load TensorFlow

from builders import dataset_builder  # noqa: E402
from drivers import trainer
from libs import cluster
from libs import config_util
from libs import device_flags
from libs.compat import tf

FLAGS = flags.FLAGS
logger = tf.get_logger()


def define_flags():
  """Flags shared by train.py and train_mem_saving.py."""
  flags.DEFINE_string('config_path', None, 'Path of a text-format pipeline config (pipeline.proto).')
  flags.DEFINE_string('logdir', None, 'Directory for checkpoints, TensorBoard summaries and the effective '
                      'pipeline.config. Training resumes from a checkpoint already in it.')
  flags.DEFINE_string('config_override', '', 'Text-format PipelineConfig fragment merged over the config, '
                      'e.g. "train_config { num_steps: 100 }".')
  flags.DEFINE_integer('num_clones', 1, 'Model replicas (one per GPU); train_config.batch_size is split '
                       'between them.')
  flags.DEFINE_boolean('clone_on_cpu', False, 'Place all clones on the CPU.')
  flags.DEFINE_integer('save_interval_secs', 600, 'Seconds between checkpoints (one is always written at '
                       'the end); 0: after every step.')
  flags.DEFINE_integer('save_summaries_secs', 120, 'Seconds between TensorBoard summaries (always written at the '
                       'first and the final step); 0: every step.')
  flags.DEFINE_integer('max_checkpoints_to_keep', 5, 'Most recent checkpoints kept in --logdir; 0: keep all.')
  flags.DEFINE_float('keep_checkpoint_every_n_hours', 10000.0, 'Additionally keep one checkpoint per this '
                     'many hours of training.')
  flags.DEFINE_integer('log_every_n_steps', 10, 'Steps between progress lines.')
  flags.DEFINE_boolean('image_summaries', False, 'Add input, ground-truth and prediction images of the '
                       'training batch to TensorBoard.')
  flags.DEFINE_boolean('test_image_summaries', False, 'Add images of the model in inference mode (moving '
                       'batch-norm statistics, no dropout) on a training image to TensorBoard.')
  device_flags.define_device_flags(other_process='eval.py')
  flags.adopt_module_key_flags(device_flags)  # list them in --help
  # Multi-machine training (libs/cluster.py). The TF_CONFIG environment variable is the alternative.
  flags.DEFINE_string('master', '', 'Session target of this worker (grpc://host:port) whose server knows the '
                      'cluster. Empty: train in this process (or from TF_CONFIG).')
  flags.DEFINE_integer('task', 0, 'Index of this worker; worker 0 is the chief (checkpoints, summaries).')
  flags.DEFINE_integer('num_ps_tasks', 0, 'Parameter servers holding the variables (with --master).')
  flags.DEFINE_integer('num_replicas', 1, 'Workers in the cluster (with --master).')
  flags.DEFINE_boolean('sync_replicas', False, 'Aggregate the gradients of all workers synchronously each step '
                       '(tf.train.SyncReplicasOptimizer) instead of asynchronous updates.')
  flags.mark_flags_as_required(['config_path', 'logdir'])


def options_from_flags(**overrides):
  return trainer.default_options(
      num_clones=FLAGS.num_clones,
      clone_on_cpu=FLAGS.clone_on_cpu,
      save_interval_secs=FLAGS.save_interval_secs,
      save_summaries_secs=FLAGS.save_summaries_secs,
      max_checkpoints_to_keep=FLAGS.max_checkpoints_to_keep,
      keep_checkpoint_every_n_hours=FLAGS.keep_checkpoint_every_n_hours,
      log_every_n_steps=FLAGS.log_every_n_steps,
      image_summaries=FLAGS.image_summaries,
      test_image_summaries=FLAGS.test_image_summaries,
      session_config=device_flags.session_config_from_flags(),
      **overrides)


def cluster_from_flags():
  """The cluster from TF_CONFIG or --master/--task/...; starts this process' server (a ps never returns)."""
  cluster_config = cluster.resolve(FLAGS.master, FLAGS.task, FLAGS.num_ps_tasks, FLAGS.num_replicas,
                                   FLAGS.sync_replicas)
  return cluster.start_server(cluster_config) if cluster_config else None


def run(options, make_step_callback=None):
  """Loads the config, joins the cluster (if any) and trains.

  Args:
    options: trainer.TrainOptions from options_from_flags().
    make_step_callback: None, or fn(cluster config or None) -> TrainOptions.step_callback, called once this
      process knows its role (e.g. only the chief writes summaries).
  """
  config = config_util.load_pipeline_config(FLAGS.config_path, FLAGS.config_override)
  cluster_config = cluster_from_flags()
  options = options._replace(cluster=cluster_config)
  if make_step_callback is not None:
    options = options._replace(step_callback=make_step_callback(cluster_config))
  try:
    with dataset_builder.naming_record_errors(config.train_input_reader, 'train_input_reader'):
      trainer.train(config, FLAGS.logdir, options,
                    config_path=config_util.config_source(FLAGS.config_path, FLAGS.config_override))
  except trainer.TrainingInterrupted as e:
    # The shell's status of a process killed by the signal (130 SIGINT, 143 SIGTERM): not a finished run.
    logger.warning('%s; exit status %d.', e, e.exit_code)
    sys.exit(e.exit_code)


def main(argv):
  del argv
  run(options_from_flags())


def console_main():
  """Entry point of the installed `pspnet-train` command."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
