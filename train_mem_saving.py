r"""Trains the config's model (PSPNet50 or ICNet) with memory-saving gradients (gradient checkpointing, Chen et
al. 2016; the role OpenAI's gradient-checkpointing package played in the original project): see
libs/memory_saving_gradients.py.

    export CHECKPOINT_NODES=SharedFeatureExtractor/resnet_v1_50/block1/unit_3/bottleneck_v1/Relu,SharedFeatureExtractor/resnet_v1_50/block2/unit_4/bottleneck_v1/Relu,SharedFeatureExtractor/resnet_v1_50/block3/unit_6/bottleneck_v1/Relu,SharedFeatureExtractor/resnet_v1_50/block4/unit_3/bottleneck_v1/Relu,PSPModule/Conv_4/Relu6
    python train_mem_saving.py \
        --config_path configs/pspnet_1.0_713_resnet_v1_CUSTOM.config \
        --logdir /tmp/pspnet_1.0_713_resnet_v1_TRAIN \
        --checkpoint_nodes $CHECKPOINT_NODES \
        --test_image_summaries \
        --log_memory

The nodes above are PSPNet50's (the seed's); ICNet's are its block outputs plus FastPSPModule/Conv/Relu,
CascadeFeatureFusion/Relu and CascadeFeatureFusion_1/Relu (README, "ICNet").

Takes every flag of train.py, plus:

  --checkpoint_nodes   comma-separated node names to keep between the forward and the backward pass, without the
                       clone scope (resolved to `clone_i/<name>` in each clone); or one automatic choice:
                       auto (= auto-memory), auto-memory, auto-speed, auto-units, auto-collection.
  --checkpoint_mode    the automatic choice as its own flag: memory, speed, units or collection. Neither flag:
                       memory.
  --log_memory         log peak memory after the first steps and every --log_memory_every_n_steps steps, and
                       write it to TensorBoard under Memory/.
"""
from absl import app
from absl import flags

import train  # first: it imports TensorFlow quietly (libs/cli.py)
from libs import cli
from libs import gradient_checkpoints
from libs import memory
from libs import memory_saving_gradients
from libs.compat import tf

FLAGS = flags.FLAGS
logger = tf.get_logger()

AUTO_PREFIX = 'auto-'
AUTO_VALUES = ['auto'] + [AUTO_PREFIX + mode for mode in gradient_checkpoints.MODES]


def define_flags():
  """train.py's flags plus the memory-saving ones."""
  train.define_flags()
  flags.adopt_module_key_flags(train)  # list train.py's flags in --help too
  flags.DEFINE_list('checkpoint_nodes', [], 'Comma-separated names of the nodes kept for the backward pass '
                    '(without clone scope), e.g. PSPNet50\'s five of README "Memory-saving training" or ICNet\'s seven '
                    '(README "ICNet"); or one of %s.'
                    % ', '.join(AUTO_VALUES))
  flags.DEFINE_enum('checkpoint_mode', None, list(gradient_checkpoints.MODES), 'Choose the checkpoints '
                    'automatically (instead of --checkpoint_nodes): memory = ~sqrt(n) cuts minimising the '
                    'estimated peak, speed = outputs of convolutions, units = residual unit outputs, collection '
                    '= the graph collection "checkpoints". Default when neither flag is given: memory.')
  flags.DEFINE_boolean('log_memory', False, 'Log peak memory (GPU allocator, CPU allocator with '
                       'TF_CPU_ALLOCATOR_USE_BFC=true, process VmHWM) and write it to TensorBoard under Memory/.')
  flags.DEFINE_integer('log_memory_every_n_steps', 0, 'Steps between memory lines after the first %d '
                       '(0: --log_every_n_steps).' % memory.MemoryLogger.FIRST_STEPS)


def checkpoints_from_flags(checkpoint_nodes, checkpoint_mode):
  """--checkpoint_nodes / --checkpoint_mode -> the `checkpoints` argument of memory_saving_gradients.

  Raises:
    app.UsageError: for an unknown automatic value or conflicting flags, naming the values.
  """
  nodes = [node.strip() for node in checkpoint_nodes if node.strip()]
  auto = [node for node in nodes if node == 'auto' or node.startswith(AUTO_PREFIX)]
  if auto:
    if len(nodes) > 1 or checkpoint_mode:
      raise app.UsageError('--checkpoint_nodes %s: the automatic choice %r cannot be combined with node names or '
                           '--checkpoint_mode' % (','.join(nodes), auto[0]))
    if auto[0] not in AUTO_VALUES:
      raise app.UsageError('--checkpoint_nodes %s: allowed automatic values: %s' % (auto[0], ', '.join(AUTO_VALUES)))
    return auto[0][len(AUTO_PREFIX):] if auto[0] != 'auto' else 'memory'
  if nodes and checkpoint_mode:
    raise app.UsageError('--checkpoint_nodes (%d names) and --checkpoint_mode %s: give one of them'
                         % (len(nodes), checkpoint_mode))
  return nodes or checkpoint_mode or 'memory'


def main(argv):
  del argv
  checkpoints = checkpoints_from_flags(FLAGS.checkpoint_nodes, FLAGS.checkpoint_mode)
  logger.info('Memory-saving gradients, checkpoints: %s',
              checkpoints if isinstance(checkpoints, str) else ', '.join(checkpoints))
  options = train.options_from_flags(gradients_fn=memory_saving_gradients.make_gradients_fn(
      checkpoints, colocate_gradients_with_ops=True))
  train.run(options, make_step_callback=make_memory_logger if FLAGS.log_memory else None)


def make_memory_logger(cluster_config):
  """--log_memory's step callback once this process knows its role: every worker logs its own memory, only
  the chief writes Memory/ summaries (as for every other summary)."""
  return memory.MemoryLogger(FLAGS.logdir, FLAGS.log_memory_every_n_steps or FLAGS.log_every_n_steps,
                             write_summaries=cluster_config is None or cluster_config.is_chief)


def console_main():
  """Entry point of the installed `pspnet-train-mem-saving` command."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
