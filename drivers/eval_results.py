"""What an evaluation run records in its eval_dir, and how a restarted evaluator reads it back.

    results/step_<step>.json     every metric, the confusion matrix and how it was evaluated; also the record of
                                 what has been evaluated, so a restarted evaluator skips those checkpoints
    best.json                    the checkpoint with the highest mIoU so far
    best/model.ckpt-<step>       its model weights and global step, with a `checkpoint` state file
    events.out.tfevents.*        Metrics/..., Losses/EvalLoss and EvalImages/... (write_summary)
"""
import glob
import math
import os
import re
import time

from libs import config_util
from libs import metrics
from libs.compat import tf

RESULTS_DIR = 'results'
BEST_JSON = 'best.json'
BEST_DIR = 'best'
BEST_CHECKPOINT_BASENAME = 'model.ckpt'
EVAL_IMAGES_PREFIX = 'EvalImages'

logger = tf.get_logger()


def results_path(eval_dir, step):
  return os.path.join(eval_dir, RESULTS_DIR, 'step_%08d.json' % step)


def evaluated_steps(eval_dir):
  """Global steps with a results file in eval_dir (the record of what has been evaluated)."""
  steps = set()
  for path in glob.glob(os.path.join(glob.escape(eval_dir), RESULTS_DIR, 'step_*.json')):
    match = re.match(r'step_(\d+)\.json$', os.path.basename(path))
    if match:
      steps.add(int(match.group(1)))
  return steps


def results_dict(step, checkpoint_path, confusion, class_names, eval_loss, num_images, num_pixels, spec, seconds):
  """The results of one checkpoint, as written into results/step_<step>.json.

  Args:
    step: global step.
    checkpoint_path: the checkpoint evaluated.
    confusion: int64 [C, C] confusion matrix (rows: labels, columns: predictions).
    class_names: C names.
    eval_loss: mean cross-entropy over the scored pixels.
    num_images, num_pixels: scored images and pixels.
    spec: eval_input_builder.EvalSpec.
    seconds: wall time of the pass.
  """
  values = metrics.compute_metrics(confusion, class_names)
  return {
      'global_step': step,
      'checkpoint': checkpoint_path,
      'mIoU': values['mIoU'],
      'pixel_accuracy': values['pixel_accuracy'],
      'mean_class_accuracy': values['mean_class_accuracy'],
      'eval_loss': eval_loss,
      'class_iou': values['class_iou'],
      'class_accuracy': values['class_accuracy'],
      'num_images': num_images,
      'num_pixels': num_pixels,
      'class_names': class_names,
      'confusion_matrix': confusion.tolist(),
      'eval_input': {
          'type': spec.input_type,
          'size': list(spec.fixed_size) if spec.fixed_size else None,
          'sliding_window': dict(spec.sliding_window._asdict()) if spec.sliding_window else None,
          'scales': list(spec.scales),
          'flip_horizontally': spec.flip,
      },
      'seconds': seconds,
      'evaluated_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }


def write_summary(writer, step, results, images):
  """Writes the metrics (and EvalImages/{Input,GroundTruth,Prediction}/<i> of PNG bytes) at step."""
  summary = metrics.scalar_summary(results, results['eval_loss'])
  for i, pngs in enumerate(images):
    for name in ('Input', 'GroundTruth', 'Prediction'):
      summary.value.add(tag='%s/%s/%d' % (EVAL_IMAGES_PREFIX, name, i), image=_image_summary(pngs[name]))
  writer.add_summary(summary, step)
  writer.flush()


def _image_summary(png):
  """tf.Summary.Image of PNG bytes (the size is read from the PNG header)."""
  width, height = int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big')
  return tf.Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)


def write_results(eval_dir, step, results):
  metrics.write_json(results_path(eval_dir, step), results)


def update_best(eval_dir, step, results, save_weights=None):
  """Records step in best.json if its mIoU beats the best so far, and keeps its weights.

  Args:
    eval_dir: the evaluation directory.
    step: global step of results.
    results: results_dict().
    save_weights: None, or fn(checkpoint prefix without step) -> the prefix written: saves the weights into
      eval_dir/best/ (from memory, so that the trainer's checkpoint retention cannot take them away).

  Returns:
    True when step is the new best.
  """
  best_path = os.path.join(eval_dir, BEST_JSON)
  best = metrics.read_json(best_path)
  miou = results['mIoU']
  if math.isnan(miou) or (best and best.get('mIoU') is not None and best['mIoU'] >= miou):
    return False
  kept = _keep_best_weights(eval_dir, save_weights) if save_weights else None
  metrics.write_json(best_path, {
      'global_step': step, 'checkpoint': results['checkpoint'], 'mIoU': miou,
      'pixel_accuracy': results['pixel_accuracy'], 'mean_class_accuracy': results['mean_class_accuracy'],
      'results_file': os.path.relpath(results_path(eval_dir, step), eval_dir),
      'kept_checkpoint': kept})
  logger.info('New best mIoU %.4f at global step %d%s.', miou, step, (' (weights kept in %s)' % kept) if kept
              else '')
  return True


def best_results(eval_dir):
  """The results of the best evaluated checkpoint of an eval_dir (for comparisons and reports).

  best.json names it; without one (or when its results file is gone), the results/step_*.json with the highest
  mIoU is taken.

  Returns:
    results_dict() of that checkpoint (mIoU, class_iou, global_step, ...), or None when nothing was evaluated.
  """
  best = metrics.read_json(os.path.join(eval_dir, BEST_JSON))
  if best and best.get('results_file'):
    results = metrics.read_json(os.path.join(eval_dir, best['results_file']))
    if results is not None:
      return results
  candidates = [metrics.read_json(results_path(eval_dir, step)) for step in sorted(evaluated_steps(eval_dir))]
  candidates = [r for r in candidates if r and r.get('mIoU') is not None and not math.isnan(r['mIoU'])]
  return max(candidates, key=lambda r: r['mIoU']) if candidates else None


def _keep_best_weights(eval_dir, save_weights):
  best_dir = os.path.join(eval_dir, BEST_DIR)
  tf.io.gfile.makedirs(best_dir)
  prefix = save_weights(os.path.join(best_dir, BEST_CHECKPOINT_BASENAME))
  # The state file makes best/ a checkpoint directory (tf.train.latest_checkpoint, fine_tune_checkpoint).
  name = os.path.basename(prefix)
  config_util.atomic_write(os.path.join(best_dir, 'checkpoint'), 'model_checkpoint_path: "%s"\n'
                           'all_model_checkpoint_paths: "%s"\n' % (name, name))
  # Earlier bests, also those of a previous run of the evaluator.
  for path in glob.glob(os.path.join(glob.escape(best_dir), BEST_CHECKPOINT_BASENAME + '-*')):
    if not os.path.basename(path).startswith(name + '.'):
      os.remove(path)
  return prefix
