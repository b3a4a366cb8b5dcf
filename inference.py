r"""Segments images with a trained checkpoint of the config's model, PSPNet50 or ICNet (see README, "Inference").

    python inference.py \
        --input_path /data/cityscapes/leftImg8bit/val \
        --config_path configs/pspnet_1.0_713_resnet_v1.config \
        --trained_checkpoint /tmp/pspnet_1.0_713_resnet_v1_TRAIN \
        --output_dir /tmp/pspnet_inference \
        --input_shape 1024,2048,3 --pad_to_shape 1025,2049

Writes <name>_trainIds.png (or <name>_labelIds.png with --label_ids), <name>_color.png and, with --overlay,
<name>_overlay.png per image. Flags follow the original TF1 toolkit's inference.py. Unreadable images are reported
by name and skipped; the exit status is 1 when any image failed.
"""
from absl import flags

from libs import cli

cli.import_tensorflow_quietly()  # before the imports below load TensorFlow

# pylint: disable=wrong-import-position
from drivers import inference_graph  # noqa: E402
from drivers import inference as inference_lib
from libs import config_util
from libs.compat import tf

FLAGS = flags.FLAGS
logger = tf.get_logger()


def define_flags():
  flags.DEFINE_string('input_path', None, 'An image, a directory (searched recursively for .png/.jpg/.jpeg) or '
                      'a glob (quote it; ** recurses).')
  flags.DEFINE_string('config_path', None, 'The pipeline config the checkpoint was trained with.')
  flags.DEFINE_string('trained_checkpoint', None, 'A checkpoint prefix (path/to/model.ckpt-1000) or a training '
                      'directory (its latest checkpoint).')
  flags.DEFINE_string('output_dir', None, 'Directory for the result images (input sub-directories are kept).')
  flags.DEFINE_string('input_shape', '1024,2048,3', 'H,W,3: the image size the network is built for '
                      '(Cityscapes frames by default). Smaller images are padded, larger ones get a network of '
                      'their own size. Empty (--input_shape=): every image at its own size.')
  flags.DEFINE_string('pad_to_shape', '', 'H,W: the network shape; images are padded to it with the mean '
                      'colour and predictions cropped back. Empty: --input_shape rounded up to the next '
                      'multiple of the output stride plus one (1024,2048 -> 1025,2049, an exact zoom of the '
                      'logits).')
  flags.DEFINE_boolean('label_ids', False, 'Write Cityscapes label ids (<name>_labelIds.png, the benchmark '
                       'server format) instead of train ids.')
  flags.DEFINE_boolean('overlay', False, 'Also write the colour image blended over the input.')
  flags.DEFINE_float('overlay_alpha', 0.5, 'Weight of the colours in the overlay, in [0, 1].')
  flags.DEFINE_boolean('allow_growth', False, 'Let TensorFlow grow GPU memory as needed.')
  flags.mark_flags_as_required(['input_path', 'config_path', 'trained_checkpoint', 'output_dir'])


def main(argv):
  del argv
  config = config_util.load_pipeline_config(FLAGS.config_path)
  session_config = tf.ConfigProto(allow_soft_placement=True)
  session_config.gpu_options.allow_growth = FLAGS.allow_growth
  with config_util.naming_config_file(FLAGS.config_path):
    summary = inference_lib.run_inference(
        config.model, FLAGS.trained_checkpoint, FLAGS.input_path, FLAGS.output_dir,
        input_shape=inference_graph.parse_shape(FLAGS.input_shape, '--input_shape', (3,)),
        pad_to_shape=inference_graph.parse_shape(FLAGS.pad_to_shape, '--pad_to_shape', (2,)),
        label_ids=FLAGS.label_ids, write_overlay=FLAGS.overlay, overlay_alpha=FLAGS.overlay_alpha,
        session_config=session_config)
  line = inference_lib.summary_line(summary)
  if summary.failed:
    logger.error(line)
    return 1
  logger.info(line)
  return 0


def console_main():
  """Entry point of the installed `pspnet-inference` command."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
