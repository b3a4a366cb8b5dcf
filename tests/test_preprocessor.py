"""Tests of libs/preprocessor.py: geometry shared by image and label, padding values (zero in the model's input),
label values kept."""
import numpy as np
import pytest

from builders import model_builder
from libs import image_ops
from libs import preprocessor
from libs.compat import tf
from tests import testing_utils
from tests.conftest import tiny_model_config

HEIGHT, WIDTH = 10, 12
IGNORE = 255


def _position_example(height=HEIGHT, width=WIDTH):
  """An example whose pixels name their position: label = row * width + col, image = (row, col, label).

  Any crop, flip or pad of both can then be checked for alignment pixel by pixel.
  """
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  position = rows * width + cols
  assert position.max() < IGNORE
  image = np.stack([rows, cols, position], axis=2).astype(np.float32)
  label = position.astype(np.uint8)[:, :, np.newaxis]
  return image, label


def _run(fn, image, label, runs=1):
  """Builds fn(image, label) in a fresh graph on placeholders of unknown size; returns the static shapes
  and `runs` evaluations."""
  with tf.Graph().as_default():
    image_in = tf.placeholder(tf.float32, [None, None, 3])
    label_in = tf.placeholder(tf.uint8, [None, None, 1])
    image_out, label_out = fn(image_in, label_in)
    shapes = (image_out.shape.as_list(), label_out.shape.as_list())
    assert image_out.dtype == tf.float32
    assert label_out.dtype == tf.uint8
    with tf.Session(config=testing_utils.session_config()) as sess:
      results = [sess.run([image_out, label_out], {image_in: image, label_in: label})
                 for _ in range(runs)]
  return shapes, results


def _assert_aligned(image, label, ignore=IGNORE):
  """Every non-padding label pixel equals the position encoded in the image pixel."""
  real = label[:, :, 0] != ignore
  np.testing.assert_array_equal(image[:, :, 2][real], label[:, :, 0][real].astype(np.float32))


def test_padding_is_zero_in_the_model_input_which_is_the_image_minus_the_imagenet_mean():
  # What MEAN_RGB is for: the model subtracts the ImageNet RGB mean the TF-Slim ResNet checkpoints were trained
  # with, and every padding is made of it, so padded pixels are exactly zero in the network's input.
  image, label = _position_example()
  with tf.Graph().as_default():
    model = model_builder.build(tiny_model_config(), is_training=False)
    padded, _ = preprocessor.pad_to_size(tf.constant(image), tf.constant(label), HEIGHT + 3, WIDTH + 2, IGNORE)
    network_input = model.preprocess(padded[tf.newaxis])
    with tf.Session(config=testing_utils.session_config()) as sess:
      value = sess.run(network_input)[0]
  assert not value[HEIGHT:].any() and not value[:, WIDTH:].any()
  np.testing.assert_allclose(value[:HEIGHT, :WIDTH], image - np.array([123.68, 116.779, 103.939], np.float32),
                             rtol=0, atol=1e-5)


def test_random_image_scale_fixed_factor_rounds_size_and_keeps_label_values():
  image, label = _position_example()
  _, [(out_image, out_label)] = _run(
      lambda i, l: preprocessor.random_image_scale(i, l, 1.55, 1.55), image, label)
  expected = (round(HEIGHT * 1.55), round(WIDTH * 1.55))
  assert out_image.shape == expected + (3,)
  assert out_label.shape == expected + (1,)
  # Nearest neighbour: no value is invented between two classes.
  assert set(np.unique(out_label)) <= set(np.unique(label))


def test_random_image_scale_random_factor_same_for_image_and_label():
  image, label = _position_example()
  _, results = _run(lambda i, l: preprocessor.random_image_scale(i, l, 0.5, 2.0), image, label, runs=8)
  sizes = set()
  for out_image, out_label in results:
    assert out_image.shape[:2] == out_label.shape[:2]
    assert 5 <= out_image.shape[0] <= 20 and 6 <= out_image.shape[1] <= 24
    assert set(np.unique(out_label)) <= set(np.unique(label))
    assert out_image.min() >= 0.0 and out_image.max() <= 255.0
    sizes.add(out_image.shape[:2])
  assert len(sizes) > 1


def test_resize_image_static_shape_and_nearest_label():
  image, label = _position_example()
  shapes, [(out_image, out_label)] = _run(
      lambda i, l: preprocessor.resize_image(i, l, 7, 17), image, label)
  assert shapes == ([7, 17, 3], [7, 17, 1])
  assert out_image.shape == (7, 17, 3) and out_label.shape == (7, 17, 1)
  assert set(np.unique(out_label)) <= set(np.unique(label))


def test_pad_to_size_pads_bottom_right_with_mean_and_ignore():
  image, label = _position_example()
  _, [(out_image, out_label)] = _run(
      lambda i, l: preprocessor.pad_to_size(i, l, HEIGHT + 3, WIDTH + 2, IGNORE), image, label)
  assert out_image.shape == (HEIGHT + 3, WIDTH + 2, 3)
  np.testing.assert_array_equal(out_image[:HEIGHT, :WIDTH], image)
  np.testing.assert_array_equal(out_label[:HEIGHT, :WIDTH], label)
  mean = np.array(image_ops.MEAN_RGB, np.float32)
  np.testing.assert_array_equal(out_image[HEIGHT:], np.broadcast_to(mean, (3, WIDTH + 2, 3)))
  np.testing.assert_array_equal(out_image[:, WIDTH:], np.broadcast_to(mean, (HEIGHT + 3, 2, 3)))
  assert (out_label[HEIGHT:] == IGNORE).all() and (out_label[:, WIDTH:] == IGNORE).all()


def test_pad_to_size_is_noop_when_big_enough():
  image, label = _position_example()
  _, [(out_image, out_label)] = _run(
      lambda i, l: preprocessor.pad_to_size(i, l, HEIGHT - 4, WIDTH, IGNORE), image, label)
  np.testing.assert_array_equal(out_image, image)
  np.testing.assert_array_equal(out_label, label)


def test_pad_to_size_static_shape():
  with tf.Graph().as_default():
    image, label = preprocessor.pad_to_size(tf.zeros([4, 9, 3]), tf.zeros([4, 9, 1], tf.uint8), 6, 5,
                                            IGNORE)
    assert image.shape.as_list() == [6, 9, 3]
    assert label.shape.as_list() == [6, 9, 1]


def test_random_image_crop_is_aligned_static_and_random():
  image, label = _position_example()
  shapes, results = _run(
      lambda i, l: preprocessor.random_image_crop(i, l, 4, 5, IGNORE), image, label, runs=20)
  assert shapes == ([4, 5, 3], [4, 5, 1])
  corners = set()
  for out_image, out_label in results:
    assert out_image.shape == (4, 5, 3) and out_label.shape == (4, 5, 1)
    assert (out_label != IGNORE).all()
    _assert_aligned(out_image, out_label)
    # A crop is a contiguous window: positions increase by 1 along a row and by WIDTH down a column.
    position = out_label[:, :, 0].astype(np.int64)
    top, left = divmod(position[0, 0], WIDTH)
    np.testing.assert_array_equal(position, _position_example()[1][top:top + 4, left:left + 5, 0])
    corners.add((top, left))
  assert len(corners) > 1
  assert all(0 <= top <= HEIGHT - 4 and 0 <= left <= WIDTH - 5 for top, left in corners)


def test_random_image_crop_pads_small_example():
  image, label = _position_example(3, 4)
  shapes, results = _run(
      lambda i, l: preprocessor.random_image_crop(i, l, 6, 7, IGNORE), image, label, runs=3)
  assert shapes == ([6, 7, 3], [6, 7, 1])
  mean = np.array(image_ops.MEAN_RGB, np.float32)
  for out_image, out_label in results:
    # Smaller on both axes: the only window is the whole padded example.
    np.testing.assert_array_equal(out_label[:3, :4], label)
    np.testing.assert_array_equal(out_image[:3, :4], image)
    assert (out_label[3:] == IGNORE).all() and (out_label[:, 4:] == IGNORE).all()
    np.testing.assert_array_equal(out_image[3:], np.broadcast_to(mean, (3, 7, 3)))
    np.testing.assert_array_equal(out_image[:, 4:], np.broadcast_to(mean, (6, 3, 3)))


def test_random_image_crop_pads_one_axis_and_crops_the_other():
  image, label = _position_example(3, WIDTH)
  _, results = _run(
      lambda i, l: preprocessor.random_image_crop(i, l, 5, 4, IGNORE), image, label, runs=10)
  for out_image, out_label in results:
    assert (out_label[3:] == IGNORE).all()
    assert (out_label[:3] != IGNORE).all()
    _assert_aligned(out_image, out_label)


@pytest.mark.parametrize('probability,expect_flip', [(1.0, True), (0.0, False)])
def test_random_horizontal_flip_certain(probability, expect_flip):
  image, label = _position_example()
  _, [(out_image, out_label)] = _run(
      lambda i, l: preprocessor.random_horizontal_flip(i, l, probability), image, label)
  expected_image = image[:, ::-1] if expect_flip else image
  expected_label = label[:, ::-1] if expect_flip else label
  np.testing.assert_array_equal(out_image, expected_image)
  np.testing.assert_array_equal(out_label, expected_label)


def test_random_horizontal_flip_flips_image_and_label_together():
  image, label = _position_example()
  _, results = _run(lambda i, l: preprocessor.random_horizontal_flip(i, l, 0.5, seed=3), image, label,
                    runs=20)
  flipped = []
  for out_image, out_label in results:
    _assert_aligned(out_image, out_label)
    flipped.append(bool(out_label[0, 0, 0] != label[0, 0, 0]))
    if flipped[-1]:
      np.testing.assert_array_equal(out_label, label[:, ::-1])
    else:
      np.testing.assert_array_equal(out_label, label)
  assert any(flipped) and not all(flipped)


def test_central_crop_or_pad_crops_the_centre():
  image, label = _position_example()
  shapes, [(out_image, out_label)] = _run(
      lambda i, l: preprocessor.central_crop_or_pad(i, l, 4, 6, IGNORE), image, label)
  assert shapes == ([4, 6, 3], [4, 6, 1])
  np.testing.assert_array_equal(out_label, label[3:7, 3:9])
  np.testing.assert_array_equal(out_image, image[3:7, 3:9])


def test_central_crop_or_pad_pads_where_smaller():
  image, label = _position_example()
  _, [(out_image, out_label)] = _run(
      lambda i, l: preprocessor.central_crop_or_pad(i, l, HEIGHT + 2, 6, IGNORE), image, label)
  assert out_label.shape == (HEIGHT + 2, 6, 1)
  np.testing.assert_array_equal(out_label[:HEIGHT], label[:, 3:9])
  assert (out_label[HEIGHT:] == IGNORE).all()
  np.testing.assert_array_equal(
      out_image[HEIGHT:], np.broadcast_to(np.array(image_ops.MEAN_RGB, np.float32), (2, 6, 3)))
