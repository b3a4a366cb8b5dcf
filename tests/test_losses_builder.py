"""Tests of builders/losses_builder.py (the softmax loss, the Loss config and its errors) and of the PSPNet
model's loss(): mean over valid pixels only, ignored pixels never count, with logits upsampled to the labels
or labels downsampled to the logits."""
import numpy as np
import pytest
from google.protobuf import text_format

from builders import losses_builder
from builders import model_builder
from libs.compat import tf
from libs.config_errors import ConfigError
from protos import losses_pb2
from tests.conftest import fast_session_config
from tests.conftest import tiny_model_config

FIELD = 'model.pspnet.loss'
IGNORE = 255


def _loss_config(text):
  return text_format.Parse(text, losses_pb2.Loss())


def _np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  """Per-pixel softmax cross-entropy with targets (1 - s) * onehot + s / num_classes."""
  targets = np.eye(num_classes)[labels] * (1.0 - label_smoothing) + label_smoothing / num_classes
  return -(targets * _np_log_softmax(logits)).sum(axis=-1)


def _run_loss_fn(loss_fn, logits, labels, weights):
  with tf.Graph().as_default():
    loss = loss_fn(tf.constant(logits, tf.float32), tf.constant(labels, tf.int32),
                   tf.constant(weights, tf.float32))
    assert loss.shape.as_list() == []
    # loss_collection=None: the head losses must not also land in tf.losses' collection.
    assert tf.losses.get_losses() == []
    with tf.Session(config=fast_session_config()) as sess:
      return sess.run(loss)


# --- The softmax classification loss ---


def test_softmax_loss_is_the_mean_over_valid_pixels_only():
  loss_fn = losses_builder.build_classification_loss(
      text_format.Parse('softmax {}', losses_pb2.ClassificationLoss()))
  logits = np.array([[2.0, 0.0], [0.5, 1.5], [-3.0, 4.0]], np.float32)
  labels = np.array([0, 0, 0])
  weights = np.array([1.0, 1.0, 0.0])  # the third pixel is ignored
  value = _run_loss_fn(loss_fn, logits, labels, weights)
  # By hand: -log softmax(logits)[label] for the first two pixels.
  first = np.log(1.0 + np.exp(-2.0))
  second = np.log(1.0 + np.exp(1.0))
  assert value == pytest.approx((first + second) / 2.0, rel=1e-6)
  # Not the sum, not the mean over all three pixels.
  assert value != pytest.approx((first + second) / 3.0, rel=1e-3)
  # The ignored pixel's logits and label do not matter.
  other = _run_loss_fn(loss_fn, np.array([[2.0, 0.0], [0.5, 1.5], [100.0, -100.0]], np.float32),
                       np.array([0, 0, 1]), weights)
  assert other == pytest.approx(value, rel=1e-7)


def test_softmax_loss_matches_numpy_on_random_pixels():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=[50, 5]).astype(np.float32)
  labels = rng.integers(0, 5, size=50)
  weights = (rng.uniform(size=50) > 0.3).astype(np.float32)
  loss_fn = losses_builder.build_classification_loss(
      text_format.Parse('softmax {}', losses_pb2.ClassificationLoss()))
  value = _run_loss_fn(loss_fn, logits, labels, weights)
  per_pixel = _np_cross_entropy(logits, labels, 5)
  assert value == pytest.approx(per_pixel[weights > 0].mean(), rel=1e-5)


def test_label_smoothing_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=2.0, size=[7, 4]).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 3, 2, 1])
  weights = np.array([1, 1, 1, 0, 1, 1, 0], np.float32)
  loss_fn = losses_builder.build_classification_loss(
      text_format.Parse('softmax { label_smoothing: 0.2 }', losses_pb2.ClassificationLoss()))
  value = _run_loss_fn(loss_fn, logits, labels, weights)
  expected = _np_cross_entropy(logits, labels, 4, label_smoothing=0.2)[weights > 0].mean()
  assert value == pytest.approx(expected, rel=1e-5)
  unsmoothed = _np_cross_entropy(logits, labels, 4)[weights > 0].mean()
  assert value != pytest.approx(unsmoothed, rel=1e-3)


def test_all_pixels_ignored_gives_zero_not_nan():
  loss_fn = losses_builder.build_classification_loss(
      text_format.Parse('softmax { label_smoothing: 0.1 }', losses_pb2.ClassificationLoss()))
  value = _run_loss_fn(loss_fn, np.array([[1.0, 2.0], [3.0, -1.0]], np.float32), np.array([0, 1]),
                       np.array([0.0, 0.0]))
  assert value == 0.0
  assert not np.isnan(value)


# --- The Loss config ---


def test_build_defaults():
  kwargs = losses_builder.build(_loss_config('classification_loss { softmax {} }'), num_classes=19)
  assert sorted(kwargs) == ['aux_loss_weight', 'classification_loss_fn', 'ignore_label', 'main_loss_weight',
                            'upsample_logits', 'use_aux_loss']
  assert kwargs['use_aux_loss'] is True
  assert kwargs['main_loss_weight'] == pytest.approx(1.0)
  assert kwargs['aux_loss_weight'] == pytest.approx(0.4)
  assert kwargs['ignore_label'] == 255
  assert kwargs['upsample_logits'] is True
  value = _run_loss_fn(kwargs['classification_loss_fn'], np.array([[0.0, 0.0]], np.float32), np.array([1]),
                       np.array([1.0]))
  assert value == pytest.approx(np.log(2.0), rel=1e-6)


def test_build_explicit_values():
  text = """
    classification_loss { softmax { label_smoothing: 0.1 } }
    use_auxiliary_loss: false
    main_loss_weight: 2.0
    aux_loss_weight: 0.0
    ignore_label: 19
    upsample_logits: false
  """
  kwargs = losses_builder.build(_loss_config(text), num_classes=19)
  assert kwargs['use_aux_loss'] is False
  assert kwargs['main_loss_weight'] == pytest.approx(2.0)
  assert kwargs['aux_loss_weight'] == 0.0
  assert kwargs['ignore_label'] == 19
  assert kwargs['upsample_logits'] is False
  logits = np.array([[1.0, -1.0, 0.5]], np.float32)
  value = _run_loss_fn(kwargs['classification_loss_fn'], logits, np.array([2]), np.array([1.0]))
  assert value == pytest.approx(_np_cross_entropy(logits, np.array([2]), 3, 0.1)[0], rel=1e-5)


@pytest.mark.parametrize('text, num_classes, field, value', [
    ('', 19, FIELD + '.classification_loss', None),
    ('use_auxiliary_loss: true', 19, FIELD + '.classification_loss', None),
    ('classification_loss {}', 19, FIELD + '.classification_loss', None),
    ('classification_loss { softmax { label_smoothing: 1.0 } }', 19,
     FIELD + '.classification_loss.softmax.label_smoothing', 1.0),
    ('classification_loss { softmax { label_smoothing: -0.1 } }', 19,
     FIELD + '.classification_loss.softmax.label_smoothing', -0.1),
    ('classification_loss { softmax {} } main_loss_weight: 0', 19, FIELD + '.main_loss_weight', 0.0),
    ('classification_loss { softmax {} } main_loss_weight: -1', 19, FIELD + '.main_loss_weight', -1.0),
    ('classification_loss { softmax {} } aux_loss_weight: -1', 19, FIELD + '.aux_loss_weight', -1.0),
    ('classification_loss { softmax {} } ignore_label: 5', 19, FIELD + '.ignore_label', 5),
    ('classification_loss { softmax {} } ignore_label: 18', 19, FIELD + '.ignore_label', 18),
    ('classification_loss { softmax {} } ignore_label: 300', 19, FIELD + '.ignore_label', 300),
    ('classification_loss { softmax {} } ignore_label: 256', 19, FIELD + '.ignore_label', 256),
    ('classification_loss { softmax {} } ignore_label: -1', 19, FIELD + '.ignore_label', -1),
    ('classification_loss { softmax {} } ignore_label: 2', 3, FIELD + '.ignore_label', 2),
])
def test_invalid_config_names_the_field_and_value(text, num_classes, field, value):
  with pytest.raises(ConfigError) as info:
    losses_builder.build(_loss_config(text), num_classes=num_classes)
  assert info.value.field == field
  message = str(info.value)
  assert message.startswith(field + ' = ')
  if value is None:
    assert info.value.value is None
    assert message.startswith(field + ' = None')
  else:
    assert info.value.value == pytest.approx(value)
    assert ('= %r' % value) in message or ('= %r' % info.value.value) in message
    if isinstance(value, float):
      assert ('%g' % value) in message
  if 'ignore_label' in field:
    assert '[%d, 255]' % num_classes in message


def test_ignore_label_equal_to_num_classes_is_allowed():
  kwargs = losses_builder.build(_loss_config('classification_loss { softmax {} } ignore_label: 3'), 3)
  assert kwargs['ignore_label'] == 3


def test_build_rejects_another_message_type():
  with pytest.raises(ValueError, match='losses_pb2.Loss'):
    losses_builder.build(losses_pb2.ClassificationLoss(), num_classes=19)


# --- PSPNetArchitecture.loss() ---

NUM_CLASSES = 3


def _tiny_model(is_training=True, upsample_logits=True, use_auxiliary_loss=True, main_loss_weight=None):
  config = tiny_model_config(NUM_CLASSES)
  loss = config.pspnet.loss
  loss.upsample_logits = upsample_logits
  loss.use_auxiliary_loss = use_auxiliary_loss
  if main_loss_weight is not None:
    loss.main_loss_weight = main_loss_weight
  return model_builder.build(config, is_training=is_training)


def _np_resize_bilinear_align_corners(images, size):
  """[N, h, w, C] -> [N, H, W, C], corners aligned (output i samples input i * (h - 1) / (H - 1))."""
  def weights(in_size, out_size):
    matrix = np.zeros([out_size, in_size])
    for i in range(out_size):
      src = i * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
      lo = int(np.floor(src))
      hi = min(lo + 1, in_size - 1)
      matrix[i, lo] += 1.0 - (src - lo)
      matrix[i, hi] += src - lo
    return matrix
  rows = weights(images.shape[1], size[0])
  cols = weights(images.shape[2], size[1])
  return np.einsum('Hh,nhwc,Ww->nHWc', rows, np.asarray(images, np.float64), cols)


def _np_head_loss(logits, labels, upsample_logits):
  """Mean cross-entropy over the non-ignored pixels, at label (upsample) or logit (downsample) resolution."""
  labels = labels[..., 0]
  if upsample_logits:
    logits = _np_resize_bilinear_align_corners(logits, labels.shape[1:3])
  else:
    # Nearest neighbour with corners aligned: 5 -> 3 samples rows/columns 0, 2, 4.
    step_h = (labels.shape[1] - 1) / (logits.shape[1] - 1)
    step_w = (labels.shape[2] - 1) / (logits.shape[2] - 1)
    rows = np.round(np.arange(logits.shape[1]) * step_h).astype(int)
    cols = np.round(np.arange(logits.shape[2]) * step_w).astype(int)
    labels = labels[:, rows][:, :, cols]
  valid = labels != IGNORE
  if not valid.any():
    return 0.0
  return _np_cross_entropy(logits[valid], labels[valid], NUM_CLASSES).mean()


def _model_losses(model, logits_list, labels):
  """model.loss() for each {'logits', 'aux_logits'} numpy pair in logits_list (None: no aux head)."""
  with tf.Graph().as_default():
    labels_in = tf.constant(labels, tf.uint8)
    outputs = []
    for logits, aux_logits in logits_list:
      predictions = {'logits': tf.constant(logits, tf.float32)}
      if aux_logits is not None:
        predictions['aux_logits'] = tf.constant(aux_logits, tf.float32)
      outputs.append(model.loss(predictions, labels_in))
    with tf.Session(config=fast_session_config()) as sess:
      return sess.run(outputs)


def _labels_and_logits(seed=0):
  """Labels 5x5 for logits 3x3 (an exact x2 zoom with corners aligned); the top-left 2x2 labels, which is
  all that logit (0, 0) reaches when upsampled, are ignored, and so is one more scattered pixel."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=[2, 5, 5, 1]).astype(np.uint8)
  labels[:, 0:2, 0:2] = IGNORE
  labels[1, 3, 4] = IGNORE
  logits = rng.normal(scale=2.0, size=[2, 3, 3, NUM_CLASSES]).astype(np.float32)
  aux_logits = rng.normal(scale=2.0, size=[2, 3, 3, NUM_CLASSES]).astype(np.float32)
  return labels, logits, aux_logits


@pytest.mark.parametrize('upsample_logits', [True, False])
def test_model_loss_matches_numpy_and_ignores_ignored_pixels(upsample_logits):
  model = _tiny_model(upsample_logits=upsample_logits)
  labels, logits, aux_logits = _labels_and_logits()
  changed_ignored = logits.copy()
  changed_ignored[:, 0, 0] = [[50.0, -50.0, 7.0], [-20.0, 30.0, 1.0]]  # only reaches ignored labels
  changed_valid = logits.copy()
  changed_valid[:, 2, 2] += np.array([5.0, -5.0, 0.0], np.float32)
  base, ignored, valid, no_aux = _model_losses(
      model, [(logits, aux_logits), (changed_ignored, aux_logits), (changed_valid, aux_logits),
              (logits, None)], labels)
  expected_main = _np_head_loss(logits, labels, upsample_logits)
  expected_aux = 0.4 * _np_head_loss(aux_logits, labels, upsample_logits)
  assert sorted(base) == ['aux_loss', 'main_loss']
  assert base['main_loss'] == pytest.approx(expected_main, rel=1e-5)
  assert base['aux_loss'] == pytest.approx(expected_aux, rel=1e-5)
  assert ignored['main_loss'] == pytest.approx(base['main_loss'], rel=1e-6)
  assert ignored['aux_loss'] == pytest.approx(base['aux_loss'], rel=1e-6)
  assert abs(valid['main_loss'] - base['main_loss']) > 1e-3
  assert sorted(no_aux) == ['main_loss']
  assert no_aux['main_loss'] == pytest.approx(base['main_loss'], rel=1e-6)


def test_model_loss_downsampled_labels_ignore_unsampled_pixels():
  """upsample_logits false: only the labels at the nearest-neighbour sample points count."""
  model = _tiny_model(upsample_logits=False)
  labels, logits, _ = _labels_and_logits(seed=1)
  changed = labels.copy()
  changed[:, 1, :] = (changed[:, 1, :] + 1) % NUM_CLASSES  # row 1 is never sampled (rows 0, 2, 4 are)
  changed[:, 3, 3] = IGNORE
  sampled = labels.copy()
  sampled[0, 2, 2] = (sampled[0, 2, 2] + 1) % NUM_CLASSES
  with tf.Graph().as_default():
    predictions = {'logits': tf.constant(logits)}
    results = [model.loss(predictions, tf.constant(x))['main_loss'] for x in (labels, changed, sampled)]
    with tf.Session(config=fast_session_config()) as sess:
      base, unsampled_changed, sampled_changed = sess.run(results)
  assert base == pytest.approx(_np_head_loss(logits, labels, False), rel=1e-5)
  assert unsampled_changed == pytest.approx(base, rel=1e-6)
  assert abs(sampled_changed - base) > 1e-4


@pytest.mark.parametrize('upsample_logits', [True, False])
def test_model_loss_all_ignored_is_zero(upsample_logits):
  model = _tiny_model(upsample_logits=upsample_logits)
  _, logits, aux_logits = _labels_and_logits()
  labels = np.full([2, 5, 5, 1], IGNORE, np.uint8)
  (losses,) = _model_losses(model, [(logits, aux_logits)], labels)
  assert losses == {'main_loss': 0.0, 'aux_loss': 0.0}


def test_model_loss_main_loss_weight():
  model = _tiny_model(main_loss_weight=3.0)
  labels, logits, aux_logits = _labels_and_logits()
  (losses,) = _model_losses(model, [(logits, aux_logits)], labels)
  assert losses['main_loss'] == pytest.approx(3.0 * _np_head_loss(logits, labels, True), rel=1e-5)


def test_predicted_tiny_pspnet_loss_with_all_labels_ignored_is_zero():
  """The real network's logits and aux logits (33x33 -> 5x5) with every label ignored: both losses 0."""
  model = _tiny_model()
  rng = np.random.default_rng(2)
  images = rng.uniform(0, 255, size=[1, 33, 33, 3]).astype(np.float32)
  labels_value = rng.integers(0, NUM_CLASSES, size=[1, 33, 33, 1]).astype(np.uint8)
  with tf.Graph().as_default():
    labels = tf.placeholder(tf.uint8, [1, 33, 33, 1])
    predictions = model.predict(model.preprocess(tf.constant(images)))
    assert predictions['logits'].shape.as_list() == [1, 5, 5, NUM_CLASSES]
    assert predictions['aux_logits'].shape.as_list() == [1, 5, 5, NUM_CLASSES]
    losses = model.loss(predictions, labels)
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      ignored = sess.run(losses, {labels: np.full([1, 33, 33, 1], IGNORE, np.uint8)})
      real = sess.run(losses, {labels: labels_value})
  assert ignored == {'main_loss': 0.0, 'aux_loss': 0.0}
  assert real['main_loss'] > 0.0 and real['aux_loss'] > 0.0
  assert np.isfinite(real['main_loss']) and np.isfinite(real['aux_loss'])
