"""Helpers shared by the tests: tiny segmentation TFRecords and a session config for graph tests.

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
