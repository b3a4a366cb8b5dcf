"""The machine's measured dense peak through TensorFlow: large fp32 and bf16 matmuls and 3x3 convolutions.

Every other speed of `python -m bench` is also given as a fraction of the *measured fp32 peak*: the best rate of
the fp32 kernels timed here in the same run (matmuls of several sizes and a 3x3 convolution; a multiply-accumulate,
MAC, is 2 FLOPs). Several matmul sizes because one size can sit badly with the caches and run slower than
PSPNet's own convolutions (measured rates: README, "Performance" / bench/results/bench.md, "peak").
Inputs are variables (not constants) so that grappler cannot fold the work away, and only one element of the
result is fetched.
"""
import collections

import numpy as np

from bench import common

FULL = {'matmul_n': [1024, 2048, 4096], 'conv_shape': [1, 128, 256, 512], 'runs': 5}
QUICK = {'matmul_n': [512, 768], 'conv_shape': [1, 32, 64, 128], 'runs': 3}


def measure(spec):
  """Worker: GMAC/s of fp32/bf16 matmuls and 3x3 conv (spec: matmul_n [sizes], conv_shape [N, H, W, C], runs)."""
  from libs.compat import tf  # pylint: disable=import-outside-toplevel
  batch, height, width, channels = spec['conv_shape']
  rng = np.random.RandomState(0)
  results = collections.OrderedDict()
  with tf.Graph().as_default():
    conv_values = [rng.randn(batch, height, width, channels), rng.randn(3, 3, channels, channels) * 0.05]
    ops = collections.OrderedDict()
    macs = {'conv3x3': float(batch * height * width * 9 * channels * channels)}
    for dtype in (tf.float32, tf.bfloat16):
      name = 'fp32' if dtype == tf.float32 else 'bf16'

      # bf16 operands are bf16 variables: converted once, not in every timed run.
      def variable(value, dtype=dtype):
        return tf.Variable(tf.cast(value.astype(np.float32), dtype))

      for n in spec['matmul_n']:
        macs['matmul%d' % n] = float(n)**3
        aa, bb = variable(rng.randn(n, n)), variable(rng.randn(n, n))
        ops['matmul%d_%s' % (n, name)] = tf.cast(tf.matmul(aa, bb)[0, 0], tf.float32)
      xx, kk = [variable(v) for v in conv_values]
      ops['conv3x3_' + name] = tf.cast(tf.nn.conv2d(xx, kk, 1, 'SAME')[0, 0, 0, 0], tf.float32)
    with tf.Session(config=common.session_config()) as sess:
      sess.run(tf.global_variables_initializer())
      fns = collections.OrderedDict((name, (lambda op=op: sess.run(op))) for name, op in ops.items())
      timings = common.interleaved(fns, spec['runs'], warmup=1)
  for name, timing in timings.items():
    kind = name.split('_')[0]
    timing['gmacs'] = macs[kind] / 1e9
    timing['gmacs_per_s'] = macs[kind] / 1e9 / timing['best_s']
    results[name] = timing
  fp32 = {name: r['gmacs_per_s'] for name, r in results.items() if name.endswith('_fp32')}
  return collections.OrderedDict(
      spec=spec, results=results, machine=common.machine_info(),
      fp32_matmul_gmacs_per_s=max(v for name, v in fp32.items() if name.startswith('matmul')),
      fp32_peak_gmacs_per_s=max(fp32.values()), fp32_peak_op=max(fp32, key=fp32.get))


def run(args):
  """Driver: the default TensorFlow build's peak, and with oneDNN's custom ops switched on (a lever)."""
  spec = QUICK if args.quick else FULL
  out = collections.OrderedDict()
  common.log('peak: matmul %s^2, 3x3 conv %s, fp32 and bf16' % ('/'.join(map(str, spec['matmul_n'])),
                                                                  spec['conv_shape']))
  out['default'] = common.run_worker('peak', spec)
  if not args.quick and args.onednn:
    out['onednn'] = common.run_worker('peak', spec, env={'TF_ENABLE_ONEDNN_OPTS': '1'})
  return out


def table(section):
  rows = []
  for variant, result in section.items():
    if 'error' in result:
      rows.append([variant, 'failed: %s' % result['error'][-80:], None, None])
      continue
    for name, timing in result['results'].items():
      rows.append([variant, name, timing['gmacs_per_s'], timing['cpu_share']])
  return common.format_table(['TensorFlow', 'op', 'GMAC/s (best run)', 'cpu share'], rows)


def peak_gmacs(section):
  """The measured fp32 peak of the default build (best fp32 kernel), the reference of every 'fraction of peak'."""
  result = section.get('default', {})
  return result.get('fp32_peak_gmacs_per_s')
