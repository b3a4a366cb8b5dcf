r"""Exports the config's trained model (PSPNet50 or ICNet): frozen graph, SavedModel, model figures, seed checkpoint
(README, "Export").

    python export.py \
        --config_path configs/pspnet_1.0_713_resnet_v1.config \
        --trained_checkpoint /tmp/pspnet_1.0_713_resnet_v1_TRAIN \
        --output_dir /tmp/pspnet_export \
        --input_shape 1,1024,2048,3 --pad_to_shape 1025,2049

writes output_dir/frozen_inference_graph.pb (uint8 `inputs` -> int32 `predictions`), output_dir/saved_model/
(signature `serving_default`) and output_dir/model_figures.json (parameters, MACs, inference time). Without
--trained_checkpoint only the figures are computed (timed with random weights), to compare architectures before
training. --export_checkpoint (or --checkpoint_only) adds a clean checkpoint of the model variables and
name_map.json: a PSPNet's initialises ICNet, an ICNet's another ICNet run. Flags follow the original TF1
toolkit's export.py.
"""
from absl import flags

from libs import cli

cli.import_tensorflow_quietly()  # before the imports below load TensorFlow

# pylint: disable=wrong-import-position
from drivers import exporter  # noqa: E402
from drivers import inference_graph
from libs import config_util
from libs.compat import tf
from libs.config_errors import UserError

FLAGS = flags.FLAGS
logger = tf.get_logger()

# Most pixels (N x H x W, padded) an exported network may take: 2^27 = 16 Cityscapes frames of 2048 x 4096.
# Far larger shapes cannot run (activations of tens of GiB per tensor) and would first fail allocating
# the timing input.
MAX_INPUT_PIXELS = 2 ** 27


def check_input_pixels(input_shape, pad_to_shape, flag='--input_shape', pad_flag='--pad_to_shape'):
  """Raises a UserError, before anything is allocated, for a shape with more than MAX_INPUT_PIXELS pixels.

  Args:
    input_shape: (N, H, W, 3) or (H, W, 3) from parse_shape (None for a dynamic dimension), or None.
    pad_to_shape: (H, W) or None.
  """
  if not input_shape:
    return
  batch = input_shape[0] if len(input_shape) == 4 else 1
  height, width = input_shape[-3:-1]
  if pad_to_shape:
    height, width = max(height or 0, pad_to_shape[0]), max(width or 0, pad_to_shape[1])
  pixels = (batch or 1) * (height or 1) * (width or 1)
  if pixels > MAX_INPUT_PIXELS:
    raise UserError('%s = %s%s: %d pixels (N x H x W); at most %d (2^27, e.g. 16 x 2048 x 4096) are allowed' % (
        flag, inference_graph.shape_text(input_shape),
        ' with %s = %s' % (pad_flag, inference_graph.shape_text(pad_to_shape)) if pad_to_shape else '',
        pixels, MAX_INPUT_PIXELS))


def define_flags():
  flags.DEFINE_string('config_path', None, 'The pipeline config of the model.')
  flags.DEFINE_string('trained_checkpoint', None, 'A checkpoint prefix or a training directory (its latest '
                      'checkpoint). Without it only the figures are computed.')
  flags.DEFINE_string('output_dir', None, 'Directory for the exported files.')
  flags.DEFINE_string('config_override', '', 'Text-format PipelineConfig fragment merged over the config, '
                      'e.g. \'model { pspnet { conv3x3_algorithm: "winograd" } }\' (the faster CPU graph: '
                      'same weights).')
  flags.DEFINE_string('input_shape', '1,1024,2048,3', 'Shape of the uint8 `inputs` placeholder: N,H,W,3 '
                      '(predictions int32 [N,H,W]) or H,W,3 (predictions [H,W]); -1 for a dynamic dimension '
                      '(a dynamic H or W needs --pad_to_shape).')
  flags.DEFINE_string('pad_to_shape', '', 'H,W the network runs at; inputs are padded to it with the mean colour '
                      'and predictions cropped back. Empty: the input size rounded up to the next multiple of '
                      'the output stride plus one (1024,2048 -> 1025,2049).')
  flags.DEFINE_integer('num_timing_runs', 5, 'Timed batch-1 runs for the inference-time figure (median '
                       'reported); 0 skips timing.')
  flags.DEFINE_integer('num_warmup_runs', 2, 'Untimed runs before the timed ones.')
  flags.DEFINE_boolean('export_checkpoint', False, 'Also write model.ckpt (model variables only, batch-norm '
                       'statistics included, no optimizer slots or global step) and name_map.json: the seed '
                       'checkpoint (fine_tune_checkpoint_type: "segmentation"): a PSPNet\'s initialises ICNet\'s '
                       'backbone.')
  flags.DEFINE_boolean('checkpoint_only', False, 'Write only the seed checkpoint, name_map.json and the figures '
                       '(no frozen graph, SavedModel or timing).')
  flags.DEFINE_enum('compute_dtype', 'float32', ['float32', 'bfloat16'], 'Arithmetic of the exported network: '
                    'bfloat16 halves activation memory and is faster where the hardware has bfloat16 units '
                    '(GPUs, CPUs with AMX); weights are stored in float32 either way. See README, "Performance".')
  flags.DEFINE_boolean('allow_growth', False, 'Let TensorFlow grow GPU memory as needed.')
  flags.mark_flags_as_required(['config_path', 'output_dir'])


def main(argv):
  del argv
  config = config_util.load_pipeline_config(FLAGS.config_path, FLAGS.config_override)
  config_path = config_util.config_source(FLAGS.config_path, FLAGS.config_override)
  if FLAGS.num_timing_runs < 0 or FLAGS.num_warmup_runs < 0:
    raise UserError('--num_timing_runs = %d, --num_warmup_runs = %d: must be >= 0'
                    % (FLAGS.num_timing_runs, FLAGS.num_warmup_runs))
  session_config = tf.ConfigProto(allow_soft_placement=True)
  session_config.gpu_options.allow_growth = FLAGS.allow_growth
  input_shape = inference_graph.parse_shape(FLAGS.input_shape, '--input_shape', (3, 4))
  pad_to_shape = inference_graph.parse_shape(FLAGS.pad_to_shape, '--pad_to_shape', (2,))
  check_input_pixels(input_shape, pad_to_shape)
  if not FLAGS.trained_checkpoint:
    logger.info('No --trained_checkpoint: computing the model figures only (timing with random weights).')
  with config_util.naming_config_file(config_path):
    result = exporter.export(
        config.model, FLAGS.output_dir, trained_checkpoint=FLAGS.trained_checkpoint,
        input_shape=input_shape, pad_to_shape=pad_to_shape,
        num_timing_runs=FLAGS.num_timing_runs, num_warmup_runs=FLAGS.num_warmup_runs,
        export_checkpoint=FLAGS.export_checkpoint, checkpoint_only=FLAGS.checkpoint_only,
        session_config=session_config, config_path=config_path, compute_dtype=FLAGS.compute_dtype)
  for line in exporter.format_figures(result.figures):
    print(line)
  print('Figures written to %s/%s' % (FLAGS.output_dir, exporter.FIGURES_NAME))


def console_main():
  """Entry point of the installed `pspnet-export` command."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  console_main()
