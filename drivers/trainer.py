"""Training loop for segmentation models: data-parallel clones, synchronized batch norm, checkpoint init and
resume, summaries, progress lines, and TF1 between-graph distributed training.

    trainer.train(pipeline_config, logdir, trainer.default_options(num_clones=2))

Clones (libs/deployment.py): with N > 1 clones, clone i builds the model under the name scope `clone_i` on its
own device from its 1/N share of the batch, sharing variables (on the CPU); with N = 1 no clone scope is added,
so node names are exactly the model's (`SharedFeatureExtractor/resnet_v1_50/...`). Gradients of the clones'
mean loss are applied once; batch-norm moving averages are updated from the first clone (from the global
moments with `batch_norm { sync_across_clones: true }`). Regularization is added once.

Losses: total = main + aux (each already weighted by the model) + regularization, each counted once.

Mixed precision (train_config.mixed_precision, builders/mixed_precision_builder.py): each clone casts its
preprocessed images to float16 or bfloat16, so the network runs in that type while its variables stay float32
under the same names (cast where they are read, architectures/segmentation_model.py); batch norm keeps float32
statistics (and float32 moments when synchronized) and the losses are float32. float16 scales the loss before
backprop and skips steps with non-finite gradients (libs/loss_scale.py); the batch-norm moving averages of a
skipped step are still updated (from its finite forward pass).

Distributed (between-graph replication on TensorFlow's gRPC runtime, see libs/cluster.py): every worker builds
the same graph with variables placed on the parameter servers by a replica device setter; the chief (worker 0,
or the 'chief' task of TF_CONFIG) initialises or restores the variables and alone writes checkpoints and
summaries; the other workers wait for it. Optionally gradients are aggregated synchronously
(tf.train.SyncReplicasOptimizer).
"""
import collections
import math
import os
import signal
import time

from builders import dataset_builder
from builders import eval_input_builder
from builders import mixed_precision_builder
from builders import model_builder
from builders import optimizer_builder
from builders import preprocessor_builder
from drivers import train_dir
from libs import checkpoint_utils
from libs import config_util
from libs import deployment
from libs import memory
from libs import memory_saving_gradients
from libs import summaries
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.standard_fields import InputDataFields as fields

logger = tf.get_logger()

CHECKPOINT_BASENAME = 'model.ckpt'
# 'segmentation-finetune': the original toolkit's name of a segmentation checkpoint (its ICNet configs), a synonym.
FINE_TUNE_TYPES = ('classification', 'segmentation', 'segmentation-finetune')
WORKER_POLL_SECS = 2
# Seconds the session waits at the end for its threads. The only threads are SyncReplicasOptimizer's chief queue
# runner, which blocks for good once the other workers have left (it waits for their gradients): TensorFlow's
# 120 s default only delays the chief's exit.
SYNC_REPLICAS_STOP_GRACE_SECS = 5


class TrainOptions(collections.namedtuple('TrainOptions', [
    'num_clones', 'clone_on_cpu', 'save_interval_secs', 'save_summaries_secs', 'max_checkpoints_to_keep',
    'keep_checkpoint_every_n_hours', 'log_every_n_steps', 'image_summaries', 'test_image_summaries',
    'session_config', 'gradients_fn', 'max_steps', 'cluster', 'step_callback'])):
  """Deployment and logging options of a training run (the config holds the experiment itself).

  num_clones: model replicas (GPUs, or CPU clones with clone_on_cpu); train_config.batch_size is split
    evenly between them.
  clone_on_cpu: place every clone on the CPU.
  save_interval_secs: seconds between checkpoints, >= 0 (0: after every step); one is always written at the
    start and at the end.
  save_summaries_secs: seconds between TensorBoard summaries, >= 0 (0: every step); they are always written at
    the first and the final step.
  max_checkpoints_to_keep: most recent checkpoints kept, >= 0 (0: keep all, tf.train.Saver's meaning; not with
    save_interval_secs 0, which would keep one per step).
  keep_checkpoint_every_n_hours: additionally keep one checkpoint per this many hours (> 0).
  log_every_n_steps: steps between progress lines (> 0).
  image_summaries: input, ground-truth and prediction images of the training batch.
  test_image_summaries: predictions of the model in inference mode (batch norm with moving statistics, no
    dropout) on the first training image, beside its input and ground truth: what eval would see.
  session_config: tf.ConfigProto or None.
  gradients_fn: fn(ys, xs) -> list of gradients; tf.gradients by default (train_mem_saving.py passes the
    memory-saving one). Called once per clone inside the clone's name scope (once for all clones with
    synchronized batch norm).
  max_steps: stop after this many steps (> 0) of this run even if num_steps is not reached (None: no limit).
  cluster: libs.cluster.ClusterConfig for distributed training, or None for a single process.
  step_callback: optional fn(session, step) called after every step on every worker (e.g. to log memory);
    session is the MonitoredSession, so extra fetches run through its hooks.
  """


def default_options(**overrides):
  options = TrainOptions(num_clones=1, clone_on_cpu=False, save_interval_secs=600, save_summaries_secs=120,
                         max_checkpoints_to_keep=5, keep_checkpoint_every_n_hours=10000.0,
                         log_every_n_steps=10, image_summaries=False, test_image_summaries=False,
                         session_config=None, gradients_fn=None, max_steps=None, cluster=None,
                         step_callback=None)
  return options._replace(**overrides)


def validate_options(options):
  """Checks the numeric options (named as train.py's flags) before anything is built or written.

  Raises:
    ConfigError: for a value out of range, naming the flag, the value and what is allowed.
  """
  for name, value, allowed in (
      ('--num_clones', options.num_clones, 'must be > 0'),
      ('--log_every_n_steps', options.log_every_n_steps, 'must be > 0'),
      ('--keep_checkpoint_every_n_hours', options.keep_checkpoint_every_n_hours, 'must be > 0')):
    if not value > 0:
      raise ConfigError(name, value, allowed)
  for name, value, allowed in (
      ('--max_checkpoints_to_keep', options.max_checkpoints_to_keep, 'must be >= 0 (0: keep all)'),
      ('--save_interval_secs', options.save_interval_secs, 'must be >= 0 (0: a checkpoint after every step)'),
      ('--save_summaries_secs', options.save_summaries_secs, 'must be >= 0 (0: summaries every step)')):
    if not value >= 0:
      raise ConfigError(name, value, allowed)
  if options.save_interval_secs == 0 and options.max_checkpoints_to_keep == 0:
    raise ConfigError('--save_interval_secs', 0, 'a checkpoint after every step needs --max_checkpoints_to_keep > 0 '
                      '(0 keeps all: one checkpoint per step)')
  if options.max_steps is not None and not options.max_steps > 0:
    raise ConfigError('max_steps', options.max_steps, 'must be > 0 (None: no limit)')


def validate_train_config(pipeline_config, num_clones, sync_replicas=False):
  """Cross-field checks of the training setup (field errors are raised by the builders).

  Args:
    pipeline_config: pipeline_pb2.PipelineConfig.
    num_clones: clones of this process.
    sync_replicas: distributed training with synchronous gradient aggregation (--sync_replicas).

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
  num_blocks = model_builder.build(pipeline_config.model, is_training=True).num_backbone_blocks
  if train_config.recompute_backbone_blocks > num_blocks:
    raise ConfigError('train_config.recompute_backbone_blocks', train_config.recompute_backbone_blocks,
                      'allowed: 0 (keep every activation) to %d (the backbone\'s blocks)' % num_blocks)
  mixed_precision = mixed_precision_builder.build(train_config)
  if sync_replicas and mixed_precision.loss_scale_config is not None:
    raise ConfigError('train_config.mixed_precision', 'float16',
                      'not with --sync_replicas (a worker skipping an overflowed step would stall the '
                      'synchronous aggregation); use "bfloat16", or asynchronous replicas')
  _check_crop_fits_eval_pad(pipeline_config)


def _check_crop_fits_eval_pad(pipeline_config):
  """Warns when the training crop is larger than the padded evaluation size: the model is then evaluated on
  inputs smaller than those it was trained on, often a config slip (the seed's recipe: crop 713, pad 1025 x 2049)
  but not always (small eval frames padded to their own size)."""
  size = preprocessor_builder.output_size(pipeline_config.train_config.preprocessor_step)
  if size is None or not pipeline_config.eval_config.HasField('eval_input_type'):
    return
  spec = eval_input_builder.build(pipeline_config.eval_config,
                                  model_builder.ignore_label(pipeline_config.model)).spec
  if spec.input_type != 'padded_eval_input':
    return
  for dim, crop, padded in zip(('height', 'width'), size, spec.fixed_size):
    if crop > padded:
      logger.warning('eval_config.eval_input_type.padded_eval_input.%s = %d is smaller than the training crop %s '
                     '(%d) of train_config.preprocessor_step: evaluation inputs are smaller than the training '
                     'crops (intended only if the eval images are that small).', dim, padded, dim, crop)


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
    'batch_size', 'update_ops', 'optimizer', 'loss_scale', 'grads_finite'])):
  """Tensors of a training graph. train_op returns the global step after the update; update_ops are the
  batch-norm moving-average updates it runs; optimizer is the (possibly SyncReplicas-wrapped) optimizer;
  loss_scale (float32 [], the scale the step's loss was multiplied by) and grads_finite (bool [], whether the
  step's update was applied) are set with float16 mixed precision, None otherwise."""


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
  synchronized = model_builder.sync_batch_norm(model_config) and num_clones > 1
  mixed_precision = mixed_precision_builder.build(train_config)

  global_step = tf.train.get_or_create_global_step()
  batch = build_input(pipeline_config, num_classes, ignore_label)
  clone_batches = _split_batch(batch, num_clones)

  variables_device = deployment.variables_device(num_clones)
  with deployment.device_scope(variables_device):
    optimizer, learning_rate = optimizer_builder.build(
        train_config.optimizer, global_step=global_step, num_steps=train_config.num_steps)
    if options.cluster is not None and options.cluster.sync_replicas:
      optimizer = tf.train.SyncReplicasOptimizer(
          optimizer, replicas_to_aggregate=options.cluster.num_replicas,
          total_num_replicas=options.cluster.num_replicas)
    loss_scale = mixed_precision.make_loss_scale()

  def clone_fn(index):
    model = model_builder.build(model_config, is_training=True)
    inputs = model.preprocess(clone_batches[index][fields.image])
    if mixed_precision.enabled:
      inputs = tf.cast(inputs, mixed_precision.compute_dtype, name='MixedPrecisionInputs')
    predictions = model.predict(inputs, reuse=True if index else None)
    head_losses = model.loss(predictions, clone_batches[index][fields.labels_class])
    return model, predictions, head_losses, tf.add_n(list(head_losses.values()), name='clone_loss')

  clones = deployment.create_clones(num_clones, options.clone_on_cpu, clone_fn, sync_batch_norm=synchronized)
  main_model, main_predictions, main_head_losses, _ = clones[0].outputs
  clone_losses = [clone.outputs[3] for clone in clones]

  # The first clone's: with mixed precision every clone's half-precision weight reads add their own (equal)
  # regularization terms (libs/mixed_precision.py); with float32 only the first clone adds them.
  regularization = tf.losses.get_regularization_losses(clones[0].scope or None)
  with tf.name_scope('Losses'):
    reg_loss = tf.add_n(regularization) if (regularization and train_config.add_regularization_loss) \
        else tf.constant(0.0)
    reg_loss = tf.identity(reg_loss, name='regularization_loss')
  backbone_prefix = main_model.backbone_scope + '/'
  trainable = tf.trainable_variables()
  if train_config.freeze_fine_tune_backbone:
    trainable = [v for v in trainable if not v.op.name.startswith(backbone_prefix)]
  grad_reg_loss = reg_loss if train_config.add_regularization_loss and regularization else None
  grad_losses = clone_losses
  if loss_scale is not None:
    with tf.name_scope('LossScale'):
      grad_losses = [loss_scale.scale(loss) for loss in clone_losses]
      grad_reg_loss = loss_scale.scale(grad_reg_loss) if grad_reg_loss is not None else None
  grads_and_vars = deployment.clone_gradients(
      clones, grad_losses, trainable, regularization_loss=grad_reg_loss,
      gradients_fn=_gradients_fn(train_config, options, main_model), synchronized=synchronized)

  # Moving averages of batch norm come from the first clone only (model_deploy's convention); with a frozen
  # backbone its statistics stay as restored.
  update_ops = [op for op in tf.get_collection(tf.GraphKeys.UPDATE_OPS, clones[0].scope or None)
                if not (train_config.freeze_fine_tune_backbone and backbone_prefix in op.name)]
  grads_finite = scale_tensor = None
  with deployment.device_scope(variables_device):
    if loss_scale is not None:
      # Unscaled, applied only when finite; the scale moves (libs/loss_scale.py).
      apply_op, grads_finite, scale_tensor = loss_scale.apply_gradients(optimizer, grads_and_vars, global_step)
    else:
      apply_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
  with tf.control_dependencies([apply_op] + update_ops):
    # The global step after this update: progress lines and checkpoints carry the step just completed.
    train_op = tf.identity(global_step.read_value(), name='train_op')

  with tf.name_scope('Losses'):
    losses = {name: tf.identity(value, name=name) for name, value in main_head_losses.items()}
    losses['regularization_loss'] = reg_loss
    data_loss = tf.add_n(clone_losses) / float(num_clones)
    total_loss = tf.identity(data_loss + reg_loss, name='total_loss')

  test_model = model_builder.build(model_config, is_training=False) if options.test_image_summaries else None
  summary_op = summaries.training_summaries(
      total_loss, losses, learning_rate, clone_batches[0], main_predictions, main_model,
      image_summaries=options.image_summaries, test_model=test_model, loss_scale=scale_tensor)
  if mixed_precision.enabled:
    logger.info('Mixed precision (train_config.mixed_precision: "%s"): %s activations; float32 weights, '
                'batch-norm statistics and losses.', mixed_precision.mode, mixed_precision.mode)
  if loss_scale is not None:
    scale_config = mixed_precision.loss_scale_config
    logger.info('Loss scale %g at the start (or as resumed), %s; steps with non-finite gradients are skipped.',
                scale_config.initial_scale,
                'doubled after %d finite steps, halved on overflow' % scale_config.growth_steps
                if scale_config.dynamic else 'fixed (train_config.loss_scale.dynamic: false)')
  return _Graph(train_op, global_step, total_loss, losses, learning_rate, summary_op, main_model,
                train_config.batch_size, update_ops, optimizer, scale_tensor, grads_finite)


def _gradients_fn(train_config, options, model):
  """options.gradients_fn if given (train_mem_saving.py), else gradients that recompute the root and the first
  train_config.recompute_backbone_blocks blocks of the backbone (None: tf.gradients)."""
  blocks = train_config.recompute_backbone_blocks
  if options.gradients_fn is not None:
    if blocks:
      logger.info('train_config.recompute_backbone_blocks (%d) not used: the given gradients decide what is '
                  'recomputed (train_mem_saving.py: --checkpoint_nodes / --checkpoint_mode).', blocks)
    return options.gradients_fn
  if not blocks:
    logger.info('Backprop keeps every forward activation (train_config.recompute_backbone_blocks: 0).')
    return None
  if train_config.freeze_fine_tune_backbone:
    logger.info('train_config.recompute_backbone_blocks (%d) not used: the backbone is frozen, backprop keeps '
                'none of its activations.', blocks)
    return None
  nodes = list(model.block_output_nodes()[:blocks])
  logger.info('Backprop recomputes the backbone\'s root and block1..block%d from their outputs '
              '(train_config.recompute_backbone_blocks: %d; 0 keeps every activation): %s', blocks, blocks,
              ', '.join(nodes))
  return memory_saving_gradients.make_gradients_fn(nodes, colocate_gradients_with_ops=True)


class _Progress(object):
  """Progress lines: step, loss, learning rate, sec/step (moving average) and ETA."""

  def __init__(self, num_steps, batch_size, num_examples):
    self._num_steps = num_steps
    self._batch_size = batch_size
    self._num_examples = num_examples
    self._times = collections.deque(maxlen=20)
    self._loss_scale = None
    self._skipped = 0

  def record(self, seconds):
    self._times.append(seconds)

  def record_loss_scale(self, scale, finite):
    """float16 training: the loss scale of the step, and whether its update was applied."""
    self._loss_scale = scale
    self._skipped += 0 if finite else 1

  def line(self, step, loss, learning_rate):
    sec = sum(self._times) / max(1, len(self._times))
    # Asynchronous workers push the global step past num_steps before they all see the end.
    past = self._num_steps and step > self._num_steps
    parts = ['step %d' % step + ((' (num_steps %d reached)' if past else '/%d') % self._num_steps
                                 if self._num_steps else ''),
             'loss %.4f' % loss, 'lr %.3g' % learning_rate, '%.3f sec/step' % sec,
             '%.1f img/s' % (self._batch_size / sec if sec > 0 else 0.0)]
    if self._num_examples:
      parts.append('epoch %.2f' % (step * self._batch_size / float(self._num_examples)))
    if self._loss_scale is not None:
      parts.append('loss scale %g' % self._loss_scale + (' (%d step%s skipped)' % (
          self._skipped, '' if self._skipped == 1 else 's') if self._skipped else ''))
    if self._num_steps and not past:
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
    self.signum = None
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
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


class TrainingInterrupted(Exception):
  """Raised by train() when a stop signal ended the run, after the final checkpoint is written, so that a
  script exits with the shell's status of that signal (exit_code: 130 for SIGINT, 143 for SIGTERM) and an
  interrupted run is told from a finished one."""

  def __init__(self, signum, step):
    self.signum = signum
    self.step = step
    self.exit_code = 128 + signum
    super(TrainingInterrupted, self).__init__('training stopped by %s at global step %s' % (
        signal.Signals(signum).name, step))


class _SummaryHook(tf.train.SessionRunHook):
  """Writes the training summaries (fetched with the training step) at the first step, every save_secs, and at
  the final step: the step it expects to be the last (num_steps, or max_steps of this run) or, when the run ended
  elsewhere (a stop signal, other workers' steps, the end of the input), once more from the final weights at
  session end. Steps of other calls (reading the global step) compute no summary."""

  def __init__(self, logdir, save_secs, summary_op, train_op, num_steps, max_steps):
    self._logdir = logdir
    self._save_secs = save_secs
    self._summary_op = summary_op
    self._train_op = train_op
    self._num_steps = num_steps
    self._max_steps = max_steps

  def begin(self):
    self._writer = tf.summary.FileWriterCache.get(self._logdir)
    self._global_step = tf.train.get_global_step()

  def after_create_session(self, session, coord):
    del coord
    self._step = int(session.run(self._global_step))
    ends = [float('inf')]
    if self._num_steps:
      ends.append(self._num_steps)
    if self._max_steps:
      ends.append(self._step + self._max_steps)
    self._last_step = min(ends)
    self._last_written_time = None
    self._written_step = None
    self._trained = False

  def before_run(self, run_context):
    if not any(fetch is self._train_op for fetch in tf.nest.flatten(run_context.original_args.fetches)):
      return None
    request = {'step': self._train_op}
    if (self._last_written_time is None or time.time() - self._last_written_time >= self._save_secs or
        self._step + 1 >= self._last_step):
      request['summary'] = self._summary_op
    return tf.train.SessionRunArgs(request)

  def after_run(self, run_context, run_values):
    del run_context
    if not run_values.results:
      return
    self._trained = True
    self._step = int(run_values.results['step'])
    if 'summary' in run_values.results:
      self._write(run_values.results['summary'], self._step)

  def _write(self, summary, step):
    if self._written_step is None:
      self._writer.add_session_log(tf.SessionLog(status=tf.SessionLog.START), step)
    self._writer.add_summary(summary, step)
    self._last_written_time = time.time()
    self._written_step = step

  def end(self, session):
    step = int(session.run(self._global_step))
    if self._trained and self._written_step != step:
      try:
        self._write(session.run(self._summary_op), step)
      except tf.errors.OutOfRangeError:
        logger.info('No summaries of the final step %d: the training input is exhausted.', step)
    self._writer.flush()


class _WorkerSessionCreator(tf.train.WorkerSessionCreator):
  """A non-chief worker's session: waits for the chief to initialise the variables, polling every
  WORKER_POLL_SECS instead of TensorFlow's 30 s, so that workers start (and restarted workers rejoin) promptly."""

  def _get_session_manager(self):
    # pylint: disable=protected-access
    if self._session_manager is None:
      self._session_manager = tf.train.SessionManager(
          local_init_op=self._scaffold.local_init_op, local_init_feed_dict=self._scaffold.local_init_feed_dict,
          ready_op=self._scaffold.ready_op, ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
          graph=tf.get_default_graph(), recovery_wait_secs=WORKER_POLL_SECS)
    return self._session_manager


def _session_config(options):
  config = tf.ConfigProto()
  if options.session_config is not None:
    config.CopyFrom(options.session_config)
  config.allow_soft_placement = True
  if options.cluster is not None:
    # A worker talks to the parameter servers and itself, never waits for the other workers.
    del config.device_filters[:]
    config.device_filters.extend(options.cluster.device_filters())
  return config


def train(pipeline_config, logdir, options=None, config_path=None):
  """Trains until train_config.num_steps (or options.max_steps of this run, or a stop signal).

  Args:
    pipeline_config: pipeline_pb2.PipelineConfig.
    logdir: directory for checkpoints, summaries and the effective pipeline.config (written by the chief).
    options: TrainOptions (default_options() if None).
    config_path: the config file, to name it in error messages.

  Returns:
    The global step reached.

  Raises:
    ConfigError / ValueError: for invalid configs or checkpoints, naming the field and file.
    FloatingPointError: when the loss becomes NaN or infinite (no checkpoint of that state is written).
  """
  options = options or default_options()
  validate_options(options)
  cluster = options.cluster
  is_chief = cluster is None or cluster.is_chief
  with config_util.naming_config_file(config_path):
    validate_train_config(pipeline_config, options.num_clones,
                          sync_replicas=cluster is not None and cluster.sync_replicas)
    train_config = pipeline_config.train_config
    # Lock (chief), resume point among the logdir's own readable checkpoints, config check, left-overs removed.
    run_dir = train_dir.prepare(logdir, pipeline_config, is_chief)
    latest = run_dir.resume_checkpoint
    fine_tune_path = None
    if latest is None and train_config.fine_tune_checkpoint:
      fine_tune_path = checkpoint_utils.resolve_checkpoint(train_config.fine_tune_checkpoint)

    graph = tf.Graph()
    with graph.as_default(), deployment.device_scope(cluster.device_setter() if cluster else None):
      g = build_training_graph(pipeline_config, options)
      init_fn = None
      if fine_tune_path:
        init_fn = checkpoint_utils.build_fine_tune_init(g.model, fine_tune_path,
                                                        train_config.fine_tune_checkpoint_type)
      saver = tf.train.Saver(max_to_keep=options.max_checkpoints_to_keep,
                             keep_checkpoint_every_n_hours=options.keep_checkpoint_every_n_hours,
                             sharded=cluster is not None and cluster.num_ps_tasks > 1,
                             save_relative_paths=True)  # a copied or moved logdir stays self-contained
  logger.info('CPU memory allocator: %s.', memory.cpu_allocator_description())
  if is_chief:
    config_util.save_pipeline_config(pipeline_config, logdir)
    if latest is not None:
      logger.info('Resuming from %s.', latest)
    elif init_fn is None:
      logger.info('No checkpoint in %s and no fine_tune_checkpoint: training from random initialisation.',
                  logdir)

  with graph.as_default():
    scaffold = tf.train.Scaffold(
        saver=saver, summary_op=g.summary_op,
        init_fn=(lambda unused_scaffold, sess: init_fn(sess)) if init_fn else None)
    hooks = []
    if train_config.num_steps:
      hooks.append(tf.train.StopAtStepHook(last_step=train_config.num_steps))
    if options.max_steps:
      hooks.append(tf.train.StopAtStepHook(num_steps=options.max_steps))
    if isinstance(g.optimizer, tf.train.SyncReplicasOptimizer):
      # num_tokens=0: no step tokens are handed out before the first aggregation, so step 1 really aggregates a
      # gradient from every replica (with the default, a fast chief fills the accumulator alone and can finish
      # a short job before the other workers join). Later steps hand out one token per replica.
      hooks.append(g.optimizer.make_session_run_hook(is_chief, num_tokens=0))
      if is_chief:
        logger.info('Synchronous replicas: the first step waits for gradients from all %d workers.',
                    cluster.num_replicas)
    chief_hooks = [
        # save_graph_def=False: no graph.pbtxt / .meta per checkpoint (slow for PSPNet50's large graph, and
        # export.py writes deployable graphs); TensorBoard gets the graph from the summary writer.
        tf.train.CheckpointSaverHook(logdir, save_secs=options.save_interval_secs, saver=saver,
                                     checkpoint_basename=CHECKPOINT_BASENAME, save_graph_def=False),
        _SummaryHook(logdir, options.save_summaries_secs, g.summary_op, g.train_op, train_config.num_steps,
                     options.max_steps),
    ]
    master = cluster.target if cluster else ''
    progress = _Progress(train_config.num_steps, g.batch_size, pipeline_config.train_input_reader.num_examples)
    step = None
    if is_chief:
      session_creator = tf.train.ChiefSessionCreator(scaffold=scaffold, master=master,
                                                     config=_session_config(options), checkpoint_dir=logdir)
      hooks = hooks + chief_hooks
    else:
      session_creator = _WorkerSessionCreator(scaffold=scaffold, master=master, config=_session_config(options))
    grace = SYNC_REPLICAS_STOP_GRACE_SECS if isinstance(g.optimizer, tf.train.SyncReplicasOptimizer) else 120
    with tf.train.MonitoredSession(session_creator=session_creator, hooks=hooks,
                                   stop_grace_period_secs=grace) as sess, \
        _StopRequest() as stop:
      step = int(sess.run(g.global_step)) if not sess.should_stop() else None
      if step is not None:
        logger.info('Training from step %d%s; logging every %d steps to %s.', step,
                    ' to %d' % train_config.num_steps if train_config.num_steps else '',
                    options.log_every_n_steps, logdir)
      steps_run = 0
      fetches = {'step': g.train_op, 'loss': g.total_loss, 'lr': g.learning_rate}
      if g.loss_scale is not None:
        fetches.update(loss_scale=g.loss_scale, finite=g.grads_finite)
      while not sess.should_stop() and not stop.requested:
        start = time.time()
        try:
          out = sess.run(fetches)
        except tf.errors.OutOfRangeError:
          if not steps_run:
            raise dataset_builder.no_batch_error(
                pipeline_config.train_input_reader, 'train_input_reader', train_config.batch_size,
                'train_config.batch_size').with_config_path(config_path) from None
          logger.info('train_input_reader has no more examples (num_epochs = %d) after step %d; stopping.',
                      pipeline_config.train_input_reader.num_epochs, step)
          break
        steps_run += 1
        progress.record(time.time() - start)
        step = int(out['step'])
        if not math.isfinite(out['loss']):
          raise FloatingPointError('Loss became %r at step %d; the last checkpoint in %s is the last good state '
                                   '(lower the learning rate?)' % (out['loss'], step, logdir))
        if 'finite' in out:
          progress.record_loss_scale(out['loss_scale'], out['finite'])
          if not out['finite']:
            logger.warning('Step %d: float16 gradients overflowed (inf or NaN) at loss scale %g; update skipped%s.',
                           step, out['loss_scale'], ', scale halved' if train_config.loss_scale.dynamic else '')
        if steps_run == 1 or step % options.log_every_n_steps == 0 or sess.should_stop() or stop.requested:
          logger.info(progress.line(step, out['loss'], out['lr']))
        if options.step_callback is not None:
          options.step_callback(sess, step)
    if step is None:
      step = int(tf.train.load_checkpoint(logdir).get_tensor('global_step')) if is_chief else 0
      logger.info('Global step %d already reached num_steps %d; nothing to train.', step,
                  train_config.num_steps)
    elif is_chief:
      logger.info('Saved checkpoint %s-%d', os.path.join(logdir, CHECKPOINT_BASENAME), step)
  if stop.requested:
    raise TrainingInterrupted(stop.signum, step)
  return step
