"""The training input pipeline alone: TFRecords -> decoded, augmented batches per second.

Records: synthetic Cityscapes-format frames (dataset_tools/make_synthetic_cityscapes.py, 1024x2048 PNGs as in
Cityscapes) converted by the toolkit's own converter (dataset_tools/create_cityscapes_tfrecord.py). The
pipeline is drivers/trainer.build_input with the 713 config's reader and preprocessing (random scale 0.5-2.0, 713
crop, horizontal flip), iterated without a model. Variants: the default (parallel decoding and prefetching with
tf.data AUTOTUNE) and one decoding thread (num_batch_queue_threads: 1), for what AUTOTUNE buys.

Reported per variant: batches and images per second, and process CPU seconds per image, which on a small
machine is what the pipeline takes away from the training step even when its batches are always ready.
"""
import collections
import os

from bench import common

FULL = {'height': 1024, 'width': 2048, 'num_train': 8, 'num_val': 3, 'batches': 12, 'batch': 1}
QUICK = {'height': 128, 'width': 256, 'num_train': 4, 'num_val': 3, 'batches': 6, 'batch': 1}


def make_records(spec):
  """Writes the synthetic dataset and its TFRecords under spec['dir']; returns {'train': path, 'val': path}."""
  from dataset_tools import create_cityscapes_tfrecord  # pylint: disable=import-outside-toplevel
  from dataset_tools import make_synthetic_cityscapes  # pylint: disable=import-outside-toplevel
  dataset = os.path.join(spec['dir'], 'cityscapes')
  make_synthetic_cityscapes.make_dataset(dataset, num_train=spec['num_train'], num_val=spec['num_val'],
                                         height=spec['height'], width=spec['width'])
  records = collections.OrderedDict()
  for split in ('train', 'val'):
    paths, _ = create_cityscapes_tfrecord.convert(dataset, split, os.path.join(spec['dir'], 'records'))
    records[split] = paths[0]
  return records


def measure(spec):
  """Worker: make_records (spec['action'] == 'make_records') or time the pipeline variants."""
  if spec.get('action') == 'make_records':
    return make_records(spec)
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  out = collections.OrderedDict(records=spec['records'], machine=common.machine_info(), variants={})
  for name, threads in (('default (AUTOTUNE)', 0), ('1 decoding thread', 1)):
    config = common.load_pipeline_config(spec['quick'])
    config.train_config.batch_size = spec['batch']
    config.train_config.num_batch_queue_threads = threads
    reader = config.train_input_reader
    reader.tf_record_input_reader.ClearField('input_path')
    reader.tf_record_input_reader.input_path.append(spec['records'])
    reader.ClearField('num_examples')
    reader.shuffle_buffer_size = 16
    if spec['quick']:
      for step in config.train_config.preprocessor_step:
        if step.HasField('random_image_crop'):
          step.random_image_crop.crop_height = step.random_image_crop.crop_width = 65
    with tf.Graph().as_default():
      batch = trainer.build_input(config, 19, 255)
      with tf.Session(config=common.session_config()) as sess:
        for _ in range(2):  # warm-up: graph optimisation, the first files opened
          sess.run(batch)
        _, wall, cpu = common.timed(lambda: [sess.run(batch) for _ in range(spec['batches'])])
    images = spec['batches'] * spec['batch']
    out['variants'][name] = collections.OrderedDict(
        batches_per_s=spec['batches'] / wall, images_per_s=images / wall, cpu_s_per_image=cpu / images,
        cpu_share=cpu / wall / common.cpu_count(), image_shape=batch['image'].shape.as_list())
  return out


def run(args, workdir):
  """Driver: writes the records (returned, for the training and evaluation benchmarks) and times the pipeline."""
  plan = dict(QUICK if args.quick else FULL, dir=workdir, action='make_records')
  common.log('input: writing %d + %d synthetic %dx%d frames as TFRecords' % (
      plan['num_train'], plan['num_val'], plan['height'], plan['width']))
  records = common.run_worker('input_pipeline', plan)
  if 'error' in records:
    return records, None
  common.log('input: timing the training input pipeline')
  result = common.run_worker('input_pipeline', {'quick': args.quick, 'records': records['train'],
                                                'batches': plan['batches'], 'batch': plan['batch']})
  result['frame_size'] = [plan['height'], plan['width']]
  return result, records


def table(section, train_section=None):
  if 'error' in section:
    return 'input pipeline failed: %s' % section['error'][-300:]
  rows = [[name, v['images_per_s'], v['cpu_s_per_image'], v['cpu_share'], str(v['image_shape'])]
          for name, v in section['variants'].items()]
  lines = [common.format_table(['input pipeline (%dx%d frames)' % tuple(section['frame_size']), 'images/s',
                                'CPU s/image', 'cpu share', 'batch image shape'], rows)]
  share = input_share(train_section)
  if share:
    lines.append('')
    lines.append('Input in the training step (%s): IteratorGetNext waited %.4f s of a %.2f s step (%.2f%%); '
                 'step with TFRecord input %.2f s vs in-memory %.2f s (%+.1f%%).' % share)
  return '\n'.join(lines)


def input_share(train_section):
  """(label, wait s, step s, wait %, records step s, memory step s, difference %) or None."""
  variants = ((train_section or {}).get('speed') or {}).get('variants') or {}
  def options(timing):  # everything but the name and the input
    return {k: v for k, v in timing['variant'].items() if k not in ('name', 'input')}
  records = [t for t in variants.values() if t['variant']['input'] == 'records']
  memory = [t for t in variants.values() if t['variant']['input'] == 'memory' and records and
            options(t) == options(records[0])]
  if not records or not memory:
    return None
  r, m = records[0], memory[0]
  return ('%s' % r['variant']['name'], r['input_wait_s'], r['best_s'], 100.0 * r['input_wait_s'] / r['best_s'],
          r['best_s'], m['best_s'], 100.0 * (r['best_s'] / m['best_s'] - 1))
