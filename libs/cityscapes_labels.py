"""The Cityscapes label table and the conversions between label ids, train ids and colours.

Cityscapes ground truth comes in two integer encodings (both single-channel 8-bit PNGs):
  * ``*_gtFine_labelIds.png``: the full label ids 0..33 (34 labels, plus 'license plate' with id -1, which
    never appears in an image);
  * ``*_gtFine_labelTrainIds.png``: the 19 evaluated classes as train ids 0..18, everything else 255.

The table below is the official one from cityscapesScripts, ``cityscapesscripts/helpers/labels.py``
(https://github.com/mcordts/cityscapesScripts), reproduced as data: name, id, trainId, category, catId,
hasInstances, ignoreInEval and colour of every label. Only the facts are taken; the code is this project's.

Conversions use 256-entry lookup tables, so they work on whole label maps at numpy speed.
"""
import collections

import numpy as np

Label = collections.namedtuple(
    'Label', ['name', 'id', 'train_id', 'category', 'category_id', 'has_instances', 'ignore_in_eval', 'color'])
Label.__doc__ = """One Cityscapes label.

Fields:
  name: unique label name, e.g. 'car'.
  id: label id as stored in ``*_gtFine_labelIds.png`` (0..33; -1 for 'license plate', which is never stored).
  train_id: id used for training (0..18), 255 for labels that are not trained on, -1 for 'license plate'.
  category: name of the coarse category, e.g. 'vehicle'.
  category_id: id of that category (0..7).
  has_instances: whether ``*_gtFine_instanceIds.png`` separates individual objects of this label.
  ignore_in_eval: whether the official evaluation ignores pixels of this label.
  color: (R, G, B) colour of the label in the official colour images.
"""

# Source: cityscapesScripts, cityscapesscripts/helpers/labels.py (the `labels` list), same order.
# pylint: disable=bad-whitespace
LABELS = (
    #     name                    id  train  category        cat  inst   ignore  color
    Label('unlabeled',             0, 255, 'void',          0, False, True,  (0, 0, 0)),
    Label('ego vehicle',           1, 255, 'void',          0, False, True,  (0, 0, 0)),
    Label('rectification border',  2, 255, 'void',          0, False, True,  (0, 0, 0)),
    Label('out of roi',            3, 255, 'void',          0, False, True,  (0, 0, 0)),
    Label('static',                4, 255, 'void',          0, False, True,  (0, 0, 0)),
    Label('dynamic',               5, 255, 'void',          0, False, True,  (111, 74, 0)),
    Label('ground',                6, 255, 'void',          0, False, True,  (81, 0, 81)),
    Label('road',                  7,   0, 'flat',          1, False, False, (128, 64, 128)),
    Label('sidewalk',              8,   1, 'flat',          1, False, False, (244, 35, 232)),
    Label('parking',               9, 255, 'flat',          1, False, True,  (250, 170, 160)),
    Label('rail track',           10, 255, 'flat',          1, False, True,  (230, 150, 140)),
    Label('building',             11,   2, 'construction',  2, False, False, (70, 70, 70)),
    Label('wall',                 12,   3, 'construction',  2, False, False, (102, 102, 156)),
    Label('fence',                13,   4, 'construction',  2, False, False, (190, 153, 153)),
    Label('guard rail',           14, 255, 'construction',  2, False, True,  (180, 165, 180)),
    Label('bridge',               15, 255, 'construction',  2, False, True,  (150, 100, 100)),
    Label('tunnel',               16, 255, 'construction',  2, False, True,  (150, 120, 90)),
    Label('pole',                 17,   5, 'object',        3, False, False, (153, 153, 153)),
    Label('polegroup',            18, 255, 'object',        3, False, True,  (153, 153, 153)),
    Label('traffic light',        19,   6, 'object',        3, False, False, (250, 170, 30)),
    Label('traffic sign',         20,   7, 'object',        3, False, False, (220, 220, 0)),
    Label('vegetation',           21,   8, 'nature',        4, False, False, (107, 142, 35)),
    Label('terrain',              22,   9, 'nature',        4, False, False, (152, 251, 152)),
    Label('sky',                  23,  10, 'sky',           5, False, False, (70, 130, 180)),
    Label('person',               24,  11, 'human',         6, True,  False, (220, 20, 60)),
    Label('rider',                25,  12, 'human',         6, True,  False, (255, 0, 0)),
    Label('car',                  26,  13, 'vehicle',       7, True,  False, (0, 0, 142)),
    Label('truck',                27,  14, 'vehicle',       7, True,  False, (0, 0, 70)),
    Label('bus',                  28,  15, 'vehicle',       7, True,  False, (0, 60, 100)),
    Label('caravan',              29, 255, 'vehicle',       7, True,  True,  (0, 0, 90)),
    Label('trailer',              30, 255, 'vehicle',       7, True,  True,  (0, 0, 110)),
    Label('train',                31,  16, 'vehicle',       7, True,  False, (0, 80, 100)),
    Label('motorcycle',           32,  17, 'vehicle',       7, True,  False, (0, 0, 230)),
    Label('bicycle',              33,  18, 'vehicle',       7, True,  False, (119, 11, 32)),
    Label('license plate',        -1,  -1, 'vehicle',       7, False, True,  (0, 0, 142)),
)
# pylint: enable=bad-whitespace

NUM_TRAIN_CLASSES = 19
IGNORE_TRAIN_ID = 255
# The label id that train id 255 maps back to ('unlabeled').
UNLABELED_ID = 0

# Lookups by name and by id. 'license plate' (id -1) is in NAME_TO_LABEL only: it never occurs in a label map.
NAME_TO_LABEL = {label.name: label for label in LABELS}
ID_TO_LABEL = {label.id: label for label in LABELS if label.id >= 0}
TRAIN_ID_TO_LABEL = {label.train_id: label for label in LABELS if 0 <= label.train_id < NUM_TRAIN_CLASSES}

TRAIN_CLASS_NAMES = tuple(TRAIN_ID_TO_LABEL[t].name for t in range(NUM_TRAIN_CLASSES))


def _read_only(array):
  # Module-level tables are shared by every caller; an accidental in-place edit would corrupt all of them.
  array.setflags(write=False)
  return array


TRAIN_ID_PALETTE = _read_only(
    np.array([TRAIN_ID_TO_LABEL[t].color for t in range(NUM_TRAIN_CLASSES)], dtype=np.uint8))


def _build_label_to_train_lut():
  lut = np.full([256], IGNORE_TRAIN_ID, dtype=np.uint8)
  for label in LABELS:
    # trainId 255 and -1 both mean "not trained on"; ids < 0 are never stored in an image.
    if label.id >= 0 and 0 <= label.train_id < NUM_TRAIN_CLASSES:
      lut[label.id] = label.train_id
  return _read_only(lut)


def _build_train_to_label_lut():
  # -1 marks values that are not train ids (19..254), so the inverse conversion can reject them.
  lut = np.full([256], -1, dtype=np.int16)
  for train_id, label in TRAIN_ID_TO_LABEL.items():
    lut[train_id] = label.id
  lut[IGNORE_TRAIN_ID] = UNLABELED_ID
  return _read_only(lut)


def _build_known_id_mask():
  mask = np.zeros([256], dtype=bool)
  mask[list(ID_TO_LABEL)] = True
  return _read_only(mask)


LABEL_ID_TO_TRAIN_ID_LUT = _build_label_to_train_lut()
_TRAIN_ID_TO_LABEL_ID_LUT = _build_train_to_label_lut()
_KNOWN_LABEL_ID = _build_known_id_mask()


def _as_byte_indices(array, what):
  """Checks that `array` holds integers in [0, 255] and returns it as an index array.

  Raises:
    ValueError: the array is not integer-typed or has values outside [0, 255].
  """
  array = np.asarray(array)
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError('%s must be an integer array, got dtype %s' % (what, array.dtype))
  if array.size and (array.min() < 0 or array.max() > 255):
    raise ValueError('%s must hold values in [0, 255], got range [%d, %d]' % (what, array.min(), array.max()))
  return array


def palette_with_ignore():
  """Returns the train-id palette extended to all 256 values, for indexing with any uint8 map.

  Returns:
    uint8 array [256, 3]: rows 0..18 are the class colours, every other row (including 255 = ignore) is black.
  """
  palette = np.zeros([256, 3], dtype=np.uint8)
  palette[:NUM_TRAIN_CLASSES] = TRAIN_ID_PALETTE
  return palette


_PALETTE_256 = _read_only(palette_with_ignore())


def label_ids_to_train_ids(label_id_array):
  """Maps a map of Cityscapes label ids (as in ``*_gtFine_labelIds.png``) to train ids.

  Ids whose train id is 255 or -1, and values that are no Cityscapes label id at all (34..255), become 255.
  Use `unknown_label_ids` first where such values should be an error.

  Args:
    label_id_array: integer array of any shape with values in [0, 255].

  Returns:
    uint8 array of the same shape with values in [0, 19) or 255.

  Raises:
    ValueError: the array is not integer-typed or has values outside [0, 255].
  """
  label_id_array = _as_byte_indices(label_id_array, 'label id array')
  return LABEL_ID_TO_TRAIN_ID_LUT[label_id_array]


def train_ids_to_label_ids(train_id_array):
  """Maps a map of train ids back to Cityscapes label ids (e.g. to submit predictions to the benchmark).

  Args:
    train_id_array: integer array of any shape with values in [0, 19) or 255.

  Returns:
    uint8 array of the same shape with label ids; 255 (ignore) becomes 0 ('unlabeled').

  Raises:
    ValueError: the array is not integer-typed or holds a value that is not a train id.
  """
  train_id_array = _as_byte_indices(train_id_array, 'train id array')
  label_ids = _TRAIN_ID_TO_LABEL_ID_LUT[train_id_array]
  if label_ids.size and label_ids.min() < 0:
    bad = np.unique(train_id_array[label_ids < 0])
    raise ValueError('train id array holds values that are not train ids (allowed: 0..%d and %d): %s'
                     % (NUM_TRAIN_CLASSES - 1, IGNORE_TRAIN_ID, bad.tolist()))
  return label_ids.astype(np.uint8)


def unknown_label_ids(label_id_array):
  """Returns the values of a label-id map that are not ids of the Cityscapes table.

  Args:
    label_id_array: integer array of any shape with values in [0, 255].

  Returns:
    sorted list of ints (empty when every value is a known label id 0..33).

  Raises:
    ValueError: the array is not integer-typed or has values outside [0, 255].
  """
  label_id_array = _as_byte_indices(label_id_array, 'label id array')
  values = np.unique(label_id_array)
  return [int(v) for v in values if not _KNOWN_LABEL_ID[v]]
