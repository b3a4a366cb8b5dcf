"""TensorFlow 1 graph-mode compatibility layer for tf-slim on current TensorFlow.

Every module of the toolkit imports TensorFlow and tf-slim through here::

    from libs.compat import tf, slim

so that (1) TensorFlow runs in `tf.compat.v1` graph mode with sessions, and (2) the few TensorFlow internals
that tf-slim 1.1.0 still references, and that TensorFlow 2.21 moved, are restored before tf-slim is imported.

What is restored, and why:
  * ``tensorflow.python.framework.ops.Tensor``: tf-slim's ``layers.utils.constant_value`` and
    ``layers.optimizers`` test ``isinstance(x, ops.Tensor)``; the class now lives in
    ``tensorflow.python.framework.tensor``.
  * ``tensorflow.python.ops.control_flow_ops.cond``: used by ``layers.utils.smart_cond`` (and so by every
    layer with a tensor-valued ``is_training``); it now lives in ``tensorflow.python.ops.cond``.

Deliberately *not* restored: tf-slim's non-fused ``batch_norm`` needs ``tf_keras`` (which would pull in the
CUDA TensorFlow build). The toolkit owns its batch norm (``libs/batch_norm.py``) instead.
"""
import os
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-direct-tensorflow-import,wrong-import-position
import tensorflow.compat.v1 as tf
from tensorflow.python.framework import ops as _ops
from tensorflow.python.framework import tensor as _tensor
from tensorflow.python.ops import cond as _cond
from tensorflow.python.ops import control_flow_ops as _control_flow_ops

if not hasattr(_ops, 'Tensor'):
  _ops.Tensor = _tensor.Tensor
if not hasattr(_control_flow_ops, 'cond'):
  _control_flow_ops.cond = _cond.cond

# disable_v2_behavior logs deprecation notes about the very TF1 behaviour this toolkit asks for.
tf.logging.set_verbosity(tf.logging.ERROR)
tf.disable_v2_behavior()
# Resource variables: well-defined read semantics in graph mode, and what SavedModel export expects.
tf.enable_resource_variables()
tf.logging.set_verbosity(tf.logging.INFO)
# absl (used by the scripts) logs to the root logger too; without this every line would appear twice.
tf.get_logger().propagate = False

# tf-slim's layers go through TF's internal Keras v1 base layer, which warns on every layer it builds.
warnings.filterwarnings('ignore', message='`layer.apply` is deprecated')

import tf_slim as slim  # noqa: E402  (must come after the patches above)

__all__ = ['tf', 'slim']
