"""What is exported from a trained checkpoint: frozen graphs, SavedModels, model figures, seed checkpoints.

The deployment conventions follow the TF Object Detection API's exporter (`frozen_inference_graph.pb` and
`saved_model/` with a `serving_default` signature beside each other, input and output tensors with fixed names),
and the original TF1 PSPNet/ICNet toolkit's `--input_shape` / `--pad_to_shape` pair. Both graphs are
drivers/inference_graph.build_inference_graph's: uint8 `inputs` [N, H, W, 3] (or [H, W, 3]) -> int32
`predictions` [N, H, W] (or [H, W]) train ids, at a static network shape the input is padded to; the frozen graph
is made by libs/frozen_graph.py.

Model figures (the comparison the seed motivates PSPNet50 with: parameters, FLOPs, inference time):
  * parameters of the inference graph: model variables without the batch-norm moving statistics (46,591,571
    for PSPNet50 at 19 classes);
  * multiply-accumulates counted analytically over the Conv2D/DepthwiseConv2dNative ops as executed
    (output elements x kh x kw x input channels per group; atrous convolutions run as SpaceToBatchND + Conv2D
    and are counted as such), and cross-checked with TensorFlow's profiler, which counts 2 FLOPs per MAC;
  * median wall time of a batch-1 run after warm-up, with the trained weights or random ones.

Seed checkpoints (to initialise ICNet or another PSPNet run) hold exactly the model variables of the training
graph (weights, biases, batch-norm beta/gamma and moving statistics, the auxiliary head), under their own names,
without optimizer slots or the global step; `name_map.json` lists each with its shape and network part.
"""
import collections
import json
import os
import shutil
import tempfile
import time

import numpy as np

from architectures import pspnet_architecture
from builders import model_builder
from drivers import inference_graph
from drivers.inference_graph import INPUT_NAME
from drivers.inference_graph import OUTPUT_NAME
from libs import checkpoint_utils
from libs import config_util
from libs import frozen_graph
from libs.compat import slim
from libs.compat import tf
from libs.config_errors import UserError

# pylint: disable=g-direct-tensorflow-import,g-bad-import-order
# The profiler and the SavedModel signature helpers call TF1 helpers that log a deprecation notice on every
# export; they are the intended graph-mode APIs here, so the notices are silenced around them.
from tensorflow.python.util import deprecation
# pylint: enable=g-direct-tensorflow-import,g-bad-import-order

logger = tf.get_logger()

SIGNATURE_NAME = 'serving_default'
FROZEN_GRAPH_NAME = 'frozen_inference_graph.pb'
SAVED_MODEL_DIR = 'saved_model'
FIGURES_NAME = 'model_figures.json'
NAME_MAP_NAME = 'name_map.json'
SEED_CHECKPOINT_NAME = 'model.ckpt'

# PSPNet's network parts by scope prefix, in graph order: the default of the functions below; a model's own
# come from its `parts` property (ICNet: backbone, FullResolutionBranch, FastPSPModule, the fusion units, ...).
PARTS = pspnet_architecture.PARTS
# What a downstream ICNet does with each part of a seed checkpoint (also written into name_map.json).
PART_USE = {
    'backbone': 'SharedFeatureExtractor/resnet_v1_50/...: ICNet branches built under the same names restore it '
                '(fine_tune_checkpoint_type: "segmentation")',
    'PSPModule': 'PSPModule/...: restored by a model whose pyramid module has these names and shapes; another '
                 'scope (the original ICNet\'s FastPSPModule) starts fresh and is logged as not in checkpoint',
    'Logits': 'Logits/...: PSPNet\'s 1x1 classifier; restored only by a head with the same name and class count',
    'AuxHead': 'AuxHead/...: PSPNet\'s training-only auxiliary head on block3',
}


def part_use(part):
  """PART_USE's note on a part, or the general rule for the parts of other models (e.g. ICNet's branches)."""
  return PART_USE.get(part, '%s/...: restored by a model with the same names and shapes (the same model, '
                      'fine_tune_checkpoint_type: "segmentation"); otherwise starts fresh and is logged' % part)


_MOVING_STATISTICS = ('/moving_mean', '/moving_variance')
_CONV_TYPES = ('Conv2D', 'DepthwiseConv2dNative')


def part_of(name, parts=PARTS):
  """The network part (of `parts`, ((scope prefix, part name), ...), e.g. 'backbone', 'PSPModule', 'Logits',
  'AuxHead'; or 'other') of a variable or op name."""
  for prefix, part in parts:
    if name.startswith(prefix):
      return part
  return 'other'


def write_saved_model(sess, graph, export_dir):
  """Writes a TF1 SavedModel with a `serving_default` signature {inputs} -> {predictions}.

  It is written to a temporary sibling and renamed, so an existing export is replaced only by a complete one
  (SavedModelBuilder refuses an existing directory). What was at export_dir (a directory, or a symbolic link,
  which is never followed) is first moved into the temporary directory and deleted with it.
  """
  parent = os.path.dirname(os.path.abspath(export_dir))
  scratch = tempfile.mkdtemp(dir=parent, prefix='.' + os.path.basename(export_dir) + '.tmp')
  staging = os.path.join(scratch, 'model')
  try:
    builder = tf.saved_model.builder.SavedModelBuilder(staging)
    with deprecation.silence():
      signature = tf.saved_model.signature_def_utils.predict_signature_def(
          inputs={INPUT_NAME: graph.inputs}, outputs={OUTPUT_NAME: graph.predictions})
    builder.add_meta_graph_and_variables(
        sess, [tf.saved_model.tag_constants.SERVING], signature_def_map={SIGNATURE_NAME: signature},
        clear_devices=True, strip_default_attrs=True,
        # Only the model's variables: the saver must not depend on anything outside the signature.
        saver=tf.train.Saver(slim.get_model_variables(), name='saved_model_saver'))
    builder.save()
    if os.path.lexists(export_dir):
      os.replace(export_dir, os.path.join(scratch, 'previous'))
    os.replace(staging, export_dir)
  finally:
    # rmtree removes a symbolic link inside scratch without following it.
    shutil.rmtree(scratch, ignore_errors=True)
  return export_dir


def count_parameters(variables, parts=PARTS):
  """Learned parameters (moving statistics excluded) of model variables, in total and per network part (of
  `parts`, as for part_of).

  Returns:
    dict {'total': int, '<part>': int, ...}.
  """
  counts = collections.OrderedDict(total=0)
  for v in variables:
    if v.op.name.endswith(_MOVING_STATISTICS):
      continue
    n = int(v.shape.num_elements())
    counts['total'] += n
    part = part_of(v.op.name, parts)
    counts[part] = counts.get(part, 0) + n
  return counts


def count_conv_macs(graph, parts=PARTS):
  """Multiply-accumulates of the convolutions of a graph, as executed, in total and per network part (of
  `parts`, as for part_of).

  Conv2D: output elements x kh x kw x (input channels per group, i.e. the kernel's third dimension);
  DepthwiseConv2dNative: output elements x kh x kw.

  Returns:
    dict {'total': int, 'conv_ops': int, '<part>': int, ...}.

  Raises:
    ValueError: if a convolution's output shape is not static (build the graph with a fixed batch size).
  """
  counts = collections.OrderedDict(total=0, conv_ops=0)
  for op in graph.get_operations():
    if op.type not in _CONV_TYPES:
      continue
    output_shape = op.outputs[0].shape
    kernel_shape = op.inputs[1].shape
    if not output_shape.is_fully_defined() or not kernel_shape.is_fully_defined():
      raise ValueError('cannot count MACs of %s: shape %s is not static' % (op.name, output_shape))
    kh, kw, cin = kernel_shape.as_list()[:3]
    macs = output_shape.num_elements() * kh * kw * (cin if op.type == 'Conv2D' else 1)
    counts['total'] += macs
    counts['conv_ops'] += 1
    part = part_of(op.name, parts)
    counts[part] = counts.get(part, 0) + macs
  return counts


def profile_flops(graph):
  """FLOPs per op type from TensorFlow's profiler (static shapes; 2 FLOPs per multiply-accumulate).

  Returns:
    dict {op type: flops}, largest first.
  """
  options = (tf.profiler.ProfileOptionBuilder(tf.profiler.ProfileOptionBuilder.float_operation())
             .with_empty_output().build())
  with deprecation.silence():
    root = tf.profiler.profile(graph, cmd='op', options=options)
  flops = collections.OrderedDict()
  # The 'op' view nests each op type under the previous one (ordered by FLOPs); float_ops is per type.
  pending = list(root.children)
  while pending:
    node = pending.pop(0)
    flops[node.name] = flops.get(node.name, 0) + int(node.float_ops)
    pending.extend(node.children)
  return collections.OrderedDict(sorted(flops.items(), key=lambda item: -item[1]))


def time_inference(sess, graph, image, num_runs, num_warmup_runs):
  """Median wall time of sess.run on one image after warm-up runs (graph optimisation, allocations).

  Returns:
    dict with median/min/max seconds and the counts, or None when num_runs is 0.
  """
  if num_runs <= 0:
    return None
  feed = {graph.inputs: image}
  for _ in range(num_warmup_runs):
    sess.run(graph.predictions, feed)
  seconds = []
  for _ in range(num_runs):
    start = time.perf_counter()
    sess.run(graph.predictions, feed)
    seconds.append(time.perf_counter() - start)
  return collections.OrderedDict(median_seconds=float(np.median(seconds)), min_seconds=float(min(seconds)),
                                 max_seconds=float(max(seconds)), runs=num_runs, warmup_runs=num_warmup_runs)


def device_description():
  gpus = tf.config.list_physical_devices('GPU')
  if not gpus:
    return 'CPU'
  details = tf.config.experimental.get_device_details(gpus[0])
  return 'GPU: %s' % details.get('device_name', gpus[0].name)


def compute_figures(model_config, image_size, network_shape, checkpoint_path=None, num_timing_runs=0,
                    num_warmup_runs=2, session_config=None, seed=0, compute_dtype=None):
  """Parameters, MACs (analytic and profiler) and timing of the batch-1 inference graph.

  Args:
    model_config: model_pb2.Model.
    image_size: static (height, width) of the input image (at most network_shape).
    network_shape: (height, width) the network runs at.
    checkpoint_path: trained weights for the timing runs; None: random initialisation.
    num_timing_runs, num_warmup_runs: timed and untimed runs (no session at all when num_timing_runs is 0).
    session_config: tf.ConfigProto or None.
    seed: of the random image timed.
    compute_dtype: of the network (build_inference_graph); MACs do not depend on it.

  Returns:
    An OrderedDict, serialisable as JSON (see README, "Export").
  """
  with tf.Graph().as_default() as graph:
    model = inference_graph.build_inference_model(model_config)
    endpoints = inference_graph.build_inference_graph(
        model, [1, image_size[0], image_size[1], 3], network_shape, compute_dtype=compute_dtype)
    if checkpoint_path:
      checkpoint_utils.checked_restore_map(checkpoint_path)  # fail before anything is computed or written
    parameters = count_parameters(slim.get_model_variables(), model.parts)
    macs = count_conv_macs(graph, model.parts)
    profiled = profile_flops(graph)
    timing = None
    if num_timing_runs > 0:
      image = np.random.RandomState(seed).randint(0, 256, [1, image_size[0], image_size[1], 3]).astype(np.uint8)
      with tf.Session(config=session_config) as sess:
        sess.run(tf.global_variables_initializer())
        if checkpoint_path:
          checkpoint_utils.restore_model_variables(sess, checkpoint_path)
        timing = time_inference(sess, endpoints, image, num_timing_runs, num_warmup_runs)
        timing['weights'] = 'checkpoint' if checkpoint_path else 'random'
        timing['device'] = device_description()
  conv_flops = sum(profiled.get(t, 0) for t in _CONV_TYPES)
  return collections.OrderedDict([
      ('num_classes', model.num_classes),
      ('input_shape', [1, image_size[0], image_size[1], 3]),
      ('network_shape', list(network_shape)),
      ('parameters', parameters),
      ('macs', macs),
      ('gmacs', macs['total'] / 1e9),
      ('profiler', collections.OrderedDict([
          ('total_flops', sum(profiled.values())),
          ('conv_flops', conv_flops),
          ('conv_flops_equal_2x_macs', conv_flops == 2 * macs['total']),
          ('flops_by_op_type', profiled)])),
      ('timing', timing),
  ])


def format_figures(figures):
  """Human-readable lines of compute_figures() output."""
  params = figures['parameters']
  macs = figures['macs']
  parts = [p for p in params if p not in ('total', 'other')]  # the model's parts, in graph order
  lines = [
      'Parameters (inference graph): %s (%s)' % (
          '{:,}'.format(params['total']), ', '.join('%s %s' % (p, '{:,}'.format(params[p])) for p in parts)),
      'MACs at %dx%d (network %dx%d): %.2f G (%s); profiler: %.2f GFLOPs in convolutions (= 2 x MACs: %s), '
      '%.2f GFLOPs in all ops' % (
          figures['input_shape'][1], figures['input_shape'][2], figures['network_shape'][0],
          figures['network_shape'][1], figures['gmacs'],
          ', '.join('%s %.2f G' % (p, macs[p] / 1e9) for p in parts if p in macs),
          figures['profiler']['conv_flops'] / 1e9, figures['profiler']['conv_flops_equal_2x_macs'],
          figures['profiler']['total_flops'] / 1e9),
  ]
  timing = figures['timing']
  if timing:
    lines.append('Inference time (batch 1, %s weights, %s): median %.4f s (min %.4f, max %.4f) over %d runs '
                 'after %d warm-up runs' % (timing['weights'], timing['device'], timing['median_seconds'],
                                            timing['min_seconds'], timing['max_seconds'], timing['runs'],
                                            timing['warmup_runs']))
  return lines


def export_seed_checkpoint(model_config, checkpoint_path, output_dir, flag='--trained_checkpoint'):
  """Writes the model variables of a training checkpoint as a clean checkpoint plus name_map.json.

  The model is built as for training (auxiliary head included when the config trains one) to enumerate its
  variables; their values come from checkpoint_path, nothing is run.

  Args:
    model_config: model_pb2.Model the checkpoint was trained with.
    checkpoint_path: checkpoint prefix.
    output_dir: receives model.ckpt.{index,data-*}, a `checkpoint` state file and name_map.json.
    flag: the flag checkpoint_path came from, for error messages.

  Returns:
    (checkpoint prefix written, the name map dict).
  """
  stride = model_builder.output_stride(model_config)
  size = 8 * stride + 1  # any static size builds the same variables
  with tf.Graph().as_default():
    model = model_builder.build(model_config, is_training=True)
    model.predict(model.preprocess(tf.placeholder(tf.float32, [1, size, size, 3])))
    variables = slim.get_model_variables()
    with tf.Session() as sess:
      checkpoint_utils.restore_model_variables(sess, checkpoint_path, flag)
      saver = tf.train.Saver({v.op.name: v for v in variables}, save_relative_paths=True, name='seed_saver')
      prefix = saver.save(sess, os.path.join(output_dir, SEED_CHECKPOINT_NAME), write_meta_graph=False)
  entries = []
  part_order = [part for _, part in model.parts] + ['other']
  parts = collections.OrderedDict()
  for v in sorted(variables, key=lambda v: (part_order.index(part_of(v.op.name, model.parts)), v.op.name)):
    part = part_of(v.op.name, model.parts)
    kind = 'moving_statistics' if v.op.name.endswith(_MOVING_STATISTICS) else 'parameter'
    entries.append(collections.OrderedDict(name=v.op.name, shape=v.shape.as_list(), part=part, kind=kind))
    summary = parts.setdefault(part, collections.OrderedDict(variables=0, parameters=0, use=part_use(part)))
    summary['variables'] += 1
    if kind == 'parameter':
      summary['parameters'] += int(v.shape.num_elements())
  name_map = collections.OrderedDict([
      ('checkpoint', SEED_CHECKPOINT_NAME),
      ('source_checkpoint', os.path.abspath(checkpoint_path)),
      ('fine_tune_checkpoint_type', 'segmentation'),
      ('parts', parts),
      ('variables', entries),
  ])
  config_util.atomic_write(os.path.join(output_dir, NAME_MAP_NAME), json.dumps(name_map, indent=1) + '\n')
  return prefix, name_map


def _is_seed_state_file(path):
  """Whether a `checkpoint` state file is the seed checkpoint's (names only model.ckpt), not a training run's."""
  try:
    state = tf.train.get_checkpoint_state(os.path.dirname(path))
  except Exception:  # pylint: disable=broad-except  (unparseable: not ours to delete)
    return False
  if state is None or not state.model_checkpoint_path:
    return False
  names = [state.model_checkpoint_path] + list(state.all_model_checkpoint_paths)
  return all(os.path.basename(name) == SEED_CHECKPOINT_NAME for name in names)


def _is_export_artifact(output_dir, name):
  """Whether a top-level entry of an export directory is something export() writes, or a temporary name its
  writes use (left behind by an export that was killed)."""
  if name in (FROZEN_GRAPH_NAME, SAVED_MODEL_DIR, FIGURES_NAME, NAME_MAP_NAME):
    return True
  if name == 'checkpoint':
    return _is_seed_state_file(os.path.join(output_dir, name))
  # The saver's files and temporaries (model.ckpt.index, .data-*, *.tempstate*, model.ckpt_temp*); the state
  # file's temporary (TensorFlow writes checkpoint.tmp<hex>); config_util.atomic_write's and
  # write_saved_model's temporaries (.<name>.tmp*).
  return (name.startswith((SEED_CHECKPOINT_NAME + '.', SEED_CHECKPOINT_NAME + '_temp', 'checkpoint.tmp')) or
          name.startswith(tuple('.%s.tmp' % n for n in (FROZEN_GRAPH_NAME, SAVED_MODEL_DIR, FIGURES_NAME,
                                                         NAME_MAP_NAME))))


def remove_stale_artifacts(output_dir, written):
  """Removes what an earlier (or killed) export left in output_dir and this export did not write.

  Only the exporter's own names are touched (_is_export_artifact); any other file stays. A symbolic link is
  removed, never followed.

  Args:
    output_dir: the export directory.
    written: names (top-level entries of output_dir) this export wrote.

  Returns:
    sorted list of the names removed (also logged).
  """
  removed = []
  for name in sorted(os.listdir(output_dir)):
    if name in written or not _is_export_artifact(output_dir, name):
      continue
    path = os.path.join(output_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
    removed.append(name)
  if removed:
    logger.info('Removed from %s what an earlier export left there and this one does not write: %s', output_dir,
                ', '.join(removed))
  return removed


ExportResult = collections.namedtuple('ExportResult', ['figures', 'frozen_graph', 'saved_model', 'checkpoint'])


def export(model_config, output_dir, trained_checkpoint=None, input_shape=(1, 1024, 2048, 3),
           pad_to_shape=None, num_timing_runs=5, num_warmup_runs=2, export_checkpoint=False,
           checkpoint_only=False, session_config=None, config_path=None, compute_dtype=None):
  """Writes the export artifacts of a model into output_dir and returns what was written.

  Every file is written through a temporary name and a rename (a symbolic link in its place is replaced, never
  followed). Afterwards output_dir holds exactly this export: the artifacts of an earlier export that this one
  does not write (a seed checkpoint and name_map.json, graphs, temporaries of a killed export) are removed and
  logged; other files stay (remove_stale_artifacts).

  Args:
    model_config: model_pb2.Model.
    output_dir: created if needed.
    trained_checkpoint: checkpoint prefix or training directory; None: figures only (random weights timed).
    input_shape: [N, H, W, 3] or [H, W, 3] of the placeholder, entries None when dynamic.
    pad_to_shape: (height, width) of the network; None: input size rounded up to an exact-zoom size.
    num_timing_runs, num_warmup_runs: timing of the figures (0 runs: no timing).
    export_checkpoint: also write the seed checkpoint and name_map.json.
    checkpoint_only: write only the seed checkpoint, name_map.json and figures (no frozen graph, SavedModel
      or timing).
    session_config: tf.ConfigProto or None.
    config_path: the config file, recorded in the figures.
    compute_dtype: 'float32' (None) or 'bfloat16': the network's arithmetic in the exported graphs (weights are
      stored in float32 either way).

  Returns:
    ExportResult(figures dict, frozen graph path, SavedModel dir, seed checkpoint prefix); paths None where
    nothing was written.

  Raises:
    ValueError: for bad shapes, a missing or mismatching checkpoint, or checkpoint flags without a checkpoint.
  """
  if input_shape is None or len(input_shape) not in (3, 4) or input_shape[-1] != 3:
    raise UserError('--input_shape = %s: expected N,H,W,3 or H,W,3' % (
        inference_graph.shape_text(input_shape) if input_shape else input_shape))
  if (export_checkpoint or checkpoint_only) and not trained_checkpoint:
    raise UserError('--%s needs --trained_checkpoint (the weights to write)' % (
        'checkpoint_only' if checkpoint_only else 'export_checkpoint'))
  checkpoint_path = None
  if trained_checkpoint:
    checkpoint_path = checkpoint_utils.resolve_checkpoint(trained_checkpoint, '--trained_checkpoint')
  image_size = tuple(input_shape[-3:-1])
  network_shape = inference_graph.resolve_network_shape(image_size, pad_to_shape,
                                                        model_builder.output_stride(model_config))

  # Figures at batch 1 and a static image size (a dynamic one is measured at the network shape).
  figure_size = tuple(n if s is None else s for s, n in zip(image_size, network_shape))
  figures = compute_figures(model_config, figure_size, network_shape, checkpoint_path,
                            0 if checkpoint_only else num_timing_runs, num_warmup_runs, session_config,
                            compute_dtype=compute_dtype)
  figures['compute_dtype'] = inference_graph.compute_dtype_of(compute_dtype).name
  figures['config_path'] = config_path
  figures['trained_checkpoint'] = checkpoint_path
  figures['exported_input_shape'] = [-1 if d is None else d for d in input_shape]
  # Created only now: a checkpoint that does not fit the config has failed above, leaving nothing behind.
  tf.gfile.MakeDirs(output_dir)

  frozen_path = saved_model_path = seed_prefix = None
  if checkpoint_path and not checkpoint_only:
    with tf.Graph().as_default() as graph:
      model = inference_graph.build_inference_model(model_config)
      endpoints = inference_graph.build_inference_graph(model, input_shape, network_shape,
                                                        compute_dtype=compute_dtype)
      with tf.Session(config=session_config) as sess:
        checkpoint_utils.restore_model_variables(sess, checkpoint_path)
        frozen = frozen_graph.freeze(sess, graph.as_graph_def(), [OUTPUT_NAME])
        frozen_path = os.path.join(output_dir, FROZEN_GRAPH_NAME)
        config_util.atomic_write(frozen_path, frozen.SerializeToString())
        saved_model_path = write_saved_model(sess, endpoints, os.path.join(output_dir, SAVED_MODEL_DIR))
    logger.info('Wrote %s (%d nodes) and %s', frozen_path, len(frozen.node), saved_model_path)
  if checkpoint_path and (export_checkpoint or checkpoint_only):
    seed_prefix, name_map = export_seed_checkpoint(model_config, checkpoint_path, output_dir)
    logger.info('Wrote seed checkpoint %s (%d variables: %s) and %s', seed_prefix, len(name_map['variables']),
                ', '.join('%s %d' % (p, s['variables']) for p, s in name_map['parts'].items()),
                os.path.join(output_dir, NAME_MAP_NAME))
  config_util.atomic_write(os.path.join(output_dir, FIGURES_NAME), json.dumps(figures, indent=1) + '\n')
  # One export per directory: a seed checkpoint or graphs of an earlier export must not pass for this one's.
  written = {FIGURES_NAME}
  if frozen_path:
    written.update([FROZEN_GRAPH_NAME, SAVED_MODEL_DIR])
  if seed_prefix:
    # tf.train.Saver (not sharded) writes one data shard.
    written.update(['checkpoint', NAME_MAP_NAME, SEED_CHECKPOINT_NAME + '.index',
                    SEED_CHECKPOINT_NAME + '.data-00000-of-00001'])
  remove_stale_artifacts(output_dir, written)
  return ExportResult(figures, frozen_path, saved_model_path, seed_prefix)
