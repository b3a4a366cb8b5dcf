"""Tests of the Cityscapes TFRecord converter and the synthetic dataset maker (real sample + synthetic data)."""
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dataset_tools import create_cityscapes_tfrecord as converter
from dataset_tools import make_synthetic_cityscapes
from libs import cityscapes_labels
from libs.compat import tf
from libs.standard_fields import TfExampleFields as fields

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cityscapes_sample')
SAMPLE_FRAME = 'frankfurt_000000_000294'
ALL_KEYS = {fields.image_encoded, fields.filename, fields.format, fields.height, fields.width,
            fields.channels, fields.segmentation_class_encoded, fields.segmentation_class_format}


def _copy_tree(src, dst):
  # copyfile, not copytree: the shared sample is read-only and the tests edit their copy.
  for dirpath, _, filenames in os.walk(src):
    target = os.path.join(dst, os.path.relpath(dirpath, src))
    os.makedirs(target, exist_ok=True)
    for filename in filenames:
      shutil.copyfile(os.path.join(dirpath, filename), os.path.join(target, filename))


@pytest.fixture
def sample(tmp_path):
  """A writable copy of the real sample; returns (root, image path, gtFine folder)."""
  if not os.path.isdir(SAMPLE_DIR):
    pytest.fail('real Cityscapes sample missing: %s (expected ../shared/data/cityscapes_sample beside the repo)'
                % SAMPLE_DIR)
  root = str(tmp_path / 'cityscapes')
  _copy_tree(SAMPLE_DIR, root)
  image = os.path.join(root, 'leftImg8bit', 'val', 'frankfurt', SAMPLE_FRAME + '_leftImg8bit.png')
  return root, image, os.path.join(root, 'gtFine', 'val', 'frankfurt')


@pytest.fixture
def synthetic(tmp_path):
  """A synthetic dataset with 5 train frames (64x96); returns (root, frame names)."""
  root = str(tmp_path / 'synth')
  frames = make_synthetic_cityscapes.make_dataset(root, num_train=5, num_val=0, height=64, width=96, seed=3)
  return root, frames['train']


def _synthetic_paths(root, frame, split='train'):
  city = frame.split('_')[0]
  return (os.path.join(root, 'leftImg8bit', split, city, frame + '_leftImg8bit.png'),
          os.path.join(root, 'gtFine', split, city, frame))  # label path prefix


def _read_records(path):
  return [tf.train.Example.FromString(r) for r in tf.io.tf_record_iterator(path)]


def _feature(example, key):
  feature = example.features.feature[key]
  return feature.bytes_list.value[0] if feature.HasField('bytes_list') else feature.int64_list.value[0]


def _decode(png_bytes):
  return np.array(Image.open(io.BytesIO(png_bytes)))


def _png_array(path):
  return np.array(Image.open(path))


def _check_example(example, image_path, expected_train_ids):
  assert set(example.features.feature.keys()) == ALL_KEYS
  with open(image_path, 'rb') as f:
    assert _feature(example, fields.image_encoded) == f.read()  # original PNG bytes, untouched
  pixels = _png_array(image_path)
  np.testing.assert_array_equal(_decode(_feature(example, fields.image_encoded)), pixels)
  assert _feature(example, fields.filename) == os.path.basename(image_path).encode()
  assert _feature(example, fields.format) == b'png'
  assert _feature(example, fields.height) == pixels.shape[0]
  assert _feature(example, fields.width) == pixels.shape[1]
  assert _feature(example, fields.channels) == 3
  assert _feature(example, fields.segmentation_class_format) == b'png'
  label = Image.open(io.BytesIO(_feature(example, fields.segmentation_class_encoded)))
  assert label.format == 'PNG' and label.mode == 'L'
  np.testing.assert_array_equal(np.array(label), expected_train_ids)


def _no_partial_files(output_dir):
  return not os.path.isdir(output_dir) or not [f for f in os.listdir(output_dir) if 'record' in f]


def test_round_trip_on_real_sample(sample, tmp_path):
  root, image, gt_dir = sample
  out = str(tmp_path / 'out')
  paths, count = converter.convert(root, 'val', out)
  assert paths == [os.path.join(out, 'cityscapes_val.record')] and count == 1
  assert os.listdir(out) == ['cityscapes_val.record']  # no temporary file left over
  (example,) = _read_records(paths[0])
  _check_example(example, image, _png_array(os.path.join(gt_dir, SAMPLE_FRAME + '_gtFine_labelTrainIds.png')))


def test_records_parse_in_graph_mode(sample, tmp_path):
  root, image, gt_dir = sample
  (path,), _ = converter.convert(root, 'val', str(tmp_path / 'out'))
  features = {
      fields.image_encoded: tf.FixedLenFeature([], tf.string),
      fields.filename: tf.FixedLenFeature([], tf.string),
      fields.height: tf.FixedLenFeature([], tf.int64),
      fields.width: tf.FixedLenFeature([], tf.int64),
      fields.segmentation_class_encoded: tf.FixedLenFeature([], tf.string),
  }
  with tf.Graph().as_default():
    record = tf.data.TFRecordDataset(path).make_one_shot_iterator().get_next()
    parsed = tf.io.parse_single_example(record, features)
    decoded_image = tf.image.decode_png(parsed[fields.image_encoded], channels=3)
    decoded_label = tf.image.decode_png(parsed[fields.segmentation_class_encoded], channels=1)
    with tf.Session() as sess:
      result = sess.run([decoded_image, decoded_label, parsed[fields.filename], parsed[fields.height],
                         parsed[fields.width]])
  image_pixels, label, filename, height, width = result
  np.testing.assert_array_equal(image_pixels, _png_array(image))
  assert label.shape == (128, 256, 1) and (height, width) == (128, 256)
  np.testing.assert_array_equal(label[..., 0],
                                _png_array(os.path.join(gt_dir, SAMPLE_FRAME + '_gtFine_labelTrainIds.png')))
  assert filename == (SAMPLE_FRAME + '_leftImg8bit.png').encode()


@pytest.mark.parametrize('remove_train_ids', [True, False])
def test_train_ids_derived_from_label_ids(sample, tmp_path, remove_train_ids):
  root, image, gt_dir = sample
  label_type = 'trainIds'
  if remove_train_ids:
    os.remove(os.path.join(gt_dir, SAMPLE_FRAME + '_gtFine_labelTrainIds.png'))
  else:
    label_type = 'labelIds'  # ignores the labelTrainIds file that is there
  frames, problems = converter.find_frames(root, 'val', label_type)
  assert problems == [] and [f.label_source for f in frames] == [converter.LABEL_FROM_LABEL_IDS]
  (path,), _ = converter.convert(root, 'val', str(tmp_path / 'out'), label_type=label_type)
  expected = cityscapes_labels.label_ids_to_train_ids(
      _png_array(os.path.join(gt_dir, SAMPLE_FRAME + '_gtFine_labelIds.png')))
  (example,) = _read_records(path)
  _check_example(example, image, expected)


def test_pairs_by_frame_name(synthetic, tmp_path):
  root, frames = synthetic
  # Files that sort between real ones but are no fine label maps must not shift the pairs; nor must a frame
  # whose label comes from another file type (labelIds) than its neighbours'.
  gt_dir = os.path.dirname(_synthetic_paths(root, frames[0])[1])
  for name in ('synthcity_000000_000000_gtFine_color.png', 'synthcity_000000_000001a_gtFine_polygons.json',
               'README.txt', 'synthcity_000000_000002_gtFine_labelTrainIds.png.bak'):
    with open(os.path.join(gt_dir, name), 'wb') as f:
      f.write(b'not a label')
  with open(os.path.join(os.path.dirname(_synthetic_paths(root, frames[0])[0]), 'notes.txt'), 'w') as f:
    f.write('unrelated')
  os.remove(_synthetic_paths(root, frames[2])[1] + '_gtFine_labelTrainIds.png')

  found, problems = converter.find_frames(root, 'train')
  assert problems == []
  assert [f.name for f in found] == frames
  for frame in found:
    assert os.path.basename(frame.image_path).startswith(frame.name + '_')
    assert os.path.basename(frame.label_path).startswith(frame.name + '_')
  (path,), count = converter.convert(root, 'train', str(tmp_path / 'out'))
  assert count == len(frames)
  examples = _read_records(path)
  assert [_feature(e, fields.filename) for e in examples] == [(f + '_leftImg8bit.png').encode() for f in frames]
  for frame, example in zip(frames, examples):
    image, label_prefix = _synthetic_paths(root, frame)
    expected = cityscapes_labels.label_ids_to_train_ids(_png_array(label_prefix + '_gtFine_labelIds.png'))
    _check_example(example, image, expected)


def test_missing_label_is_reported(synthetic, tmp_path):
  root, frames = synthetic
  image, label_prefix = _synthetic_paths(root, frames[1])
  os.remove(label_prefix + '_gtFine_labelTrainIds.png')
  os.remove(label_prefix + '_gtFine_labelIds.png')
  out = str(tmp_path / 'out')
  with pytest.raises(converter.ConversionError, match='no label partner') as error:
    converter.convert(root, 'train', out)
  assert os.path.basename(image) in str(error.value) and len(error.value.problems) == 1
  assert _no_partial_files(out)


def test_missing_image_is_reported(synthetic, tmp_path):
  root, frames = synthetic
  image, label_prefix = _synthetic_paths(root, frames[3])
  os.remove(image)
  with pytest.raises(ValueError, match='label without image') as error:
    converter.convert(root, 'train', str(tmp_path / 'out'))
  assert os.path.basename(label_prefix) + '_gtFine_labelTrainIds.png' in str(error.value)


def test_all_problems_are_collected(synthetic, tmp_path):
  root, frames = synthetic
  # Size mismatch on frame 0, non-RGB image on frame 2, corrupt (truncated) image on frame 4.
  _, label_prefix = _synthetic_paths(root, frames[0])
  Image.fromarray(np.zeros([10, 20], dtype=np.uint8)).save(label_prefix + '_gtFine_labelTrainIds.png')
  gray_image = _synthetic_paths(root, frames[2])[0]
  Image.open(gray_image).convert('RGBA').save(gray_image)
  corrupt_image = _synthetic_paths(root, frames[4])[0]
  with open(corrupt_image, 'rb') as f:
    data = f.read()
  with open(corrupt_image, 'wb') as f:
    f.write(data[:len(data) // 2])

  out = str(tmp_path / 'out')
  with pytest.raises(converter.ConversionError) as error:
    converter.convert(root, 'train', out)
  problems = error.value.problems
  assert len(problems) == 3
  assert frames[0] + '_gtFine_labelTrainIds.png' in problems[0] and 'differs from image size' in problems[0]
  assert os.path.basename(gray_image) in problems[1] and 'mode RGBA' in problems[1]
  assert os.path.basename(corrupt_image) in problems[2] and 'unreadable' in problems[2]
  assert _no_partial_files(out)

  # --skip_bad writes the two good frames instead.
  (path,), count = converter.convert(root, 'train', out, skip_bad=True)
  assert count == 2
  assert [_feature(e, fields.filename) for e in _read_records(path)] == [
      (frames[i] + '_leftImg8bit.png').encode() for i in (1, 3)]


def test_bad_label_values_are_reported(synthetic, tmp_path):
  root, frames = synthetic
  _, label_prefix = _synthetic_paths(root, frames[0])
  Image.fromarray(np.full([64, 96], 19, dtype=np.uint8)).save(label_prefix + '_gtFine_labelTrainIds.png')
  with pytest.raises(ValueError, match=r'labelTrainIds\.png: values that are no train ids .*\[19\]'):
    converter.convert(root, 'train', str(tmp_path / 'out'))
  os.remove(label_prefix + '_gtFine_labelTrainIds.png')
  Image.fromarray(np.full([64, 96], 40, dtype=np.uint8)).save(label_prefix + '_gtFine_labelIds.png')
  with pytest.raises(ValueError, match=r'labelIds\.png: values that are no Cityscapes label ids: \[40\]'):
    converter.convert(root, 'train', str(tmp_path / 'out'))


def test_sharding_writes_every_frame_once(synthetic, tmp_path):
  root, frames = synthetic
  out = str(tmp_path / 'out')
  paths, count = converter.convert(root, 'train', out, num_shards=3)
  assert count == 5
  assert [os.path.basename(p) for p in paths] == [
      'cityscapes_train-00000-of-00003.record', 'cityscapes_train-00001-of-00003.record',
      'cityscapes_train-00002-of-00003.record']
  assert sorted(os.listdir(out)) == [os.path.basename(p) for p in paths]
  names = [[_feature(e, fields.filename) for e in _read_records(p)] for p in paths]
  assert [len(n) for n in names] == [2, 2, 1]
  assert sorted(sum(names, [])) == [(f + '_leftImg8bit.png').encode() for f in frames]


def test_interrupted_conversion_leaves_no_record(synthetic, tmp_path, monkeypatch):
  root, _ = synthetic
  real_create = converter.create_tf_example
  calls = []

  def create_then_interrupt(frame):
    calls.append(frame)
    if len(calls) == 3:
      raise KeyboardInterrupt()
    return real_create(frame)

  monkeypatch.setattr(converter, 'create_tf_example', create_then_interrupt)
  out = str(tmp_path / 'out')
  with pytest.raises(KeyboardInterrupt):
    converter.convert(root, 'train', out, num_shards=2)
  assert os.listdir(out) == []


def test_test_split_without_labels_gets_ignore_labels(synthetic, tmp_path):
  root, frames = synthetic
  os.rename(os.path.join(root, 'leftImg8bit', 'train'), os.path.join(root, 'leftImg8bit', 'test'))
  (path,), count = converter.convert(root, 'test', str(tmp_path / 'out'))
  assert count == len(frames)
  for example in _read_records(path):
    label = _decode(_feature(example, fields.segmentation_class_encoded))
    assert label.shape == (64, 96) and (label == 255).all()
  # Labels for only some test frames: the missing ones are errors, as for train and val.
  os.makedirs(os.path.join(root, 'gtFine', 'test'))
  label_prefix = _synthetic_paths(root, frames[0])[1]
  shutil.copyfile(label_prefix + '_gtFine_labelIds.png',
                  os.path.join(root, 'gtFine', 'test', frames[0] + '_gtFine_labelIds.png'))
  with pytest.raises(converter.ConversionError) as error:
    converter.convert(root, 'test', str(tmp_path / 'out2'))
  assert len(error.value.problems) == len(frames) - 1


def test_bad_arguments(synthetic, tmp_path):
  root, _ = synthetic
  with pytest.raises(ValueError, match='split must be one of'):
    converter.find_frames(root, 'training')
  with pytest.raises(ValueError, match=r'leftImg8bit/val: no such directory'):
    converter.find_frames(root, 'val')
  with pytest.raises(ValueError, match='num_shards'):
    converter.convert(root, 'train', str(tmp_path / 'out'), num_shards=0)


def test_synthetic_dataset_is_accepted(tmp_path):
  root = str(tmp_path / 'synth')
  frames = make_synthetic_cityscapes.make_dataset(root, num_train=3, num_val=2, seed=1, sample_dir=SAMPLE_DIR)
  assert frames['train'] == ['synthcity_000000_%06d' % i for i in range(3)]
  assert frames['val'] == [SAMPLE_FRAME] + ['synthtown_000000_%06d' % i for i in range(2)]
  for split, city, frame in (('train', 'synthcity', frames['train'][0]), ('val', 'synthtown', frames['val'][1])):
    gt = os.path.join(root, 'gtFine', split, city, frame)
    label_ids = _png_array(gt + '_gtFine_labelIds.png')
    assert label_ids.shape == (128, 256) and cityscapes_labels.unknown_label_ids(label_ids) == []
    np.testing.assert_array_equal(_png_array(gt + '_gtFine_labelTrainIds.png'),
                                  cityscapes_labels.label_ids_to_train_ids(label_ids))
    instances = Image.open(gt + '_gtFine_instanceIds.png')
    assert instances.mode == 'I;16'
    instances = np.array(instances)
    np.testing.assert_array_equal(np.where(instances >= 1000, instances // 1000, instances), label_ids)

  for split, expected_count in (('train', 3), ('val', 3)):
    (path,), count = converter.convert(root, split, str(tmp_path / 'out'))
    assert count == expected_count
    seen = set()
    for example in _read_records(path):
      label = _decode(_feature(example, fields.segmentation_class_encoded))
      assert set(np.unique(label)) <= set(range(19)) | {255}
      seen |= set(np.unique(label).tolist())
      image = _decode(_feature(example, fields.image_encoded))
      assert image.shape == label.shape + (3,)
    assert 255 in seen and len(seen - {255}) >= 5  # several classes plus ignore

  # Same seed, same files.
  again = str(tmp_path / 'again')
  make_synthetic_cityscapes.make_dataset(again, num_train=3, num_val=2, seed=1)
  name = os.path.join('leftImg8bit', 'train', 'synthcity', frames['train'][2] + '_leftImg8bit.png')
  np.testing.assert_array_equal(_png_array(os.path.join(root, name)), _png_array(os.path.join(again, name)))


def test_command_line_as_script(sample, tmp_path):
  root, _, _ = sample
  out = str(tmp_path / 'out')
  script = os.path.join(REPO_ROOT, 'dataset_tools', 'create_cityscapes_tfrecord.py')
  # Run from outside the repository, so only the script's own sys.path set-up can find `libs`.
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)
  result = subprocess.run(
      [sys.executable, script, '--cityscapes_dir', root, '--split_type', 'val', '--output_dir', out,
       '--num_shards', '2'], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'Wrote 1 frame(s) of split val' in result.stderr  # the script's report, which the shards confirm:
  shards = sorted(os.listdir(out))
  assert shards == ['cityscapes_val-00000-of-00002.record', 'cityscapes_val-00001-of-00002.record']
  assert sum(len(_read_records(os.path.join(out, shard))) for shard in shards) == 1


def test_command_line_errors(synthetic, tmp_path, capsys):
  root, frames = synthetic
  os.remove(_synthetic_paths(root, frames[0])[0])
  assert converter.main(['--cityscapes_dir', root, '--split_type', 'train', '--output_dir',
                         str(tmp_path / 'out')]) == 1
  assert 'label without image' in capsys.readouterr().err
  assert not os.listdir(str(tmp_path / 'out'))  # no partial records left behind
