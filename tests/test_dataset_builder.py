"""Tests of builders/dataset_builder.py on tiny TFRecords written to tmp_path."""
import numpy as np
import pytest
from google.protobuf import text_format

from builders import dataset_builder
from builders import preprocessor_builder
from libs.compat import tf
from libs.config_errors import ConfigError
from libs.config_errors import UserError
from libs.standard_fields import InputDataFields as fields
from protos import input_reader_pb2
from protos import train_pb2
from tests import testing_utils

NUM_CLASSES = 5


def _reader(paths, extra=''):
  """An InputReader over the given input_path entries plus extra text-format fields."""
  text = 'tf_record_input_reader { %s } %s' % (
      ' '.join('input_path: "%s"' % p for p in paths), extra)
  return text_format.Parse(text, input_reader_pb2.InputReader())


def _write(path, names, height=6, width=7, seed=0, image_format='png'):
  """Writes one record per name with random pixels and labels; returns {name: (image, label)}."""
  rng = np.random.default_rng(seed)
  examples = [testing_utils.random_segmentation_example(n, height, width, NUM_CLASSES, rng)
              for n in names]
  testing_utils.write_segmentation_tfrecord(path, examples, image_format=image_format)
  return {name: (image, label) for name, image, label in examples}


def _read(dataset, max_batches=100):
  """Evaluates up to max_batches batches (fewer when the dataset ends); returns (batches, static spec)."""
  batches = []
  with tf.Graph().as_default():
    dataset = dataset()
    iterator = tf.data.make_initializable_iterator(dataset)
    next_batch = iterator.get_next()
    with tf.Session(config=testing_utils.session_config()) as sess:
      sess.run(iterator.initializer)
      for _ in range(max_batches):
        try:
          batches.append(sess.run(next_batch))
        except tf.errors.OutOfRangeError:
          break
  return batches, dataset.element_spec


def _filenames(batches):
  return [name.decode() for batch in batches for name in batch[fields.filename]]


def test_batched_train_reader_with_scale_crop_flip(tmp_path):
  _write(tmp_path / 'train-00000.record', ['a%d' % i for i in range(4)], height=6, width=7, seed=1)
  _write(tmp_path / 'train-00001.record', ['b%d' % i for i in range(4)], height=10, width=9, seed=2)
  steps = text_format.Parse("""
      preprocessor_step { random_image_scale { min_scale_ratio: 0.5 max_scale_ratio: 2.0 } }
      preprocessor_step { random_image_crop { crop_height: 8 crop_width: 8 } }
      preprocessor_step { random_horizontal_flip { } }
  """, train_pb2.TrainConfig()).preprocessor_step
  reader = _reader([str(tmp_path / 'train-*.record')], 'shuffle_buffer_size: 4 num_readers: 2')

  batches, spec = _read(lambda: dataset_builder.build(
      reader, batch_size=3, num_classes=NUM_CLASSES, preprocess_fn=preprocessor_builder.build(steps),
      example_buffer=2, seed=7), max_batches=6)

  assert spec[fields.image].shape.as_list() == [3, 8, 8, 3]
  assert spec[fields.image].dtype == tf.float32
  assert spec[fields.labels_class].shape.as_list() == [3, 8, 8, 1]
  assert spec[fields.labels_class].dtype == tf.uint8
  assert spec[fields.filename].shape.as_list() == [3]
  assert spec[fields.original_height].dtype == tf.int32
  assert spec[fields.original_width].dtype == tf.int32
  # num_epochs defaults to 0: the 8 records repeat past 6 batches of 3.
  assert len(batches) == 6
  for batch in batches:
    assert batch[fields.image].shape == (3, 8, 8, 3)
    assert batch[fields.image].dtype == np.float32
    assert 0.0 <= batch[fields.image].min() and batch[fields.image].max() <= 255.0
    assert batch[fields.labels_class].dtype == np.uint8
    assert set(np.unique(batch[fields.labels_class])) <= set(range(NUM_CLASSES)) | {255}
    for name, height, width in zip(batch[fields.filename], batch[fields.original_height],
                                   batch[fields.original_width]):
      assert (height, width) == ((6, 7) if name.startswith(b'a') else (10, 9))
  assert set(_filenames(batches)) == {'a0', 'a1', 'a2', 'a3', 'b0', 'b1', 'b2', 'b3'}


def test_unshuffled_reader_keeps_file_order_and_values(tmp_path):
  expected = _write(tmp_path / 'part-1.record', ['p1_0', 'p1_1'], seed=1)
  expected.update(_write(tmp_path / 'part-0.record', ['p0_0', 'p0_1', 'p0_2'], seed=2))
  expected.update(_write(tmp_path / 'extra.record', ['x_0'], seed=3))
  # Each glob's matches are sorted; entries keep their config order.
  reader = _reader([str(tmp_path / 'part-*.record'), str(tmp_path / 'extra.record')],
                   'shuffle: false num_readers: 1 num_epochs: 1')

  batches, _ = _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))

  assert _filenames(batches) == ['p0_0', 'p0_1', 'p0_2', 'p1_0', 'p1_1', 'x_0']
  for batch in batches:
    image, label = expected[batch[fields.filename][0].decode()]
    np.testing.assert_array_equal(batch[fields.image][0], image.astype(np.float32))
    np.testing.assert_array_equal(batch[fields.labels_class][0, :, :, 0], label)
    assert batch[fields.original_height][0] == 6 and batch[fields.original_width][0] == 7


def test_unshuffled_parallel_reads_are_deterministic(tmp_path):
  _write(tmp_path / 'a.record', ['a0', 'a1', 'a2'])
  _write(tmp_path / 'b.record', ['b0', 'b1'])
  reader = _reader([str(tmp_path / '*.record')], 'shuffle: false num_readers: 4 num_epochs: 2')

  batches, _ = _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))

  # Two files read round-robin (cycle_length = min(num_readers, files)), twice.
  assert _filenames(batches) == ['a0', 'b0', 'a1', 'b1', 'a2'] * 2


def test_num_examples_takes_the_first_records_each_epoch(tmp_path):
  _write(tmp_path / 'a.record', ['a0', 'a1', 'a2', 'a3'])
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_examples: 3 num_epochs: 2')

  batches, _ = _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))

  assert _filenames(batches) == ['a0', 'a1', 'a2', 'a0', 'a1', 'a2']


def test_jpeg_images_decode(tmp_path):
  _write(tmp_path / 'a.record', ['a0'], image_format='jpeg')
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')

  batches, _ = _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))

  assert batches[0][fields.image].shape == (1, 6, 7, 3)


def test_bad_label_value_names_the_record(tmp_path):
  rng = np.random.default_rng(0)
  good = testing_utils.random_segmentation_example('good_frame.png', 4, 4, NUM_CLASSES, rng)
  bad_label = np.full((4, 4), 255, np.uint8)
  bad_label[0, 0] = 3
  bad_label[1, 2] = 7
  bad_label[2, 2] = 7
  bad_label[3, 3] = 42
  testing_utils.write_segmentation_tfrecord(
      tmp_path / 'a.record', [good, ('frankfurt_bad_frame.png', good[1], bad_label)])
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')

  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))

  message = error.value.message
  assert 'frankfurt_bad_frame.png' in message
  assert '7 42' in message
  assert 'good_frame' not in message


def test_ignore_label_and_every_class_are_accepted(tmp_path):
  label = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
  image = np.zeros((2, 3, 3), np.uint8)
  testing_utils.write_segmentation_tfrecord(tmp_path / 'a.record', [('ok', image, label)])
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')

  batches, _ = _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))

  np.testing.assert_array_equal(batches[0][fields.labels_class][0, :, :, 0], label)


def test_image_and_label_size_mismatch_names_the_record(tmp_path):
  testing_utils.write_segmentation_tfrecord(
      tmp_path / 'a.record',
      [('mismatched_frame', np.zeros((4, 5, 3), np.uint8), np.zeros((4, 6), np.uint8))])
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')

  with pytest.raises(tf.errors.InvalidArgumentError, match='mismatched_frame'):
    _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))


def _example_without(key, name, rng):
  example = testing_utils.make_segmentation_example(*testing_utils.random_segmentation_example(name, 4, 4, 3, rng))
  del example.features.feature[key]
  return example


def _consume(reader, field_path='train_input_reader'):
  """Reads the dataset of reader to its end inside naming_record_errors; returns the UserError raised."""
  with pytest.raises(UserError) as error:
    with dataset_builder.naming_record_errors(reader, field_path):
      _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))
  return str(error.value)


@pytest.mark.parametrize('key,problem', [
    ('image/encoded', 'has no feature "image/encoded"'),
    ('image/segmentation/class/encoded', 'has no feature "image/segmentation/class/encoded"'),
])
def test_record_without_required_feature_names_the_file(tmp_path, key, problem):
  _write(tmp_path / 'good.record', ['good_frame'])
  path = str(tmp_path / 'keyless.record')
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(_example_without(key, 'keyless_frame', np.random.default_rng(0)).SerializeToString())
  reader = _reader([str(tmp_path / 'good.record'), path], 'shuffle: false num_epochs: 1')

  message = _consume(reader)

  assert message.startswith('train_input_reader: Record keyless_frame (record file %s) %s' % (path, problem))
  assert 'good.record' not in message


def test_undecodable_image_names_the_file(tmp_path):
  example = testing_utils.make_segmentation_example(
      *testing_utils.random_segmentation_example('junk_frame', 4, 4, 3, np.random.default_rng(0)))
  example.features.feature['image/encoded'].bytes_list.value[0] = b'not an image'
  path = str(tmp_path / 'junk.record')
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(example.SerializeToString())
  reader = _reader([path], 'shuffle: false num_epochs: 1')

  message = _consume(reader, 'eval_input_reader')

  assert message == ('eval_input_reader: Record junk_frame (record file %s): feature "image/encoded" is not a '
                     'PNG, JPEG, GIF, BMP or WebP image' % path)


def test_truncated_record_file_is_named(tmp_path):
  _write(tmp_path / 'a-0.record', ['a0', 'a1'])
  path = str(tmp_path / 'a-1.record')
  _write(path, ['b0', 'b1'])
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:-20])
  reader = _reader([str(tmp_path / 'a-*.record')], 'shuffle: false num_epochs: 1')

  message = _consume(reader)

  assert message.startswith('train_input_reader: record file %s is corrupt or truncated after 1 good record(s): '
                            % path)
  assert 'truncated record' in message


def test_label_check_names_the_record_file_and_other_errors_pass(tmp_path):
  label = np.full((4, 4), 9, np.uint8)
  path = testing_utils.write_segmentation_tfrecord(
      tmp_path / 'a.record', [('bad_frame', np.zeros((4, 4, 3), np.uint8), label)])
  reader = _reader([path], 'shuffle: false num_epochs: 1')
  assert '(record file %s)' % path in _consume(reader)
  with pytest.raises(tf.errors.InvalidArgumentError, match='unrelated'):
    with dataset_builder.naming_record_errors(reader):
      raise tf.errors.InvalidArgumentError(None, None, 'unrelated')


def test_glob_matching_nothing_names_the_entry(tmp_path):
  _write(tmp_path / 'a.record', ['a0'])
  missing = str(tmp_path / 'missing-*.record')
  reader = _reader([str(tmp_path / 'a.record'), missing])

  with pytest.raises(ConfigError) as error:
    dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES, field_path='eval_input_reader')

  assert error.value.field == 'eval_input_reader.tf_record_input_reader.input_path[1]'
  assert error.value.value == missing
  assert missing in str(error.value)


@pytest.mark.parametrize('text,field,value', [
    ('shuffle: true', 'train_input_reader', None),
    ('tf_record_input_reader { }', 'train_input_reader.tf_record_input_reader.input_path', []),
    ('tf_record_input_reader { input_path: "%s" } num_readers: 0', 'train_input_reader.num_readers', 0),
    ('tf_record_input_reader { input_path: "%s" } shuffle_buffer_size: 0',
     'train_input_reader.shuffle_buffer_size', 0),
])
def test_invalid_reader_config(tmp_path, text, field, value):
  path = str(tmp_path / 'a.record')
  _write(path, ['a0'])
  reader = text_format.Parse(text.replace('%s', path), input_reader_pb2.InputReader())

  with pytest.raises(ConfigError) as error:
    dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES)

  assert error.value.field == field
  assert error.value.value == value


def test_unshuffled_reader_accepts_zero_shuffle_buffer(tmp_path):
  _write(tmp_path / 'a.record', ['a0'])
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false shuffle_buffer_size: 0 num_epochs: 1')
  batches, _ = _read(lambda: dataset_builder.build(reader, batch_size=1, num_classes=NUM_CLASSES))
  assert _filenames(batches) == ['a0']


def test_batch_without_fixed_size_gives_clear_error(tmp_path):
  _write(tmp_path / 'a.record', ['a0'])
  reader = _reader([str(tmp_path / 'a.record')])
  steps = text_format.Parse('preprocessor_step { random_horizontal_flip { } }',
                            train_pb2.TrainConfig()).preprocessor_step
  for preprocess_fn in (None, preprocessor_builder.build(steps)):
    with tf.Graph().as_default():
      with pytest.raises(ValueError, match='random_image_crop'):
        dataset_builder.build(reader, batch_size=2, num_classes=NUM_CLASSES, preprocess_fn=preprocess_fn)


@pytest.mark.parametrize('drop_remainder,sizes', [(True, [2]), (False, [2, 1])])
def test_drop_remainder(tmp_path, drop_remainder, sizes):
  _write(tmp_path / 'a.record', ['a0', 'a1', 'a2'])
  reader = _reader([str(tmp_path / 'a.record')], 'shuffle: false num_epochs: 1')
  steps = text_format.Parse('preprocessor_step { resize_image { new_height: 3 new_width: 4 } }',
                            train_pb2.TrainConfig()).preprocessor_step

  batches, _ = _read(lambda: dataset_builder.build(
      reader, batch_size=2, num_classes=NUM_CLASSES, preprocess_fn=preprocessor_builder.build(steps),
      drop_remainder=drop_remainder))

  assert [len(b[fields.filename]) for b in batches] == sizes
  assert batches[0][fields.image].shape == (2, 3, 4, 3)
