"""Training loop for segmentation models: data-parallel clones, checkpoint init/resume, summaries, progress.

    trainer.train(pipeline_config, logdir, TrainOptions(num_clones=2))

Graph layout with N clones (N > 1): clone i builds the model under the name scope `clone_i` on its own device
(`/gpu:i`, or `/cpu:0` with clone_on_cpu) from its 1/N share of the batch, sharing variables (which live on
`/cpu:0` when N > 1, like TF-Slim's model_deploy, so no GPU holds them all). With N = 1 no clone scope is
added, so the node names are exactly the model's (`SharedFeatureExtractor/resnet_v1_50/...`). Gradients of each
clone's loss are summed (each loss is divided by N, so the sum is the gradient of the mean) and applied once;
batch-norm moving averages are updated from the first clone, as in model_deploy. Regularization is added once.

Losses: total = main + aux (each already weighted by the model) + regularization, each counted once.
"""
import collections
import math
import os
import signal
import time

from builders import dataset_builder
from builders import model_builder
from builders import optimizer_builder
from builders import preprocessor_builder
from libs import checkpoint_utils
from libs import config_util
from libs import summaries
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.standard_fields import InputDataFields as fields

logger = tf.get_logger()

CHECKPOINT_BASENAME = 'model.ckpt'
FINE_TUNE_TYPES = ('classification', 'segmentation')


class TrainOptions(collections.namedtuple('TrainOptions', [
    'num_clones', 'clone_on_cpu', 'save_interval_secs', 'save_summaries_secs', 'max_checkpoints_to_keep',
    'keep_checkpoint_every_n_hours', 'log_every_n_steps', 'image_summaries', 'test_image_summaries',
    'session_config', 'gradients_fn', 'max_steps'])):
  """Deployment and logging options of a training run (the config holds the experiment itself).

  num_clones: model replicas (GPUs, or CPU clones with clone_on_cpu); train_config.batch_size is split
    evenly between them.
  clone_on_cpu: place every clone on /cpu:0.
  save_interval_secs: seconds between checkpoints (one is always written at the end).
  save_summaries_secs: seconds between TensorBoard summaries.
  max_checkpoints_to_keep / keep_checkpoint_every_n_hours: checkpoint retention (tf.train.Saver).
  log_every_n_steps: steps between progress lines.
  image_summaries: input, ground-truth and prediction images of the training batch.
  test_image_summaries: predictions of the model in inference mode (batch norm with moving statistics, no
    dropout) on the first training image, beside its input and ground truth: what eval would see.
  session_config: tf.ConfigProto or None.
  gradients_fn: fn(ys, xs) -> list of gradients; tf.gradients by default (train_mem_saving.py passes the
    memory-saving one).
  max_steps: stop after this many steps of this run even if num_steps is not reached (None: no limit).
  """


def default_options(**overrides):
  options = TrainOptions(num_clones=1, clone_on_cpu=False, save_interval_secs=600, save_summaries_secs=120,
                         max_checkpoints_to_keep=5, keep_checkpoint_every_n_hours=10000.0,
                         log_every_n_steps=10, image_summaries=False, test_image_summaries=False,
                         session_config=None, gradients_fn=None, max_steps=None)
  return options._replace(**overrides)


def _clone_device(index, num_clones, clone_on_cpu):
  """Device of clone `index`: /cpu:0 with clone_on_cpu, else /gpu:index (None: default placement)."""
  if clone_on_cpu:
    return '/cpu:0'
  num_gpus = len(tf.config.list_physical_devices('GPU'))
  if num_gpus == 0 and num_clones == 1:
    return None
  if num_gpus < num_clones:
    raise ValueError('--num_clones %d needs %d GPUs but %d are visible (CUDA_VISIBLE_DEVICES); use '
                     '--clone_on_cpu to run clones on the CPU' % (num_clones, num_clones, num_gpus))
  return '/gpu:%d' % index


def validate_train_config(pipeline_config, num_clones):
  """Cross-field checks of the training setup (field errors are raised by the builders).

  Raises:
    ConfigError: for an invalid value.
  """
  train_config = pipeline_config.train_config
  if not pipeline_config.HasField('model'):
    raise ConfigError('model', None, 'must be set')
  if not pipeline_config.HasField('train_input_reader'):
    raise ConfigError('train_input_reader', None, 'must be set')
  if train_config.batch_size <= 0:
    raise ConfigError('train_config.batch_size', train_config.batch_size, 'must be > 0')
  if num_clones <= 0:
    raise ConfigError('--num_clones', num_clones, 'must be > 0')
  if train_config.batch_size % num_clones:
    raise ConfigError('train_config.batch_size', train_config.batch_size,
                      'must be a multiple of --num_clones (%d)' % num_clones)
  if not train_config.HasField('optimizer'):
    raise ConfigError('train_config.optimizer', None, 'must be set (e.g. momentum_optimizer { ... })')
  if train_config.fine_tune_checkpoint and train_config.fine_tune_checkpoint_type not in FINE_TUNE_TYPES:
    raise ConfigError('train_config.fine_tune_checkpoint_type', train_config.fine_tune_checkpoint_type,
                      'allowed: %s' % ', '.join(repr(t) for t in FINE_TUNE_TYPES))
  if train_config.freeze_fine_tune_backbone and not train_config.fine_tune_checkpoint:
    raise ConfigError('train_config.freeze_fine_tune_backbone', True,
                      'needs train_config.fine_tune_checkpoint (a frozen random backbone cannot learn)')


def build_input(pipeline_config, num_classes, ignore_label):
  """The training tf.data pipeline (on the CPU) -> dict of batched tensors (see InputDataFields)."""
  train_config = pipeline_config.train_config
  preprocess_fn = preprocessor_builder.build(train_config.preprocessor_step, ignore_label=ignore_label)
  with tf.device('/cpu:0'):
    dataset = dataset_builder.build(
        pipeline_config.train_input_reader,
        batch_size=train_config.batch_size,
        num_classes=num_classes,
        ignore_label=ignore_label,
        preprocess_fn=preprocess_fn,
        num_parallel_calls=train_config.num_batch_queue_threads or None,
        example_buffer=train_config.batch_queue_capacity,
        prefetch_batches=train_config.prefetch_queue_capacity)
    return tf.data.make_one_shot_iterator(dataset).get_next()


def _split_batch(batch, num_clones):
  if num_clones == 1:
    return [batch]
  split = {key: tf.split(value, num_clones, axis=0) for key, value in batch.items()}
  return [{key: value[i] for key, value in split.items()} for i in range(num_clones)]


class _Graph(collections.namedtuple('_Graph', [
    'train_op', 'global_step', 'total_loss', 'losses', 'learning_rate', 'summary_op', 'model',
    'batch_size', 'update_ops'])):
  """Tensors of a training graph. train_op returns the global step after the update; update_ops are the
  batch-norm moving-average updates it runs."""


def build_training_graph(pipeline_config, options):
  """Builds input, clones, losses, gradients and the train op in the default graph.

  Returns:
    _Graph with the tensors the loop runs.
  """
  train_config = pipeline_config.train_config
  model_config = pipeline_config.model
  num_clones = options.num_clones
  num_classes = model_builder.num_classes(model_config)
  ignore_label = model_builder.ignore_label(model_config)

  global_step = tf.train.get_or_create_global_step()
  batch = build_input(pipeline_config, num_classes, ignore_label)
  clone_batches = _split_batch(batch, num_clones)

  variables_device = '/cpu:0' if num_clones > 1 else None
  with tf.device(variables_device):
    optimizer, learning_rate = optimizer_builder.build(
        train_config.optimizer, global_step=global_step, num_steps=train_config.num_steps)

  clone_losses, clone_grads, first_clone_scope = [], [], None
  gradients_fn = options.gradients_fn or (lambda ys, xs: tf.gradients(ys, xs))
  model = None
  main_model = None
  for i, clone_batch in enumerate(clone_batches):
    scope = 'clone_%d' % i if num_clones > 1 else ''
    with tf.name_scope(scope or None) as name_scope:
      if i == 0:
        first_clone_scope = name_scope or ''
      with tf.device(_clone_device(i, num_clones, options.clone_on_cpu)):
        with tf.variable_scope(tf.get_variable_scope(), reuse=True if i > 0 else None):
          model = model_builder.build(model_config, is_training=True)
          predictions = model.predict(model.preprocess(clone_batch[fields.image]), reuse=True if i else None)
          head_losses = model.loss(predictions, clone_batch[fields.labels_class])
          if i == 0:
            main_model, main_predictions, main_head_losses = model, predictions, head_losses
          clone_loss = tf.add_n(list(head_losses.values()), name='clone_loss')
          scaled = clone_loss / float(num_clones) if num_clones > 1 else clone_loss
          if i == 0 and train_config.add_regularization_loss:
            regularization = tf.losses.get_regularization_losses()
            if regularization:
              scaled = scaled + tf.add_n(regularization, name='regularization_loss')
          trainable = _variables_to_train(train_config)
          grads = gradients_fn(scaled, trainable)
          clone_losses.append(clone_loss)
          clone_grads.append(list(zip(grads, trainable)))

  with tf.device(variables_device), tf.name_scope('Gradients'):
    grads_and_vars = _sum_clone_gradients(clone_grads)

  # Moving averages of batch norm come from the first clone only (model_deploy's convention); with a frozen
  # backbone its statistics stay as restored.
  update_ops = [op for op in tf.get_collection(tf.GraphKeys.UPDATE_OPS, first_clone_scope or None)
                if not (train_config.freeze_fine_tune_backbone and 'SharedFeatureExtractor/' in op.name)]
  with tf.device(variables_device):
    apply_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
  with tf.control_dependencies([apply_op] + update_ops):
    # The global step after this update: progress lines and checkpoints carry the step just completed.
    train_op = tf.identity(global_step.read_value(), name='train_op')

  with tf.name_scope('Losses'):
    losses = {name: tf.identity(value, name=name) for name, value in main_head_losses.items()}
    if num_clones > 1:
      losses['main_loss'] = tf.add_n([l for l in clone_losses]) / float(num_clones)
    regularization = tf.losses.get_regularization_losses()
    reg_loss = tf.add_n(regularization) if (regularization and train_config.add_regularization_loss) \
        else tf.constant(0.0)
    losses['regularization_loss'] = tf.identity(reg_loss, name='regularization_loss')
    data_loss = tf.add_n(clone_losses) / float(num_clones)
    total_loss = tf.identity(data_loss + reg_loss, name='total_loss')

  summary_op = summaries.training_summaries(
      total_loss, losses, learning_rate, clone_batches[0], main_predictions, main_model,
      image_summaries=options.image_summaries, test_image_summaries=options.test_image_summaries,
      model_config=model_config)
  return _Graph(train_op, global_step, total_loss, losses, learning_rate, summary_op, main_model,
                train_config.batch_size, update_ops)


def _variables_to_train(train_config):
  variables = tf.trainable_variables()
  if train_config.freeze_fine_tune_backbone:
    variables = [v for v in variables if not v.op.name.startswith('SharedFeatureExtractor/')]
  return variables


def _sum_clone_gradients(clone_grads):
  """Sums per-clone gradients of the same variable; drops variables without gradient (logged once)."""
  summed = []
  for per_var in zip(*clone_grads):
    variable = per_var[0][1]
    grads = [g for g, _ in per_var if g is not None]
    if not grads:
      logger.warning('No gradient for %s (not on the path to the loss)', variable.op.name)
      continue
    summed.append((tf.add_n(grads) if len(grads) > 1 else grads[0], variable))
  return summed


class _Progress(object):
  """Progress lines: step, loss, learning rate, sec/step (moving average) and ETA."""

  def __init__(self, num_steps, batch_size, num_examples):
    self._num_steps = num_steps
    self._batch_size = batch_size
    self._num_examples = num_examples
    self._times = collections.deque(maxlen=20)

  def record(self, seconds):
    self._times.append(seconds)

  def line(self, step, loss, learning_rate):
    sec = sum(self._times) / max(1, len(self._times))
    parts = ['step %d' % step + ('/%d' % self._num_steps if self._num_steps else ''),
             'loss %.4f' % loss, 'lr %.3g' % learning_rate, '%.3f sec/step' % sec,
             '%.1f img/s' % (self._batch_size / sec if sec > 0 else 0.0)]
    if self._num_examples:
      parts.append('epoch %.2f' % (step * self._batch_size / float(self._num_examples)))
    if self._num_steps:
      parts.append('ETA %s' % _format_seconds(max(0, self._num_steps - step) * sec))
    return ', '.join(parts)


def _format_seconds(seconds):
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return '%d:%02d:%02d' % (hours, minutes, seconds)


class _StopRequest(object):
  """Turns SIGINT/SIGTERM into a graceful stop (final checkpoint) instead of losing the work since the last."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested:  # Second signal: stop now.
      raise KeyboardInterrupt
    logger.warning('Signal %d: stopping after this step and writing a checkpoint (again to abort).', signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def train(pipeline_config, logdir, options=None, config_path=None):
  """Trains until train_config.num_steps (or options.max_steps of this run, or a stop signal).

  Args:
    pipeline_config: pipeline_pb2.PipelineConfig.
    logdir: directory for checkpoints, summaries and the effective pipeline.config.
    options: TrainOptions (default_options() if None).
    config_path: the config file, to name it in error messages.

  Returns:
    The global step reached.

  Raises:
    ConfigError / ValueError: for invalid configs or checkpoints, naming the field and file.
  """
  options = options or default_options()
  with config_util.naming_config_file(config_path):
    validate_train_config(pipeline_config, options.num_clones)
    train_config = pipeline_config.train_config
    tf.gfile.MakeDirs(logdir)
    latest = tf.train.latest_checkpoint(logdir)
    fine_tune_path = None
    if latest is None and train_config.fine_tune_checkpoint:
      fine_tune_path = checkpoint_utils.resolve_checkpoint(train_config.fine_tune_checkpoint)

    graph = tf.Graph()
    with graph.as_default():
      g = build_training_graph(pipeline_config, options)
      init_fn = None
      if fine_tune_path:
        init_fn = checkpoint_utils.build_fine_tune_init(g.model, fine_tune_path,
                                                        train_config.fine_tune_checkpoint_type)
      saver = tf.train.Saver(max_to_keep=options.max_checkpoints_to_keep,
                             keep_checkpoint_every_n_hours=options.keep_checkpoint_every_n_hours)
      init_op = tf.global_variables_initializer()
      local_init_op = tf.local_variables_initializer()
  config_util.save_pipeline_config(pipeline_config, logdir)

  session_config = options.session_config or tf.ConfigProto(allow_soft_placement=True)
  writer = tf.summary.FileWriter(logdir, graph)
  save_path = os.path.join(logdir, CHECKPOINT_BASENAME)
  with tf.Session(graph=graph, config=session_config) as sess, _StopRequest() as stop:
    sess.run(local_init_op)
    if latest is not None:
      saver.restore(sess, latest)
      logger.info('Resuming from %s (global step %d).', latest, sess.run(g.global_step))
    else:
      sess.run(init_op)
      if init_fn is not None:
        init_fn(sess)
      else:
        logger.info('No checkpoint in %s and no fine_tune_checkpoint: training from random initialisation.',
                    logdir)
    graph.finalize()
    step = int(sess.run(g.global_step))
    num_steps = train_config.num_steps
    if num_steps and step >= num_steps:
      logger.info('Global step %d already reached num_steps %d; nothing to train.', step, num_steps)
      writer.close()
      return step
    progress = _Progress(num_steps, g.batch_size, pipeline_config.train_input_reader.num_examples)
    last_save = last_summary = time.time()
    steps_this_run = 0
    need_summary = True
    logger.info('Training from step %d%s; logging every %d steps to %s.', step,
                ' to %d' % num_steps if num_steps else '', options.log_every_n_steps, logdir)
    try:
      while True:
        start = time.time()
        fetches = {'step': g.train_op, 'loss': g.total_loss, 'lr': g.learning_rate}
        if need_summary:
          fetches['summary'] = g.summary_op
        out = sess.run(fetches)
        progress.record(time.time() - start)
        step, steps_this_run = int(out['step']), steps_this_run + 1
        if not math.isfinite(out['loss']):
          raise FloatingPointError('Loss became %r at step %d; the last checkpoint in %s is the last good state '
                                   '(lower the learning rate?)' % (out['loss'], step, logdir))
        if 'summary' in out:
          writer.add_summary(out['summary'], step)
          last_summary = time.time()
        done = (num_steps and step >= num_steps) or (options.max_steps and steps_this_run >= options.max_steps)
        if step % options.log_every_n_steps == 0 or done or steps_this_run == 1:
          logger.info(progress.line(step, out['loss'], out['lr']))
        if done or stop.requested:
          break
        if time.time() - last_save >= options.save_interval_secs:
          saver.save(sess, save_path, global_step=step)
          logger.info('Saved checkpoint %s-%d', save_path, step)
          last_save = time.time()
        need_summary = time.time() - last_summary >= options.save_summaries_secs
    finally:
      # Also on errors and interrupts: keep what was trained.
      if steps_this_run:
        saver.save(sess, save_path, global_step=step)
        logger.info('Saved checkpoint %s-%d', save_path, step)
      writer.flush()
      writer.close()
  return step
