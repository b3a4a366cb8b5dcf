"""Semantic-segmentation metrics from a confusion matrix, and how eval.py reports them.

The IoU follows the official Cityscapes pixel-level evaluation (cityscapesScripts,
``cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py``, ``getIouScoreForLabel``): for class c,

    IoU_c = TP / (TP + FP + FN)
    TP = C[c, c]
    FN = (row c summed over all predictions) - TP
    FP = (column c summed over the ground-truth rows of the evaluated classes other than c)

and a class whose denominator is 0 (absent from the ground truth and never predicted on an evaluated pixel)
gets NaN, which the mean ignores; a class absent from the ground truth but predicted gets 0 and counts. The
official script works on the 34 label ids with an ``ignoreInEval`` flag per label. In train-id space those
ignored labels are all the ignore label (255), and every prediction is an evaluated class, so the same numbers
come from the num_classes x num_classes matrix of the pixels whose ground truth is not ignored: FN = row sum -
TP, FP = column sum - TP. tests/test_metrics.py checks this against the definition in label-id space.

Confusion matrices are int64 [num_classes, num_classes], rows = ground truth, columns = prediction.

Reported metrics (all in [0, 1]):
  mIoU                  mean of the non-NaN per-class IoUs (NaN if every class is NaN)
  per-class IoU         as above, NaN for classes absent from ground truth and prediction
  pixel accuracy        correctly predicted / evaluated pixels
  mean class accuracy   mean over classes present in the ground truth of TP / (ground-truth pixels of the class)

TensorBoard tags (fixed, so that `tensorboard --logdir_spec train:TRAIN,eval:EVAL` lines them up with training):
  Metrics/mIoU, Metrics/IoU/<class name, spaces as underscores>, Metrics/PixelAccuracy,
  Metrics/MeanClassAccuracy, Losses/EvalLoss.
"""
import json
import math

import numpy as np

from libs import cityscapes_labels
from libs import config_util
from libs.compat import tf

MIOU_TAG = 'Metrics/mIoU'
IOU_TAG_PREFIX = 'Metrics/IoU/'
PIXEL_ACCURACY_TAG = 'Metrics/PixelAccuracy'
MEAN_CLASS_ACCURACY_TAG = 'Metrics/MeanClassAccuracy'
EVAL_LOSS_TAG = 'Losses/EvalLoss'


def class_names(num_classes):
  """The Cityscapes train-id class names for 19 classes, 'class_<i>' otherwise."""
  if num_classes == cityscapes_labels.NUM_TRAIN_CLASSES:
    return list(cityscapes_labels.TRAIN_CLASS_NAMES)
  return ['class_%d' % i for i in range(num_classes)]


def iou_tag(class_name):
  """TensorBoard tag of a class's IoU ('traffic light' -> 'Metrics/IoU/traffic_light')."""
  return IOU_TAG_PREFIX + class_name.replace(' ', '_')


def confusion_matrix(labels, predictions, num_classes, ignore_label=255):
  """Counts (ground truth, prediction) pairs of the pixels whose label is not ignore_label.

  Args:
    labels: integer array of any shape: train ids in [0, num_classes) or ignore_label.
    predictions: integer array of the same shape, values in [0, num_classes).
    num_classes: C.
    ignore_label: label value excluded from the counts.

  Returns:
    int64 [C, C], rows = ground truth, columns = prediction.

  Raises:
    ValueError: shapes differ, or a label or prediction of a counted pixel is out of range.
  """
  labels = np.asarray(labels)
  predictions = np.asarray(predictions)
  if labels.shape != predictions.shape:
    raise ValueError('labels %s and predictions %s must have the same shape' % (labels.shape, predictions.shape))
  valid = labels != ignore_label
  labels = labels[valid].astype(np.int64)
  predictions = predictions[valid].astype(np.int64)
  for name, values in (('label', labels), ('prediction', predictions)):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError('%s values must be in [0, %d) (or the ignore label %d for labels), got range [%d, %d]'
                       % (name, num_classes, ignore_label, values.min(), values.max()))
  counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(np.int64)


def confusion_matrix_tensor(labels, predictions, num_classes, ignore_label=255):
  """In-graph confusion_matrix(): only the [C, C] counts leave the device, not the label maps.

  Args:
    labels: integer tensor of any shape (train ids or ignore_label).
    predictions: int32 tensor of the same shape, values in [0, num_classes).
    num_classes: C.
    ignore_label: label value excluded from the counts.

  Returns:
    int64 [C, C] tensor, rows = ground truth, columns = prediction.
  """
  with tf.name_scope('ConfusionMatrix'):
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
    valid = tf.not_equal(labels, ignore_label)
    index = tf.boolean_mask(labels, valid) * num_classes + tf.boolean_mask(predictions, valid)
    # int32 counts suffice for one batch (< 2^31 pixels) and have kernels on every device; the running sum
    # over a pass is int64 on the host.
    counts = tf.math.bincount(index, minlength=num_classes * num_classes, maxlength=num_classes * num_classes,
                              dtype=tf.int32)
    return tf.cast(tf.reshape(counts, [num_classes, num_classes]), tf.int64)


def _divide(numerator, denominator):
  """Element-wise numerator / denominator as float64, NaN where the denominator is 0."""
  numerator = np.asarray(numerator, dtype=np.float64)
  denominator = np.asarray(denominator, dtype=np.float64)
  out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
  np.divide(numerator, denominator, out=out, where=denominator > 0)
  return out


def class_iou(matrix):
  """Per-class IoU as in the official Cityscapes evaluation (see the module docstring).

  Args:
    matrix: int [C, C] confusion matrix, rows = ground truth.

  Returns:
    float64 [C]; NaN for a class absent from both ground truth and prediction.
  """
  matrix = np.asarray(matrix, dtype=np.int64)
  true_positives = np.diag(matrix)
  false_negatives = matrix.sum(axis=1) - true_positives
  false_positives = matrix.sum(axis=0) - true_positives
  return _divide(true_positives, true_positives + false_positives + false_negatives)


def _nanmean(values):
  values = np.asarray(values, dtype=np.float64)
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float('nan')


def mean_iou(matrix):
  """Mean of the non-NaN per-class IoUs (the official 'average over classes'); NaN if there is none."""
  return _nanmean(class_iou(matrix))


def pixel_accuracy(matrix):
  """Correct / evaluated pixels; NaN for an empty matrix."""
  matrix = np.asarray(matrix, dtype=np.int64)
  return float(_divide(np.trace(matrix), matrix.sum()))


def class_accuracy(matrix):
  """float64 [C]: TP / ground-truth pixels of the class (recall); NaN for classes absent from the ground truth."""
  matrix = np.asarray(matrix, dtype=np.int64)
  return _divide(np.diag(matrix), matrix.sum(axis=1))


def mean_class_accuracy(matrix):
  """Mean of class_accuracy() over the classes present in the ground truth."""
  return _nanmean(class_accuracy(matrix))


def compute_metrics(matrix, names=None):
  """All metrics of one confusion matrix.

  Args:
    matrix: int [C, C], rows = ground truth.
    names: C class names (class_names(C) if None).

  Returns:
    dict: 'mIoU', 'pixel_accuracy', 'mean_class_accuracy' (floats, NaN when undefined), 'class_iou' and
    'class_accuracy' ({class name: float or NaN}, in class order), 'num_pixels' (evaluated pixels).
  """
  matrix = np.asarray(matrix, dtype=np.int64)
  names = list(names) if names is not None else class_names(matrix.shape[0])
  if len(names) != matrix.shape[0]:
    raise ValueError('%d class names for a %d-class confusion matrix' % (len(names), matrix.shape[0]))
  return {
      'mIoU': mean_iou(matrix),
      'pixel_accuracy': pixel_accuracy(matrix),
      'mean_class_accuracy': mean_class_accuracy(matrix),
      'class_iou': dict(zip(names, class_iou(matrix).tolist())),
      'class_accuracy': dict(zip(names, class_accuracy(matrix).tolist())),
      'num_pixels': int(matrix.sum()),
  }


def format_table(metrics):
  """Human-readable lines: one per class with its IoU and accuracy, then the summary metrics."""
  width = max(len(name) for name in list(metrics['class_iou']) + ['mean class accuracy'])

  def fmt(value):
    return '   n/a' if math.isnan(value) else '%6.2f' % (100.0 * value)

  lines = ['%-*s    IoU %%   acc %%' % (width, 'class')]
  for name, iou in metrics['class_iou'].items():
    lines.append('%-*s  %s  %s' % (width, name, fmt(iou), fmt(metrics['class_accuracy'][name])))
  lines.append('%-*s  %s' % (width, 'mIoU', fmt(metrics['mIoU'])))
  lines.append('%-*s  %s' % (width, 'pixel accuracy', fmt(metrics['pixel_accuracy'])))
  lines.append('%-*s  %s' % (width, 'mean class accuracy', fmt(metrics['mean_class_accuracy'])))
  return '\n'.join(lines)


def scalar_summary(metrics, eval_loss=None):
  """A tf.Summary with the fixed metric tags (see the module docstring); NaN values are left out.

  Args:
    metrics: from compute_metrics().
    eval_loss: float or None.

  Returns:
    tf.Summary.
  """
  values = [(MIOU_TAG, metrics['mIoU']), (PIXEL_ACCURACY_TAG, metrics['pixel_accuracy']),
            (MEAN_CLASS_ACCURACY_TAG, metrics['mean_class_accuracy'])]
  values += [(iou_tag(name), iou) for name, iou in metrics['class_iou'].items()]
  if eval_loss is not None:
    values.append((EVAL_LOSS_TAG, eval_loss))
  # A NaN point would break the curve's scale in TensorBoard; "undefined" is visible as a missing point.
  return tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=float(value))
                           for tag, value in values if not math.isnan(value)])


def _json_safe(value):
  """NaN -> None (JSON has no NaN), recursively; numpy scalars -> Python numbers."""
  if isinstance(value, dict):
    return {key: _json_safe(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(item) for item in value]
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def write_json(path, data):
  """Writes data as indented JSON atomically (temporary file + rename); NaN is written as null."""
  config_util.atomic_write(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + '\n')


def read_json(path):
  """The object in a JSON file, or None when it is missing or unreadable (e.g. written by hand and broken)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
