r"""Converts one split of Cityscapes (fine annotations) into TFRecord files of `tf.train.Example`s.

Input: the official Cityscapes layout (https://www.cityscapes-dataset.com, as unpacked from
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``)::

    <cityscapes_dir>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <cityscapes_dir>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
    <cityscapes_dir>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

``labelTrainIds`` files are not in the download; cityscapesScripts' ``createTrainIdLabelImgs.py`` makes them.
When one is absent, the train ids are derived from ``labelIds`` with the official table
(libs/cityscapes_labels.py), which gives the same result.

Images and labels are paired by frame name (``<city>_<seq>_<frame>``), never by position in a listing, so
stray files cannot shift the pairs. Files that are not images or fine label maps (``*_color.png``,
``*_instanceIds.png``, ``*_polygons.json``, anything else) are not used.

Output: ``<output_dir>/cityscapes_<split>.record``, or with ``--num_shards N`` (N > 1)
``<output_dir>/cityscapes_<split>-00000-of-0000N.record`` ... with frame i (in sorted frame-name order) in
shard i mod N. Each Example has the keys of `libs.standard_fields.TfExampleFields`: the original PNG bytes of
the image, its file name, format, height, width and channels (3), and a single-channel 8-bit PNG of train ids
(0..18, 255 = ignore). Every file is written under a hidden temporary name in the output directory and
renamed only once complete, so an interrupted run never leaves a truncated ``.record`` behind.

Problems (an image without a label or a label without an image, image/label size mismatch, an image that is not
8-bit RGB (16-bit PNGs included), label values that are no ids of the table, unreadable files) are all collected
and reported by file name; then the conversion fails and writes nothing. With ``--skip_bad`` the offending frames
are left out with a warning instead.

The test split: the official download ships placeholder test labels, which are used like any others. If the
test split has no label files at all, every test image is written with an all-ignore (255) label map, so
test records parse like train and val records; a test split with labels for only some frames is an error,
as for the other splits.

Usage (from the repository root)::

    python dataset_tools/create_cityscapes_tfrecord.py --cityscapes_dir /data/cityscapes \
        --split_type train --output_dir /data/records --num_shards 10
"""
import argparse
import collections
import io
import os
import re
import sys

if __package__ in (None, ''):
  # Run as a script: make the repository root importable so `libs` and `dataset_tools` resolve.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import numpy as np
from PIL import Image

from libs import cli

cli.import_tensorflow_quietly()  # before libs.compat loads TensorFlow

from libs import cityscapes_labels  # noqa: E402
from libs.compat import tf
from libs.standard_fields import TfExampleFields

SPLITS = ('train', 'val', 'test')
LABEL_TYPES = ('trainIds', 'labelIds')

IMAGE_SUFFIX = '_leftImg8bit.png'
TRAIN_IDS_SUFFIX = '_gtFine_labelTrainIds.png'
LABEL_IDS_SUFFIX = '_gtFine_labelIds.png'

# Source of a frame's label map.
LABEL_FROM_TRAIN_IDS = 'trainIds'
LABEL_FROM_LABEL_IDS = 'labelIds'
LABEL_NONE = 'none'  # test split without any label files: all-ignore label map.

Frame = collections.namedtuple('Frame', ['name', 'image_path', 'label_path', 'label_source'])
Frame.__doc__ = """One image and the file its train ids come from.

Fields:
  name: frame name, ``<city>_<seq>_<frame>``.
  image_path: path of the ``*_leftImg8bit.png``.
  label_path: path of the label PNG, or None when `label_source` is LABEL_NONE.
  label_source: LABEL_FROM_TRAIN_IDS, LABEL_FROM_LABEL_IDS or LABEL_NONE.
"""


class ConversionError(ValueError):
  """The input has problems; `problems` lists them, one sentence each, every one naming its file."""

  def __init__(self, problems, what='Cityscapes conversion'):
    self.problems = list(problems)
    super(ConversionError, self).__init__(
        '%s found %d problem(s):\n  %s\n(--skip_bad / skip_bad=True leaves these frames out instead)'
        % (what, len(self.problems), '\n  '.join(self.problems)))


def output_paths(output_dir, split, num_shards=1):
  """Returns the record file names the converter writes.

  Args:
    output_dir: directory of the records.
    split: 'train', 'val' or 'test'.
    num_shards: number of files; 1 gives a single unsharded file.

  Returns:
    list of `num_shards` paths.
  """
  if num_shards == 1:
    return [os.path.join(output_dir, 'cityscapes_%s.record' % split)]
  return [os.path.join(output_dir, 'cityscapes_%s-%05d-of-%05d.record' % (split, i, num_shards))
          for i in range(num_shards)]


def _index_by_frame(root, suffixes):
  """Walks `root` and files every name ending in one of `suffixes` under (suffix, frame name).

  Returns:
    (index, duplicates): index maps suffix -> {frame name: path}; duplicates lists problem sentences for
    frame names seen twice (e.g. the same frame in two city folders).
  """
  index = {suffix: {} for suffix in suffixes}
  duplicates = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()  # deterministic walk, hence deterministic problem order
    for filename in sorted(filenames):
      for suffix in suffixes:
        if filename.endswith(suffix) and len(filename) > len(suffix):
          frame = filename[:-len(suffix)]
          path = os.path.join(dirpath, filename)
          if frame in index[suffix]:
            duplicates.append('%s: frame %s also found at %s' % (path, frame, index[suffix][frame]))
          else:
            index[suffix][frame] = path
          break
  return index, duplicates


def find_frames(cityscapes_dir, split, label_type='trainIds'):
  """Pairs the images of a split with their label files by frame name.

  Args:
    cityscapes_dir: root of the Cityscapes layout (holds ``leftImg8bit/`` and ``gtFine/``).
    split: 'train', 'val' or 'test'.
    label_type: 'trainIds' to use ``*_gtFine_labelTrainIds.png`` where present and derive the train ids
      from ``*_gtFine_labelIds.png`` otherwise; 'labelIds' to always derive them from ``labelIds``.

  Returns:
    (frames, problems): frames is a list of `Frame`, sorted by frame name, for the images that have a
    usable label file (or all images, with LABEL_NONE, for a test split without labels); problems is a list
    of sentences, each naming a file, for images without labels and labels without images.

  Raises:
    ValueError: bad `split`/`label_type`, or the split has no image folder or no images at all.
  """
  if split not in SPLITS:
    raise ValueError('split must be one of %s, got %r' % (SPLITS, split))
  if label_type not in LABEL_TYPES:
    raise ValueError('label_type must be one of %s, got %r' % (LABEL_TYPES, label_type))
  image_root = os.path.join(cityscapes_dir, 'leftImg8bit', split)
  label_root = os.path.join(cityscapes_dir, 'gtFine', split)
  if not os.path.isdir(image_root):
    raise ValueError('%s: no such directory (expected the Cityscapes layout leftImg8bit/%s/<city>/'
                     '<frame>%s)' % (image_root, split, IMAGE_SUFFIX))

  images, problems = _index_by_frame(image_root, [IMAGE_SUFFIX])
  images = images[IMAGE_SUFFIX]
  if not images:
    raise ValueError('%s: no *%s files found' % (image_root, IMAGE_SUFFIX))
  labels, duplicate_labels = _index_by_frame(label_root, [TRAIN_IDS_SUFFIX, LABEL_IDS_SUFFIX])
  problems.extend(duplicate_labels)
  train_ids, label_ids = labels[TRAIN_IDS_SUFFIX], labels[LABEL_IDS_SUFFIX]

  no_labels_at_all = not train_ids and not label_ids
  if split == 'test' and no_labels_at_all:
    tf.logging.warning('%s: no label files for the test split; writing all-ignore (%d) label maps.',
                       label_root, cityscapes_labels.IGNORE_TRAIN_ID)
    return [Frame(name, images[name], None, LABEL_NONE) for name in sorted(images)], problems

  frames = []
  for name in sorted(images):
    if label_type == 'trainIds' and name in train_ids:
      frames.append(Frame(name, images[name], train_ids[name], LABEL_FROM_TRAIN_IDS))
    elif name in label_ids:
      frames.append(Frame(name, images[name], label_ids[name], LABEL_FROM_LABEL_IDS))
    else:
      wanted = (LABEL_IDS_SUFFIX if label_type == 'labelIds'
                else '%s or %s' % (TRAIN_IDS_SUFFIX, LABEL_IDS_SUFFIX))
      problems.append('%s: no label partner (looked for %s%s under %s)'
                      % (images[name], name, wanted, label_root))
  for name in sorted(set(train_ids) | set(label_ids)):
    if name not in images:
      path = train_ids.get(name) or label_ids.get(name)
      problems.append('%s: label without image (no %s%s under %s)' % (path, name, IMAGE_SUFFIX, image_root))
  return frames, problems


def _open_png(path, data):
  """Decodes PNG bytes completely (Image.open alone is lazy and would miss a truncated file)."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types for corrupt data)
    raise ValueError('%s: unreadable image (%s: %s)' % (path, type(e).__name__, e))
  if image.format != 'PNG':
    raise ValueError('%s: expected a PNG file, found %s' % (path, image.format))
  return image


def _png_bit_depth(data):
  """Bits per sample of PNG bytes (the IHDR chunk comes first), or None when the header is not a PNG's."""
  if len(data) < 26 or not data.startswith(b'\x89PNG\r\n\x1a\n') or data[12:16] != b'IHDR':
    return None
  return data[24]


def _read_bytes(path):
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise ValueError('%s: unreadable file (%s)' % (path, e))


def read_train_ids(frame, image_size=None):
  """Reads the train-id map of a frame.

  Args:
    frame: a `Frame`.
    image_size: (width, height) of the frame's image; needed for LABEL_NONE, checked against otherwise.

  Returns:
    uint8 array [H, W] with values in [0, 19) or 255.

  Raises:
    ValueError: naming the label file: unreadable, not single-channel 8-bit, size differs from the image,
      or values that are no train ids / label ids.
  """
  if frame.label_source == LABEL_NONE:
    width, height = image_size
    return np.full([height, width], cityscapes_labels.IGNORE_TRAIN_ID, dtype=np.uint8)
  path = frame.label_path
  label = _open_png(path, _read_bytes(path))
  if label.mode != 'L':
    raise ValueError('%s: label map must be a single-channel 8-bit PNG (mode L), found mode %s'
                     % (path, label.mode))
  if image_size is not None and label.size != tuple(image_size):
    raise ValueError('%s: label size %dx%d differs from image size %dx%d (%s)'
                     % (path, label.size[0], label.size[1], image_size[0], image_size[1], frame.image_path))
  values = np.asarray(label, dtype=np.uint8)
  if frame.label_source == LABEL_FROM_LABEL_IDS:
    unknown = cityscapes_labels.unknown_label_ids(values)
    if unknown:
      raise ValueError('%s: values that are no Cityscapes label ids: %s' % (path, unknown))
    return cityscapes_labels.label_ids_to_train_ids(values)
  bad = np.unique(values[(values >= cityscapes_labels.NUM_TRAIN_CLASSES)
                         & (values != cityscapes_labels.IGNORE_TRAIN_ID)])
  if bad.size:
    raise ValueError('%s: values that are no train ids (allowed 0..%d and %d): %s'
                     % (path, cityscapes_labels.NUM_TRAIN_CLASSES - 1, cityscapes_labels.IGNORE_TRAIN_ID,
                        bad.tolist()))
  return values


def encode_label_png(train_ids):
  """Encodes a train-id map as a single-channel 8-bit PNG.

  Args:
    train_ids: uint8 array [H, W].

  Returns:
    bytes of a mode 'L' PNG.
  """
  train_ids = np.asarray(train_ids)
  if train_ids.ndim != 2 or train_ids.dtype != np.uint8:
    raise ValueError('train ids must be a uint8 [H, W] array, got %s %s' % (train_ids.dtype, train_ids.shape))
  buffer = io.BytesIO()
  Image.fromarray(train_ids).save(buffer, format='PNG')  # a 2-D uint8 array becomes mode 'L'
  return buffer.getvalue()


def _bytes_feature(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def create_tf_example(frame):
  """Reads, checks and encodes one frame.

  Args:
    frame: a `Frame`.

  Returns:
    a `tf.train.Example` with the keys of `TfExampleFields`.

  Raises:
    ValueError: naming the file: unreadable image or label, non-RGB image, size mismatch, bad label values.
  """
  image_bytes = _read_bytes(frame.image_path)
  image = _open_png(frame.image_path, image_bytes)
  if image.mode != 'RGB':
    raise ValueError('%s: image must be 8-bit RGB, found mode %s' % (frame.image_path, image.mode))
  bit_depth = _png_bit_depth(image_bytes)
  if bit_depth != 8:
    # Pillow reads 16-bit RGB as mode RGB; the record would keep the 16-bit PNG and training would see its high
    # bytes, which for Cityscapes' leftImg16bit (HDR) frames is not the 8-bit frame.
    raise ValueError('%s: image must be 8-bit RGB, found a %s-bit PNG (Cityscapes leftImg8bit frames are 8-bit; '
                     'convert the image to 8 bits first)' % (frame.image_path, bit_depth))
  width, height = image.size
  train_ids = read_train_ids(frame, image_size=(width, height))
  feature = {
      TfExampleFields.image_encoded: _bytes_feature(image_bytes),
      TfExampleFields.filename: _bytes_feature(os.path.basename(frame.image_path).encode('utf-8')),
      TfExampleFields.format: _bytes_feature(b'png'),
      TfExampleFields.height: _int64_feature(height),
      TfExampleFields.width: _int64_feature(width),
      TfExampleFields.channels: _int64_feature(3),
      TfExampleFields.segmentation_class_encoded: _bytes_feature(encode_label_png(train_ids)),
      TfExampleFields.segmentation_class_format: _bytes_feature(b'png'),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _temporary_path(path):
  # Hidden, and not ending in .record, so no glob for finished records can pick it up.
  return os.path.join(os.path.dirname(path), '.%s.part-%d' % (os.path.basename(path), os.getpid()))


def convert(cityscapes_dir, split, output_dir, num_shards=1, label_type='trainIds', skip_bad=False,
            log_every=100):
  """Converts one split into TFRecord file(s).

  Args:
    cityscapes_dir: root of the Cityscapes layout.
    split: 'train', 'val' or 'test'.
    output_dir: directory for the records (created if missing).
    num_shards: number of output files (>= 1).
    label_type: 'trainIds' or 'labelIds', see `find_frames`.
    skip_bad: leave out frames with problems (logged as warnings) instead of failing.
    log_every: log progress every this many frames (and after the last).

  Returns:
    (paths, num_written): the record files written and the number of Examples in them.

  Raises:
    ConversionError: (a ValueError) listing every problem by file name, when there are problems and
      `skip_bad` is False, or when no frame is left to write. No record file is written then.
    ValueError: bad arguments or no images in the split.
  """
  if not isinstance(num_shards, int) or num_shards < 1:
    raise ValueError('num_shards must be an integer >= 1, got %r' % (num_shards,))
  if log_every < 1:
    raise ValueError('log_every must be >= 1, got %r' % (log_every,))
  frames, problems = find_frames(cityscapes_dir, split, label_type)
  for problem in problems:
    tf.logging.warning(problem)
  tf.logging.info('%s: %d frame(s) of split %s to convert into %d file(s).',
                  cityscapes_dir, len(frames), split, num_shards)

  os.makedirs(output_dir, exist_ok=True)
  paths = output_paths(output_dir, split, num_shards)
  temporary_paths = [_temporary_path(p) for p in paths]
  writers = []
  num_written = 0
  complete = False
  try:
    try:
      writers = [tf.io.TFRecordWriter(p) for p in temporary_paths]
      for i, frame in enumerate(frames):
        try:
          example = create_tf_example(frame)
        except ValueError as e:
          problems.append(str(e))
          tf.logging.warning(str(e))
        else:
          # Round robin over written frames: every shard mixes cities, shard sizes differ by at most 1.
          writers[num_written % num_shards].write(example.SerializeToString())
          num_written += 1
        if (i + 1) % log_every == 0 or i + 1 == len(frames):
          tf.logging.info('Processed %d/%d frames (%d written).', i + 1, len(frames), num_written)
    finally:
      for writer in writers:
        writer.close()
    if problems and not skip_bad:
      raise ConversionError(problems)
    if not num_written:
      raise ConversionError(problems + ['%s: no frame of split %s could be converted' % (cityscapes_dir, split)])
    for temporary, final in zip(temporary_paths, paths):
      os.replace(temporary, final)
    complete = True
  finally:
    if not complete:  # failed or interrupted: leave no partial output behind
      for temporary in temporary_paths:
        if os.path.exists(temporary):
          os.remove(temporary)

  if problems:
    tf.logging.warning('Skipped %d problem(s) (--skip_bad).', len(problems))
  _warn_about_stale_records(output_dir, split, paths)
  tf.logging.info('Wrote %d frame(s) of split %s to %s.', num_written, split, ', '.join(paths))
  return paths, num_written


def _warn_about_stale_records(output_dir, split, paths):
  # Records of an earlier run with another --num_shards would be read along with the new ones by a glob.
  pattern = re.compile(r'^cityscapes_%s(-\d{5}-of-\d{5})?\.record$' % re.escape(split))
  written = set(os.path.basename(p) for p in paths)
  stale = sorted(f for f in os.listdir(output_dir) if pattern.match(f) and f not in written)
  if stale:
    tf.logging.warning('%s also holds records of split %s from an earlier run: %s', output_dir, split,
                       ', '.join(stale))


def parse_args(argv=None):
  """Parses the command line (`argv` without the program name; None: sys.argv)."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cityscapes_dir', required=True,
                      help='Cityscapes root holding leftImg8bit/ and gtFine/.')
  parser.add_argument('--split_type', required=True, choices=SPLITS, help='Split to convert.')
  parser.add_argument('--output_dir', required=True, help='Directory for the .record file(s).')
  parser.add_argument('--num_shards', type=int, default=1, help='Number of output files (default 1).')
  parser.add_argument('--label_type', default='trainIds', choices=LABEL_TYPES,
                      help='trainIds: use *_gtFine_labelTrainIds.png, deriving from *_gtFine_labelIds.png '
                      'where absent (default); labelIds: always derive from *_gtFine_labelIds.png.')
  parser.add_argument('--skip_bad', action='store_true',
                      help='Leave out frames with problems (with a warning) instead of failing.')
  parser.add_argument('--log_every', type=int, default=100, help='Log progress every N frames.')
  parser.add_argument('--debug', action='store_true', help='Show the traceback of an error (also: %s=1).'
                      % cli.DEBUG_ENV)
  args = parser.parse_args(argv)
  if args.num_shards < 1:
    parser.error('--num_shards must be >= 1, got %d' % args.num_shards)
  if args.log_every < 1:
    parser.error('--log_every must be >= 1, got %d' % args.log_every)
  return args


def main(argv=None):
  """Runs the command line; returns the exit status (1 with the problems on stderr)."""
  args = parse_args(argv)
  try:
    convert(args.cityscapes_dir, args.split_type, args.output_dir, num_shards=args.num_shards,
            label_type=args.label_type, skip_bad=args.skip_bad, log_every=args.log_every)
  except ValueError as e:
    if cli.debug_enabled(args.debug):
      raise
    print(cli.error_line(e), file=sys.stderr)
    return 1
  return 0


def console_main():
  """Entry point of the installed console command."""
  sys.exit(main())


if __name__ == '__main__':
  console_main()
