"""Loss scaling of float16 mixed-precision training (train_config.mixed_precision: "float16").

float16 has a 5-bit exponent: values below 2^-24 flush to zero and above 65504 overflow. Activation gradients
of a segmentation loss are mostly far below 1, so many would vanish in float16. The loss is multiplied by a
scale S before backprop, which multiplies every float16 activation gradient by S; the weights are float32 and so
are their gradients (the casts of the weights to float16 pass gradients back in float32), which are divided by S
before they are applied (Micikevicius et al., "Mixed Precision Training", ICLR 2018).

Dynamic scaling: when any gradient of a step is inf or NaN (S was too large), the step's update is skipped --
neither weights nor optimizer slots change, while the global step still advances (as Keras' LossScaleOptimizer
does, so that num_steps counts the steps run and the learning-rate schedule keeps its pace) -- and S halves, not
below 1; after `growth_steps` consecutive finite steps S doubles, not above MAX_SCALE
(an initial scale above it is kept until it halves).

The state is two variables, in the training checkpoint (a resumed run continues with the scale it had):

    LossScale/loss_scale   float32 []   S
    LossScale/good_steps   int64 []     consecutive finite steps since S last changed

    loss_scale = LossScale(initial_scale=2.0**15, growth_steps=2000)
    grads = tf.gradients(loss_scale.scale(loss), variables)
    train_op, finite, scale = loss_scale.apply_gradients(optimizer, zip(grads, variables), global_step)

bfloat16 needs none of this: it has float32's exponent range.
"""
from libs.compat import tf

SCOPE = 'LossScale'
MAX_SCALE = 2.0**24


class LossScale(object):
  """A (dynamic or fixed) loss scale and the skipping of non-finite steps; see the module docstring."""

  def __init__(self, initial_scale=2.0**15, growth_steps=2000, dynamic=True):
    """Creates the variables LossScale/loss_scale and LossScale/good_steps in the current graph (and device).

    Args:
      initial_scale: S at the start of training, >= 1.
      growth_steps: consecutive finite steps before S doubles, > 0.
      dynamic: False keeps S at initial_scale (non-finite steps are still skipped).
    """
    if not initial_scale >= 1:
      raise ValueError('initial_scale must be >= 1, got %r' % (initial_scale,))
    if not growth_steps > 0:
      raise ValueError('growth_steps must be > 0, got %r' % (growth_steps,))
    self._growth_steps = int(growth_steps)
    self._dynamic = dynamic
    with tf.variable_scope(SCOPE, reuse=tf.AUTO_REUSE):
      self._scale = tf.get_variable('loss_scale', [], tf.float32, tf.constant_initializer(float(initial_scale)),
                                    trainable=False)
      self._good_steps = tf.get_variable('good_steps', [], tf.int64, tf.zeros_initializer(), trainable=False)

  @property
  def variables(self):
    return [self._scale, self._good_steps]

  def scale(self, loss):
    """loss * S (float32 scalar), the loss to take gradients of."""
    return tf.multiply(tf.cast(loss, tf.float32), self._scale.read_value(), name='scaled_loss')

  def _unscale(self, grads_and_vars, scale):
    unscaled = []
    for grad, var in grads_and_vars:
      if isinstance(grad, tf.IndexedSlices):
        grad = tf.IndexedSlices(grad.values / tf.cast(scale, grad.values.dtype), grad.indices, grad.dense_shape)
      elif grad is not None:
        grad = grad / tf.cast(scale, grad.dtype)
      unscaled.append((grad, var))
    return unscaled

  @staticmethod
  def all_finite(grads):
    """bool [] whether every gradient is free of inf and NaN (each reduced on its own device)."""
    checks = []
    for grad in grads:
      values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
      if values is not None:
        with tf.device(values.device):
          checks.append(tf.reduce_all(tf.math.is_finite(values)))
    return tf.reduce_all(tf.stack(checks), name='all_finite') if checks else tf.constant(True)

  def apply_gradients(self, optimizer, grads_and_vars, global_step):
    """Unscales the gradients of the scaled loss and applies them, or skips the step when one is not finite.

    Args:
      optimizer: a tf.compat.v1 optimizer (its slots are created by its first apply_gradients, here inside a
        tf.cond, which TF1 optimizers support: their slots are created in an init scope).
      grads_and_vars: (gradient of scale(loss), variable) pairs.
      global_step: advanced by one whether the step is applied or skipped.

    Returns:
      (train op, bool [] finite, float32 [] scale): the op applies the update (or only advances the global step)
      and updates S; `finite` is whether the update was applied; `scale` is the S the gradients were divided by
      (read before the op updates it: fetch it with the op for progress lines and summaries).
    """
    # The optimizer's ops and variables (Adam's beta1_power, ...) get the names they have without loss scaling:
    # the same checkpoint layout as float32 training.
    outer_scope = tf.get_default_graph().get_name_scope()
    with tf.name_scope(SCOPE):
      scale = self._scale.read_value()
      grads_and_vars = self._unscale(list(grads_and_vars), scale)
      finite = self.all_finite([g for g, _ in grads_and_vars])

      def apply():
        with tf.name_scope(outer_scope + '/' if outer_scope else None):
          update = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
        with tf.control_dependencies([update]):
          return tf.constant(True)

      def skip():
        with tf.control_dependencies([tf.assign_add(global_step, 1)]):
          return tf.constant(False)

      applied = tf.cond(finite, apply, skip, name='apply_if_finite')
      return tf.group(applied, self._update(finite, scale), name='train'), finite, scale

  def _update(self, finite, scale):
    """Op that moves S and the counter after a step with (bool) finite gradients."""
    if not self._dynamic:
      return tf.no_op()
    good = self._good_steps.read_value() + 1
    grow = tf.logical_and(finite, good >= self._growth_steps)
    new_scale = tf.where(finite, tf.where(grow, tf.minimum(scale * 2.0, tf.maximum(scale, MAX_SCALE)), scale),
                         tf.maximum(scale * 0.5, 1.0))
    new_good = tf.where(tf.logical_and(finite, tf.logical_not(grow)), good, tf.zeros_like(good))
    return tf.group(tf.assign(self._scale, new_scale), tf.assign(self._good_steps, new_good))
