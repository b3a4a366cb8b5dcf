r"""Evaluates the checkpoints of the config's model (PSPNet50 or ICNet) beside training, or a range of them once
(see README and ../shared/seed/pspnet.md).

    python eval.py \
        --config_path configs/pspnet_1.0_713_resnet_v1.config \
        --train_dir /tmp/pspnet_1.0_713_resnet_v1_TRAIN \
        --eval_dir /tmp/pspnet_1.0_713_resnet_v1_EVAL \
        --verbose

By default it waits for each new checkpoint in --train_dir, evaluates it once and writes TensorBoard summaries
(Metrics/mIoU, Metrics/IoU/<class>, ...), results/step_<step>.json and best.json into --eval_dir; it exits once
train_config.num_steps is evaluated. A restarted evaluator skips the checkpoints already evaluated.
"""
from absl import flags

from libs import cli

cli.import_tensorflow_quietly()  # before the imports below load TensorFlow

# pylint: disable=wrong-import-position
from builders import dataset_builder  # noqa: E402
from drivers import evaluator
from libs import config_util
from libs import device_flags

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('config_path', None, 'Path of a text-format pipeline config (pipeline.proto): model, '
                      'eval_config and eval_input_reader are used.')
  flags.DEFINE_string('train_dir', None, 'The training --logdir whose checkpoints are evaluated.')
  flags.DEFINE_string('eval_dir', None, 'Directory for evaluation summaries, results/*.json, best.json and '
                      'best/ (created if needed).')
  flags.DEFINE_string('config_override', '', 'Text-format PipelineConfig fragment merged over the config, '
                      'e.g. "eval_config { flip_horizontally: true }".')
  flags.DEFINE_boolean('verbose', False, 'Log the running mIoU while a checkpoint is evaluated, and the '
                       'per-class table.')
  flags.DEFINE_integer('log_every_n_images', 20, 'Images between running-mIoU lines with --verbose.')
  flags.DEFINE_string('evaluate_all_from_checkpoint', None, 'Evaluate every checkpoint of --train_dir from '
                      'this one on (a checkpoint such as model.ckpt-1000, or a global step), then exit.')
  flags.DEFINE_integer('max_evals', 0, 'Stop after this many evaluations (0: no limit).')
  flags.DEFINE_float('eval_timeout_secs', 0, 'Stop after this many seconds without a new checkpoint '
                     '(0: wait until train_config.num_steps is evaluated).')
  flags.DEFINE_float('eval_interval_secs', 30, 'Seconds between looks for a new checkpoint.')
  flags.DEFINE_boolean('image_summaries', False, 'Add input, ground truth and prediction of the first %d '
                       'evaluation images to TensorBoard (EvalImages/...).' % evaluator.MAX_EVAL_IMAGES)
  flags.DEFINE_boolean('keep_best_checkpoint', True, 'Save the weights of the best checkpoint so far (by mIoU) '
                       'into --eval_dir/best/, out of reach of the trainer\'s checkpoint retention.')
  device_flags.define_device_flags(other_process='train.py')
  flags.adopt_module_key_flags(device_flags)  # list them in --help
  flags.mark_flags_as_required(['config_path', 'train_dir', 'eval_dir'])


def options_from_flags():
  return evaluator.default_options(
      eval_interval_secs=FLAGS.eval_interval_secs,
      eval_timeout_secs=FLAGS.eval_timeout_secs,
      max_evals=FLAGS.max_evals,
      evaluate_all_from_checkpoint=FLAGS.evaluate_all_from_checkpoint,
      image_summaries=FLAGS.image_summaries,
      verbose=FLAGS.verbose,
      log_every_n_images=FLAGS.log_every_n_images,
      keep_best_checkpoint=FLAGS.keep_best_checkpoint,
      session_config=device_flags.session_config_from_flags())


def main(argv):
  del argv
  config = config_util.load_pipeline_config(FLAGS.config_path, FLAGS.config_override)
  with dataset_builder.naming_record_errors(config.eval_input_reader, 'eval_input_reader'):
    evaluator.evaluate(config, FLAGS.train_dir, FLAGS.eval_dir, options_from_flags(),
                       config_path=config_util.config_source(FLAGS.config_path, FLAGS.config_override))


def console_main():
  """Entry point of the installed `pspnet-eval` command."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
