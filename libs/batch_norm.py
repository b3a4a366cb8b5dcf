"""Batch normalization owned by the toolkit, with tf-slim compatible variables.

tf-slim 1.1.0's ``batch_norm`` needs ``tf_keras`` on current TensorFlow for its general path, which would pull in
the CUDA build of TensorFlow; this module replaces it. It keeps slim's contract so that public TF-Slim
checkpoints restore unchanged and ``slim.conv2d(normalizer_fn=batch_norm)`` works:

* variables under ``<layer>/BatchNorm/``: ``beta`` (if center), ``gamma`` (if scale), ``moving_mean``,
  ``moving_variance``, created as slim *model variables* in that order; the moving statistics are not
  trainable and are also in ``MOVING_AVERAGE_VARIABLES``;
* training normalises with the batch mean and the (biased) batch variance over N, H, W, and updates
  ``moving_variance`` with the *Bessel-corrected* variance ``var * n / (n - 1)``, as slim's fused path (and
  ``tf.nn.fused_batch_norm``) do;
* update ops go to ``updates_collections`` (``UPDATE_OPS`` by default) or, when it is None, are forced before
  the output is returned.

Synchronized batch norm across data-parallel clones (``sync_across_clones=True`` inside a
:class:`CrossCloneSync` context, see there): every clone normalises with the moments of the whole batch of all
clones, which is what the PSPNet authors' "distributed batch normalization" provided in Caffe.

Reference: Ioffe & Szegedy, "Batch Normalization", ICML 2015.
"""
import collections
import contextlib

from libs.compat import slim
from libs.compat import tf

from tensorflow.python.training import moving_averages  # pylint: disable=g-direct-tensorflow-import

# Dtypes tf.nn.fused_batch_norm accepts; others (float64) take the moments path.
_FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32)

_SyncEntry = collections.namedtuple('_SyncEntry', ['clone', 'device', 'inputs', 'local_sum', 'count',
                                                   'mean', 'variance', 'total_count'])
_ACTIVE_SYNC = []


class CrossCloneSync(object):
  """Synchronizes batch-norm moments across clones built one after another in one graph.

  Clones are built sequentially, so when clone 0 builds a layer, the other clones' inputs to it do not exist
  yet. Each synchronized layer therefore normalises with *stand-in* tensors (identities of zeros) for the
  global mean, variance and element count; :meth:`finalize`, called once every clone is built, computes the
  real moments and rewires the stand-ins to them:

      global_mean = sum_c sum(x_c) / n,    global_var = sum_c sum((x_c - global_mean)^2) / n,

  with n the element count per channel over all clones (two passes: E[x^2] - E[x]^2 loses precision). The
  per-clone sums run on each clone's device, the reductions on the first clone's. Gradients flow through the
  global moments to every clone's activations, as the math of batch norm over the joint batch requires, so
  gradients must be taken after finalize().

      sync = CrossCloneSync(num_clones=2)
      for i in range(2):
        with sync.clone(i, device='/gpu:%d' % i):
          ... build clone i (batch_norm(..., sync_across_clones=True)) ...
      sync.finalize()
  """

  def __init__(self, num_clones):
    self._num_clones = num_clones
    self._layers = collections.OrderedDict()
    self._clone = None
    self._device = None
    self._finalized = False

  @property
  def num_clones(self):
    return self._num_clones

  @contextlib.contextmanager
  def clone(self, index, device=None):
    """Context in which clone `index` is built; synchronized layers register with this object."""
    if self._finalized:
      raise ValueError('CrossCloneSync.clone() after finalize()')
    self._clone, self._device = index, device
    _ACTIVE_SYNC.append(self)
    try:
      yield self
    finally:
      _ACTIVE_SYNC.pop()
      self._clone = self._device = None

  def register(self, key, inputs):
    """Registers one clone's input to layer `key`; returns stand-ins (mean [C], variance [C], count [])."""
    entries = self._layers.setdefault(key, [])
    if any(e.clone == self._clone for e in entries):
      raise ValueError('batch-norm layer %s built twice by clone %d' % (key, self._clone))
    axes = list(range(inputs.shape.ndims - 1))
    channels = [int(inputs.shape[-1])]
    with tf.name_scope('local_moments'):
      local_sum = tf.reduce_sum(inputs, axes)
      count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), inputs.dtype)
      mean = tf.identity(tf.zeros(channels, inputs.dtype), name='global_mean')
      variance = tf.identity(tf.ones(channels, inputs.dtype), name='global_variance')
      total_count = tf.identity(tf.ones([], inputs.dtype), name='global_count')
    entries.append(_SyncEntry(self._clone, self._device, inputs, local_sum, count, mean, variance,
                              total_count))
    return mean, variance, total_count

  def finalize(self):
    """Computes the global moments of every synchronized layer and wires them into all clones.

    Raises:
      ValueError: if a layer was not built by every clone (clones must build the same network).
    """
    if self._finalized:
      return
    self._finalized = True
    for key, entries in self._layers.items():
      if len(entries) != self._num_clones:
        raise ValueError('synchronized batch norm %s was built by %d of %d clones'
                         % (key, len(entries), self._num_clones))
      scope = 'SyncBatchNorm/' + key.replace(':', '_')
      with tf.name_scope(scope), tf.device(entries[0].device):
        total = tf.add_n([e.count for e in entries], name='count')
        mean = tf.math.divide(tf.add_n([e.local_sum for e in entries]), total, name='mean')
      squares = []
      for e in entries:
        with tf.name_scope(scope), tf.device(e.device):
          axes = list(range(e.inputs.shape.ndims - 1))
          squares.append(tf.reduce_sum(tf.square(e.inputs - mean), axes))
      with tf.name_scope(scope), tf.device(entries[0].device):
        variance = tf.math.divide(tf.add_n(squares), total, name='variance')
      for e in entries:
        # pylint: disable=protected-access
        e.mean.op._update_input(0, mean)
        e.variance.op._update_input(0, variance)
        e.total_count.op._update_input(0, total)


def _active_sync():
  return _ACTIVE_SYNC[-1] if _ACTIVE_SYNC else None


def _moments(inputs):
  """Returns (mean, biased variance, element count per channel) over all axes but the last."""
  axes = list(range(inputs.shape.ndims - 1))
  mean, variance = tf.nn.moments(inputs, axes)
  count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), inputs.dtype)
  return mean, variance, count


@slim.add_arg_scope
def batch_norm(inputs,
               decay=0.999,
               center=True,
               scale=False,
               epsilon=0.001,
               activation_fn=None,
               is_training=True,
               trainable=True,
               updates_collections=tf.GraphKeys.UPDATE_OPS,
               variables_collections=None,
               outputs_collections=None,
               param_initializers=None,
               sync_across_clones=False,
               reuse=None,
               scope=None):
  """Batch normalization over the last (channel) axis of an NHWC (or [N, C]) tensor.

  Args:
    inputs: float tensor [N, H, W, C] or [N, C] with a static channel count.
    decay: moving-average decay, in [0, 1).
    center: add a learned offset `beta`.
    scale: multiply by a learned `gamma`.
    epsilon: added to the variance, > 0.
    activation_fn: optional activation applied to the output.
    is_training: python bool. True: batch statistics and moving-average updates. False: moving statistics.
    trainable: whether beta and gamma are trainable (False for frozen batch norm).
    updates_collections: collection(s) for the moving-average update ops; None forces them in place.
    variables_collections: optional extra collections for the variables.
    outputs_collections: collections to add the output to (slim end points).
    param_initializers: optional dict with initializers for 'beta', 'gamma', 'moving_mean',
      'moving_variance'.
    sync_across_clones: in training, inside a CrossCloneSync.clone() context with several clones,
      normalise with the moments of all clones' batches. Ignored otherwise.
    reuse: reuse the variables of `scope`.
    scope: variable scope; 'BatchNorm' by default.

  Returns:
    Tensor of the same shape and dtype as `inputs`.

  Raises:
    ValueError: if `is_training` is not a python bool or the channel count is unknown.
  """
  if not isinstance(is_training, bool):
    raise ValueError('batch_norm: is_training must be a python bool, got %r' % (is_training,))
  with tf.variable_scope(scope, 'BatchNorm', [inputs], reuse=reuse) as sc:
    inputs = tf.convert_to_tensor(inputs)
    # dimension_value: in TF1 graph mode shape[-1] is a Dimension (Dimension(None), not None, when unknown).
    channels = tf.compat.dimension_value(inputs.shape[-1])
    if channels is None:
      raise ValueError('batch_norm: inputs %s must have a static channel count' % inputs.name)
    params_shape = [int(channels)]
    # Statistics and parameters stay in float32 for half-precision inputs.
    param_dtype = tf.float32 if inputs.dtype in (tf.float16, tf.bfloat16) else inputs.dtype.base_dtype
    initializers = param_initializers or {}
    collections = variables_collections or []
    if isinstance(collections, str):
      collections = [collections]

    def variable(name, default_init, var_trainable, extra=()):
      return slim.model_variable(
          name, shape=params_shape, dtype=param_dtype,
          initializer=initializers.get(name, default_init),
          collections=list(collections) + list(extra), trainable=var_trainable)

    beta = variable('beta', tf.zeros_initializer(), trainable) if center else None
    gamma = variable('gamma', tf.ones_initializer(), trainable) if scale else None
    moving_mean = variable('moving_mean', tf.zeros_initializer(), False,
                           [tf.GraphKeys.MOVING_AVERAGE_VARIABLES])
    moving_variance = variable('moving_variance', tf.ones_initializer(), False,
                               [tf.GraphKeys.MOVING_AVERAGE_VARIABLES])

    ndims = inputs.shape.ndims
    sync = _active_sync() if (sync_across_clones and is_training) else None
    if sync is not None and sync.num_clones > 1:
      x = tf.cast(inputs, param_dtype)
      mean, variance, count = sync.register(sc.name, x)
      unbiased_variance = variance * count / tf.maximum(count - 1, 1)
      outputs = tf.cast(tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon), inputs.dtype)
    elif inputs.dtype.base_dtype in _FUSED_DTYPES and ndims == 4:
      # The fused op needs explicit offset and scale.
      offset = beta if beta is not None else tf.zeros(params_shape, param_dtype)
      mult = gamma if gamma is not None else tf.ones(params_shape, param_dtype)
      if is_training:
        outputs, mean, unbiased_variance = tf.nn.fused_batch_norm(
            inputs, mult, offset, epsilon=epsilon, is_training=True)
      else:
        outputs, _, _ = tf.nn.fused_batch_norm(
            inputs, mult, offset, mean=moving_mean, variance=moving_variance, epsilon=epsilon,
            is_training=False)
    else:
      if is_training:
        mean, variance, count = _moments(inputs)
        unbiased_variance = variance * count / tf.maximum(count - 1, 1)
      else:
        mean, variance = moving_mean, moving_variance
      outputs = tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, epsilon)

    if is_training:
      # decay as a tensor of the statistics' dtype: a python float would go through float32 (1 - decay loses
      # ~1e-8 in float64 graphs).
      decay_tensor = tf.constant(decay, dtype=param_dtype, name='decay')
      update_mean = moving_averages.assign_moving_average(moving_mean, tf.cast(mean, param_dtype),
                                                          decay_tensor, zero_debias=False)
      update_variance = moving_averages.assign_moving_average(
          moving_variance, tf.cast(unbiased_variance, param_dtype), decay_tensor, zero_debias=False)
      if updates_collections is None:
        with tf.control_dependencies([update_mean, update_variance]):
          outputs = tf.identity(outputs)
      else:
        tf.add_to_collections(updates_collections, update_mean)
        tf.add_to_collections(updates_collections, update_variance)

    outputs.set_shape(inputs.shape)
    if activation_fn is not None:
      outputs = activation_fn(outputs)
    return slim.utils.collect_named_outputs(outputs_collections, sc.name, outputs)
