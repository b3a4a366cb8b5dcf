"""The variable side of mixed precision: float32 variables read as half-precision tensors.

Inside `tf.variable_scope(..., custom_getter=float32_variable_getter)` a layer that asks for a float16 or
bfloat16 variable gets the float32 variable of that name, cast to the half type where it is read. Checkpoints
therefore hold the same float32 variables under the same names as float32 training and inference, and the
optimizer updates float32 weights (their gradients come back through the cast in float32).

Weight regularizers must see the float32 variable, not its half-precision read (a float16 L2 term loses the
small weights' precision and its gradient underflows): build them with :func:`float32_regularizer`.
"""
from libs.compat import tf

HALF_DTYPES = (tf.bfloat16, tf.float16)
# The attribute of a half-precision read that holds its float32 variable.
_SOURCE_ATTR = '_pspnet_float32_variable'


def float32_variable_getter(getter, name, shape=None, dtype=None, *args, **kwargs):
  """Custom getter: a half-precision variable is created (or reused) as float32 under its own name and read as
  a cast to the half type."""
  if dtype in HALF_DTYPES:
    variable = getter(name, shape, tf.float32, *args, **kwargs)
    value = tf.cast(variable, dtype)
    setattr(value, _SOURCE_ATTR, variable)
    return value
  return getter(name, shape, dtype, *args, **kwargs)


def float32_weights(weights):
  """The float32 variable behind a half-precision read made by float32_variable_getter; else `weights`."""
  return getattr(weights, _SOURCE_ATTR, weights)


def float32_regularizer(regularizer):
  """Wraps regularizer(weights) -> loss so that it regularizes the float32 variable behind a mixed-precision
  read (a float32 loss); the same function for float32 weights. None stays None."""
  if regularizer is None:
    return None

  def regularize(weights):
    return regularizer(float32_weights(weights))

  return regularize
