"""Metric tests: the confusion matrix and IoU against a hand-computed case and against an independent
re-statement of the official Cityscapes evaluation in label-id space (cityscapesScripts,
evalPixelLevelSemanticLabeling.py: 34 label ids, ignoreInEval rows, NaN for empty denominators) on random cases
with absent classes; the in-graph confusion matrix; JSON and summary output."""
import json
import math
import os

import numpy as np
import pytest

from libs import cityscapes_labels
from libs import metrics
from libs.compat import tf
from tests.conftest import fast_session_config

NAN = float('nan')


def _assert_same(actual, expected):
  """Equal floats, NaN where expected is NaN."""
  actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
  np.testing.assert_allclose(actual[~np.isnan(actual)], expected[~np.isnan(expected)], rtol=1e-12, atol=0)


def test_hand_computed_case():
  # 4 classes, 255 ignored. Class 2 is absent from the ground truth but predicted on a valid pixel (IoU 0,
  # counts in the mean); class 3 is absent from the ground truth and predicted only where the label is
  # ignored (NaN, left out of the mean).
  labels = np.array([[0, 0, 0, 1],
                     [1, 1, 255, 255],
                     [0, 1, 255, 0]])
  predictions = np.array([[0, 0, 1, 1],
                          [1, 2, 3, 0],
                          [0, 0, 3, 2]])
  matrix = metrics.confusion_matrix(labels, predictions, num_classes=4)
  expected = np.array([[3, 1, 1, 0],   # gt 0: pred 0 x3, 1 x1, 2 x1
                       [1, 2, 1, 0],   # gt 1: pred 0, 1, 1, 2
                       [0, 0, 0, 0],
                       [0, 0, 0, 0]])
  np.testing.assert_array_equal(matrix, expected)
  assert matrix.dtype == np.int64
  # IoU_0 = 3 / (3 + 1 (gt 1 -> 0) + 2 (gt 0 -> 1, 2)); IoU_1 = 2 / (2 + 1 + 2); IoU_2 = 0 / (0 + 2 + 0).
  _assert_same(metrics.class_iou(matrix), [3 / 6, 2 / 5, 0.0, NAN])
  assert metrics.mean_iou(matrix) == pytest.approx((0.5 + 0.4 + 0.0) / 3, rel=1e-15)
  assert metrics.pixel_accuracy(matrix) == pytest.approx(5 / 9, rel=1e-15)
  _assert_same(metrics.class_accuracy(matrix), [3 / 5, 2 / 4, NAN, NAN])
  assert metrics.mean_class_accuracy(matrix) == pytest.approx((0.6 + 0.5) / 2, rel=1e-15)
  values = metrics.compute_metrics(matrix, ['a', 'b', 'c', 'd'])
  assert values['num_pixels'] == 9
  assert list(values['class_iou']) == ['a', 'b', 'c', 'd'] and math.isnan(values['class_iou']['d'])


def test_empty_matrix_gives_nan_not_an_error():
  matrix = np.zeros([3, 3], np.int64)
  assert math.isnan(metrics.mean_iou(matrix))
  assert math.isnan(metrics.pixel_accuracy(matrix))
  assert math.isnan(metrics.mean_class_accuracy(matrix))


def test_confusion_matrix_rejects_out_of_range_values():
  with pytest.raises(ValueError, match=r'prediction values must be in \[0, 3\)'):
    metrics.confusion_matrix(np.array([0, 1]), np.array([0, 3]), num_classes=3)
  with pytest.raises(ValueError, match=r'label values'):
    metrics.confusion_matrix(np.array([7, 1]), np.array([0, 1]), num_classes=3)
  with pytest.raises(ValueError, match='same shape'):
    metrics.confusion_matrix(np.zeros([2, 2]), np.zeros([4]), num_classes=3)
  # A prediction on an ignored pixel is not counted, whatever its value.
  assert metrics.confusion_matrix(np.array([255]), np.array([0]), num_classes=3).sum() == 0


def _official_label_id_iou(gt_label_ids, pred_label_ids):
  """Per-label IoU and the average as cityscapesScripts' evalPixelLevelSemanticLabeling.py defines them.

  Written from the definition, in label-id space, independently of libs/metrics.py: the confusion matrix over
  all label ids (every pixel counted, ignored labels included); for a label with ignoreInEval -> NaN; otherwise
  TP = C[l, l], FN = sum of row l - TP, FP = sum of column l over the rows of the labels that are not ignored in
  evaluation, other than l; IoU = TP / (TP + FP + FN), NaN when the denominator is 0. The average is over the
  labels whose IoU is not NaN.

  Returns:
    ({label id: IoU}, average).
  """
  ids = sorted(cityscapes_labels.ID_TO_LABEL)
  size = max(ids) + 1
  confusion = np.zeros([size, size], np.int64)
  np.add.at(confusion, (gt_label_ids.ravel().astype(np.int64), pred_label_ids.ravel().astype(np.int64)), 1)
  scores = {}
  for label_id in ids:
    if cityscapes_labels.ID_TO_LABEL[label_id].ignore_in_eval:
      scores[label_id] = NAN
      continue
    tp = int(confusion[label_id, label_id])
    fn = int(confusion[label_id, :].sum()) - tp
    not_ignored = [i for i in ids if not cityscapes_labels.ID_TO_LABEL[i].ignore_in_eval and i != label_id]
    fp = int(confusion[not_ignored, label_id].sum())
    denominator = tp + fp + fn
    scores[label_id] = NAN if denominator == 0 else tp / denominator
  valid = [s for s in scores.values() if not math.isnan(s)]
  return scores, (sum(valid) / len(valid) if valid else NAN)


@pytest.mark.parametrize('seed', range(12))
def test_iou_equals_official_cityscapes_definition_in_label_id_space(seed):
  rng = np.random.default_rng(seed)
  num_classes = cityscapes_labels.NUM_TRAIN_CLASSES
  all_ids = np.array(sorted(cityscapes_labels.ID_TO_LABEL))
  ignored_ids = np.array([i for i in all_ids if cityscapes_labels.ID_TO_LABEL[i].ignore_in_eval])
  # Classes absent from both, others absent from the ground truth or from the predictions only, and plenty of
  # ignored-label pixels.
  absent_from_both = rng.choice(num_classes, size=rng.integers(1, 4), replace=False)
  present = np.setdiff1d(np.arange(num_classes), absent_from_both)
  gt_eval = cityscapes_labels.train_ids_to_label_ids(
      rng.choice(present, size=rng.integers(2, present.size + 1), replace=False))
  gt_choices = np.concatenate([gt_eval, rng.choice(ignored_ids, size=4, replace=False)])
  pred_train_ids = rng.choice(present, size=rng.integers(2, present.size + 1), replace=False)
  shape = (rng.integers(5, 40), rng.integers(5, 40))
  gt_label_ids = rng.choice(gt_choices, size=shape).astype(np.uint8)
  predictions = rng.choice(pred_train_ids, size=shape).astype(np.uint8)
  if seed % 3 == 0:
    # A class predicted only on ignored pixels: NaN in the official script (FP counts non-ignored rows only).
    ignored_pixels = np.isin(gt_label_ids, ignored_ids)
    predictions[ignored_pixels & (rng.random(shape) < 0.3)] = absent_from_both[0]

  reference, reference_mean = _official_label_id_iou(gt_label_ids, cityscapes_labels.train_ids_to_label_ids(
      predictions))
  matrix = metrics.confusion_matrix(cityscapes_labels.label_ids_to_train_ids(gt_label_ids), predictions,
                                    num_classes)
  expected = [reference[cityscapes_labels.TRAIN_ID_TO_LABEL[t].id] for t in range(num_classes)]
  _assert_same(metrics.class_iou(matrix), expected)
  assert np.isnan(expected).any()  # The case exercises absent classes.
  assert metrics.mean_iou(matrix) == pytest.approx(reference_mean, rel=1e-12)


def test_confusion_matrix_tensor_equals_numpy():
  rng = np.random.default_rng(0)
  labels = rng.choice([0, 1, 2, 3, 4, 255], size=(2, 17, 23)).astype(np.uint8)
  predictions = rng.integers(0, 5, size=(2, 17, 23)).astype(np.int32)
  with tf.Graph().as_default():
    matrix = metrics.confusion_matrix_tensor(tf.constant(labels), tf.constant(predictions), 5, 255)
    assert matrix.dtype == tf.int64
    with tf.Session(config=fast_session_config()) as sess:
      value = sess.run(matrix)
  np.testing.assert_array_equal(value, metrics.confusion_matrix(labels, predictions, 5, 255))


def test_class_names_and_tags():
  names = metrics.class_names(19)
  assert names[0] == 'road' and names[6] == 'traffic light' and len(names) == 19
  assert metrics.class_names(3) == ['class_0', 'class_1', 'class_2']
  assert metrics.iou_tag('traffic light') == 'Metrics/IoU/traffic_light'


def test_scalar_summary_uses_fixed_tags_and_leaves_out_nan():
  matrix = np.array([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
  summary = metrics.scalar_summary(metrics.compute_metrics(matrix, ['a', 'b c', 'd']), eval_loss=0.5)
  values = {v.tag: v.simple_value for v in summary.value}
  assert set(values) == {'Metrics/mIoU', 'Metrics/PixelAccuracy', 'Metrics/MeanClassAccuracy', 'Metrics/IoU/a',
                         'Metrics/IoU/b_c', 'Losses/EvalLoss'}
  assert values['Metrics/IoU/a'] == pytest.approx(2 / 3)
  assert values['Losses/EvalLoss'] == 0.5


def test_write_json_is_atomic_and_writes_nan_as_null(tmp_path):
  path = str(tmp_path / 'out' / 'results.json')
  metrics.write_json(path, {'mIoU': NAN, 'steps': np.int64(3), 'iou': {'a': np.float64(0.25), 'b': NAN}})
  assert os.listdir(str(tmp_path / 'out')) == ['results.json']  # no temporary file left
  with open(path) as f:
    assert json.load(f) == {'mIoU': None, 'steps': 3, 'iou': {'a': 0.25, 'b': None}}
  assert metrics.read_json(path)['steps'] == 3
  assert metrics.read_json(str(tmp_path / 'missing.json')) is None
