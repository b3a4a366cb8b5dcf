"""Shared pytest fixtures: fast session configs, a tiny PSPNet pipeline config, and a small Cityscapes-format
dataset (the real sample frame plus synthetic frames) converted to TFRecords once per test session."""
import contextlib
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

# Grappler's meta-optimizer off: the first step of a test graph runs ~3x faster; results are the same.
from tests.testing_utils import session_config as fast_session_config  # noqa: E402,F401  pylint: disable=wrong-import-position

SAMPLE_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cityscapes_sample')


TINY_MODEL = """
model {
  pspnet {
    num_classes: %(num_classes)d
    filter_scale: 0.0625
    dropout_keep_prob: 1.0
    feature_extractor { type: "dilated_resnet50" num_units_per_block: [1, 1, 1, 1] }
    hyperparams {
      batch_norm { train: true scale: true center: true decay: 0.9 epsilon: 0.00001 }
      regularizer { l2_regularizer { weight: 0.0001 } }
      initializer { variance_scaling_initializer {} }
    }
    loss { classification_loss { softmax {} } use_auxiliary_loss: true aux_loss_weight: 0.4 }
  }
}
"""

TINY_TRAIN = """
train_config {
  batch_size: %(batch_size)d
  num_steps: %(num_steps)d
  optimizer { adam_optimizer { learning_rate { constant_learning_rate { learning_rate: 0.003 } } } }
  preprocessor_step { random_image_crop { crop_height: %(crop)d crop_width: %(crop)d } }
}
train_input_reader {
  shuffle: false
  num_readers: 1
  tf_record_input_reader { input_path: "%(train_record)s" }
}
eval_config {
  num_examples: 0
  eval_input_type { padded_eval_input { height: 129 width: 257 } }
}
eval_input_reader {
  shuffle: false
  num_readers: 1
  tf_record_input_reader { input_path: "%(val_record)s" }
}
"""


def tiny_model_config(num_classes=19, extra=''):
  """The tiny PSPNet of TINY_MODEL as a model_pb2.Model, with an optional text-format fragment of a Model
  (e.g. 'pspnet { pooling_factors: [1, 3] }') merged on top."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from protos import model_pb2  # pylint: disable=import-outside-toplevel
  from protos import pipeline_pb2  # pylint: disable=import-outside-toplevel
  pipeline = text_format.Parse(TINY_MODEL % {'num_classes': num_classes}, pipeline_pb2.PipelineConfig())
  config = model_pb2.Model()
  config.CopyFrom(pipeline.model)
  if extra:
    text_format.Merge(extra, config)
  return config


def tiny_pipeline(records, extra='', **kwargs):
  """The tiny pipeline config over cityscapes_records, with an optional text-format fragment merged on top."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from libs import config_util  # pylint: disable=import-outside-toplevel
  config = config_util.parse_pipeline_config(tiny_pipeline_text(records['train'], records['val'], **kwargs))
  if extra:
    text_format.Merge(extra, config)
  return config


def fixed_batch_pipeline(records, batch_size=4, momentum_sgd=False):
  """The tiny pipeline with the same batch every step: the first batch_size frames (not shuffled), resized to
  65x129, no random augmentation.

  Four different frames by default because batch norm after the 1x1 pyramid bin normalises batch_size values per
  channel, and its gradient grows like 1 / |x1 - x2|: with two frames, float noise (or, with one frame twice, zero
  variance) makes any two runs that add in a different order drift apart chaotically within a few steps.

  momentum_sgd: momentum SGD at a constant learning rate 0.01 instead of the tiny config's Adam (the PSPNet50
  recipe's optimizer; updates linear in the gradients, for comparing two gradient implementations: Adam would
  turn float noise of near-zero gradients into lr-sized steps).
  """
  config = tiny_pipeline(records, batch_size=batch_size, extra="""
      train_config { preprocessor_step { resize_image { new_height: 65 new_width: 129 } } }
      train_input_reader { num_examples: %d }""" % batch_size)
  del config.train_config.preprocessor_step[0]  # the tiny config's random crop
  if momentum_sgd:
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
    config.train_config.optimizer.Clear()
    text_format.Merge("""momentum_optimizer { momentum_optimizer_value: 0.9
                         learning_rate { constant_learning_rate { learning_rate: 0.01 } } }""",
                      config.train_config.optimizer)
  return config


def tiny_pipeline_text(train_record, val_record=None, batch_size=2, num_steps=4, crop=65, num_classes=19):
  values = dict(train_record=train_record, val_record=val_record or train_record, batch_size=batch_size,
                num_steps=num_steps, crop=crop, num_classes=num_classes)
  return TINY_MODEL % values + TINY_TRAIN % values


@contextlib.contextmanager
def capture_log_lines():
  """Yields the list of lines the toolkit's (TensorFlow's) logger logs inside the block; that logger does not
  propagate to pytest's caplog."""
  import logging  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  lines = []

  class Handler(logging.Handler):
    def emit(self, record):
      lines.append(record.getMessage())

  handler = Handler()
  tf.get_logger().addHandler(handler)
  try:
    yield lines
  finally:
    tf.get_logger().removeHandler(handler)


@pytest.fixture
def log_lines():
  """Lines logged by the toolkit's logger during the test (capture_log_lines)."""
  with capture_log_lines() as lines:
    yield lines


@pytest.fixture(scope='session')
def cityscapes_records(tmp_path_factory):
  """{'dir': dataset root, 'train': record, 'val': record} of 8 synthetic train frames and 2 synthetic + the
  real sample val frames, 256x128."""
  from dataset_tools import create_cityscapes_tfrecord  # pylint: disable=import-outside-toplevel
  from dataset_tools import make_synthetic_cityscapes  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('cityscapes')
  dataset = str(root / 'cityscapes')
  make_synthetic_cityscapes.make_dataset(dataset, num_train=8, num_val=2, sample_dir=SAMPLE_DIR)
  out = str(root / 'records')
  records = {'dir': dataset}
  for split in ('train', 'val'):
    create_cityscapes_tfrecord.convert(dataset, split, out)
    records[split] = os.path.join(out, 'cityscapes_%s.record' % split)
  return records
