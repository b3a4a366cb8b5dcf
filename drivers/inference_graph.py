"""Test-time inference graphs: the one home of how a trained model is run on whole images.

Used by the evaluator (eval.py), image segmentation (inference.py) and the exporter (export.py):

  * network shapes: the network is built for a static height x width (the pyramid pooling bins depend on it);
    an image is padded at the bottom/right with the mean colour (zero after the model's mean subtraction) up to
    it and the predictions are cropped back. Without an explicit shape, sizes are rounded up to the next s with
    (s - 1) divisible by the output stride, so that the logits zoom back exactly (1024 -> 1025, 713 stays 713);
  * build_inference_graph: the deployable graph, uint8 placeholder `inputs` -> Preprocessor -> PadToNetworkShape
    -> network (inference mode: moving batch-norm statistics, no dropout, no auxiliary head) -> Postprocessor
    (logits upsampled with aligned corners, arg-max) -> CropToInput -> int32 `predictions`;
  * predict_probabilities: the evaluator's softmax probabilities of one image, averaged over scales, mirror
    images and overlapping sliding windows (builders/eval_input_builder.EvalSpec);
  * restoring the model variables of a trained checkpoint: libs/checkpoint_utils.restore_model_variables.
"""
import collections

from builders import model_builder
from libs import image_ops
from libs.compat import tf
from libs.config_errors import UserError

INPUT_NAME = 'inputs'
OUTPUT_NAME = 'predictions'
COMPUTE_DTYPES = ('float32', 'bfloat16')

def parse_shape(text, flag, ranks):
  """Parses a shape flag like '1,1024,2048,3' or '1025,2049'.

  Args:
    text: comma-separated integers; -1 marks a dynamic dimension. Empty: None.
    flag: the flag name, for error messages.
    ranks: allowed numbers of values.

  Returns:
    tuple of ints (None for -1), or None for an empty text.

  Raises:
    ValueError: naming the flag and the value, for a malformed shape.
  """
  if text is None or not text.strip():
    return None
  try:
    dims = [int(part) for part in text.split(',')]
  except ValueError:
    raise UserError('%s = %r: expected comma-separated integers, e.g. %s' % (
        flag, text, ','.join(['1', '1024', '2048', '3'][-max(ranks):]))) from None
  if len(dims) not in ranks:
    raise UserError('%s = %r: expected %s values, got %d' % (
        flag, text, ' or '.join(str(r) for r in ranks), len(dims)))
  if any(d == 0 or d < -1 for d in dims):
    raise UserError('%s = %r: dimensions must be > 0 (or -1 for any size)' % (flag, text))
  return tuple(None if d == -1 else d for d in dims)


def exact_zoom_size(size, stride):
  """Smallest s >= size with (s - 1) % stride == 0: the logits (s - 1) / stride + 1 zoom back exactly."""
  return size + (-(size - 1)) % stride


def resolve_network_shape(image_size, pad_to_shape, stride, input_flag='--input_shape',
                          pad_flag='--pad_to_shape'):
  """The static (height, width) the network is built for.

  Args:
    image_size: (height, width) of the input, entries None when dynamic.
    pad_to_shape: (height, width) or None (round image_size up to an exact-zoom size).
    stride: the backbone output stride.
    input_flag, pad_flag: flag names for error messages.

  Returns:
    (height, width) ints.

  Raises:
    ValueError: if the shape cannot be static or the padding is smaller than the input.
  """
  if pad_to_shape is None:
    if None in image_size:
      raise UserError('%s = %s has a dynamic height or width: give %s (the static size the network is '
                      'built for, e.g. 1025,2049)' % (input_flag, shape_text(image_size), pad_flag))
    return tuple(exact_zoom_size(s, stride) for s in image_size)
  if None in pad_to_shape:
    raise UserError('%s = %s: the network shape must be static (no -1)' % (pad_flag, shape_text(pad_to_shape)))
  for size, padded in zip(image_size, pad_to_shape):
    if size is not None and padded < size:
      raise UserError('%s = %s is smaller than %s = %s: padding cannot shrink the input' % (
          pad_flag, shape_text(pad_to_shape), input_flag, shape_text(image_size)))
  return tuple(pad_to_shape)


def shape_text(shape):
  return ','.join('-1' if d is None else str(d) for d in shape)


def build_inference_model(model_config):
  """The model in inference mode, without its weight regularizer (no L2 ops in an inference graph; the
  variables are the same)."""
  return model_builder.build(model_builder.without_regularizer(model_config), is_training=False)


def compute_dtype_of(name, flag='--compute_dtype'):
  """tf dtype of a COMPUTE_DTYPES name (None: float32).

  Raises:
    ValueError: naming the flag, for another name.
  """
  if name in (None, ''):
    return tf.float32
  if name not in COMPUTE_DTYPES:
    raise UserError('%s = %r: allowed: %s' % (flag, name, ', '.join(COMPUTE_DTYPES)))
  return tf.as_dtype(name)


class InferenceGraph(collections.namedtuple('InferenceGraph', ['inputs', 'predictions', 'network_shape'])):
  """Endpoints of an inference graph: the uint8 input placeholder, the int32 train-id predictions (same rank and
  spatial size as the input, without channels) and the static (height, width) the network runs at."""


def build_inference_graph(model, input_shape, network_shape, reuse=None, input_name=INPUT_NAME,
                          output_name=OUTPUT_NAME, compute_dtype=None):
  """Builds placeholder -> pad -> network -> crop in the default graph (see the module docstring).

  Args:
    model: an inference-mode model (build_inference_model).
    input_shape: [N, H, W, 3] or [H, W, 3], entries None when dynamic; H and W at most network_shape.
    network_shape: static (height, width) of the network.
    reuse: reuse the model's existing variables (a second network shape in the same graph).
    input_name, output_name: names of the placeholder and the predictions.
    compute_dtype: None or 'float32' (the default), or 'bfloat16': the network runs in bfloat16 (variables and
      checkpoints stay float32; the logits are upsampled and arg-maxed in float32). COMPUTE_DTYPES.

  Returns:
    InferenceGraph.

  Raises:
    ValueError: for a bad input shape.
  """
  input_shape = list(input_shape)
  if len(input_shape) not in (3, 4) or input_shape[-1] != 3:
    raise UserError('input shape must be [N, H, W, 3] or [H, W, 3], got %s' % (input_shape,))
  batched = len(input_shape) == 4
  net_h, net_w = network_shape
  inputs = tf.placeholder(tf.uint8, input_shape, name=input_name)
  images = inputs if batched else inputs[tf.newaxis]
  in_h, in_w = images.shape.as_list()[1:3]
  preprocessed = model.preprocess(images)
  with tf.name_scope('PadToNetworkShape'):
    size = tf.shape(images)[1:3]
    checks = []
    if in_h is None or in_w is None:
      # A larger image would make the padding negative: say so instead of failing inside tf.pad.
      checks.append(tf.debugging.assert_less_equal(
          size, tf.constant([net_h, net_w]),
          message='input image larger than the network shape %dx%d (export/inference --pad_to_shape)'
          % (net_h, net_w)))
    if (in_h, in_w) != (net_h, net_w):
      with tf.control_dependencies(checks):
        paddings = [[0, 0], [0, net_h - size[0]], [0, net_w - size[1]], [0, 0]]
        # After the mean subtraction zero is the mean colour.
        preprocessed = tf.pad(preprocessed, paddings)
      preprocessed.set_shape([images.shape[0], net_h, net_w, 3])
  dtype = compute_dtype_of(compute_dtype)
  if dtype != tf.float32:
    preprocessed = tf.cast(preprocessed, dtype)
  prediction_dict = dict(model.predict(preprocessed, reuse=reuse))
  prediction_dict['logits'] = tf.cast(prediction_dict['logits'], tf.float32)
  predictions = model.postprocess(prediction_dict, [net_h, net_w])['predictions']
  with tf.name_scope('CropToInput'):
    if (in_h, in_w) != (net_h, net_w):
      predictions = predictions[:, :size[0], :size[1]]
      predictions.set_shape([images.shape[0], in_h, in_w])
    if not batched:
      predictions = predictions[0]
  predictions = tf.identity(predictions, name=output_name)
  return InferenceGraph(inputs, predictions, (net_h, net_w))


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: softmax probabilities of one image over scales, mirror images and sliding windows.


def _window_starts(size, crop, stride):
  """int32 [n]: window origins along one axis of length size >= crop, the last one moved back to end at size."""
  count = (size - crop + stride - 1) // stride + 1
  return tf.minimum(tf.range(count) * stride, size - crop)


def _fixed_size_probabilities(image, network_fn, height, width):
  """Pads image [h, w, 3] (h <= height, w <= width) to height x width, runs the network, crops to h x w."""
  with tf.name_scope('FixedSize'):
    size = tf.shape(image)[:2]
    padded = image_ops.pad_with_mean(image, height, width)
    padded.set_shape([height, width, 3])
    probabilities = network_fn(padded[tf.newaxis])[0]
    return probabilities[:size[0], :size[1]]


def _sliding_window_probabilities(image, network_fn, window):
  """Averages the probabilities of overlapping windows over image [h, w, 3] (any size) -> [h, w, C]."""
  with tf.name_scope('SlidingWindow'):
    size = tf.shape(image)[:2]
    crop_height, crop_width = window.crop_height, window.crop_width
    padded = image_ops.pad_with_mean(image, tf.maximum(size[0], crop_height), tf.maximum(size[1], crop_width))
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
        scaled = image
        if scale != 1.0:
          scaled = image_ops.resize_bilinear(image[tf.newaxis], _scaled_size(size, scale))[0]
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
            probabilities = image_ops.resize_bilinear(probabilities[tf.newaxis], size)[0]
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
