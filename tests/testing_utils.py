"""Helpers shared by the tests: tiny segmentation TFRecords, a session config for graph tests, training steps
compared from the same state, and the tiny model's graphs with random weights (to compare two ways of computing
the same network).

Images are encoded with Pillow rather than TensorFlow so that writing fixtures builds no graph.
"""
import io

import numpy as np
from PIL import Image
from tensorflow.core.protobuf import rewriter_config_pb2

from libs.compat import tf
from libs.standard_fields import TfExampleFields


def session_config():
  """A tf.ConfigProto for tests: grappler's meta optimizer off, which makes small graphs start faster."""
  return tf.ConfigProto(graph_options=tf.GraphOptions(
      rewrite_options=rewriter_config_pb2.RewriterConfig(disable_meta_optimizer=True)))


def encode_image(array, image_format='png'):
  """Encodes a uint8 [H, W, 3] RGB or [H, W] grayscale array as PNG or JPEG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(array, dtype=np.uint8)).save(
      buffer, format={'png': 'PNG', 'jpeg': 'JPEG', 'jpg': 'JPEG'}[image_format])
  return buffer.getvalue()


def _bytes_feature(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_segmentation_example(filename, image, label, image_format='png'):
  """Builds one tf.train.Example with the keys of TfExampleFields.

  Args:
    filename: str, stored as image/filename.
    image: uint8 [H, W, 3] RGB.
    label: uint8 [H, W] train ids (255 = ignore).
    image_format: 'png' or 'jpeg' for the image (the label is always PNG).

  Returns:
    tf.train.Example.
  """
  image = np.asarray(image, dtype=np.uint8)
  label = np.asarray(label, dtype=np.uint8)
  height, width, channels = image.shape
  return tf.train.Example(features=tf.train.Features(feature={
      TfExampleFields.image_encoded: _bytes_feature(encode_image(image, image_format)),
      TfExampleFields.filename: _bytes_feature(filename.encode('utf-8')),
      TfExampleFields.format: _bytes_feature(image_format.encode('utf-8')),
      TfExampleFields.height: _int64_feature(height),
      TfExampleFields.width: _int64_feature(width),
      TfExampleFields.channels: _int64_feature(channels),
      TfExampleFields.segmentation_class_encoded: _bytes_feature(encode_image(label, 'png')),
      TfExampleFields.segmentation_class_format: _bytes_feature(b'png'),
  }))


def write_segmentation_tfrecord(path, examples, image_format='png'):
  """Writes a TFRecord file of segmentation examples.

  Args:
    path: output file (str or pathlib.Path).
    examples: iterable of (filename str, image uint8 [H, W, 3], label uint8 [H, W]).
    image_format: 'png' or 'jpeg' for the images.

  Returns:
    str(path).
  """
  path = str(path)
  with tf.io.TFRecordWriter(path) as writer:
    for filename, image, label in examples:
      writer.write(make_segmentation_example(filename, image, label, image_format).SerializeToString())
  return path


def random_segmentation_example(filename, height, width, num_classes, rng):
  """A (filename, image, label) triple of random pixels and train ids in [0, num_classes)."""
  image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  label = rng.integers(0, num_classes, size=(height, width), dtype=np.uint8)
  return filename, image, label


class StepRunner(object):
  """A training graph (drivers/trainer.build_training_graph) and its session, whose variables can be set to given
  values before each step: two gradient implementations compared step by step from the same state."""

  def __init__(self, config, gradients_fn=None):
    from drivers import trainer  # pylint: disable=import-outside-toplevel
    options = trainer.default_options(session_config=session_config(), gradients_fn=gradients_fn)
    self.graph = tf.Graph()
    with self.graph.as_default():
      self._train = trainer.build_training_graph(config, options)
      self.num_update_ops = len(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
      self._variables = tf.global_variables()
      self._sess = tf.Session(config=session_config())
      self._sess.run(tf.global_variables_initializer())

  def values(self):
    """{variable name: array} of all global variables (optimizer slots and batch-norm statistics included)."""
    return dict(zip([v.op.name for v in self._variables], self._sess.run(self._variables)))

  def step(self, values=None):
    """Runs one training step from `values` (the current state if None); returns (loss, values after it)."""
    if values is not None:
      for v in self._variables:
        v.load(values[v.op.name], self._sess)
    loss = self._sess.run([self._train.train_op, self._train.total_loss])[1]
    return loss, self.values()

  def close(self):
    self._sess.close()


def assert_close_to_scale(actual, expected, tolerance):
  """Every variable of `actual` within tolerance x (the largest magnitude of that variable in `expected`)."""
  assert set(actual) == set(expected)  # also: no variable was created by the recomputation
  for name, value in expected.items():
    error = np.abs(actual[name] - value).max()
    assert error <= tolerance * np.abs(value).max() + 1e-7, (name, error, np.abs(value).max())


def assert_steps_equal(reference, candidate, num_steps=3, tolerance=3e-5):
  """Runs num_steps steps of two StepRunners, each step from the state the reference reached, and asserts equal
  losses and updated variables. Returns (initial values, values after the last step).

  Each step is compared on its own: gradients that differ only in summation order (the partial gradients of a
  recomputation checkpoint are added in another order than tf.gradients adds them) drift apart chaotically over
  several steps of the tiny test network (measured 2e-6 to 3e-3 relative after three steps), while one step
  stays within ~3e-6 of the variables' scale. The first step starts from empty momentum slots and initial
  batch-norm statistics, the later ones from filled slots and updated statistics.
  """
  initial = state = reference.values()
  for step in range(num_steps):
    reference_loss, reference_next = reference.step(state)
    candidate_loss, candidate_next = candidate.step(state)
    np.testing.assert_allclose(candidate_loss, reference_loss, rtol=1e-6, err_msg='step %d' % step)
    assert_close_to_scale(candidate_next, reference_next, tolerance)
    state = reference_next
  return initial, state


def randomize_variables(sess, variables, seed=0):
  """Gives every variable random values (batch-norm statistics and scales near their usual ranges), so that a
  graph computed two ways is compared on weights that are not all at their initial values."""
  rng = np.random.RandomState(seed)
  for v in sorted(variables, key=lambda v: v.op.name):
    shape = v.shape.as_list()
    if v.op.name.endswith(('moving_variance', 'gamma')):
      v.load(rng.uniform(0.5, 1.5, shape).astype(np.float32), sess)
    elif v.op.name.endswith(('moving_mean', 'beta')):
      v.load(rng.normal(0, 0.2, shape).astype(np.float32), sess)
    elif v.dtype.base_dtype == tf.float32:
      v.load((rng.normal(0, 1, shape) * np.sqrt(2.0 / max(1, np.prod(shape[:-1])))).astype(np.float32), sess)


def training_graph_outputs(model_config):
  """The training graph of model_config on a fixed [2, 65, 65, 3] image with fixed random weights (a toy loss on
  both heads plus weight decay): its variables and collections, the names of its convolution ops, and the values
  [logits, aux_logits, loss] + gradients of the trainable variables."""
  from builders import model_builder  # pylint: disable=import-outside-toplevel
  from libs.compat import slim  # pylint: disable=import-outside-toplevel
  with tf.Graph().as_default() as graph:
    model = model_builder.build(model_config, is_training=True)
    images = tf.constant(np.random.RandomState(1).uniform(0, 255, [2, 65, 65, 3]).astype(np.float32))
    outputs = model.predict(model.preprocess(images))
    loss = (tf.reduce_sum(tf.square(outputs['logits'])) + tf.reduce_sum(tf.square(outputs['aux_logits'])) +
            tf.add_n(tf.losses.get_regularization_losses()))
    gradients = tf.gradients(loss, tf.trainable_variables())
    ops = graph.get_operations()
    dilated = [op.name for op in ops if op.type == 'Conv2D' and max(op.get_attr('dilations')) > 1]
    forward_space_to_batch = [op.name for op in ops if op.type == 'SpaceToBatchND' and
                              not op.name.startswith('gradients')]
    backprop = sorted(op.name for op in ops if op.type in ('Conv2DBackpropInput', 'Conv2DBackpropFilter'))
    forward = [(op.name, op.type) for op in ops if not op.name.startswith('gradients')]
    with tf.Session(config=session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      randomize_variables(sess, tf.global_variables())
      values = sess.run([outputs['logits'], outputs['aux_logits'], loss] + gradients)
    return dict(variables=[(v.op.name, v.shape.as_list(), v.trainable) for v in tf.global_variables()],
                model_variables=[v.op.name for v in slim.get_model_variables()],
                regularization_losses=len(tf.losses.get_regularization_losses()),
                update_ops=len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)), values=values,
                dilated=dilated, forward_space_to_batch=forward_space_to_batch, backprop=backprop,
                forward=forward)


def random_weights_inference_session(model_config, size, compute_dtype=None, config=None):
  """(session, endpoints, logits tensor) of drivers/inference_graph's inference graph of model_config for one
  uint8 image of size [height, width], with random weights (randomize_variables); config: the session's
  optional tf.ConfigProto."""
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  graph = tf.Graph()
  with graph.as_default():
    endpoints = inference_graph.build_inference_graph(inference_graph.build_inference_model(model_config),
                                                      [1] + list(size) + [3], size, compute_dtype=compute_dtype)
    logits = graph.get_operation_by_name('Postprocessor/ArgMax').inputs[0]
    sess = tf.Session(graph=graph, config=config)
    sess.run(tf.global_variables_initializer())
    randomize_variables(sess, tf.global_variables())
  return sess, endpoints, logits


def padded_eval_confusion_matrix(pipeline_config, checkpoint_path, padded_size=(129, 257), num_classes=19):
  """The confusion matrix of a checkpoint over its config's eval input, computed by hand: each image padded with
  the mean colour to padded_size, the model's upsampled logits cropped back and arg-maxed, scored in numpy.

  The reference the evaluator's padded mode must reproduce.
  """
  # pylint: disable=import-outside-toplevel
  from builders import dataset_builder
  from builders import model_builder
  from libs import metrics
  from libs.compat import slim
  from libs.image_ops import MEAN_RGB
  from libs.standard_fields import InputDataFields as fields
  # pylint: enable=import-outside-toplevel
  with tf.Graph().as_default():
    model = model_builder.build(pipeline_config.model, is_training=False)
    images = tf.placeholder(tf.float32, [1] + list(padded_size) + [3])
    logits = model.postprocess(model.predict(model.preprocess(images)), list(padded_size))['logits']
    saver = tf.train.Saver(slim.get_model_variables())
    reader = type(pipeline_config.eval_input_reader)()
    reader.CopyFrom(pipeline_config.eval_input_reader)
    reader.num_epochs = 1
    batch = tf.data.make_one_shot_iterator(
        dataset_builder.build(reader, 1, num_classes, drop_remainder=False)).get_next()
    matrix = np.zeros([num_classes, num_classes], np.int64)
    with tf.Session(config=session_config()) as sess:
      saver.restore(sess, checkpoint_path)
      while True:
        try:
          example = sess.run(batch)
        except tf.errors.OutOfRangeError:
          break
        height, width = example[fields.image].shape[1:3]
        padded = np.empty([1] + list(padded_size) + [3], np.float32)
        padded[:] = np.array(MEAN_RGB, np.float32)
        padded[0, :height, :width] = example[fields.image][0]
        prediction = sess.run(logits, {images: padded})[0, :height, :width].argmax(axis=2)
        matrix += metrics.confusion_matrix(example[fields.labels_class][0, :, :, 0], prediction, num_classes)
  return matrix


def import_frozen_graph(path):
  """A new graph holding the frozen GraphDef at path; asserts that no variable is left in it."""
  graph_def = tf.GraphDef()
  with open(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  graph = tf.Graph()
  with graph.as_default():
    tf.import_graph_def(graph_def, name='')
  assert not [op for op in graph.get_operations() if op.type in ('VarHandleOp', 'VariableV2')]
  return graph


def classification_restore(model_config, checkpoint_path, input_size, head_variable):
  """Builds the training model, restores a classification (TF-Slim ResNet layout) checkpoint into it as the
  trainer does, and returns ({backbone variable name: value}, {head_variable: value}) after the restore."""
  # pylint: disable=import-outside-toplevel
  from builders import model_builder
  from libs import checkpoint_utils
  from libs.compat import slim
  # pylint: enable=import-outside-toplevel
  with tf.Graph().as_default():
    model = model_builder.build(model_config, is_training=True)
    model.predict(model.preprocess(tf.zeros([1] + list(input_size) + [3])))
    init_fn = checkpoint_utils.build_fine_tune_init(model, checkpoint_path, 'classification')
    backbone = [v for v in slim.get_model_variables() if v.op.name.startswith(model.backbone_scope + '/')]
    head = slim.get_model_variables(head_variable)
    with tf.Session(config=session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      init_fn(sess)
      return (sess.run({v.op.name: v for v in backbone}), sess.run({v.op.name: v for v in head}))
