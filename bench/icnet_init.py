r"""The seed's claim in miniature (issue 11): ICNet initialised from a PSPNet checkpoint vs from a classification
(ResNet-layout) checkpoint vs from scratch. Reported, not asserted.

    python -m bench.icnet_init                         # demo data, 400 pretraining + 400 ICNet steps each
    python -m bench.icnet_init --pretrain_steps 1000 --steps 1000 --seed 1

On the demo's data (dataset_tools/make_synthetic_cityscapes.py + the converter, as scripts/demo.sh makes it: 24
synthetic train frames; val: 4 synthetic frames and the real sample frame when present):

  1. pspnet: the tiny PSPNet of configs/pspnet_demo_tiny.config trained --pretrain_steps steps (train.py's
     driver), the PSPNet50 checkpoint of the seed in miniature;
  2. classification: the same tiny backbone (names resnet_v1_50/..., the public TF-Slim ResNet50 layout)
     trained as an image classifier for --pretrain_steps steps on the same crops (global average pool, 1x1
     logits, multi-label "which classes are in the crop" sigmoid loss; there is no ImageNet here): the ResNet50
     checkpoint of the seed in miniature;
  3. ICNet (configs/icnet_demo_tiny.config) trained --steps steps from each (fine_tune_checkpoint_type
     "segmentation-finetune" and "classification") and from scratch, with the same graph-level seed, so that
     input order, crops and the initial values of the parts that start fresh are the same in the three runs;
     only the backbone differs.

Reports per run the total and main (Classifier) loss at a few steps, read from the event files (Losses/...,
written every step), the mean of the last 10% of steps, and mIoU / pixel accuracy of the final checkpoint on
val (drivers/evaluator.py, the eval config's padded input). Writes bench/results/icnet_init.json and .md (or
--out). A few minutes on 2 CPU cores at the defaults; the table's figures depend on the seed and step counts.
"""
import argparse
import collections
import datetime
import glob
import json
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
DEFAULT_OUT = os.path.join(REPO_ROOT, 'bench', 'results')
SAMPLE_DIR = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cityscapes_sample')
PSPNET_CONFIG = os.path.join(REPO_ROOT, 'configs', 'pspnet_demo_tiny.config')
ICNET_CONFIG = os.path.join(REPO_ROOT, 'configs', 'icnet_demo_tiny.config')
INITS = ('pspnet', 'classification', 'scratch')


def _config(path, records, num_steps):
  from libs import config_util  # pylint: disable=import-outside-toplevel
  with open(path) as f:
    text = f.read()
  for split in ('train', 'val'):
    text = text.replace('demo_output/records/cityscapes_%s.record' % split, records[split])
  config = config_util.parse_pipeline_config(text, path)
  config.train_config.num_steps = num_steps
  return config


def make_records(work_dir):
  """The demo's dataset and TFRecords (scripts/demo.sh steps 1-2) under work_dir."""
  from dataset_tools import create_cityscapes_tfrecord  # pylint: disable=import-outside-toplevel
  from dataset_tools import make_synthetic_cityscapes  # pylint: disable=import-outside-toplevel
  dataset = os.path.join(work_dir, 'cityscapes')
  make_synthetic_cityscapes.make_dataset(dataset, num_train=24, num_val=4,
                                         sample_dir=SAMPLE_DIR if os.path.isdir(SAMPLE_DIR) else None)
  records = {}
  for split in ('train', 'val'):
    create_cityscapes_tfrecord.convert(dataset, split, os.path.join(work_dir, 'records'))
    records[split] = os.path.join(work_dir, 'records', 'cityscapes_%s.record' % split)
  return records


def _seeded_training(seed):
  """trainer.build_training_graph with a graph-level seed (the trainer has none of its own)."""
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  original = trainer.build_training_graph

  def build(pipeline_config, options):
    tf.set_random_seed(seed)
    return original(pipeline_config, options)

  trainer.build_training_graph = build
  return original


def _options():
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  return trainer.default_options(log_every_n_steps=25, save_summaries_secs=0)


def pretrain_classifier(records, prefix, num_steps, seed):
  """The tiny backbone as a multi-label image classifier on the training crops; saves resnet_v1_50/... at prefix.

  Returns:
    [loss per step].
  """
  from architectures import dilated_resnet_v1  # pylint: disable=import-outside-toplevel
  from builders import hyperparams_builder  # pylint: disable=import-outside-toplevel
  from builders import model_builder  # pylint: disable=import-outside-toplevel
  from builders import optimizer_builder  # pylint: disable=import-outside-toplevel
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import slim  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  from libs.image_ops import MEAN_RGB  # pylint: disable=import-outside-toplevel
  from libs.standard_fields import InputDataFields as fields  # pylint: disable=import-outside-toplevel

  config = _config(PSPNET_CONFIG, records, num_steps)
  psp = config.model.pspnet
  num_classes = model_builder.num_classes(config.model)
  with tf.Graph().as_default():
    tf.set_random_seed(seed)
    batch = trainer.build_input(config, num_classes, model_builder.ignore_label(config.model))
    images = tf.cast(batch[fields.image], tf.float32) - tf.constant(MEAN_RGB, tf.float32)
    labels = tf.cast(batch[fields.labels_class][..., 0], tf.int32)
    # Which classes the crop shows (the ignore label is no class): the image-level targets.
    present = tf.reduce_max(tf.one_hot(labels, num_classes), axis=[1, 2])
    with slim.arg_scope(hyperparams_builder.build(psp.hyperparams, True)()):
      net, _ = dilated_resnet_v1.dilated_resnet_v1_50(
          images, filter_scale=psp.filter_scale, num_units_per_block=list(psp.feature_extractor.num_units_per_block),
          output_stride=8, scope='resnet_v1_50')
      logits = slim.conv2d(tf.reduce_mean(net, [1, 2], keepdims=True), num_classes, 1, activation_fn=None,
                           normalizer_fn=None, scope='resnet_v1_50/logits')[:, 0, 0]
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=present, logits=logits))
    global_step = tf.train.get_or_create_global_step()
    optimizer, _ = optimizer_builder.build(config.train_config.optimizer, global_step, num_steps)
    train_op = slim.learning.create_train_op(loss + tf.losses.get_regularization_loss(), optimizer,
                                             global_step=global_step)
    saver = tf.train.Saver(slim.get_model_variables())
    losses = []
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      for _ in range(num_steps):
        losses.append(float(sess.run([train_op, loss])[1]))
      saver.save(sess, prefix, write_meta_graph=False)
  return losses


def _scalars(logdir, tags):
  """{tag: [(step, value)] sorted by step} from the event files of logdir."""
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  values = {tag: {} for tag in tags}
  for event_file in glob.glob(os.path.join(logdir, 'events.out.tfevents.*')):
    for event in tf.train.summary_iterator(event_file):
      for value in event.summary.value:
        if value.tag in values:
          values[value.tag][int(event.step)] = float(value.simple_value)
  return {tag: sorted(steps.items()) for tag, steps in values.items()}


def run(args):
  """Runs the comparison; returns the results dict (also written as JSON and Markdown under args.out)."""
  from drivers import evaluator  # pylint: disable=import-outside-toplevel
  from drivers import trainer  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel

  work_dir = args.work_dir or tempfile.mkdtemp(prefix='icnet_init_')
  start = time.time()
  records = make_records(work_dir)
  original = _seeded_training(args.seed)
  try:
    pspnet_dir = os.path.join(work_dir, 'pspnet')
    trainer.train(_config(PSPNET_CONFIG, records, args.pretrain_steps), pspnet_dir, _options())
    pspnet_losses = [v for _, v in _scalars(pspnet_dir, ['Losses/TotalLoss'])['Losses/TotalLoss']]
    classifier = os.path.join(work_dir, 'classifier', 'resnet_v1_50.ckpt')
    classifier_losses = pretrain_classifier(records, classifier, args.pretrain_steps, args.seed)
    checkpoints = {'pspnet': (pspnet_dir, 'segmentation-finetune'), 'classification': (classifier, 'classification'),
                   'scratch': (None, None)}
    runs = collections.OrderedDict()
    for init in INITS:
      config = _config(ICNET_CONFIG, records, args.steps)
      path, kind = checkpoints[init]
      config.train_config.ClearField('fine_tune_checkpoint')
      if path:
        config.train_config.fine_tune_checkpoint = path
        config.train_config.fine_tune_checkpoint_type = kind
      logdir = os.path.join(work_dir, 'icnet_' + init)
      run_start = time.time()
      trainer.train(config, logdir, _options())
      seconds = time.time() - run_start
      eval_result = evaluator.evaluate(config, logdir, logdir + '_eval', evaluator.default_options(
          evaluate_all_from_checkpoint=str(args.steps), keep_best_checkpoint=False))[-1]
      curves = _scalars(logdir, ['Losses/TotalLoss', 'Losses/MainLoss'])
      runs[init] = collections.OrderedDict(
          fine_tune_checkpoint_type=kind, train_seconds=seconds, mIoU=eval_result['mIoU'],
          pixel_accuracy=eval_result['pixel_accuracy'], eval_loss=eval_result['eval_loss'],
          total_loss=[v for _, v in curves['Losses/TotalLoss']], main_loss=[v for _, v in curves['Losses/MainLoss']])
  finally:
    trainer.build_training_graph = original
  results = collections.OrderedDict(
      date=datetime.datetime.now().strftime('%Y-%m-%d'), tensorflow=tf.__version__, seed=args.seed,
      pretrain_steps=args.pretrain_steps, steps=args.steps, work_dir=work_dir, seconds=time.time() - start,
      pretraining={'pspnet_total_loss': pspnet_losses, 'classifier_loss': classifier_losses}, runs=runs)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'icnet_init.json'), 'w') as f:
    json.dump(results, f, indent=1)
  markdown = format_markdown(results)
  with open(os.path.join(args.out, 'icnet_init.md'), 'w') as f:
    f.write(markdown)
  print(markdown)
  return results


def _at(values, step):
  """The value at 1-based step (values[step - 1])."""
  return values[min(step, len(values)) - 1]


def format_markdown(results):
  steps = results['steps']
  marks = sorted({1, max(1, steps // 4), max(1, steps // 2), max(1, 3 * steps // 4), steps})
  tail = max(1, steps // 10)
  lines = [
      '# ICNet initialisation: PSPNet vs classification checkpoint vs scratch (bench/icnet_init.py)', '',
      '%s, TensorFlow %s, seed %d: the tiny ICNet (configs/icnet_demo_tiny.config) trained %d steps on the demo '
      'data from a tiny PSPNet trained %d steps, from the same tiny backbone trained %d steps as a multi-label '
      'image classifier (ResNet layout, "classification" type), and from scratch; same seed, so only the '
      'backbone differs. Losses from the event files (Losses/TotalLoss incl. the branch and regularization '
      'losses; Losses/MainLoss = the full-resolution Classifier); mIoU of the final checkpoint on the %s. '
      'Reported, not asserted: one seed, tiny model, synthetic frames.' % (
          results['date'], results['tensorflow'], results['seed'], steps, results['pretrain_steps'],
          results['pretrain_steps'], 'val frames (4 synthetic + the real sample frame)'), '',
      '| init | ' + ' | '.join('total loss @%d' % s for s in marks) +
      ' | main loss, last %d steps | mIoU | pixel acc. | train s |' % tail,
      '|---|' + '---|' * (len(marks) + 4),
  ]
  for init, run_result in results['runs'].items():
    total, main = run_result['total_loss'], run_result['main_loss']
    lines.append('| %s | %s | %.3f | %.2f %% | %.1f %% | %.0f |' % (
        init, ' | '.join('%.3f' % _at(total, s) for s in marks), sum(main[-tail:]) / len(main[-tail:]),
        100 * run_result['mIoU'], 100 * run_result['pixel_accuracy'], run_result['train_seconds']))
  pre = results['pretraining']
  lines += ['', 'Pretraining (%d steps each): PSPNet total loss %.3f -> %.3f; classifier sigmoid loss %.3f -> %.3f.'
            % (results['pretrain_steps'], pre['pspnet_total_loss'][0], pre['pspnet_total_loss'][-1],
               pre['classifier_loss'][0], pre['classifier_loss'][-1]),
            'Whole benchmark: %.0f s.' % results['seconds'], '']
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pretrain_steps', type=int, default=400, help='steps of the PSPNet and the classifier')
  parser.add_argument('--steps', type=int, default=400, help='ICNet training steps per initialisation')
  parser.add_argument('--seed', type=int, default=0, help='graph-level seed of every training run')
  parser.add_argument('--work_dir', default=None, help='data and training directories (default: a new temp dir)')
  parser.add_argument('--out', default=DEFAULT_OUT, help='directory for icnet_init.json and icnet_init.md')
  args = parser.parse_args(argv)
  from libs import cli  # pylint: disable=import-outside-toplevel
  cli.import_tensorflow_quietly()
  run(args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
