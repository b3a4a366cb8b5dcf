"""Evaluates the checkpoints of a training run beside the trainer (eval.py), or a range of them once.

    evaluator.evaluate(pipeline_config, train_dir, eval_dir, evaluator.default_options())

Follows the evaluation of the original TF1 project (and of the TF Object Detection API / DeepLab evaluators it
descends from): one process polls `train_dir`, restores each new checkpoint into one inference graph, scores
`eval_config.num_examples` of `eval_input_reader`, and writes TensorBoard summaries at the checkpoint's global
step into `eval_dir`, so that `tensorboard --logdir train:TRAIN,eval:EVAL` shows both runs on one axis.

Per checkpoint, one int64 confusion matrix is accumulated on the host from per-image matrices computed in the
graph; the metrics (libs/metrics.py) match the official Cityscapes evaluation. Outputs in eval_dir:

    events.out.tfevents.*        Metrics/mIoU, Metrics/IoU/<class>, Metrics/PixelAccuracy,
                                 Metrics/MeanClassAccuracy, Losses/EvalLoss (+ EvalImages/... with
                                 image_summaries)
    results/step_<step>.json     every metric, the confusion matrix and how it was evaluated; also the record of
                                 what has been evaluated, so a restarted evaluator skips those checkpoints
    best.json                    the checkpoint with the highest mIoU so far
    best/model.ckpt-<step>       its model weights and global step (saved from memory after the restore, so the
                                 trainer's checkpoint retention cannot take them away)
    pipeline.config              the effective config

Inference per image (predict_probabilities): for each scale in eval_config.eval_scales (and each mirror image
with flip_horizontally) the image is resized, run through the network either padded to a fixed size (padded or
cropped eval input) or as overlapping sliding windows, and its softmax probabilities are brought back to the
label's resolution; the views' probabilities are averaged and the arg-max is scored. Padding is always cropped
away and the label is never resized.

What the loop survives (the trainer writes checkpoints with tf.train.Saver and deletes old ones):
  * an empty or missing train_dir at start: it waits;
  * a checkpoint still being written: only checkpoints the `checkpoint` state file has announced (written by the
    Saver after the files) or older ones are ready; a restore that fails while the files are still there is
    retried on the next poll (three times at most);
  * a checkpoint deleted by the trainer's retention before or while it is restored: skipped with a warning
    (once restored, the weights are in memory and the evaluation completes);
  * the trainer finishing: the loop exits once train_config.num_steps is evaluated, after eval_timeout_secs
    without a new checkpoint, or after max_evals evaluations.
The loop evaluates the newest checkpoint it has not evaluated (older ones it passed over are logged; evaluate
them with evaluate_all_from_checkpoint).
"""
import collections
import glob
import math
import os
import re
import time

import numpy as np

from architectures.pspnet_architecture import resize_bilinear
from builders import dataset_builder
from builders import model_builder
from libs import checkpoint_utils
from libs import config_util
from libs import metrics
from libs import summaries
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import require_oneof
from libs.preprocessor import MEAN_RGB
from libs.standard_fields import InputDataFields as fields
from protos import input_reader_pb2

logger = tf.get_logger()

RESULTS_DIR = 'results'
BEST_JSON = 'best.json'
BEST_DIR = 'best'
BEST_CHECKPOINT_BASENAME = 'model.ckpt'
EVAL_IMAGES_PREFIX = 'EvalImages'
MAX_EVAL_IMAGES = 3
MAX_SCALE = 4.0
# Probabilities are clipped here before the log of the evaluation loss: a pixel predicted with probability 0
# (softmax underflow) would otherwise make the mean infinite.
MIN_PROBABILITY = 1e-30
# A restore that fails while the files exist is retried this many times before the checkpoint is skipped.
MAX_RESTORE_ATTEMPTS = 3

_STEP_PATTERN = re.compile(r'-(\d+)$')


class EvalOptions(collections.namedtuple('EvalOptions', [
    'eval_interval_secs', 'eval_timeout_secs', 'max_evals', 'evaluate_all_from_checkpoint', 'image_summaries',
    'verbose', 'log_every_n_images', 'keep_best_checkpoint', 'session_config'])):
  """Deployment and logging options of an evaluation run (the config holds what is evaluated and how).

  eval_interval_secs: seconds between looks at train_dir for a new checkpoint.
  eval_timeout_secs: stop after this many seconds without a new checkpoint to evaluate (0: wait forever).
  max_evals: stop after this many evaluations (0: no limit).
  evaluate_all_from_checkpoint: None, or a checkpoint ('/train/model.ckpt-1000', 'model.ckpt-1000') or a global
    step ('1000'): evaluate every ready checkpoint of train_dir from that step on, in order, also those
    evaluated before, then return instead of waiting.
  image_summaries: add input, ground truth and prediction of the first MAX_EVAL_IMAGES images to TensorBoard.
  verbose: log the running mIoU every log_every_n_images images and the per-class table.
  log_every_n_images: see verbose.
  keep_best_checkpoint: save the weights of the best checkpoint so far into eval_dir/best/.
  session_config: tf.ConfigProto or None.
  """


def default_options(**overrides):
  options = EvalOptions(eval_interval_secs=30.0, eval_timeout_secs=0.0, max_evals=0,
                        evaluate_all_from_checkpoint=None, image_summaries=False, verbose=False,
                        log_every_n_images=20, keep_best_checkpoint=True, session_config=None)
  return options._replace(**overrides)


SlidingWindow = collections.namedtuple('SlidingWindow', [
    'crop_height', 'crop_width', 'stride_height', 'stride_width', 'batch_size'])

EvalSpec = collections.namedtuple('EvalSpec', ['input_type', 'fixed_size', 'sliding_window', 'scales', 'flip'])
EvalSpec.__doc__ = """How images are fed to the network, from a validated eval_config.

input_type: 'padded_eval_input', 'cropped_eval_input' or 'sliding_window_eval_input'.
fixed_size: (height, width) the input is padded or cropped to (padded / cropped), else None.
sliding_window: SlidingWindow (sliding_window_eval_input), else None.
scales: tuple of floats ((1.0,) when eval_scales is empty).
flip: bool, also average the mirrored image.
"""


def _require_positive(message, name, field_path):
  value = getattr(message, name)
  if not message.HasField(name) or value <= 0:
    raise ConfigError('%s.%s' % (field_path, name), value if message.HasField(name) else None, 'must be > 0')
  return value


def validate_eval_config(pipeline_config):
  """Checks what evaluation needs from the pipeline config and returns how to evaluate.

  Args:
    pipeline_config: pipeline_pb2.PipelineConfig.

  Returns:
    EvalSpec.

  Raises:
    ConfigError: naming the field path, the value and what is allowed.
  """
  for field in ('model', 'eval_input_reader'):
    if not pipeline_config.HasField(field):
      raise ConfigError(field, None, 'must be set')
  eval_config = pipeline_config.eval_config
  choices = [f.name for f in eval_config.eval_input_type.DESCRIPTOR.oneofs_by_name['eval_input_type_oneof'].fields]
  if not eval_config.HasField('eval_input_type'):
    raise ConfigError('eval_config.eval_input_type', None,
                      'must be set to one of {%s}: the network needs inputs of a fixed size' % ', '.join(choices))
  type_path = 'eval_config.eval_input_type'
  which = require_oneof(eval_config.eval_input_type, 'eval_input_type_oneof', type_path)
  input_config = getattr(eval_config.eval_input_type, which)
  path = '%s.%s' % (type_path, which)
  fixed_size = window = None
  if which == 'sliding_window_eval_input':
    crop_height = _require_positive(input_config, 'crop_height', path)
    crop_width = _require_positive(input_config, 'crop_width', path)
    strides = []
    for name, crop in (('stride_height', crop_height), ('stride_width', crop_width)):
      value = getattr(input_config, name)
      if not input_config.HasField(name) or not 1 <= value <= crop:
        raise ConfigError('%s.%s' % (path, name), value if input_config.HasField(name) else None,
                          'must be in [1, %d] (the crop size; a larger stride leaves pixels uncovered)' % crop)
      strides.append(value)
    if input_config.batch_size <= 0:
      raise ConfigError(path + '.batch_size', input_config.batch_size, 'must be > 0')
    window = SlidingWindow(crop_height, crop_width, strides[0], strides[1], input_config.batch_size)
  else:
    fixed_size = (_require_positive(input_config, 'height', path), _require_positive(input_config, 'width', path))
  scales = tuple(eval_config.eval_scales) or (1.0,)
  for i, scale in enumerate(eval_config.eval_scales):
    if not 0.0 < scale <= MAX_SCALE:
      raise ConfigError('eval_config.eval_scales[%d]' % i, scale, 'must be in (0, %g]' % MAX_SCALE)
  if len(set(scales)) != len(scales):
    raise ConfigError('eval_config.eval_scales', list(scales), 'must not repeat a value')
  return EvalSpec(which, fixed_size, window, scales, bool(eval_config.flip_horizontally))


def _pad_with_mean(image, height, width):
  """Pads an image [h, w, 3] at the bottom/right with MEAN_RGB to height x width (each >= the image's size).

  Each channel is padded with its own mean (as libs/preprocessor.pad_to_size does), so that the padding is
  exactly 0 after the model's mean subtraction and a padded view equals the dataset's padded image.
  """
  with tf.name_scope('pad_with_mean'):
    shape = tf.shape(image)
    paddings = [[0, height - shape[0]], [0, width - shape[1]]]
    return tf.stack([tf.pad(image[:, :, c], paddings, constant_values=MEAN_RGB[c])
                     for c in range(len(MEAN_RGB))], axis=2)


def _window_starts(size, crop, stride):
  """int32 [n]: window origins along one axis of length size >= crop, the last one moved back to end at size."""
  count = (size - crop + stride - 1) // stride + 1
  return tf.minimum(tf.range(count) * stride, size - crop)


def _fixed_size_probabilities(image, network_fn, height, width):
  """Pads image [h, w, 3] (h <= height, w <= width) to height x width, runs the network, crops to h x w."""
  with tf.name_scope('FixedSize'):
    size = tf.shape(image)[:2]
    padded = _pad_with_mean(image, height, width)
    padded.set_shape([height, width, 3])
    probabilities = network_fn(padded[tf.newaxis])[0]
    return probabilities[:size[0], :size[1]]


def _sliding_window_probabilities(image, network_fn, window):
  """Averages the probabilities of overlapping windows over image [h, w, 3] (any size) -> [h, w, C]."""
  with tf.name_scope('SlidingWindow'):
    size = tf.shape(image)[:2]
    crop_height, crop_width = window.crop_height, window.crop_width
    padded = _pad_with_mean(image, tf.maximum(size[0], crop_height), tf.maximum(size[1], crop_width))
    padded_size = tf.shape(padded)[:2]
    rows, cols = tf.meshgrid(_window_starts(padded_size[0], crop_height, window.stride_height),
                             _window_starts(padded_size[1], crop_width, window.stride_width), indexing='ij')
    origins = tf.stack([tf.reshape(rows, [-1]), tf.reshape(cols, [-1])], axis=1)
    num_windows = tf.shape(origins)[0]
    num_classes = network_fn.num_classes

    def body(start, sums, counts):
      chunk = origins[start:start + window.batch_size]
      row_index = chunk[:, 0:1] + tf.range(crop_height)[tf.newaxis]  # [b, crop_height]
      col_index = chunk[:, 1:2] + tf.range(crop_width)[tf.newaxis]  # [b, crop_width]
      crops = tf.gather(tf.gather(padded, row_index), col_index, axis=2, batch_dims=1)
      crops.set_shape([None, crop_height, crop_width, 3])
      probabilities = network_fn(crops)
      grid_shape = tf.stack([tf.shape(chunk)[0], crop_height, crop_width])
      indices = tf.stack([tf.broadcast_to(row_index[:, :, tf.newaxis], grid_shape),
                          tf.broadcast_to(col_index[:, tf.newaxis, :], grid_shape)], axis=3)
      sums = tf.tensor_scatter_nd_add(sums, indices, probabilities)
      counts = tf.tensor_scatter_nd_add(counts, indices, tf.ones(grid_shape, tf.float32))
      return start + window.batch_size, sums, counts

    sums = tf.zeros(tf.concat([padded_size, [num_classes]], axis=0), tf.float32)
    counts = tf.zeros(padded_size, tf.float32)
    # One chunk at a time: the windows' activations are what bounds memory.
    _, sums, counts = tf.while_loop(
        lambda start, *_: start < num_windows, body, [tf.constant(0), sums, counts],
        shape_invariants=[tf.TensorShape([]), tf.TensorShape([None, None, num_classes]),
                          tf.TensorShape([None, None])],
        parallel_iterations=1, back_prop=False)
    return (sums / counts[:, :, tf.newaxis])[:size[0], :size[1]]


def _scaled_size(size, scale):
  return tf.maximum(tf.cast(tf.round(scale * tf.cast(size, tf.float32)), tf.int32), 1)


def predict_probabilities(image, network_fn, spec):
  """Class probabilities of one image, averaged over scales, mirror images and sliding windows.

  Args:
    image: float32 [h, w, 3], RGB in [0, 255]: the part of the input that is scored (no padding). With a
      fixed_size, h <= height and w <= width.
    network_fn: callable(images float32 [N, H, W, 3] with static H and W) -> softmax probabilities float32
      [N, H, W, C] at the input's resolution, with a num_classes attribute (C).
    spec: EvalSpec.

  Returns:
    float32 [h, w, C], each pixel's probabilities summing to 1.
  """
  with tf.name_scope('Inference'):
    size = tf.shape(image)[:2]
    views = []
    for scale in spec.scales:
      with tf.name_scope('Scale_%s' % ('%g' % scale).replace('.', '_')):
        scaled = image if scale == 1.0 else resize_bilinear(image[tf.newaxis], _scaled_size(size, scale))[0]
        for flipped in ((False, True) if spec.flip else (False,)):
          view = tf.reverse(scaled, axis=[1]) if flipped else scaled
          if spec.sliding_window is not None:
            probabilities = _sliding_window_probabilities(view, network_fn, spec.sliding_window)
          else:
            height, width = (int(round(scale * d)) for d in spec.fixed_size)
            probabilities = _fixed_size_probabilities(view, network_fn, max(height, 1), max(width, 1))
          if flipped:
            probabilities = tf.reverse(probabilities, axis=[1])
          if scale != 1.0:
            probabilities = resize_bilinear(probabilities[tf.newaxis], size)[0]
          views.append(probabilities)
    return views[0] if len(views) == 1 else tf.add_n(views) / float(len(views))


class ModelProbabilities(object):
  """network_fn for predict_probabilities(): the model in inference mode, variables created on the first call
  and shared by every later call (scales, mirror images, window batches)."""

  def __init__(self, model):
    self._model = model
    self._built = False

  @property
  def num_classes(self):
    return self._model.num_classes

  def __call__(self, images):
    reuse = True if self._built else None
    with tf.variable_scope(tf.get_variable_scope(), reuse=reuse):
      predictions = self._model.predict(self._model.preprocess(images), reuse=reuse)
    self._built = True
    logits = self._model.postprocess(predictions, images.shape.as_list()[1:3])['logits']
    return tf.nn.softmax(logits)


class _EvalGraph(collections.namedtuple('_EvalGraph', [
    'iterator_initializer', 'fetches', 'image_fetches', 'global_step', 'saver', 'restore_map', 'spec',
    'num_classes'])):
  """Tensors of the evaluation graph. fetches: per-image 'confusion' (int64 [C, C]), 'loss_sum' (float64),
  'num_pixels' (int64); image_fetches: PNG bytes of input, ground truth and prediction (or None)."""


def build_evaluation_graph(pipeline_config, image_summaries=False):
  """Builds input, inference and per-image metrics in the default graph (batch of one image).

  Returns:
    _EvalGraph.

  Raises:
    ConfigError: for an invalid eval configuration.
  """
  spec = validate_eval_config(pipeline_config)
  model_config = pipeline_config.model
  num_classes = model_builder.num_classes(model_config)
  ignore_label = model_builder.ignore_label(model_config)
  eval_config = pipeline_config.eval_config

  # Sliding windows take the image at its own size; the other modes pad or crop it in the input pipeline.
  preprocess_fn = None if spec.sliding_window is not None else dataset_builder.build_eval_preprocess_fn(
      eval_config, ignore_label)
  reader = input_reader_pb2.InputReader()
  reader.CopyFrom(pipeline_config.eval_input_reader)
  reader.num_epochs = 1  # One pass per checkpoint, whatever the config says (0 would repeat forever).
  with tf.device('/cpu:0'):
    dataset = dataset_builder.build(reader, batch_size=1, num_classes=num_classes, ignore_label=ignore_label,
                                    preprocess_fn=preprocess_fn, field_path='eval_input_reader',
                                    drop_remainder=False)
    if eval_config.num_examples > 0:
      dataset = dataset.take(eval_config.num_examples)
    iterator = tf.data.make_initializable_iterator(dataset)
    batch = iterator.get_next()

  global_step = tf.train.get_or_create_global_step()
  model = model_builder.build(model_config, is_training=False)
  image = batch[fields.image][0]
  label = batch[fields.labels_class][0, :, :, 0]
  if spec.fixed_size is not None:
    # Score the image's own pixels only: padding (bottom/right) is cropped away from image and label.
    height = tf.minimum(batch[fields.original_height][0], spec.fixed_size[0])
    width = tf.minimum(batch[fields.original_width][0], spec.fixed_size[1])
    image, label = image[:height, :width], label[:height, :width]

  probabilities = predict_probabilities(image, ModelProbabilities(model), spec)
  with tf.name_scope('Metrics'):
    predictions = tf.argmax(probabilities, axis=2, output_type=tf.int32)
    confusion = metrics.confusion_matrix_tensor(label, predictions, num_classes, ignore_label)
    labels = tf.cast(label, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    label_probability = tf.gather(probabilities, safe_labels[:, :, tf.newaxis], batch_dims=2)[:, :, 0]
    nll = -tf.math.log(tf.maximum(label_probability, MIN_PROBABILITY))
    loss_sum = tf.reduce_sum(tf.cast(tf.boolean_mask(nll, valid), tf.float64))
    num_pixels = tf.reduce_sum(tf.cast(valid, tf.int64))
  fetches = {'confusion': confusion, 'loss_sum': loss_sum, 'num_pixels': num_pixels}

  image_fetches = None
  if image_summaries:
    with tf.name_scope('EvalImages'):
      image_fetches = {
          'Input': tf.io.encode_png(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)),
          'GroundTruth': tf.io.encode_png(summaries.colorize(label[tf.newaxis], num_classes, ignore_label)[0]),
          'Prediction': tf.io.encode_png(summaries.colorize(predictions[tf.newaxis], num_classes,
                                                            ignore_label)[0]),
      }

  restore_map = {v.op.name: v for v in slim.get_model_variables()}
  restore_map[global_step.op.name] = global_step
  # No automatic deletion: _keep_best_checkpoint() removes earlier bests itself, also those of an earlier run.
  saver = tf.train.Saver(restore_map, max_to_keep=None)
  return _EvalGraph(iterator.initializer, fetches, image_fetches, global_step, saver, restore_map, spec,
                    num_classes)


def checkpoint_step(path):
  """The global step in a checkpoint name ('.../model.ckpt-1000' -> 1000), or None."""
  match = _STEP_PATTERN.search(os.path.basename(path))
  return int(match.group(1)) if match else None


def _checkpoint_exists(path):
  return tf.io.gfile.exists(path + '.index')


def list_checkpoints(train_dir):
  """The checkpoints of a training directory.

  A checkpoint is ready when the `checkpoint` state file (which tf.train.Saver rewrites, atomically, after the
  checkpoint's files are complete) names it or a later one; a newer .index file may still be being written.
  Without a state file every checkpoint found is taken as ready.

  Args:
    train_dir: the trainer's --logdir.

  Returns:
    (ready, pending): lists of (global step, checkpoint prefix in train_dir), sorted by step.
  """
  found = {}
  for index_file in glob.glob(os.path.join(glob.escape(train_dir), '*.index')):
    prefix = index_file[:-len('.index')]
    step = checkpoint_step(prefix)
    if step is not None:
      found[step] = prefix
  try:
    state = tf.train.get_checkpoint_state(train_dir)
  except (tf.errors.OpError, ValueError):  # Unreadable (e.g. replaced under us): treat as absent.
    state = None
  latest_step = None
  if state is not None:
    for path in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
      step = checkpoint_step(path)
      if step is not None:
        # The trainer saves into its own directory; the state file may hold absolute paths of another machine.
        found.setdefault(step, os.path.join(train_dir, os.path.basename(path)))
        latest_step = step if latest_step is None else max(latest_step, step)
  ordered = sorted(found.items())
  if state is None:
    return ordered, []
  return ([c for c in ordered if c[0] <= latest_step], [c for c in ordered if c[0] > latest_step])


def _results_path(eval_dir, step):
  return os.path.join(eval_dir, RESULTS_DIR, 'step_%08d.json' % step)


def evaluated_steps(eval_dir):
  """Global steps with a results file in eval_dir (the record of what has been evaluated)."""
  steps = set()
  for path in glob.glob(os.path.join(glob.escape(eval_dir), RESULTS_DIR, 'step_*.json')):
    match = re.match(r'step_(\d+)\.json$', os.path.basename(path))
    if match:
      steps.add(int(match.group(1)))
  return steps


def _parse_start_step(value, train_dir):
  """--evaluate_all_from_checkpoint (a checkpoint path or name, or a step) -> global step."""
  value = str(value)
  if value.isdigit():
    return int(value)
  step = checkpoint_step(value)
  if step is None:
    raise ValueError('--evaluate_all_from_checkpoint = %r: expected a checkpoint like %s/model.ckpt-1000 (or '
                     'model.ckpt-1000, or a global step)' % (value, train_dir))
  return step


class _Evaluator(object):
  """One session, one graph, and the bookkeeping of an evaluation run."""

  def __init__(self, pipeline_config, train_dir, eval_dir, options):
    self._config = pipeline_config
    self._train_dir = train_dir
    self._eval_dir = eval_dir
    self._options = options
    self._class_names = None
    self._restore_failures = collections.Counter()
    self.results = []

  def __enter__(self):
    self._graph = tf.Graph()
    with self._graph.as_default():
      self._g = build_evaluation_graph(self._config, self._options.image_summaries)
      init_op = tf.local_variables_initializer()
    self._graph.finalize()
    self._class_names = metrics.class_names(self._g.num_classes)
    session_config = self._options.session_config or tf.ConfigProto(allow_soft_placement=True)
    self._sess = tf.Session(graph=self._graph, config=session_config)
    self._sess.run(init_op)
    self._writer = tf.summary.FileWriter(self._eval_dir)
    return self

  def __exit__(self, *exc):
    self._writer.close()
    self._sess.close()
    return False

  def evaluate(self, step, path):
    """Restores and evaluates one checkpoint.

    Returns:
      'done', 'skipped' (deleted, or unreadable MAX_RESTORE_ATTEMPTS times) or 'retry'.

    Raises:
      ValueError: the checkpoint does not hold the variables of the configured model.
    """
    if not _checkpoint_exists(path):
      logger.warning('Checkpoint %s was deleted (by the trainer\'s checkpoint retention?) before it could be '
                     'evaluated; skipped.', path)
      return 'skipped'
    try:
      # Reading the index first also tells a checkpoint of another model (an error) from an unreadable one.
      _, missing, mismatched = checkpoint_utils.filter_restore_map(self._g.restore_map, path, log=False)
      if not missing and not mismatched:
        _restore_checkpoint(self._g.saver, self._sess, path)
    except (tf.errors.OpError, OSError, ValueError) as e:  # ValueError: Saver's "not a valid checkpoint"
      if not _checkpoint_exists(path):
        logger.warning('Checkpoint %s was deleted (by the trainer\'s checkpoint retention?) while it was being '
                       'restored; skipped.', path)
        return 'skipped'
      self._restore_failures[path] += 1
      if self._restore_failures[path] >= MAX_RESTORE_ATTEMPTS:
        logger.warning('Checkpoint %s could not be read %d times; skipped. Last error: %s', path,
                       MAX_RESTORE_ATTEMPTS, e)
        return 'skipped'
      logger.warning('Checkpoint %s could not be read (still being written?); retrying later. Error: %s', path,
                     e)
      return 'retry'
    if missing or mismatched:
      raise ValueError('Checkpoint %s does not match the model of the eval config: %s%s' % (
          path, ('%d variables missing (e.g. %s)' % (len(missing), missing[0])) if missing else '',
          ('; shape mismatches: %s' % '; '.join(mismatched[:3])) if mismatched else ''))
    global_step = int(self._sess.run(self._g.global_step))
    if global_step != step:
      logger.warning('Checkpoint %s holds global step %d; results are recorded under %d (its name).', path,
                     global_step, step)
    self._run_pass(step, path)
    return 'done'

  def _run_pass(self, step, path):
    options = self._options
    start = time.time()
    logger.info('Evaluating %s (global step %d).', path, step)
    self._sess.run(self._g.iterator_initializer)
    confusion = np.zeros([self._g.num_classes] * 2, dtype=np.int64)
    loss_sum, num_pixels, num_images, images = 0.0, 0, 0, []
    while True:
      fetches = dict(self._g.fetches)
      if self._g.image_fetches is not None and num_images < MAX_EVAL_IMAGES:
        fetches['images'] = self._g.image_fetches
      try:
        out = self._sess.run(fetches)
      except tf.errors.OutOfRangeError:
        break
      confusion += out['confusion']
      loss_sum += float(out['loss_sum'])
      num_pixels += int(out['num_pixels'])
      num_images += 1
      if 'images' in out:
        images.append(out['images'])
      if options.verbose and num_images % options.log_every_n_images == 0:
        logger.info('  step %d: %d images, running mIoU %.4f (%.2f s/image)', step, num_images,
                    metrics.mean_iou(confusion), (time.time() - start) / num_images)
    seconds = time.time() - start
    requested = self._config.eval_config.num_examples
    if requested and num_images < requested:
      logger.warning('eval_config.num_examples = %d but eval_input_reader holds %d examples; evaluated %d.',
                     requested, num_images, num_images)
    results = self._results(step, path, confusion, loss_sum, num_pixels, num_images, seconds)
    self._write(step, results, images)
    self.results.append(results)

  def _results(self, step, path, confusion, loss_sum, num_pixels, num_images, seconds):
    values = metrics.compute_metrics(confusion, self._class_names)
    spec = self._g.spec
    eval_loss = loss_sum / num_pixels if num_pixels else float('nan')
    return {
        'global_step': step,
        'checkpoint': path,
        'mIoU': values['mIoU'],
        'pixel_accuracy': values['pixel_accuracy'],
        'mean_class_accuracy': values['mean_class_accuracy'],
        'eval_loss': eval_loss,
        'class_iou': values['class_iou'],
        'class_accuracy': values['class_accuracy'],
        'num_images': num_images,
        'num_pixels': num_pixels,
        'class_names': self._class_names,
        'confusion_matrix': confusion.tolist(),
        'eval_input': {
            'type': spec.input_type,
            'size': list(spec.fixed_size) if spec.fixed_size else None,
            'sliding_window': dict(spec.sliding_window._asdict()) if spec.sliding_window else None,
            'scales': list(spec.scales),
            'flip_horizontally': spec.flip,
        },
        'seconds': seconds,
        'evaluated_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }

  def _write(self, step, results, images):
    summary = metrics.scalar_summary(results, results['eval_loss'])
    for i, pngs in enumerate(images):
      for name in ('Input', 'GroundTruth', 'Prediction'):
        summary.value.add(tag='%s/%s/%d' % (EVAL_IMAGES_PREFIX, name, i), image=_image_summary(pngs[name]))
    self._writer.add_summary(summary, step)
    self._writer.flush()
    logger.info('Global step %d: mIoU %.4f, pixel accuracy %.4f, mean class accuracy %.4f, eval loss %.4f '
                '(%d images, %.1f s)', step, results['mIoU'], results['pixel_accuracy'],
                results['mean_class_accuracy'], results['eval_loss'], results['num_images'], results['seconds'])
    if self._options.verbose:
      logger.info('Global step %d per class:\n%s', step, metrics.format_table(results))
    self._update_best(step, results)
    # Written last: the results file is also the record that this step is done.
    metrics.write_json(_results_path(self._eval_dir, step), results)

  def _update_best(self, step, results):
    best_path = os.path.join(self._eval_dir, BEST_JSON)
    best = metrics.read_json(best_path)
    miou = results['mIoU']
    if math.isnan(miou) or (best and best.get('mIoU') is not None and best['mIoU'] >= miou):
      return
    kept = None
    if self._options.keep_best_checkpoint:
      kept = self._keep_best_checkpoint(step)
    metrics.write_json(best_path, {
        'global_step': step, 'checkpoint': results['checkpoint'], 'mIoU': miou,
        'pixel_accuracy': results['pixel_accuracy'], 'mean_class_accuracy': results['mean_class_accuracy'],
        'results_file': os.path.relpath(_results_path(self._eval_dir, step), self._eval_dir),
        'kept_checkpoint': kept})
    logger.info('New best mIoU %.4f at global step %d%s.', miou, step, (' (weights kept in %s)' % kept) if kept
                else '')

  def _keep_best_checkpoint(self, step):
    best_dir = os.path.join(self._eval_dir, BEST_DIR)
    tf.io.gfile.makedirs(best_dir)
    prefix = self._g.saver.save(self._sess, os.path.join(best_dir, BEST_CHECKPOINT_BASENAME), global_step=step,
                                write_meta_graph=False, write_state=False)
    # The state file makes best/ a checkpoint directory (tf.train.latest_checkpoint, fine_tune_checkpoint).
    name = os.path.basename(prefix)
    config_util.atomic_write(os.path.join(best_dir, 'checkpoint'), 'model_checkpoint_path: "%s"\n'
                                  'all_model_checkpoint_paths: "%s"\n' % (name, name))
    # Earlier bests, also those of a previous run of the evaluator.
    for path in glob.glob(os.path.join(glob.escape(best_dir), BEST_CHECKPOINT_BASENAME + '-*')):
      if not os.path.basename(path).startswith(os.path.basename(prefix) + '.'):
        os.remove(path)
    return prefix

  def evaluate_range(self, start_step):
    """evaluate_all_from_checkpoint: every ready checkpoint from start_step on, once each."""
    ready, pending = list_checkpoints(self._train_dir)
    todo = [c for c in ready if c[0] >= start_step]
    if not todo:
      logger.warning('No checkpoint from global step %d on in %s.', start_step, self._train_dir)
    for step, path in pending:
      if step >= start_step:
        logger.info('Checkpoint %s is not complete yet (not in the checkpoint state file); not evaluated.', path)
    for step, path in todo:
      while self.evaluate(step, path) == 'retry':
        time.sleep(self._options.eval_interval_secs)
      if self._options.max_evals and len(self.results) >= self._options.max_evals:
        logger.info('Evaluated max_evals = %d checkpoints; stopping.', self._options.max_evals)
        break

  def loop(self):
    """Waits for new checkpoints and evaluates each once, until done (see the module docstring)."""
    options = self._options
    num_steps = self._config.train_config.num_steps
    done = evaluated_steps(self._eval_dir)
    if done:
      logger.info('%s already holds results of %d checkpoints (up to global step %d); they are not '
                  're-evaluated.', self._eval_dir, len(done), max(done))
    last_step = max(done) if done else -1
    last_activity = time.time()
    waiting_logged = False
    while True:
      if num_steps and last_step >= num_steps:
        logger.info('Global step %d reached train_config.num_steps = %d: training is over; stopping.', last_step,
                    num_steps)
        return
      ready, _ = list_checkpoints(self._train_dir)
      new = [c for c in ready if c[0] > last_step]
      if new:
        step, path = new[-1]
        if len(new) > 1:
          logger.info('Passing over %d older unevaluated checkpoints (steps %s) for the newest; evaluate them '
                      'with --evaluate_all_from_checkpoint.', len(new) - 1, ', '.join(str(s) for s, _ in new[:-1]))
        outcome = self.evaluate(step, path)
        if outcome != 'retry':
          last_step = step
          last_activity = time.time()
          waiting_logged = False
        if outcome == 'done' and options.max_evals and len(self.results) >= options.max_evals:
          logger.info('Evaluated max_evals = %d checkpoints; stopping.', options.max_evals)
          return
        if outcome != 'retry':
          continue
      waited = time.time() - last_activity
      if options.eval_timeout_secs and waited >= options.eval_timeout_secs:
        logger.info('No new checkpoint in %s for %.0f s (eval_timeout_secs); stopping.', self._train_dir, waited)
        return
      if not waiting_logged:
        logger.info('Waiting for a new checkpoint in %s (polling every %g s).', self._train_dir,
                    options.eval_interval_secs)
        waiting_logged = True
      pause = options.eval_interval_secs
      if options.eval_timeout_secs:
        pause = min(pause, max(0.0, options.eval_timeout_secs - waited))
      time.sleep(pause)


def _restore_checkpoint(saver, sess, path):
  """Restores path into sess (module-level so that tests can interpose a deletion)."""
  saver.restore(sess, path)


def _image_summary(png):
  """tf.Summary.Image of PNG bytes (the size is read from the PNG header)."""
  width, height = int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big')
  return tf.Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)


def evaluate(pipeline_config, train_dir, eval_dir, options=None, config_path=None):
  """Evaluates checkpoints of train_dir into eval_dir (see the module docstring).

  Args:
    pipeline_config: pipeline_pb2.PipelineConfig.
    train_dir: the trainer's --logdir.
    eval_dir: where summaries, results and the best checkpoint go (created if needed).
    options: EvalOptions (default_options() if None).
    config_path: the config file, to name it in error messages.

  Returns:
    List of the results dicts of the checkpoints evaluated by this call (as in results/step_*.json).

  Raises:
    ConfigError / ValueError: for an invalid config, flag or a checkpoint of another model.
  """
  options = options or default_options()
  if options.eval_interval_secs < 0 or options.eval_timeout_secs < 0 or options.max_evals < 0:
    raise ValueError('eval_interval_secs, eval_timeout_secs and max_evals must be >= 0, got %s, %s, %s' % (
        options.eval_interval_secs, options.eval_timeout_secs, options.max_evals))
  if options.log_every_n_images <= 0:
    raise ValueError('log_every_n_images must be > 0, got %r' % (options.log_every_n_images,))
  start_step = None
  if options.evaluate_all_from_checkpoint:
    start_step = _parse_start_step(options.evaluate_all_from_checkpoint, train_dir)
  with config_util.naming_config_file(config_path):
    validate_eval_config(pipeline_config)
    tf.io.gfile.makedirs(eval_dir)
    with _Evaluator(pipeline_config, train_dir, eval_dir, options) as evaluator:
      config_util.save_pipeline_config(pipeline_config, eval_dir)
      if start_step is not None:
        evaluator.evaluate_range(start_step)
      else:
        evaluator.loop()
  return evaluator.results
