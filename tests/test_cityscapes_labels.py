"""Tests of libs/cityscapes_labels.py: the official table and the id conversions."""
import os

import numpy as np
import pytest
from PIL import Image

from libs import cityscapes_labels as labels
from libs import summaries

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cityscapes_sample')
SAMPLE_FRAME = 'frankfurt_000000_000294'


def _sample_label_path(suffix):
  path = os.path.join(SAMPLE_DIR, 'gtFine', 'val', 'frankfurt', SAMPLE_FRAME + suffix)
  if not os.path.exists(path):
    pytest.fail('real Cityscapes sample missing: %s (expected ../shared/data/cityscapes_sample beside the repo)'
                % path)
  return path


def test_table_has_all_official_labels():
  assert len(labels.LABELS) == 35
  ids = [label.id for label in labels.LABELS]
  assert ids == list(range(34)) + [-1]
  assert len(set(label.name for label in labels.LABELS)) == 35
  plate = labels.NAME_TO_LABEL['license plate']
  assert (plate.id, plate.train_id, plate.category) == (-1, -1, 'vehicle')
  assert labels.NAME_TO_LABEL['polegroup'].train_id == 255
  assert labels.NAME_TO_LABEL['car'].has_instances and not labels.NAME_TO_LABEL['road'].has_instances


def test_train_classes_in_order():
  assert labels.TRAIN_CLASS_NAMES == (
      'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
      'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')
  train_ids = sorted(l.train_id for l in labels.LABELS if 0 <= l.train_id < 255)
  assert train_ids == list(range(19))
  assert labels.NUM_TRAIN_CLASSES == len(train_ids)  # the count of the table's train ids


def test_palette():
  palette = labels.TRAIN_ID_PALETTE
  assert palette.shape == (19, 3) and palette.dtype == np.uint8
  assert tuple(palette[0]) == (128, 64, 128)  # road
  assert tuple(palette[10]) == (70, 130, 180)  # sky
  assert tuple(palette[13]) == (0, 0, 142)  # car
  assert tuple(palette[18]) == (119, 11, 32)  # bicycle
  with pytest.raises(ValueError):
    palette[0, 0] = 1  # shared table is read-only
  full = labels.palette_with_ignore()
  assert full.shape == (256, 3) and full.dtype == np.uint8
  np.testing.assert_array_equal(full[:19], palette)
  assert not full[19:].any()  # 255 (ignore) and non-train ids are black


def test_label_ids_to_train_ids():
  label_ids = np.array([[7, 8, 0], [26, 33, 18]], dtype=np.uint8)
  np.testing.assert_array_equal(labels.label_ids_to_train_ids(label_ids), [[0, 1, 255], [13, 18, 255]])
  assert labels.label_ids_to_train_ids(label_ids).dtype == np.uint8
  # Every id whose train id is 255 maps to ignore; so do values that are no label id.
  for label in labels.LABELS:
    if label.id >= 0 and label.train_id == 255:
      assert labels.label_ids_to_train_ids(np.array([label.id]))[0] == 255
  np.testing.assert_array_equal(labels.label_ids_to_train_ids(np.arange(34, 256)), 255)
  # Wider integer dtypes are fine as long as the values fit.
  assert labels.label_ids_to_train_ids(np.array([23], dtype=np.int64))[0] == 10


def test_round_trip_is_identity_on_trained_ids():
  trained = np.array([l.id for l in labels.LABELS if 0 <= l.train_id < 19], dtype=np.uint8)
  assert len(trained) == 19
  np.testing.assert_array_equal(labels.train_ids_to_label_ids(labels.label_ids_to_train_ids(trained)), trained)
  train_ids = np.array(list(range(19)) + [255], dtype=np.uint8)
  np.testing.assert_array_equal(labels.label_ids_to_train_ids(labels.train_ids_to_label_ids(train_ids)),
                                train_ids)
  assert labels.train_ids_to_label_ids(np.array([255]))[0] == 0  # ignore -> 'unlabeled'


def test_unknown_label_ids():
  assert labels.unknown_label_ids(np.array([0, 7, 33], dtype=np.uint8)) == []
  assert labels.unknown_label_ids(np.array([7, 34, 255, 34], dtype=np.uint8)) == [34, 255]


@pytest.mark.parametrize('bad', [np.array([1.0]), np.array([-1]), np.array([256])])
def test_bad_arrays_are_rejected(bad):
  with pytest.raises(ValueError, match='label id array'):
    labels.label_ids_to_train_ids(bad)


def test_train_ids_to_label_ids_rejects_non_train_ids():
  with pytest.raises(ValueError, match=r'not train ids.*\[19, 200\]'):
    labels.train_ids_to_label_ids(np.array([0, 19, 200, 255]))


def test_result_images_use_the_official_colours():
  # inference.py's *_color.png: palette[train ids], the ignore label black.
  palette = summaries.class_palette(labels.NUM_TRAIN_CLASSES, labels.IGNORE_TRAIN_ID)
  colors = palette[np.array([[0, 255], [13, 10]], dtype=np.uint8)]
  assert colors.shape == (2, 2, 3) and colors.dtype == np.uint8
  assert tuple(colors[0, 0]) == (128, 64, 128)
  assert tuple(colors[0, 1]) == (0, 0, 0)
  assert tuple(colors[1, 0]) == (0, 0, 142)


def _near_boundary(label_ids, radius):
  """bool [H, W]: True where the (2r+1)x(2r+1) window around a pixel holds more than one label id."""
  padded = np.pad(label_ids, radius, mode='edge')
  height, width = label_ids.shape
  near = np.zeros(label_ids.shape, dtype=bool)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      near |= padded[dy:dy + height, dx:dx + width] != label_ids
  return near


def test_derived_train_ids_match_shipped_ones_on_real_sample():
  label_ids = np.array(Image.open(_sample_label_path('_gtFine_labelIds.png')))
  shipped = np.array(Image.open(_sample_label_path('_gtFine_labelTrainIds.png')))
  assert label_ids.shape == shipped.shape == (128, 256)
  assert labels.unknown_label_ids(label_ids) == []
  derived = labels.label_ids_to_train_ids(label_ids)
  assert (derived == 255).any() and (derived < 19).any()

  # The fixture's files were downscaled to 256x128 one by one (nearest neighbour, different sample
  # positions), so its labelTrainIds disagree with its labelIds in 77 pixels, all within 2 pixels of a label
  # boundary. Exact equality therefore holds everywhere except on those boundary bands:
  near = _near_boundary(label_ids, radius=2)
  np.testing.assert_array_equal(derived[~near], shipped[~near])
  mismatch = derived != shipped
  assert mismatch.sum() <= 0.005 * mismatch.size
  assert not (mismatch & ~near).any()
  for y, x in np.argwhere(mismatch):  # the shipped value is a neighbour's class, not a table error
    assert shipped[y, x] in derived[max(0, y - 2):y + 3, max(0, x - 2):x + 3]
  # Every label id of the frame maps to the train id the shipped file gives most of its pixels.
  for label_id in np.unique(label_ids):
    majority = np.bincount(shipped[label_ids == label_id], minlength=256).argmax()
    assert labels.LABEL_ID_TO_TRAIN_ID_LUT[label_id] == majority, labels.ID_TO_LABEL[label_id].name
