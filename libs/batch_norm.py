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

Reference: Ioffe & Szegedy, "Batch Normalization", ICML 2015.
"""
from libs.compat import slim
from libs.compat import tf

from tensorflow.python.training import moving_averages  # pylint: disable=g-direct-tensorflow-import

# Dtypes tf.nn.fused_batch_norm accepts; others (float64) take the moments path.
_FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32)


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
    use_fused = inputs.dtype.base_dtype in _FUSED_DTYPES and ndims == 4
    if use_fused:
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
