"""TensorBoard summaries of training, under fixed tags so runs and the evaluator line up:

    Losses/TotalLoss, Losses/MainLoss, Losses/AuxLoss, Losses/RegularizationLoss, LearningRate
    Losses/FirstBranchLoss, Losses/SecondBranchLoss   (ICNet's cascade label guidance at 1/16 and 1/8)
    Images/Input, Images/GroundTruth, Images/Prediction          (--image_summaries)
    TestImages/Input, TestImages/GroundTruth, TestImages/Prediction (--test_image_summaries)
"""
import numpy as np

from libs import cityscapes_labels
from libs.compat import tf
from libs.standard_fields import InputDataFields as fields

LOSS_TAGS = {
    'main_loss': 'Losses/MainLoss',
    'aux_loss': 'Losses/AuxLoss',
    'first_branch_loss': 'Losses/FirstBranchLoss',
    'second_branch_loss': 'Losses/SecondBranchLoss',
    'regularization_loss': 'Losses/RegularizationLoss',
}
MAX_IMAGES = 3


def class_palette(num_classes, ignore_label=255):
  """uint8 [256, 3] colours: Cityscapes' for 19 classes, a fixed pseudo-random palette otherwise; the ignore
  label is black."""
  if num_classes == cityscapes_labels.NUM_TRAIN_CLASSES:
    palette = np.array(cityscapes_labels.palette_with_ignore(), dtype=np.uint8)
  else:
    palette = np.random.RandomState(1234).randint(0, 256, size=(256, 3)).astype(np.uint8)
  palette[ignore_label] = 0
  return palette


def colorize(label_map, num_classes, ignore_label=255):
  """int [N, H, W] or [N, H, W, 1] class ids -> uint8 [N, H, W, 3] colours."""
  if label_map.shape.ndims == 4:
    label_map = tf.squeeze(label_map, axis=3)
  palette = tf.constant(class_palette(num_classes, ignore_label))
  return tf.gather(palette, tf.clip_by_value(tf.cast(label_map, tf.int32), 0, 255))


def _image_triplet(prefix, images, labels, predictions, num_classes, ignore_label):
  return [
      tf.summary.image(prefix + '/Input', tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8),
                       max_outputs=MAX_IMAGES),
      tf.summary.image(prefix + '/GroundTruth', colorize(labels, num_classes, ignore_label),
                       max_outputs=MAX_IMAGES),
      tf.summary.image(prefix + '/Prediction', colorize(predictions, num_classes, ignore_label),
                       max_outputs=MAX_IMAGES),
  ]


def training_summaries(total_loss, losses, learning_rate, batch, predictions, model, image_summaries,
                       test_model=None, loss_scale=None):
  """Builds the merged training summary op.

  Args:
    total_loss: scalar.
    losses: dict of scalars keyed like LOSS_TAGS.
    learning_rate: scalar.
    batch: the first clone's input dict (InputDataFields).
    predictions: the first clone's model.predict() output.
    model: the first clone's model object.
    image_summaries: add input / ground truth / prediction images of the training batch.
    test_model: None, or the model object in inference mode: add the same images for it (reusing the
      training weights) on the first image of the batch.
    loss_scale: None, or float16 training's loss scale (scalar): logged as LossScale.

  Returns:
    A merged summary op.
  """
  ops = [tf.summary.scalar('Losses/TotalLoss', total_loss), tf.summary.scalar('LearningRate', learning_rate)]
  if loss_scale is not None:
    ops.append(tf.summary.scalar('LossScale', loss_scale))
  ops += [tf.summary.scalar(LOSS_TAGS[name], value) for name, value in sorted(losses.items())
          if name in LOSS_TAGS]
  images, labels = batch[fields.image], batch[fields.labels_class]
  size = tf.shape(images)[1:3]
  # Summary ops are created outside name scopes: a name scope would prefix their tags.
  if image_summaries:
    with tf.name_scope('ImageSummaries'):
      prediction = model.postprocess(predictions, size)['predictions']
    ops += _image_triplet('Images', images, labels, prediction, model.num_classes, model.ignore_label)
  if test_model is not None:
    with tf.name_scope('TestImageSummaries'):
      first_image, first_label = images[:1], labels[:1]
      with tf.variable_scope(tf.get_variable_scope(), reuse=True):
        test_predictions = test_model.predict(test_model.preprocess(first_image), reuse=True)
      prediction = test_model.postprocess(test_predictions, size)['predictions']
    ops += _image_triplet('TestImages', first_image, first_label, prediction, model.num_classes,
                          model.ignore_label)
  return tf.summary.merge(ops)
