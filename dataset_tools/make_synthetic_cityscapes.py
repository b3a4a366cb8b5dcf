r"""Writes a small synthetic dataset in the Cityscapes layout, for tests, demos and smoke training.

The layout and file encodings follow the official Cityscapes download (https://www.cityscapes-dataset.com,
file formats as described in cityscapesScripts' README)::

    <output_dir>/leftImg8bit/<split>/<city>/<city>_000000_0000NN_leftImg8bit.png        8-bit RGB
    <output_dir>/gtFine/<split>/<city>/<city>_000000_0000NN_gtFine_labelIds.png         8-bit, label ids
    <output_dir>/gtFine/<split>/<city>/<city>_000000_0000NN_gtFine_labelTrainIds.png    8-bit, train ids
    <output_dir>/gtFine/<split>/<city>/<city>_000000_0000NN_gtFine_instanceIds.png      16-bit, id*1000+k

Each label map is a street-like scene made of a few large regions: sky on top, buildings, a road at the
bottom, a sidewalk strip, vegetation, and random cars, persons, poles, signs and others, plus a strip of
'ego vehicle' (ignored in training) at the very bottom. The image paints every pixel in the official colour
of its class plus noise, a per-image brightness shift and a faint texture, so the colour-to-class mapping is
learnable by a small network in a few dozen steps while still not being a plain lookup.

The fake cities ('synthcity' for train, 'synthtown' for val) are not Cityscapes cities, so synthetic frames
never collide with real ones. With `sample_dir` the real frames of a Cityscapes-layout sample are copied in
as well, each into its own split.

Usage (from the repository root)::

    python dataset_tools/make_synthetic_cityscapes.py --output_dir /tmp/synth_cityscapes \
        --num_train 20 --num_val 4 --sample_dir ../shared/data/cityscapes_sample
"""
import argparse
import os
import shutil
import sys

if __package__ in (None, ''):
  # Run as a script: make the repository root importable so `dataset_tools` resolves.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import numpy as np
from PIL import Image

from libs import cityscapes_labels
from libs import cli

CITIES = {'train': 'synthcity', 'val': 'synthtown'}
MIN_SIZE = 32  # below this the scene's regions (a few rows each) degenerate

_ID = {name: label.id for name, label in cityscapes_labels.NAME_TO_LABEL.items()}
_HAS_INSTANCES = np.zeros([256], dtype=bool)
_HAS_INSTANCES[[label.id for label in cityscapes_labels.LABELS if label.has_instances and label.id >= 0]] = True
_COLOR_BY_ID = np.zeros([256, 3], dtype=np.float32)
for _label in cityscapes_labels.LABELS:
  if _label.id >= 0:
    _COLOR_BY_ID[_label.id] = _label.color

# Objects placed at random: (class name, relative width range, relative height range, where).
# 'ground' objects stand on the road/sidewalk, 'air' ones hang in the building zone.
_OBJECTS = (
    ('car', (0.12, 0.25), (0.10, 0.18), 'ground'),
    ('truck', (0.18, 0.30), (0.18, 0.28), 'ground'),
    ('person', (0.03, 0.05), (0.15, 0.25), 'ground'),
    ('bicycle', (0.06, 0.09), (0.07, 0.10), 'ground'),
    ('pole', (0.01, 0.02), (0.35, 0.55), 'ground'),
    ('traffic sign', (0.04, 0.06), (0.05, 0.08), 'air'),
    ('traffic light', (0.02, 0.03), (0.06, 0.09), 'air'),
    ('fence', (0.15, 0.30), (0.06, 0.10), 'ground'),
)


def _scene_label_ids(rng, height, width):
  """Draws one scene.

  Returns:
    (label_ids, instance_ids): uint8 [H, W] Cityscapes label ids and uint16 [H, W] instance ids.
  """
  ids = np.full([height, width], _ID['building'], dtype=np.uint8)
  instances = np.zeros([height, width], dtype=np.uint16)
  rows = np.arange(height)[:, None]
  cols = np.arange(width)[None, :]

  # Sky: a band with a slightly tilted horizon.
  sky_left, sky_right = rng.uniform(0.15, 0.35, size=2) * height
  ids[rows < sky_left + (sky_right - sky_left) * cols / width] = _ID['sky']

  # Vegetation: one or two ellipses straddling the skyline.
  for _ in range(rng.integers(1, 3)):
    cy, cx = rng.uniform(0.25, 0.45) * height, rng.uniform(0, width)
    ry, rx = rng.uniform(0.10, 0.20) * height, rng.uniform(0.10, 0.25) * width
    ids[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1] = _ID['vegetation']

  # Road below the horizon line, with a sidewalk strip on one side and sometimes terrain on the other.
  road_top = int(rng.uniform(0.55, 0.70) * height)
  ids[road_top:] = _ID['road']
  sidewalk_width = int(rng.uniform(0.15, 0.30) * width)
  sidewalk = slice(0, sidewalk_width) if rng.random() < 0.5 else slice(width - sidewalk_width, width)
  ids[road_top:, sidewalk] = _ID['sidewalk']
  if rng.random() < 0.5:
    terrain_top = road_top - int(rng.uniform(0.04, 0.08) * height)
    ids[terrain_top:road_top, :] = _ID['terrain']

  # Objects, each numbered per class in instance ids as Cityscapes does (id * 1000 + k).
  next_instance = {}
  for _ in range(rng.integers(3, 7)):
    name, (w_lo, w_hi), (h_lo, h_hi), where = _OBJECTS[rng.integers(len(_OBJECTS))]
    obj_w = max(2, int(rng.uniform(w_lo, w_hi) * width))
    obj_h = max(2, int(rng.uniform(h_lo, h_hi) * height))
    left = int(rng.integers(0, max(1, width - obj_w)))
    if where == 'ground':
      bottom = int(rng.uniform(road_top + 0.05 * height, 0.92 * height))
    else:
      bottom = int(rng.uniform(0.30, 0.55) * height)
    top = max(0, bottom - obj_h)
    label_id = _ID[name]
    region = (slice(top, bottom), slice(left, left + obj_w))
    ids[region] = label_id
    if _HAS_INSTANCES[label_id]:
      k = next_instance.get(label_id, 0)
      next_instance[label_id] = k + 1
      instances[region] = label_id * 1000 + k

  # Ego vehicle hood at the bottom: void, so the train ids contain ignore pixels like real frames do.
  ids[height - max(1, int(0.04 * height)):] = _ID['ego vehicle']

  # Pixels not (or no longer, after being painted over) covered by an object instance carry their label id,
  # as in the official instanceIds files.
  no_instance = ~(_HAS_INSTANCES[ids] & (instances // 1000 == ids))
  instances[no_instance] = ids[no_instance]
  return ids, instances


def _render_image(rng, label_ids):
  """Paints class colours plus noise; returns uint8 [H, W, 3]."""
  height, width = label_ids.shape
  image = _COLOR_BY_ID[label_ids].copy()
  image += rng.uniform(-20, 20)  # per-image brightness, so colour alone is not an exact lookup
  image += 8.0 * np.sin(np.arange(width, dtype=np.float32) / rng.uniform(3, 9))[None, :, None]  # texture
  image += rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _save_png(array, path):
  # 2-D uint8 -> mode L, 2-D uint16 -> mode I;16, [H, W, 3] uint8 -> RGB: the Cityscapes encodings.
  Image.fromarray(array).save(path, format='PNG')


def _copy_sample(sample_dir, output_dir):
  """Copies the leftImg8bit/ and gtFine/ trees of `sample_dir`; returns {split: [frame names]}."""
  image_root = os.path.join(sample_dir, 'leftImg8bit')
  if not os.path.isdir(image_root):
    raise ValueError('%s: sample_dir has no leftImg8bit/ folder (expected the Cityscapes layout)' % sample_dir)
  frames = {}
  for top in ('leftImg8bit', 'gtFine'):
    root = os.path.join(sample_dir, top)
    for dirpath, _, filenames in os.walk(root):
      relative = os.path.relpath(dirpath, sample_dir)
      for filename in filenames:
        os.makedirs(os.path.join(output_dir, relative), exist_ok=True)
        # copyfile, not copy2: the shared sample is read-only and the copy must be editable.
        shutil.copyfile(os.path.join(dirpath, filename), os.path.join(output_dir, relative, filename))
        if top == 'leftImg8bit' and filename.endswith('_leftImg8bit.png'):
          split = os.path.relpath(dirpath, root).split(os.sep)[0]
          frames.setdefault(split, []).append(filename[:-len('_leftImg8bit.png')])
  return frames


def make_dataset(output_dir, num_train, num_val, height=128, width=256, seed=0, sample_dir=None):
  """Writes a synthetic Cityscapes-layout dataset.

  Args:
    output_dir: root to write ``leftImg8bit/`` and ``gtFine/`` into (created if missing).
    num_train: number of synthetic train frames (>= 0).
    num_val: number of synthetic val frames (>= 0).
    height: image height in pixels (>= 32).
    width: image width in pixels (>= 32).
    seed: seed of the random scenes; the same arguments give the same files.
    sample_dir: optional Cityscapes-layout folder whose real frames are copied in, keeping their split
      (they keep their own size, which may differ from `height` x `width`).

  Returns:
    dict split -> sorted list of frame names (``<city>_<seq>_<frame>``) written, synthetic and copied.

  Raises:
    ValueError: bad counts or sizes, or a `sample_dir` without ``leftImg8bit/``.
  """
  for name, value, minimum in (('num_train', num_train, 0), ('num_val', num_val, 0),
                               ('height', height, MIN_SIZE), ('width', width, MIN_SIZE)):
    if not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError('%s must be an integer >= %d, got %r' % (name, minimum, value))
  rng = np.random.default_rng(seed)
  frames = {}
  for split, count in (('train', num_train), ('val', num_val)):
    city = CITIES[split]
    image_dir = os.path.join(output_dir, 'leftImg8bit', split, city)
    label_dir = os.path.join(output_dir, 'gtFine', split, city)
    if count:
      os.makedirs(image_dir, exist_ok=True)
      os.makedirs(label_dir, exist_ok=True)
    for i in range(count):
      frame = '%s_000000_%06d' % (city, i)
      label_ids, instance_ids = _scene_label_ids(rng, height, width)
      _save_png(_render_image(rng, label_ids), os.path.join(image_dir, frame + '_leftImg8bit.png'))
      _save_png(label_ids, os.path.join(label_dir, frame + '_gtFine_labelIds.png'))
      _save_png(cityscapes_labels.label_ids_to_train_ids(label_ids),
                os.path.join(label_dir, frame + '_gtFine_labelTrainIds.png'))
      _save_png(instance_ids, os.path.join(label_dir, frame + '_gtFine_instanceIds.png'))
      frames.setdefault(split, []).append(frame)
  if sample_dir is not None:
    for split, names in _copy_sample(sample_dir, output_dir).items():
      frames.setdefault(split, []).extend(names)
  return {split: sorted(names) for split, names in frames.items()}


def parse_args(argv=None):
  """Parses the command line (`argv` without the program name; None: sys.argv)."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output_dir', required=True, help='Root of the dataset to write.')
  parser.add_argument('--num_train', type=int, default=20, help='Synthetic train frames (default 20).')
  parser.add_argument('--num_val', type=int, default=4, help='Synthetic val frames (default 4).')
  parser.add_argument('--height', type=int, default=128, help='Image height (default 128).')
  parser.add_argument('--width', type=int, default=256, help='Image width (default 256).')
  parser.add_argument('--seed', type=int, default=0, help='Random seed (default 0).')
  parser.add_argument('--sample_dir', default=None,
                      help='Optional Cityscapes-layout folder whose real frames are copied in too.')
  parser.add_argument('--debug', action='store_true', help='Show the traceback of an error (also: %s=1).'
                      % cli.DEBUG_ENV)
  return parser.parse_args(argv)


def main(argv=None):
  """Runs the command line; returns the exit status (1 with the problems on stderr)."""
  args = parse_args(argv)
  try:
    frames = make_dataset(args.output_dir, args.num_train, args.num_val, height=args.height,
                          width=args.width, seed=args.seed, sample_dir=args.sample_dir)
  except ValueError as e:
    if cli.debug_enabled(args.debug):
      raise
    print(cli.error_line(e), file=sys.stderr)
    return 1
  for split in sorted(frames):
    print('%s: %d frame(s) in %s' % (split, len(frames[split]), os.path.join(args.output_dir, 'leftImg8bit', split)))
  return 0


def console_main():
  """Entry point of the installed console command."""
  sys.exit(main())


if __name__ == '__main__':
  console_main()
