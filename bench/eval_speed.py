"""Evaluation throughput and the overhead of metric accumulation.

The graph is drivers/evaluator.build_evaluation_graph's (eval.py's): TFRecord input, the 713 config's padded
1025x2049 evaluation of 1024x2048 frames (synthetic, see bench/input_pipeline.py), softmax probabilities,
per-image confusion matrix, loss sum and pixel count; the loop accumulates them on the host as the evaluator
does. Random weights, restored from a checkpoint like a trained one.

Metric overhead = in-graph metric time + host accumulation time, as a share of the time per image. The in-graph
part is timed by feeding the probabilities and the label of a real image into the metric ops (TF1 sessions can
feed any tensor, which cuts the network off), so it is measured directly, not as a small difference of two
large, noisy numbers.
"""
import collections
import os
import shutil
import tempfile
import time

import numpy as np

from bench import common

# images: timed images after one warm-up image (the records hold num_val = images + 1 frames).
FULL = {'images': 2, 'padded': [1025, 2049]}
QUICK = {'images': 2, 'padded': [129, 257]}


def measure(spec):
  """Worker: spec {quick, records, images, padded} -> seconds per image, metric overhead."""
  from drivers import evaluator  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  config = common.load_pipeline_config(spec['quick'])
  reader = config.eval_input_reader.tf_record_input_reader
  reader.ClearField('input_path')
  reader.input_path.append(spec['records'])
  config.eval_config.num_examples = 0
  padded = config.eval_config.eval_input_type.padded_eval_input
  padded.height, padded.width = spec['padded']
  out = collections.OrderedDict(padded=spec['padded'], machine=common.machine_info())
  workdir = tempfile.mkdtemp(prefix='bench_eval_')
  try:
    with tf.Graph().as_default() as graph:
      g = evaluator.build_evaluation_graph(config)
      label = graph.get_operation_by_name('Metrics/ConfusionMatrix/Cast').inputs[0]
      probabilities = graph.get_operation_by_name('Metrics/ArgMax').inputs[0]
      with tf.Session(config=common.session_config()) as sess:
        sess.run([tf.global_variables_initializer(), tf.local_variables_initializer()])
        # Weights as a checkpoint would bring them (random here): restored through the evaluator's saver.
        prefix = tf.train.Saver(g.restore_map).save(sess, os.path.join(workdir, 'model.ckpt'),
                                                    write_meta_graph=False)
        g.saver.restore(sess, prefix)
        sess.run(g.iterator_initializer)
        confusion = np.zeros([g.num_classes] * 2, np.int64)
        loss_sum, num_pixels = 0.0, 0
        fetches = dict(g.fetches, probabilities=probabilities, label=label)
        times, host = [], []
        first = None
        for index in range(spec['images'] + 1):  # the first image is the warm-up
          start = time.perf_counter()
          result = sess.run(fetches)
          run_done = time.perf_counter()
          # The evaluator's host-side accumulation (drivers/evaluator.py, _run_pass).
          confusion += result['confusion']
          loss_sum += float(result['loss_sum'])
          num_pixels += int(result['num_pixels'])
          end = time.perf_counter()
          if index == 0:
            first = result
            out['first_image_s'] = end - start
          else:
            times.append(end - start)
            host.append(end - run_done)
        feed = {probabilities: first['probabilities'], label: first['label']}
        metric_fns = collections.OrderedDict(metrics=lambda: sess.run(g.fetches, feed))
        metric_timing = common.interleaved(metric_fns, 5, warmup=1)['metrics']
    per_image = float(np.median(times))
    overhead = metric_timing['median_s'] + float(np.median(host))
    out.update(images=len(times), seconds_per_image=per_image, images_per_s=1.0 / per_image,
               metric_graph_s=metric_timing['median_s'], host_accumulation_s=float(np.median(host)),
               metric_overhead_share=overhead / per_image, num_pixels=num_pixels,
               probabilities_shape=list(first['probabilities'].shape))
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return out


def run(args, records):
  plan = QUICK if args.quick else FULL
  common.log('eval: %d images padded to %dx%d after a warm-up image' % ((plan['images'],) + tuple(plan['padded'])))
  return common.run_worker('eval_speed', dict(plan, quick=args.quick, records=records))


def table(section):
  if 'error' in section:
    return 'evaluation failed: %s' % section['error'][-300:]
  return common.format_table(
      ['evaluation (padded %dx%d)' % tuple(section['padded']), 's/image', 'images/s', 'first image s',
       'metric ops s', 'host accumulation s', 'metric overhead'],
      [['eval.py graph, batch 1', section['seconds_per_image'], section['images_per_s'], section['first_image_s'],
        section['metric_graph_s'], section['host_accumulation_s'],
        '%.2f%%' % (100 * section['metric_overhead_share'])]])
