"""Tests of builders/preprocessor_builder.py: every step builds and runs, every bad value names its field."""
import numpy as np
import pytest
from google.protobuf import text_format

from builders import preprocessor_builder
from libs.compat import tf
from libs.config_errors import ConfigError
from protos import train_pb2
from tests import testing_utils

FIELD = 'train_config.preprocessor_step'


def _steps(text):
  """Parses preprocessor_step entries written in text format into the repeated field of a TrainConfig."""
  config = train_pb2.TrainConfig()
  text_format.Parse(text, config)
  return config.preprocessor_step


def _run(preprocess_fn, height=9, width=11):
  """Applies preprocess_fn to a random example fed through unknown-size placeholders.

  Returns:
    static image shape, static label shape, image value, label value, input label.
  """
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, size=(height, width, 3)).astype(np.float32)
  label = rng.integers(0, 19, size=(height, width, 1), dtype=np.uint8)
  with tf.Graph().as_default():
    image_in = tf.placeholder(tf.float32, [None, None, 3])
    label_in = tf.placeholder(tf.uint8, [None, None, 1])
    image_out, label_out = preprocess_fn(image_in, label_in)
    with tf.Session(config=testing_utils.session_config()) as sess:
      image_value, label_value = sess.run([image_out, label_out], {image_in: image, label_in: label})
  return image_out.shape.as_list(), label_out.shape.as_list(), image_value, label_value, label


def test_step_builders_cover_the_oneof():
  oneof = train_pb2.TrainConfig().preprocessor_step.add().DESCRIPTOR.oneofs_by_name['preprocessing_step']
  assert set(preprocessor_builder.STEP_BUILDERS) == {f.name for f in oneof.fields}


@pytest.mark.parametrize('text,static_hw,value_hw', [
    ('preprocessor_step { random_image_scale { min_scale_ratio: 2.0 max_scale_ratio: 2.0 } }',
     [None, None], (18, 22)),
    ('preprocessor_step { random_image_scale { } }', [None, None], None),
    ('preprocessor_step { random_image_crop { crop_height: 5 crop_width: 13 } }', [5, 13], (5, 13)),
    ('preprocessor_step { random_horizontal_flip { probability: 1.0 } }', [None, None], (9, 11)),
    ('preprocessor_step { random_horizontal_flip { } }', [None, None], (9, 11)),
    ('preprocessor_step { resize_image { new_height: 4 new_width: 6 } }', [4, 6], (4, 6)),
])
def test_each_step_builds_and_runs(text, static_hw, value_hw):
  image_shape, label_shape, image, label, label_in = _run(preprocessor_builder.build(_steps(text)))
  assert image_shape == static_hw + [3]
  assert label_shape == static_hw + [1]
  if value_hw is not None:
    assert image.shape == value_hw + (3,)
  assert image.shape[:2] == label.shape[:2]
  # No step invents label values (the crop above also pads with the ignore label).
  assert set(np.unique(label)) <= set(np.unique(label_in)) | {255}


def test_flip_step_flips():
  _, _, _, label, label_in = _run(preprocessor_builder.build(
      _steps('preprocessor_step { random_horizontal_flip { probability: 1.0 } }')))
  np.testing.assert_array_equal(label, label_in[:, ::-1])


def test_steps_apply_in_order_and_crop_pads_with_ignore_label():
  steps = _steps("""
      preprocessor_step { random_image_scale { min_scale_ratio: 0.5 max_scale_ratio: 0.5 } }
      preprocessor_step { random_image_crop { crop_height: 8 crop_width: 8 } }
      preprocessor_step { random_horizontal_flip { } }
  """)
  image_shape, label_shape, image, label, _ = _run(preprocessor_builder.build(steps, ignore_label=200))
  assert image_shape == [8, 8, 3] and label_shape == [8, 8, 1]
  # 9x11 scaled by 0.5 is 4x6 (round half to even), so the crop pads 4 rows and 2 columns.
  assert (label == 200).sum() == 8 * 8 - 4 * 6


def test_no_steps_is_identity():
  _, _, image, label, label_in = _run(preprocessor_builder.build(_steps('')))
  np.testing.assert_array_equal(label, label_in)
  assert image.shape == (9, 11, 3)


@pytest.mark.parametrize('text,field,value', [
    ('preprocessor_step { }', FIELD + '[1]', None),
    ('preprocessor_step { random_image_crop { crop_width: 4 } }',
     FIELD + '[1].random_image_crop.crop_height', None),
    ('preprocessor_step { random_image_crop { crop_height: 4 } }',
     FIELD + '[1].random_image_crop.crop_width', None),
    ('preprocessor_step { random_image_crop { crop_height: 0 crop_width: 4 } }',
     FIELD + '[1].random_image_crop.crop_height', 0),
    ('preprocessor_step { random_image_crop { crop_height: 4 crop_width: -2 } }',
     FIELD + '[1].random_image_crop.crop_width', -2),
    ('preprocessor_step { random_image_crop { crop_height: 4 crop_width: 4 images_channel_dim: 1 } }',
     FIELD + '[1].random_image_crop.images_channel_dim', 1),
    ('preprocessor_step { random_image_crop { crop_height: 4 crop_width: 4 labels_channel_dim: 3 } }',
     FIELD + '[1].random_image_crop.labels_channel_dim', 3),
    ('preprocessor_step { random_image_scale { min_scale_ratio: 0 } }',
     FIELD + '[1].random_image_scale.min_scale_ratio', 0.0),
    ('preprocessor_step { random_image_scale { min_scale_ratio: -0.5 } }',
     FIELD + '[1].random_image_scale.min_scale_ratio', -0.5),
    ('preprocessor_step { random_image_scale { min_scale_ratio: 1.5 max_scale_ratio: 1.0 } }',
     FIELD + '[1].random_image_scale.max_scale_ratio', 1.0),
    ('preprocessor_step { random_horizontal_flip { probability: 1.5 } }',
     FIELD + '[1].random_horizontal_flip.probability', 1.5),
    ('preprocessor_step { random_horizontal_flip { probability: -0.25 } }',
     FIELD + '[1].random_horizontal_flip.probability', -0.25),
    ('preprocessor_step { resize_image { new_width: 4 } }', FIELD + '[1].resize_image.new_height', None),
    ('preprocessor_step { resize_image { new_height: 4 new_width: 0 } }',
     FIELD + '[1].resize_image.new_width', 0),
])
def test_invalid_step_raises_config_error_naming_field_and_value(text, field, value):
  # A valid first step makes sure the index in the path is the failing step's.
  steps = _steps('preprocessor_step { random_horizontal_flip { } }\n' + text)
  for fn in (preprocessor_builder.build, preprocessor_builder.output_size):
    with pytest.raises(ConfigError) as error:
      fn(steps)
    assert error.value.field == field
    assert error.value.value == value
    assert error.value.allowed
    assert str(error.value).startswith('%s = %r: ' % (field, value))


def test_unset_oneof_error_lists_the_choices():
  with pytest.raises(ConfigError) as error:
    preprocessor_builder.build(_steps('preprocessor_step { }'))
  for name in preprocessor_builder.STEP_BUILDERS:
    assert name in error.value.allowed


def test_custom_field_path():
  with pytest.raises(ConfigError) as error:
    preprocessor_builder.build(_steps('preprocessor_step { resize_image { new_height: 0 new_width: 1 } }'),
                               field_path='my.steps')
  assert error.value.field == 'my.steps[0].resize_image.new_height'


@pytest.mark.parametrize('text,size', [
    ('', None),
    ('preprocessor_step { random_horizontal_flip { } }', None),
    ('preprocessor_step { random_image_crop { crop_height: 5 crop_width: 7 } }', (5, 7)),
    ('preprocessor_step { random_image_scale { } } '
     'preprocessor_step { random_image_crop { crop_height: 5 crop_width: 7 } } '
     'preprocessor_step { random_horizontal_flip { } }', (5, 7)),
    ('preprocessor_step { random_image_crop { crop_height: 5 crop_width: 7 } } '
     'preprocessor_step { random_image_scale { } }', None),
    ('preprocessor_step { random_image_crop { crop_height: 5 crop_width: 7 } } '
     'preprocessor_step { resize_image { new_height: 3 new_width: 4 } }', (3, 4)),
])
def test_output_size(text, size):
  assert preprocessor_builder.output_size(_steps(text)) == size
