"""Model figures: parameters (with and without the auxiliary head) and MACs at given resolutions.

The counting is drivers/exporter.py's (what export.py writes into model_figures.json): parameters of the model
variables without batch-norm moving statistics, MACs counted analytically over the convolutions as executed and
cross-checked with TensorFlow's profiler (2 FLOPs per MAC). The network runs at the image size itself (no
padding), so 1024x2048 gives PSPNet50's 1.41 TMACs.
"""
import collections

from bench import common

FULL_SIZES = [[713, 713], [1024, 2048]]
QUICK_SIZES = [[65, 65], [129, 257]]


def measure(spec):
  """Worker: figures of the inference graph at each size, and the training graph's parameter count."""
  from builders import model_builder  # pylint: disable=import-outside-toplevel
  from drivers import exporter  # pylint: disable=import-outside-toplevel
  from drivers import inference_graph  # pylint: disable=import-outside-toplevel
  from libs.compat import slim  # pylint: disable=import-outside-toplevel
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  config = common.load_pipeline_config(spec['quick'])
  out = collections.OrderedDict(sizes=collections.OrderedDict())
  for height, width in spec['sizes']:
    figures = exporter.compute_figures(config.model, (height, width), (height, width))
    native = common.load_pipeline_config(spec['quick'], 'pspnet { feature_extractor { native_atrous_conv: true } }')
    with tf.Graph().as_default() as graph:
      inference_graph.build_inference_graph(inference_graph.build_inference_model(native.model), [1, height, width, 3],
                                     (height, width))
      native_macs = exporter.count_conv_macs(graph)['total']
    out['sizes']['%dx%d' % (height, width)] = collections.OrderedDict(
        macs=figures['macs'], gmacs=figures['gmacs'], native_atrous_gmacs=native_macs / 1e9,
        profiler_conv_gflops=figures['profiler']['conv_flops'] / 1e9,
        profiler_total_gflops=figures['profiler']['total_flops'] / 1e9,
        profiler_conv_flops_equal_2x_macs=figures['profiler']['conv_flops_equal_2x_macs'])
    out['parameters'] = figures['parameters']
  with tf.Graph().as_default():
    model = model_builder.build(config.model, is_training=True)
    size = 8 * model_builder.output_stride(config.model) + 1
    model.predict(model.preprocess(tf.zeros([1, size, size, 3])))
    out['parameters_with_aux_head'] = exporter.count_parameters(slim.get_model_variables())
  return out


def run(args):
  spec = {'quick': args.quick, 'sizes': QUICK_SIZES if args.quick else FULL_SIZES}
  common.log('model: parameters and MACs at %s' % ', '.join('%dx%d' % tuple(s) for s in spec['sizes']))
  return common.run_worker('model_figures', spec)


def table(section):
  if 'error' in section:
    return 'model figures failed: %s' % section['error']
  params = section['parameters']
  with_aux = section['parameters_with_aux_head']
  lines = [common.format_table(
      ['parameters', 'total', 'backbone', 'PSPModule', 'Logits', 'AuxHead'],
      [['inference graph (no aux head)', params['total'], params.get('backbone'), params.get('PSPModule'),
        params.get('Logits'), None],
       ['training graph (with aux head)', with_aux['total'], with_aux.get('backbone'), with_aux.get('PSPModule'),
        with_aux.get('Logits'), with_aux.get('AuxHead')]]), '']
  rows = []
  for size, entry in section['sizes'].items():
    rows.append([size, entry['gmacs'], entry['macs'].get('backbone', 0) / 1e9, entry['macs'].get('PSPModule', 0) / 1e9,
                 entry['profiler_conv_gflops'], 'yes' if entry['profiler_conv_flops_equal_2x_macs'] else 'NO',
                 entry['native_atrous_gmacs']])
  lines.append(common.format_table(
      ['input (= network)', 'GMACs', 'backbone', 'PSPModule', 'profiler conv GFLOPs', '= 2 x MACs',
       'GMACs, native atrous'], rows))
  return '\n'.join(lines)


def gmacs(section, size):
  """GMACs of the inference graph at 'HxW' (None if not measured)."""
  return section.get('sizes', {}).get(size, {}).get('gmacs')
