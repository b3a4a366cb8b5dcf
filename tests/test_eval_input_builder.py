"""Tests of builders/eval_input_builder.py: the spec of every eval_input_type and the padded/cropped inputs
it builds, read through dataset_builder on tiny TFRecords."""
import numpy as np
import pytest
from google.protobuf import text_format

from builders import dataset_builder
from builders import eval_input_builder
from libs import image_ops
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.standard_fields import InputDataFields as fields
from protos import eval_pb2
from tests.test_dataset_builder import NUM_CLASSES
from tests.test_dataset_builder import _filenames
from tests.test_dataset_builder import _read
from tests.test_dataset_builder import _reader
from tests.test_dataset_builder import _write


def _preprocess_fn(eval_config, ignore_label):
  return eval_input_builder.build(eval_config, ignore_label).preprocess_fn


def _eval_config(text):
  return text_format.Parse(text, eval_pb2.EvalConfig())


def test_padded_eval_input_pads_image_and_label(tmp_path):
  expected = _write(tmp_path / 'a.record', ['a0', 'a1'], height=6, width=7)
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')
  preprocess_fn = _preprocess_fn(
      _eval_config('eval_input_type { padded_eval_input { height: 8 width: 9 } }'), ignore_label=255)

  batches, spec = _read(lambda: dataset_builder.build(
      reader, batch_size=2, num_classes=NUM_CLASSES, preprocess_fn=preprocess_fn))

  assert spec[fields.image].shape.as_list() == [2, 8, 9, 3]
  [batch] = batches
  for i, name in enumerate(_filenames(batches)):
    image, label = expected[name]
    np.testing.assert_array_equal(batch[fields.image][i, :6, :7], image.astype(np.float32))
    np.testing.assert_array_equal(batch[fields.labels_class][i, :6, :7, 0], label)
    assert (batch[fields.labels_class][i, 6:] == 255).all()
    assert (batch[fields.labels_class][i, :, 7:] == 255).all()
    np.testing.assert_allclose(batch[fields.image][i, 6:, :], np.broadcast_to(
        np.array(image_ops.MEAN_RGB, np.float32), (2, 9, 3)))
  np.testing.assert_array_equal(batch[fields.original_height], [6, 6])
  np.testing.assert_array_equal(batch[fields.original_width], [7, 7])


def test_padded_eval_input_rejects_oversized_image(tmp_path):
  _write(tmp_path / 'a.record', ['too_big_frame.png'], height=6, width=10)
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')
  preprocess_fn = _preprocess_fn(
      _eval_config('eval_input_type { padded_eval_input { height: 8 width: 9 } }'), ignore_label=255)

  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _read(lambda: dataset_builder.build(
        reader, batch_size=1, num_classes=NUM_CLASSES, preprocess_fn=preprocess_fn))

  message = error.value.message
  assert 'too_big_frame.png' in message
  assert '8 x 9' in message
  assert '[6 10]' in message


def test_cropped_eval_input_crops_centre_and_pads(tmp_path):
  expected = _write(tmp_path / 'a.record', ['a0'], height=6, width=7)
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')
  preprocess_fn = _preprocess_fn(
      _eval_config('eval_input_type { cropped_eval_input { height: 4 width: 9 } }'), ignore_label=255)

  batches, spec = _read(lambda: dataset_builder.build(
      reader, batch_size=1, num_classes=NUM_CLASSES, preprocess_fn=preprocess_fn))

  assert spec[fields.labels_class].shape.as_list() == [1, 4, 9, 1]
  label = batches[0][fields.labels_class][0, :, :, 0]
  np.testing.assert_array_equal(label[:, :7], expected['a0'][1][1:5])
  assert (label[:, 7:] == 255).all()


def test_unset_eval_input_type_is_an_error_naming_the_choices():
  with pytest.raises(ConfigError, match=r'^eval_config.eval_input_type = None: must be set to one of '
                     r'\{padded_eval_input, cropped_eval_input, sliding_window_eval_input\}'):
    eval_input_builder.build(_eval_config('num_examples: 2'), 255)


@pytest.mark.parametrize('text,field,value', [
    ('eval_input_type { }', 'eval_config.eval_input_type', None),
    ('eval_input_type { sliding_window_eval_input { crop_width: 9 stride_height: 3 stride_width: 3 } }',
     'eval_config.eval_input_type.sliding_window_eval_input.crop_height', None),
    ('eval_input_type { sliding_window_eval_input { crop_height: 9 crop_width: 0 } }',
     'eval_config.eval_input_type.sliding_window_eval_input.crop_width', 0),
    ('eval_input_type { sliding_window_eval_input { crop_height: 9 crop_width: 9 stride_height: 10 '
     'stride_width: 3 } }', 'eval_config.eval_input_type.sliding_window_eval_input.stride_height', 10),
    ('eval_input_type { sliding_window_eval_input { crop_height: 9 crop_width: 9 stride_height: 3 } }',
     'eval_config.eval_input_type.sliding_window_eval_input.stride_width', None),
    ('eval_input_type { sliding_window_eval_input { crop_height: 9 crop_width: 9 stride_height: 3 '
     'stride_width: 3 batch_size: 0 } }', 'eval_config.eval_input_type.sliding_window_eval_input.batch_size', 0),
    ('eval_scales: [1.0, 0.0] eval_input_type { padded_eval_input { height: 8 width: 9 } }',
     'eval_config.eval_scales[1]', 0.0),
    ('eval_scales: [1.0, 5.0] eval_input_type { padded_eval_input { height: 8 width: 9 } }',
     'eval_config.eval_scales[1]', 5.0),
    ('eval_scales: [0.5, 0.5] eval_input_type { padded_eval_input { height: 8 width: 9 } }',
     'eval_config.eval_scales', [0.5, 0.5]),
    ('eval_input_type { padded_eval_input { width: 9 } }',
     'eval_config.eval_input_type.padded_eval_input.height', None),
    ('eval_input_type { padded_eval_input { height: 8 width: 0 } }',
     'eval_config.eval_input_type.padded_eval_input.width', 0),
    ('eval_input_type { cropped_eval_input { height: -1 width: 3 } }',
     'eval_config.eval_input_type.cropped_eval_input.height', -1),
])
def test_invalid_eval_config_names_field_and_value(text, field, value):
  with pytest.raises(ConfigError) as error:
    eval_input_builder.build(_eval_config(text), 255)
  assert error.value.field == field
  assert error.value.value == value


@pytest.mark.parametrize('text,spec', [
    ('eval_input_type { padded_eval_input { height: 8 width: 9 } }',
     eval_input_builder.EvalSpec('padded_eval_input', (8, 9), None, (1.0,), False)),
    ('eval_input_type { cropped_eval_input { height: 4 width: 9 } } eval_scales: [0.75]',
     eval_input_builder.EvalSpec('cropped_eval_input', (4, 9), None, (0.75,), False)),
    ('eval_scales: [0.5, 1.0] flip_horizontally: true eval_input_type { sliding_window_eval_input { '
     'crop_height: 9 crop_width: 8 stride_height: 9 stride_width: 1 } }',
     eval_input_builder.EvalSpec('sliding_window_eval_input', None, eval_input_builder.SlidingWindow(9, 8, 9, 1, 1),
                                 (0.5, 1.0), True)),
])
def test_valid_specs(text, spec):
  eval_input = eval_input_builder.build(_eval_config(text), 255)
  assert eval_input.spec == spec
  # Sliding windows take whole images; the fixed-size modes pad or crop them in the input pipeline.
  assert (eval_input.preprocess_fn is None) == (spec.sliding_window is not None)


def test_not_an_eval_config_is_rejected():
  with pytest.raises(ValueError, match='eval_pb2.EvalConfig'):
    eval_input_builder.build(eval_pb2.EvalInputType())
