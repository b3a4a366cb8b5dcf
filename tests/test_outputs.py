"""Outputs that never clobber and inputs that are read right: inference result images and export files are
written through a temporary file and a rename (a symbolic link at the destination is replaced, never followed),
an export directory holds exactly one export (what an earlier export left and this one does not write is
removed, other files are kept), image files of any bit depth and colour mode are read as the network expects
(16-bit scaled to 8 bits) or refused by name, the TFRecord converter refuses 16-bit frames by name, and the
demo prints a TensorBoard command that TensorBoard 2.21 understands.

The inference and export tests use a checkpoint of the tiny model with random weights (nothing is trained)."""
import io
import os
import re
import shlex

import numpy as np
import pytest
from PIL import Image

from builders import model_builder
from dataset_tools import create_cityscapes_tfrecord as converter
from dataset_tools import make_synthetic_cityscapes
from drivers import exporter
from drivers import inference as inference_lib
from libs.compat import slim
from libs.compat import tf
from tests.conftest import fast_session_config
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_model_config


@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory):
  """(model config, checkpoint prefix) of the tiny model with random weights, every training variable saved."""
  model_config = tiny_model_config()
  prefix = str(tmp_path_factory.mktemp('random_checkpoint') / 'model.ckpt-0')
  with tf.Graph().as_default():
    model = model_builder.build(model_config, is_training=True)
    model.predict(model.preprocess(tf.placeholder(tf.float32, [1, 33, 33, 3])))
    with tf.Session(config=fast_session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      tf.train.Saver(slim.get_model_variables()).save(sess, prefix, write_meta_graph=False)
  return model_config, prefix


def _image(height=33, width=41, seed=0):
  return np.random.RandomState(seed).randint(0, 256, [height, width, 3]).astype(np.uint8)


def _encode_png(array):
  """PNG bytes of a uint8 or uint16 array [H, W, C] (TensorFlow writes 16-bit PNGs; Pillow only some modes)."""
  with tf.Graph().as_default(), tf.Session(config=fast_session_config()) as sess:
    return sess.run(tf.io.encode_png(tf.constant(array)))


def _tree(root):
  """{relative path: bytes, or 'link -> target', or 'dir'} of everything under root."""
  entries = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      key = os.path.relpath(path, root)
      if os.path.islink(path):
        entries[key] = 'link -> ' + os.readlink(path)
      elif os.path.isdir(path):
        entries[key] = 'dir'
      else:
        with open(path, 'rb') as f:
          entries[key] = f.read()
  return entries


# Item 7: result images never written through a symbolic link.


def test_inference_replaces_a_symlink_at_the_destination_and_never_follows_it(random_checkpoint, tmp_path):
  model_config, checkpoint = random_checkpoint
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  Image.fromarray(_image()).save(str(inputs / 'frame.png'))
  outside = tmp_path / 'outside'
  outside.mkdir()
  (outside / 'precious.png').write_bytes(b'not to be overwritten')
  output = tmp_path / 'output'
  output.mkdir()
  os.symlink(str(outside / 'precious.png'), str(output / 'frame_trainIds.png'))
  os.symlink(str(outside / 'created_outside.png'), str(output / 'frame_color.png'))  # dangling
  before = _tree(str(outside))
  summary = inference_lib.run_inference(model_config, checkpoint, str(inputs), str(output),
                                        session_config=fast_session_config())
  assert not summary.failed and len(summary.written) == 1
  assert _tree(str(outside)) == before  # nothing outside --output_dir changed or created
  for name in ('frame_trainIds.png', 'frame_color.png'):
    path = str(output / name)
    assert not os.path.islink(path) and os.path.isfile(path), name
    with Image.open(path) as image:
      assert image.size == (41, 33), name
  assert sorted(os.listdir(str(output))) == ['frame_color.png', 'frame_trainIds.png']  # no temporary files left
  # Written with the process's umask like any file (not a temporary file's private 0600).
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(str(output / 'frame_color.png')).st_mode & 0o777 == 0o666 & ~umask


def test_inference_never_writes_through_a_symlinked_sub_directory(random_checkpoint, tmp_path):
  model_config, checkpoint = random_checkpoint
  inputs = tmp_path / 'inputs'
  (inputs / 'city').mkdir(parents=True)
  (inputs / 'other').mkdir()
  Image.fromarray(_image()).save(str(inputs / 'city' / 'a.png'))
  Image.fromarray(_image(seed=1)).save(str(inputs / 'other' / 'b.png'))
  outside = tmp_path / 'outside'
  outside.mkdir()
  output = tmp_path / 'output'
  output.mkdir()
  os.symlink(str(outside), str(output / 'city'))
  summary = inference_lib.run_inference(model_config, checkpoint, str(inputs), str(output),
                                        session_config=fast_session_config())
  assert os.listdir(str(outside)) == []
  assert [path for path, _ in summary.failed] == [str(inputs / 'city' / 'a.png')]
  assert 'symbolic link' in summary.failed[0][1] and str(output / 'city') in summary.failed[0][1]
  assert [path for path, _ in summary.written] == [str(inputs / 'other' / 'b.png')]
  assert os.path.isfile(str(output / 'other' / 'b_trainIds.png'))


# Item 7: the export directory.


def _export(model_config, output_dir, checkpoint=None, **kwargs):
  return exporter.export(model_config, str(output_dir), trained_checkpoint=checkpoint, input_shape=(1, 33, 41, 3),
                         num_timing_runs=0, session_config=fast_session_config(), **kwargs)


SEED_FILES = ['checkpoint', 'model.ckpt.data-00000-of-00001', 'model.ckpt.index', 'name_map.json']


def test_export_replaces_symlinks_and_never_follows_them(random_checkpoint, tmp_path):
  model_config, checkpoint = random_checkpoint
  outside = tmp_path / 'outside'
  (outside / 'a_saved_model').mkdir(parents=True)
  (outside / 'a_saved_model' / 'saved_model.pb').write_bytes(b'someone else\'s model')
  output = tmp_path / 'export'
  output.mkdir()
  for name in ['frozen_inference_graph.pb', 'model_figures.json'] + SEED_FILES:
    (outside / name).write_bytes(b'precious ' + name.encode())
    os.symlink(str(outside / name), str(output / name))
  os.symlink(str(outside / 'a_saved_model'), str(output / 'saved_model'))
  before = _tree(str(outside))
  result = _export(model_config, output, checkpoint, export_checkpoint=True)
  assert _tree(str(outside)) == before
  assert result.saved_model == str(output / 'saved_model')
  assert not os.path.islink(result.saved_model) and os.path.isfile(os.path.join(result.saved_model,
                                                                                 'saved_model.pb'))
  for name in ['frozen_inference_graph.pb', 'model_figures.json'] + SEED_FILES:
    assert not os.path.islink(str(output / name)) and os.path.isfile(str(output / name)), name
  assert sorted(os.listdir(str(output))) == sorted(
      ['frozen_inference_graph.pb', 'model_figures.json', 'saved_model'] + SEED_FILES)


def test_export_dir_holds_exactly_one_export(random_checkpoint, tmp_path, log_lines):
  model_config, checkpoint = random_checkpoint
  output = tmp_path / 'export'
  _export(model_config, output, checkpoint, export_checkpoint=True)
  assert sorted(os.listdir(str(output))) == sorted(
      ['frozen_inference_graph.pb', 'model_figures.json', 'saved_model'] + SEED_FILES)
  # What a killed export leaves behind, and files of the user's own.
  (output / '.saved_model.tmpk1ll3d').mkdir()
  (output / '.saved_model.tmpk1ll3d' / 'model').mkdir()
  (output / '.frozen_inference_graph.pb.tmpab12cd').write_bytes(b'half a graph')
  (output / 'notes.txt').write_text('mine')
  (output / 'mine').mkdir()
  (output / 'mine' / 'name_map.json').write_text('mine too')

  # Without --export_checkpoint: the earlier seed checkpoint and name map go, the user's files stay.
  _export(model_config, output, checkpoint)
  assert sorted(os.listdir(str(output))) == [
      'frozen_inference_graph.pb', 'mine', 'model_figures.json', 'notes.txt', 'saved_model']
  assert (output / 'mine' / 'name_map.json').read_text() == 'mine too'
  removed = [line for line in log_lines if 'Removed' in line]
  assert len(removed) == 1, log_lines
  for name in SEED_FILES + ['.saved_model.tmpk1ll3d', '.frozen_inference_graph.pb.tmpab12cd']:
    assert name in removed[0], removed
  assert 'notes.txt' not in removed[0]

  # --checkpoint_only: the graphs go.
  _export(model_config, output, checkpoint, checkpoint_only=True)
  assert sorted(os.listdir(str(output))) == sorted(['mine', 'model_figures.json', 'notes.txt'] + SEED_FILES)
  # Figures only (no checkpoint): the seed checkpoint goes.
  _export(model_config, output)
  assert sorted(os.listdir(str(output))) == ['mine', 'model_figures.json', 'notes.txt']


def test_export_keeps_a_checkpoint_state_file_it_did_not_write(tmp_path):
  """An export into a training directory: its `checkpoint` state file (naming model.ckpt-N) is not the
  exporter's and stays."""
  output = tmp_path / 'train'
  output.mkdir()
  state = 'model_checkpoint_path: "model.ckpt-5"\nall_model_checkpoint_paths: "model.ckpt-5"\n'
  (output / 'checkpoint').write_text(state)
  _export(tiny_model_config(), output)
  assert (output / 'checkpoint').read_text() == state


# Item 8: images of any bit depth and colour mode.


def _read_png_bytes(tmp_path, data, name='image.png'):
  path = tmp_path / name
  path.write_bytes(data)
  return inference_lib.read_image(str(path))


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
  rng = np.random.RandomState(0)
  gray16 = rng.randint(0, 65536, [5, 7, 1]).astype(np.uint16)
  # The case: Pillow reads 16-bit grayscale as mode I;16 and convert('RGB') clips it to 255.
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, _encode_png(gray16)),
                                np.repeat((gray16 >> 8).astype(np.uint8), 3, axis=2))
  rgb16 = rng.randint(0, 65536, [5, 7, 3]).astype(np.uint16)
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, _encode_png(rgb16)), (rgb16 >> 8).astype(np.uint8))
  rgba16 = rng.randint(0, 65536, [5, 7, 4]).astype(np.uint16)
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, _encode_png(rgba16)),
                                (rgba16[..., :3] >> 8).astype(np.uint8))
  gray_alpha16 = rng.randint(0, 65536, [5, 7, 2]).astype(np.uint16)
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, _encode_png(gray_alpha16)),
                                np.repeat((gray_alpha16[..., :1] >> 8).astype(np.uint8), 3, axis=2))


def test_8_bit_modes_palette_gray_rgba_and_bilevel(tmp_path):
  rgb = _image(5, 7)
  rgba = np.concatenate([rgb, np.full([5, 7, 1], 7, np.uint8)], axis=2)  # nearly transparent: alpha dropped
  buffer = io.BytesIO()
  Image.fromarray(rgba, 'RGBA').save(buffer, format='PNG')
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, buffer.getvalue()), rgb)
  gray = rgb[..., 0]
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, _encode_png(gray[..., None])),
                                np.repeat(gray[..., None], 3, axis=2))
  palette_image = Image.fromarray(rgb).quantize(colors=16)
  buffer = io.BytesIO()
  palette_image.save(buffer, format='PNG', transparency=0)
  palette = np.array(palette_image.getpalette()[:16 * 3], np.uint8).reshape(16, 3)
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, buffer.getvalue()),
                                palette[np.asarray(palette_image)])
  bilevel = rgb[..., 0] > 127
  buffer = io.BytesIO()
  Image.fromarray(bilevel).save(buffer, format='PNG')
  np.testing.assert_array_equal(_read_png_bytes(tmp_path, buffer.getvalue()),
                                np.repeat(np.where(bilevel, 255, 0).astype(np.uint8)[..., None], 3, axis=2))


def test_32_bit_and_float_images_are_refused_by_name(tmp_path):
  path = str(tmp_path / 'depth.tiff')
  Image.fromarray(np.linspace(0, 1000, 35, dtype=np.float32).reshape(5, 7), 'F').save(path)
  with pytest.raises(inference_lib.ImageError, match=re.escape(path) + r': .*mode F'):
    inference_lib.read_image(path)
  path = str(tmp_path / 'counts.tiff')
  Image.fromarray(np.arange(35, dtype=np.int32).reshape(5, 7) * 100000, 'I').save(path)
  with pytest.raises(inference_lib.ImageError, match=re.escape(path) + r': .*mode I\b'):
    inference_lib.read_image(path)


def test_16_bit_image_segments_as_its_8_bit_version(random_checkpoint, tmp_path):
  model_config, checkpoint = random_checkpoint
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  gray16 = np.random.RandomState(2).randint(0, 65536, [33, 41, 1]).astype(np.uint16)
  (inputs / 'deep.png').write_bytes(_encode_png(gray16))
  (inputs / 'flat.png').write_bytes(_encode_png((gray16 >> 8).astype(np.uint8)))
  output = tmp_path / 'output'
  summary = inference_lib.run_inference(model_config, checkpoint, str(inputs), str(output),
                                        session_config=fast_session_config())
  assert not summary.failed and len(summary.written) == 2
  with Image.open(str(output / 'deep_trainIds.png')) as deep, Image.open(str(output / 'flat_trainIds.png')) as flat:
    np.testing.assert_array_equal(np.asarray(deep), np.asarray(flat))


def test_converter_refuses_a_16_bit_frame_by_name(tmp_path):
  root = str(tmp_path / 'synth')
  frames = make_synthetic_cityscapes.make_dataset(root, num_train=2, num_val=0, height=32, width=48, seed=1)
  city = frames['train'][0].split('_')[0]
  image_path = os.path.join(root, 'leftImg8bit', 'train', city, frames['train'][0] + '_leftImg8bit.png')
  with Image.open(image_path) as image:
    rgb = np.asarray(image.convert('RGB'))
  with open(image_path, 'wb') as f:
    f.write(_encode_png(rgb.astype(np.uint16) * 257))
  with pytest.raises(ValueError, match=re.escape(image_path) + r': .*16-bit'):
    converter.convert(root, 'train', str(tmp_path / 'records'))
  assert not os.path.exists(str(tmp_path / 'records' / 'cityscapes_train.record'))


# Item 17: the demo's TensorBoard command.


def _demo_tensorboard_commands():
  """(OUT, [argument lists of every TensorBoard command the demo's last message prints])."""
  with open(os.path.join(REPO_ROOT, 'scripts', 'demo.sh')) as f:
    text = f.read()
  out = re.search(r'^OUT=(\S+)$', text, re.M).group(1)
  lines = [line for line in text.splitlines() if 'tensorboard ' in line and line.startswith('echo')]
  assert lines, 'demo.sh prints no TensorBoard command'
  commands = re.findall(r'tensorboard((?: --\w+(?:[ =][^\s)"]+)?)+)', lines[-1].replace('$OUT', out))
  assert commands, lines[-1]
  return out, [shlex.split(command) for command in commands]


def test_demo_prints_tensorboard_commands_that_show_train_and_eval(monkeypatch):
  """TensorBoard 2.21 reads `--logdir train:A,eval:B` as one directory of that name (so it shows nothing);
  the name:path form is `--logdir_spec`'s. The runs TensorBoard would load must include both directories."""
  from tensorboard import program  # pylint: disable=import-outside-toplevel
  from tensorboard.backend.event_processing import data_ingester  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(REPO_ROOT)  # the demo runs from the repository root
  out, commands = _demo_tensorboard_commands()
  for args in commands:
    board = program.TensorBoard()
    board.configure(argv=['tensorboard'] + args)
    path_to_run = data_ingester.LocalDataIngester(board.flags)._path_to_run  # pylint: disable=protected-access
    roots = [os.path.realpath(path) for path in path_to_run]
    for run in ('train', 'eval'):
      wanted = os.path.realpath(os.path.join(REPO_ROOT, out, run))
      assert any(wanted == root or wanted.startswith(root + os.sep) for root in roots), (run, args, roots)
