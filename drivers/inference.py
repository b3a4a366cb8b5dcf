"""Segments image files with a trained checkpoint and writes Cityscapes-style result images.

For every input image it writes, under the output directory (keeping the input's sub-directories):

    <name>_trainIds.png   8-bit train ids 0..18 (or <name>_labelIds.png: official label ids, with --label_ids,
                          the format the Cityscapes benchmark server takes)
    <name>_color.png      RGB, every pixel the official Cityscapes colour of its class
    <name>_overlay.png    the colours blended over the input (with --overlay)

Image sizes (see README, "Inference"): the network is built for a static shape and images are padded to it with
the mean colour at the bottom/right (exactly as the padded evaluation input), and predictions cropped back. The
shape is --pad_to_shape, or --input_shape rounded up to an exact-zoom size (1024x2048 -> 1025x2049); an image
larger than it gets a network of its own size, rounded up the same way. Without --input_shape every image runs
at its own rounded-up size. Networks of different shapes share one graph and one set of weights.

Inputs are read as 8-bit RGB (read_image): 16-bit PNGs scaled to 8 bits (value >> 8, as TensorFlow's decode_png
reads them for training), palette and grayscale images as their colours, alpha dropped; 32-bit integer and float
images are refused. An image that cannot be read (or segmented) is reported by name and skipped; the others still
run. Each result is written to a temporary file beside it and renamed, so a symbolic link at the destination is
replaced, never followed, and a sub-directory of --output_dir that is a link out of it is refused (by image).
"""
import collections
import glob
import io
import os
import time
import uuid

import numpy as np
from PIL import Image

from builders import model_builder
from drivers import inference_graph
from libs import checkpoint_utils
from libs import cityscapes_labels
from libs import summaries
from libs.compat import tf
from libs.config_errors import UserError

logger = tf.get_logger()

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
TRAIN_IDS_SUFFIX = '_trainIds.png'
LABEL_IDS_SUFFIX = '_labelIds.png'
COLOR_SUFFIX = '_color.png'
OVERLAY_SUFFIX = '_overlay.png'


class ImageError(Exception):
  """An input file that is not a readable image."""


class OutputPathError(Exception):
  """A result path that would be written outside the output directory (through a symbolic link)."""


def list_images(input_path, flag='--input_path'):
  """Finds the images to segment.

  Args:
    input_path: an image file (read whatever its extension), a directory (walked recursively for .png/.jpg/
      .jpeg) or a glob pattern (its .png/.jpg/.jpeg matches; `**` recurses).
    flag: the flag name, for error messages.

  Returns:
    list of (path, output name): the output name is the path relative to the directory (or the common
    directory of the glob's matches) without extension, so equal file names in different folders stay apart.

  Raises:
    ValueError: naming the flag and value when nothing is found.
  """
  def is_image(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)

  if os.path.isfile(input_path):
    paths, root = [input_path], os.path.dirname(input_path)
  elif os.path.isdir(input_path):
    root = input_path
    paths = [os.path.join(dirpath, name) for dirpath, _, names in os.walk(input_path) for name in names
             if is_image(name)]
  else:
    paths = [p for p in glob.glob(input_path, recursive=True) if os.path.isfile(p) and is_image(p)]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else None
  if not paths:
    raise UserError('%s = %r: no %s images found (an image file, a directory searched recursively, or a glob)'
                    % (flag, input_path, '/'.join(IMAGE_EXTENSIONS)))
  paths = sorted(paths)
  names = [os.path.splitext(os.path.relpath(os.path.abspath(p), os.path.abspath(root)))[0] for p in paths]
  counts = collections.Counter(names)
  # a.png and a.jpg side by side: keep the extension in the name rather than overwrite one with the other.
  names = [n + '_' + os.path.splitext(p)[1][1:] if counts[n] > 1 else n for n, p in zip(names, paths)]
  return list(zip(paths, names))


def _to_rgb(image, path):
  """uint8 [H, W, 3] of a decoded Pillow image, 16-bit samples scaled to 8 bits (value >> 8)."""
  if image.mode.startswith('I;16') or (image.mode == 'I' and image.format == 'PNG'):
    # 16-bit grayscale (Pillow's convert('RGB') would clip it to 255). The high byte, as Pillow reads 16-bit
    # RGB(A) and TensorFlow's decode_png reads any 16-bit PNG to uint8, so every path agrees.
    gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)
  if image.mode in ('I', 'F'):
    raise ImageError('%s: mode %s (%s samples) has no colour scale to read as RGB; convert it to an 8-bit (or '
                     '16-bit PNG) RGB or grayscale image' % (path, image.mode,
                                                           '32-bit integer' if image.mode == 'I' else 'float'))
  # Palette, grayscale, bilevel, CMYK, YCbCr: their colours. RGBA / LA: the alpha channel is dropped (the
  # network sees the stored colours), as TensorFlow's decode_png(channels=3) does.
  return np.asarray(image.convert('RGB'), dtype=np.uint8)


def read_image(path):
  """Reads an image file as 8-bit RGB.

  16-bit PNGs (grayscale, RGB, with or without alpha) are scaled to 8 bits (value >> 8, as TensorFlow's decode_png
  does); palette and grayscale images give their colours; alpha is dropped.

  Returns:
    uint8 [H, W, 3].

  Raises:
    ImageError: naming the file, for anything that does not decode as an image, and for 32-bit integer or float
      images (mode I or F: no colour scale).
  """
  try:
    with Image.open(path) as image:
      image.load()
      rgb = _to_rgb(image, path)
  except ImageError:
    raise
  # Pillow reports corrupt files with many exception types (OSError, SyntaxError, ValueError, ...).
  except Exception as e:  # pylint: disable=broad-except
    raise ImageError('%s: not a readable image (%s: %s)' % (path, type(e).__name__, e)) from None
  if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
    raise ImageError('%s: empty image of shape %s' % (path, rgb.shape))
  return rgb


def write_png(path, array):
  """Writes a PNG through a temporary file in its directory and a rename.

  Readers never see half a file, and a symbolic link at `path` is replaced by the file, never followed (so
  nothing outside the output directory is overwritten). The file gets the permissions of any new file (0666
  less the umask), not a temporary file's 0600.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  tmp = os.path.join(directory, '.%s.tmp%s' % (os.path.basename(path), uuid.uuid4().hex[:12]))
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(buffer.getvalue())
    os.replace(tmp, path)
  except BaseException:
    if os.path.lexists(tmp):
      os.remove(tmp)
    raise


def check_inside(output_dir, path):
  """Raises OutputPathError unless path's directory, symbolic links resolved, is inside output_dir."""
  root = os.path.realpath(output_dir)
  directory = os.path.dirname(os.path.abspath(path))
  real = os.path.realpath(directory)
  if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
    raise OutputPathError('%s leads out of --output_dir %s through a symbolic link (to %s); remove the link or '
                          'choose another --output_dir' % (directory, output_dir, real))


class Segmenter(object):
  """Runs a checkpoint on single images of any size (see the module docstring for the shapes used)."""

  def __init__(self, model_config, checkpoint_path, input_shape=None, pad_to_shape=None, session_config=None):
    """Checks the shapes; the graph is built at the first image.

    Args:
      model_config: model_pb2.Model.
      checkpoint_path: checkpoint prefix (checkpoint_utils.resolve_checkpoint).
      input_shape: (H, W, 3) the network is built for, or None (every image at its own size).
      pad_to_shape: (H, W) network shape, or None (input_shape rounded up to an exact-zoom size).
      session_config: tf.ConfigProto or None.

    Raises:
      ValueError: for shapes that do not fit together.
    """
    self._model_config = model_config
    self._checkpoint_path = checkpoint_path
    self._stride = model_builder.output_stride(model_config)
    self._session_config = session_config
    if input_shape is not None and (len(input_shape) != 3 or input_shape[2] != 3 or None in input_shape):
      raise UserError('--input_shape = %s: expected H,W,3 (one image, 3 channels; leave it empty for any size)'
                      % ','.join('-1' if d is None else str(d) for d in input_shape))
    if input_shape is None and pad_to_shape is None:
      self._base_shape = None
    else:
      image_size = tuple(input_shape[:2]) if input_shape else tuple(pad_to_shape)
      self._base_shape = inference_graph.resolve_network_shape(image_size, pad_to_shape, self._stride)
    self._graph = tf.Graph()
    self._networks = {}
    self._sess = None

  def network_shape_for(self, height, width):
    """The network shape an image of height x width runs at."""
    if self._base_shape is None:
      return tuple(inference_graph.exact_zoom_size(size, self._stride) for size in (height, width))
    return tuple(base if size <= base else inference_graph.exact_zoom_size(size, self._stride)
                 for size, base in zip((height, width), self._base_shape))

  def _network(self, shape):
    if shape in self._networks:
      return self._networks[shape]
    first = not self._networks
    with self._graph.as_default():
      model = inference_graph.build_inference_model(self._model_config)
      endpoints = inference_graph.build_inference_graph(
          model, [None, None, 3], shape, reuse=None if first else True,
          input_name='inputs_%dx%d' % shape, output_name='predictions_%dx%d' % shape)
      if first:
        self._sess = tf.Session(graph=self._graph, config=self._session_config)
        count = checkpoint_utils.restore_model_variables(self._sess, self._checkpoint_path)
        logger.info('Restored %d model variables from %s.', count, self._checkpoint_path)
    logger.info('Built the network for %dx%d inputs.', shape[0], shape[1])
    self._networks[shape] = endpoints
    return endpoints

  def segment(self, image):
    """Segments one image.

    Args:
      image: uint8 [H, W, 3] RGB.

    Returns:
      (int32 [H, W] train ids, seconds the network ran, (height, width) of the network).
    """
    shape = self.network_shape_for(*image.shape[:2])
    endpoints = self._network(shape)
    start = time.perf_counter()
    predictions = self._sess.run(endpoints.predictions, {endpoints.inputs: image})
    return predictions, time.perf_counter() - start, shape

  def close(self):
    if self._sess is not None:
      self._sess.close()
      self._sess = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def overlay(image, color, alpha=0.5):
  """Blends colours over an image: (1 - alpha) * image + alpha * color, uint8 [H, W, 3]."""
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


InferenceSummary = collections.namedtuple('InferenceSummary', ['written', 'failed', 'seconds'])
InferenceSummary.__doc__ = """written: list of (input path, [output paths]); failed: list of (input path,
message); seconds: network time of each written image."""


def run_inference(model_config, trained_checkpoint, input_path, output_dir, input_shape=None, pad_to_shape=None,
                  label_ids=False, write_overlay=False, overlay_alpha=0.5, session_config=None):
  """Segments every image of input_path into output_dir (see the module docstring).

  Args:
    model_config: model_pb2.Model.
    trained_checkpoint: checkpoint prefix or training directory (its latest checkpoint).
    input_path: image, directory or glob (list_images).
    output_dir: created if needed.
    input_shape: (H, W, 3) or None; pad_to_shape: (H, W) or None (see Segmenter).
    label_ids: write Cityscapes label ids instead of train ids (19-class models only).
    write_overlay: also write the colours blended over the input.
    overlay_alpha: weight of the colours in the overlay, in [0, 1].
    session_config: tf.ConfigProto or None.

  Returns:
    InferenceSummary.

  Raises:
    ValueError: for bad flags, no images, or a checkpoint that does not fit the config (nothing is written).
  """
  num_classes = model_builder.num_classes(model_config)
  if label_ids and num_classes != cityscapes_labels.NUM_TRAIN_CLASSES:
    raise UserError('--label_ids maps the 19 Cityscapes train ids to label ids, but the model has num_classes = '
                     '%d' % num_classes)
  if not 0.0 <= overlay_alpha <= 1.0:
    raise UserError('--overlay_alpha = %r: must be in [0, 1]' % (overlay_alpha,))
  checkpoint_path = checkpoint_utils.resolve_checkpoint(trained_checkpoint, '--trained_checkpoint')
  images = list_images(input_path)
  palette = summaries.class_palette(num_classes, model_builder.ignore_label(model_config))
  tf.gfile.MakeDirs(output_dir)
  written, failed, seconds = [], [], []
  logger.info('Segmenting %d images from %s into %s with %s.', len(images), input_path, output_dir,
              checkpoint_path)
  with Segmenter(model_config, checkpoint_path, input_shape, pad_to_shape, session_config) as segmenter:
    for index, (path, name) in enumerate(images):
      progress = '[%d/%d] %s' % (index + 1, len(images), path)
      base = os.path.join(output_dir, name)
      try:
        check_inside(output_dir, base)
        image = read_image(path)
        train_ids, elapsed, shape = segmenter.segment(image)
      except (ImageError, OutputPathError) as e:
        logger.error('%s: skipped: %s', progress, e)
        failed.append((path, str(e)))
        continue
      except tf.errors.OpError as e:  # e.g. out of memory for a huge image: the others may still fit
        logger.error('%s: skipped: segmentation failed: %s', progress, e.message)
        failed.append((path, e.message))
        continue
      train_ids = train_ids.astype(np.uint8)
      color = palette[train_ids]
      outputs = []
      if label_ids:
        outputs.append((base + LABEL_IDS_SUFFIX, cityscapes_labels.train_ids_to_label_ids(train_ids)))
      else:
        outputs.append((base + TRAIN_IDS_SUFFIX, train_ids))
      outputs.append((base + COLOR_SUFFIX, color))
      if write_overlay:
        outputs.append((base + OVERLAY_SUFFIX, overlay(image, color, overlay_alpha)))
      for out_path, array in outputs:
        write_png(out_path, array)
      written.append((path, [p for p, _ in outputs]))
      seconds.append(elapsed)
      logger.info('%s: %dx%d (network %dx%d) %.3f s -> %s', progress, image.shape[0], image.shape[1], shape[0],
                  shape[1], elapsed, outputs[0][0])
  return InferenceSummary(written, failed, seconds)


def summary_line(summary):
  """One line: images segmented, timing, and failures (named)."""
  total = len(summary.written) + len(summary.failed)
  line = 'Segmented %d of %d images' % (len(summary.written), total)
  if summary.seconds:
    line += ' (network time median %.3f s, total %.2f s)' % (np.median(summary.seconds), sum(summary.seconds))
  if summary.failed:
    line += '; %d FAILED: %s' % (len(summary.failed), ', '.join(path for path, _ in summary.failed))
  return line
