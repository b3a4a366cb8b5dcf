"""Evaluates the checkpoints of a training run beside the trainer (eval.py), or a range of them once.

    evaluator.evaluate(pipeline_config, train_dir, eval_dir, evaluator.default_options())

Follows the evaluation of the original TF1 project (and of the TF Object Detection API / DeepLab evaluators it
descends from): one process polls `train_dir`, restores each new checkpoint into one inference graph, scores
`eval_config.num_examples` of `eval_input_reader`, and writes TensorBoard summaries at the checkpoint's global
step into `eval_dir`, so that `tensorboard --logdir_spec train:TRAIN,eval:EVAL` shows both runs on one axis.

Per checkpoint, one int64 confusion matrix is accumulated on the host from per-image matrices computed in the
graph; the metrics (libs/metrics.py) match the official Cityscapes evaluation. Outputs in eval_dir: summaries,
results/step_<step>.json, best.json and best/ (drivers/eval_results.py), and the effective pipeline.config.

How images are fed to the network comes from builders/eval_input_builder.py; inference per image
(drivers/inference_graph.predict_probabilities): for each scale in eval_config.eval_scales (and each mirror image
with flip_horizontally) the image is resized, run through the network either padded to a fixed size (padded or
cropped eval input) or as overlapping sliding windows, and its softmax probabilities are brought back to the
label's resolution; the views' probabilities are averaged and the arg-max is scored. Padding is always cropped
away and the label is never resized.

What the loop survives (the trainer writes checkpoints with tf.train.Saver and deletes old ones):
  * an empty or missing train_dir at start: it waits (at once a warning for a missing one);
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
import os
import time

import numpy as np

from builders import dataset_builder
from builders import eval_input_builder
from builders import model_builder
from drivers import eval_results
from drivers import inference_graph
from libs import checkpoint_utils
from libs import config_util
from libs import metrics
from libs import summaries
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import UserError
from libs.standard_fields import InputDataFields as fields
from protos import input_reader_pb2

logger = tf.get_logger()

MAX_EVAL_IMAGES = 3
# Probabilities are clipped here before the log of the evaluation loss: a pixel predicted with probability 0
# (softmax underflow) would otherwise make the mean infinite.
MIN_PROBABILITY = 1e-30
# A restore that fails while the files exist is retried this many times before the checkpoint is skipped.
MAX_RESTORE_ATTEMPTS = 3


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


def validate_eval_config(pipeline_config):
  """Checks what evaluation needs from the pipeline config and returns how to evaluate.

  Args:
    pipeline_config: pipeline_pb2.PipelineConfig.

  Returns:
    eval_input_builder.EvalInput (spec and input preprocessing).

  Raises:
    ConfigError: naming the field path, the value and what is allowed.
  """
  for field in ('model', 'eval_input_reader'):
    if not pipeline_config.HasField(field):
      raise ConfigError(field, None, 'must be set')
  return eval_input_builder.build(pipeline_config.eval_config, model_builder.ignore_label(pipeline_config.model))


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
  eval_input = validate_eval_config(pipeline_config)
  spec = eval_input.spec
  model_config = pipeline_config.model
  num_classes = model_builder.num_classes(model_config)
  ignore_label = model_builder.ignore_label(model_config)
  eval_config = pipeline_config.eval_config

  # Sliding windows take the image at its own size; the other modes pad or crop it in the input pipeline.
  reader = input_reader_pb2.InputReader()
  reader.CopyFrom(pipeline_config.eval_input_reader)
  reader.num_epochs = 1  # One pass per checkpoint, whatever the config says (0 would repeat forever).
  with tf.device('/cpu:0'):
    dataset = dataset_builder.build(reader, batch_size=1, num_classes=num_classes, ignore_label=ignore_label,
                                    preprocess_fn=eval_input.preprocess_fn, field_path='eval_input_reader',
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

  probabilities = inference_graph.predict_probabilities(image, inference_graph.ModelProbabilities(model), spec)
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
  # No automatic deletion: eval_results.update_best() removes earlier bests itself, also those of an earlier run.
  saver = tf.train.Saver(restore_map, max_to_keep=None)
  return _EvalGraph(iterator.initializer, fetches, image_fetches, global_step, saver, restore_map, spec,
                    num_classes)


def _parse_start_step(value, train_dir):
  """--evaluate_all_from_checkpoint (a checkpoint path or name, or a step) -> global step."""
  value = str(value)
  if value.isdigit():
    return int(value)
  step = checkpoint_utils.checkpoint_step(value)
  if step is None:
    raise UserError('--evaluate_all_from_checkpoint = %r: expected a checkpoint like %s/model.ckpt-1000 (or '
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
    if not checkpoint_utils.checkpoint_exists(path):
      logger.warning('Checkpoint %s was deleted (by the trainer\'s checkpoint retention?) before it could be '
                     'evaluated; skipped.', path)
      return 'skipped'
    try:
      # Reading the index first also tells a checkpoint of another model (an error) from an unreadable one.
      _, missing, mismatched = checkpoint_utils.filter_restore_map(self._g.restore_map, path, log=False)
      if not missing and not mismatched:
        _restore_checkpoint(self._g.saver, self._sess, path)
    except (tf.errors.OpError, OSError, ValueError) as e:  # ValueError: Saver's "not a valid checkpoint"
      if not checkpoint_utils.checkpoint_exists(path):
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
      raise UserError('Checkpoint %s does not match the model of the eval config: %s%s' % (
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
    if not num_images:
      raise dataset_builder.no_batch_error(self._config.eval_input_reader, 'eval_input_reader')
    requested = self._config.eval_config.num_examples
    if requested and num_images < requested:
      logger.warning('eval_config.num_examples = %d but eval_input_reader holds %d examples; evaluated %d.',
                     requested, num_images, num_images)
    results = self._results(step, path, confusion, loss_sum, num_pixels, num_images, seconds)
    self._write(step, results, images)
    self.results.append(results)

  def _results(self, step, path, confusion, loss_sum, num_pixels, num_images, seconds):
    eval_loss = loss_sum / num_pixels if num_pixels else float('nan')
    return eval_results.results_dict(step, path, confusion, self._class_names, eval_loss, num_images, num_pixels,
                                     self._g.spec, seconds)

  def _write(self, step, results, images):
    eval_results.write_summary(self._writer, step, results, images)
    logger.info('Global step %d: mIoU %.4f, pixel accuracy %.4f, mean class accuracy %.4f, eval loss %.4f '
                '(%d images, %.1f s)', step, results['mIoU'], results['pixel_accuracy'],
                results['mean_class_accuracy'], results['eval_loss'], results['num_images'], results['seconds'])
    if self._options.verbose:
      logger.info('Global step %d per class:\n%s', step, metrics.format_table(results))
    save_weights = None
    if self._options.keep_best_checkpoint:
      save_weights = lambda prefix: self._g.saver.save(  # pylint: disable=g-long-lambda
          self._sess, prefix, global_step=step, write_meta_graph=False, write_state=False)
    eval_results.update_best(self._eval_dir, step, results, save_weights)
    # Written last: the results file is also the record that this step is done.
    eval_results.write_results(self._eval_dir, step, results)

  def evaluate_range(self, start_step):
    """evaluate_all_from_checkpoint: every ready checkpoint from start_step on, once each."""
    ready, pending = checkpoint_utils.list_checkpoints(self._train_dir)
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

  def _log_end_condition(self, config_path):
    """Says which config's num_steps ends the loop (this one, not the train dir's pipeline.config), at once a
    warning when train_dir does not exist (a typo waits silently otherwise) or its config says otherwise."""
    num_steps = self._config.train_config.num_steps
    source = 'train_config.num_steps = %d of %s' % (num_steps, config_path or 'the eval config')
    ends = ('stops once global step %d is evaluated (%s)' % (num_steps, source) if num_steps else
            'waits for checkpoints until stopped (%s: no last step)' % source)
    if not tf.io.gfile.isdir(self._train_dir):
      logger.warning('--train_dir %s does not exist (yet): waiting for a trainer to create it; the evaluation %s.',
                     self._train_dir, ends)
      return
    logger.info('Evaluating the checkpoints of %s; the evaluation %s.', self._train_dir, ends)
    train_config_path = os.path.join(self._train_dir, config_util.PIPELINE_CONFIG_NAME)
    if not tf.io.gfile.exists(train_config_path):
      return
    try:
      train_num_steps = config_util.load_pipeline_config(train_config_path).train_config.num_steps
    except (ValueError, OSError, tf.errors.OpError):
      return
    if train_num_steps != num_steps:
      logger.warning('%s, but the trainer\'s %s says num_steps = %d: the evaluation follows the former.',
                     source, train_config_path, train_num_steps)

  def loop(self, config_path=None):
    """Waits for new checkpoints and evaluates each once, until done (see the module docstring)."""
    options = self._options
    num_steps = self._config.train_config.num_steps
    self._log_end_condition(config_path)
    done = eval_results.evaluated_steps(self._eval_dir)
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
      ready, _ = checkpoint_utils.list_checkpoints(self._train_dir)
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
    raise UserError('eval_interval_secs, eval_timeout_secs and max_evals must be >= 0, got %s, %s, %s' % (
        options.eval_interval_secs, options.eval_timeout_secs, options.max_evals))
  if options.log_every_n_images <= 0:
    raise UserError('log_every_n_images must be > 0, got %r' % (options.log_every_n_images,))
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
        evaluator.loop(config_path)
  return evaluator.results
