"""architectures/dilated_resnet_v1.py: native atrous convolution (pspnet.feature_extractor.native_atrous_conv) is
the same network as slim's SpaceToBatchND atrous convolution: same variables, outputs and gradients."""
import numpy as np

from tests.conftest import tiny_model_config
from tests.testing_utils import training_graph_outputs


def _outputs(native_atrous_conv):
  config = tiny_model_config(num_classes=5)
  config.pspnet.feature_extractor.native_atrous_conv = native_atrous_conv
  return training_graph_outputs(config)


def test_native_atrous_conv_same_variables_outputs_and_gradients():
  plain = _outputs(False)
  native = _outputs(True)
  # Checkpoint compatibility: exactly the same variables, in the same order, under the same names.
  assert native['variables'] == plain['variables']
  assert native['model_variables'] == plain['model_variables']
  assert (native['regularization_losses'], native['update_ops']) == (plain['regularization_losses'],
                                                                      plain['update_ops'])
  # The tiny model has one unit in block3 and block4: slim's two atrous convs become dilated Conv2Ds.
  assert plain['dilated'] == [] and len(plain['forward_space_to_batch']) == 2
  assert [name.split('resnet_v1_50/')[1] for name in native['dilated']] == [
      'block3/unit_1/bottleneck_v1/conv2/Conv2D', 'block4/unit_1/bottleneck_v1/conv2/Conv2D']
  assert native['forward_space_to_batch'] == []
  for a, b in zip(plain['values'], native['values']):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max())))
