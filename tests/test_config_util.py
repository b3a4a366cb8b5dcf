"""Tests of libs/config_util.py: the shipped configs load with their values, a config in the original TF1
toolkit's field set parses and builds, and every parse/override/save error names its file."""
import os

import pytest
from google.protobuf import text_format

from builders import model_builder
from builders import preprocessor_builder
from libs import config_util
from libs.config_errors import ConfigError
from libs.config_errors import UserError
from protos import pipeline_pb2
from tests.conftest import REPO_ROOT

PSPNET_CONFIG = os.path.join(REPO_ROOT, 'configs', 'pspnet_1.0_713_resnet_v1.config')
DEMO_CONFIG = os.path.join(REPO_ROOT, 'configs', 'pspnet_demo_tiny.config')

# A PSPNet config written with exactly the field set of the original TF1 toolkit's configs.
ORIGINAL_TOOLKIT_CONFIG = """
model {
  pspnet {
    num_classes: 19
    filter_scale: 1.0
    pooling_factors: [1, 2, 3, 6]
    feature_extractor {
      type: 'dilated_resnet50'
    }
    hyperparams {
      batch_norm {
        train: true
        scale: true
        center: true
        decay: 0.9997
        epsilon: 0.00001
      }
      regularizer {
        l2_regularizer {
          weight: 0.0001
        }
      }
      initializer {
        variance_scaling_initializer {}
      }
    }
    loss {
      classification_loss {
        softmax {}
      }
      use_auxiliary_loss: true
    }
  }
}

train_config: {
  batch_size: 8
  num_steps: 120000
  fine_tune_checkpoint_type: "classification"
  fine_tune_checkpoint: "resnet_v1_50_2016_08_28/resnet_v1_50.ckpt"
  optimizer {
    momentum_optimizer: {
      learning_rate: {
        polynomial_decay_learning_rate {
          initial_learning_rate: 0.01
          decay_steps: 120000
          power: 0.9
        }
      }
      momentum_optimizer_value: 0.9
    }
  }
  preprocessor_step {
    random_image_scale {
      min_scale_ratio: 0.5
      max_scale_ratio: 2.0
    }
  }
  preprocessor_step {
    random_image_crop {
      crop_height: 713
      crop_width: 713
      images_channel_dim: 3
      labels_channel_dim: 1
    }
  }
  preprocessor_step {
    random_horizontal_flip {}
  }
  batch_queue_capacity: 64
  num_batch_queue_threads: 8
  prefetch_queue_capacity: 16
}

train_input_reader: {
  num_examples: 2975
  shuffle: true
  tf_record_input_reader {
    input_path: "/tmp/cityscapes_train.record"
  }
  num_readers: 1
}

eval_config: {
  num_examples: 500
  eval_input_type {
    padded_eval_input {
      height: 1025
      width: 2049
    }
  }
}

eval_input_reader: {
  shuffle: false
  tf_record_input_reader {
    input_path: "/tmp/cityscapes_val.record"
  }
  num_readers: 1
}
"""


def _write(tmp_path, text, name='pipeline.config'):
  path = str(tmp_path / name)
  with open(path, 'w') as f:
    f.write(text)
  return path


def _check_pspnet_recipe(config):
  """The PSPNet paper's Cityscapes recipe, as in the seed config."""
  pspnet = config.model.pspnet
  assert config.model.WhichOneof('model') == 'pspnet'
  assert pspnet.num_classes == 19
  assert pspnet.filter_scale == 1.0
  assert list(pspnet.pooling_factors) == [1, 2, 3, 6]
  assert pspnet.feature_extractor.type == 'dilated_resnet50'
  batch_norm = pspnet.hyperparams.batch_norm
  assert batch_norm.train and batch_norm.scale and batch_norm.center
  assert batch_norm.decay == pytest.approx(0.9997)
  assert batch_norm.epsilon == pytest.approx(1e-5)
  assert pspnet.hyperparams.regularizer.l2_regularizer.weight == pytest.approx(1e-4)
  assert pspnet.hyperparams.initializer.WhichOneof('initializer_oneof') == 'variance_scaling_initializer'
  assert pspnet.loss.classification_loss.WhichOneof('loss_type') == 'softmax'
  assert pspnet.loss.use_auxiliary_loss
  assert pspnet.loss.aux_loss_weight == pytest.approx(0.4)
  assert pspnet.loss.ignore_label == 255

  train = config.train_config
  assert train.batch_size == 8
  assert train.num_steps == 120000
  assert train.fine_tune_checkpoint == 'resnet_v1_50_2016_08_28/resnet_v1_50.ckpt'
  assert train.fine_tune_checkpoint_type == 'classification'
  momentum = train.optimizer.momentum_optimizer
  assert train.optimizer.WhichOneof('optimizer') == 'momentum_optimizer'
  assert momentum.momentum_optimizer_value == pytest.approx(0.9)
  poly = momentum.learning_rate.polynomial_decay_learning_rate
  assert poly.initial_learning_rate == pytest.approx(0.01)
  assert poly.decay_steps == 120000
  assert poly.power == pytest.approx(0.9)
  assert poly.end_learning_rate == 0.0
  steps = [step.WhichOneof('preprocessing_step') for step in train.preprocessor_step]
  assert steps == ['random_image_scale', 'random_image_crop', 'random_horizontal_flip']
  scale = train.preprocessor_step[0].random_image_scale
  assert (scale.min_scale_ratio, scale.max_scale_ratio) == (0.5, 2.0)
  crop = train.preprocessor_step[1].random_image_crop
  assert (crop.crop_height, crop.crop_width, crop.images_channel_dim, crop.labels_channel_dim) == (713, 713, 3, 1)
  assert train.preprocessor_step[2].random_horizontal_flip.probability == pytest.approx(0.5)
  assert train.add_regularization_loss

  assert config.train_input_reader.num_examples == 2975
  assert config.train_input_reader.shuffle
  assert list(config.train_input_reader.tf_record_input_reader.input_path) == ['/tmp/cityscapes_train.record']
  assert config.eval_config.num_examples == 500
  padded = config.eval_config.eval_input_type.padded_eval_input
  assert config.eval_config.eval_input_type.WhichOneof('eval_input_type_oneof') == 'padded_eval_input'
  assert (padded.height, padded.width) == (1025, 2049)
  assert not config.eval_input_reader.shuffle
  assert config.eval_input_reader.num_readers == 1
  assert list(config.eval_input_reader.tf_record_input_reader.input_path) == ['/tmp/cityscapes_val.record']


# --- Shipped configs ---


def test_pspnet_config_has_the_seed_values():
  config = config_util.load_pipeline_config(PSPNET_CONFIG)
  _check_pspnet_recipe(config)
  assert config.train_input_reader.num_readers == 4
  model = model_builder.build(config.model, is_training=True)
  assert model.num_classes == 19
  assert model.builds_aux_head


def test_demo_tiny_config_matches_the_demo_script():
  """The demo config is what scripts/demo.sh trains: it reads the records the script writes, its crop makes
  batches possible, eval pads the 256x128 demo frames, and it builds the same graph as PSPNet50, smaller."""
  config = config_util.load_pipeline_config(DEMO_CONFIG)
  with open(os.path.join(os.path.dirname(DEMO_CONFIG), '..', 'scripts', 'demo.sh')) as f:
    demo_script = f.read()
  assert 'OUT=demo_output' in demo_script and '--output_dir "$OUT/records"' in demo_script
  assert list(config.train_input_reader.tf_record_input_reader.input_path) == [
      'demo_output/records/cityscapes_train.record']
  assert list(config.eval_input_reader.tf_record_input_reader.input_path) == [
      'demo_output/records/cityscapes_val.record']
  assert preprocessor_builder.output_size(config.train_config.preprocessor_step) is not None
  padded = config.eval_config.eval_input_type.padded_eval_input
  assert padded.height >= 128 and padded.width >= 256
  assert not config.eval_input_reader.shuffle
  pspnet = config.model.pspnet
  assert pspnet.num_classes == 19 and pspnet.filter_scale < 1.0
  model = model_builder.build(config.model, is_training=True)
  assert model.num_classes == 19


def test_original_toolkit_config_parses_and_builds(tmp_path):
  path = _write(tmp_path, ORIGINAL_TOOLKIT_CONFIG)
  config = config_util.load_pipeline_config(path)
  _check_pspnet_recipe(config)
  train = config.train_config
  assert (train.batch_queue_capacity, train.num_batch_queue_threads, train.prefetch_queue_capacity) == (64, 8, 16)
  assert config.train_input_reader.num_readers == 1
  model = model_builder.build(config.model, is_training=True)
  assert model.num_classes == 19
  assert model.ignore_label == 255
  assert model.builds_aux_head
  assert model_builder.num_classes(config.model) == 19
  # The seed config is the original toolkit's model plus an explicit (default) auxiliary loss weight.
  seed = config_util.load_pipeline_config(PSPNET_CONFIG)
  assert seed.model != config.model
  config.model.pspnet.loss.aux_loss_weight = 0.4
  assert seed.model == config.model
  assert seed.eval_config == config.eval_config


# --- Parse errors name the file ---


def test_misspelt_field_names_the_file_and_the_field(tmp_path):
  path = _write(tmp_path, ORIGINAL_TOOLKIT_CONFIG.replace('num_classes: 19', 'num_clases: 19'))
  with pytest.raises(ValueError) as info:
    config_util.load_pipeline_config(path)
  message = str(info.value)
  assert path in message
  assert 'num_clases' in message
  assert '4:' in message  # the line of the misspelt field


def test_wrong_type_names_the_file(tmp_path):
  path = _write(tmp_path, 'train_config { batch_size: "eight" }')
  with pytest.raises(ValueError) as info:
    config_util.load_pipeline_config(path)
  assert path in str(info.value)
  assert 'batch_size' in str(info.value)


def test_non_repeated_field_given_twice_names_the_file(tmp_path):
  path = _write(tmp_path, 'train_config { batch_size: 8 batch_size: 4 }')
  with pytest.raises(ValueError) as info:
    config_util.load_pipeline_config(path)
  assert path in str(info.value)
  assert 'batch_size' in str(info.value)


def test_message_given_twice_is_an_error_too(tmp_path):
  path = _write(tmp_path, 'eval_config { num_examples: 1 }\neval_config { num_examples: 2 }')
  with pytest.raises(ValueError, match='eval_config'):
    config_util.load_pipeline_config(path)


def test_missing_file_is_named(tmp_path):
  path = str(tmp_path / 'nope.config')
  with pytest.raises(ValueError) as info:
    config_util.load_pipeline_config(path)
  assert path in str(info.value)
  assert 'does not exist' in str(info.value)


def test_directory_is_not_a_config_file(tmp_path):
  with pytest.raises(UserError) as info:
    config_util.load_pipeline_config(str(tmp_path))
  assert str(info.value).startswith('--config_path = %r: is a directory' % str(tmp_path))
  assert 'does not exist' not in str(info.value)


def test_unreadable_bytes_name_the_file(tmp_path):
  path = str(tmp_path / 'binary.config')
  with open(path, 'wb') as f:
    f.write(b'\xff\xfe\x00model')
  with pytest.raises(ValueError) as info:
    config_util.load_pipeline_config(path)
  assert path in str(info.value)


def test_parse_pipeline_config_names_the_given_path():
  with pytest.raises(ValueError, match=r'^where/it/came/from\.config: invalid config'):
    config_util.parse_pipeline_config('bogus_field: 1', 'where/it/came/from.config')
  config = config_util.parse_pipeline_config('train_config { batch_size: 3 }')
  assert config.train_config.batch_size == 3


# --- Overrides ---


def test_override_is_applied(tmp_path):
  path = _write(tmp_path, ORIGINAL_TOOLKIT_CONFIG)
  config = config_util.load_pipeline_config(path, overrides='train_config { num_steps: 7 }')
  assert config.train_config.num_steps == 7
  # Everything else is untouched.
  assert config.train_config.batch_size == 8
  assert config.train_config.optimizer.momentum_optimizer.momentum_optimizer_value == pytest.approx(0.9)
  assert len(config.train_config.preprocessor_step) == 3


def test_override_appends_to_repeated_fields(tmp_path):
  path = _write(tmp_path, ORIGINAL_TOOLKIT_CONFIG)
  config = config_util.load_pipeline_config(
      path, overrides='train_input_reader { tf_record_input_reader { input_path: "/data/more.record" } }')
  assert list(config.train_input_reader.tf_record_input_reader.input_path) == [
      '/tmp/cityscapes_train.record', '/data/more.record']


@pytest.mark.parametrize('override', [
    'train_config { num_stepz: 7 }',
    'train_config { num_steps: "seven" }',
    'train_config { num_steps: 7',
])
def test_bad_override_is_an_error(tmp_path, override):
  path = _write(tmp_path, ORIGINAL_TOOLKIT_CONFIG)
  with pytest.raises(ValueError) as info:
    config_util.load_pipeline_config(path, overrides=override)
  assert 'invalid config override' in str(info.value)
  assert str(info.value).startswith('--config_override = %r' % override)


def test_config_source_names_the_override_flag():
  assert config_util.config_source('my.config') == 'my.config'
  assert config_util.config_source('my.config', 'train_config { batch_size: 0 }') == (
      "my.config (with --config_override 'train_config { batch_size: 0 }')")


def test_original_float_pooling_factors_parse(tmp_path):
  path = _write(tmp_path, ORIGINAL_TOOLKIT_CONFIG.replace('pooling_factors: [1, 2, 3, 6]',
                                                          'pooling_factors: [1.0, 2.0, 3.0, 6.0]'))
  assert list(config_util.load_pipeline_config(path).model.pspnet.pooling_factors) == [1, 2, 3, 6]


# --- Saving ---


def test_save_pipeline_config_round_trips(tmp_path):
  config = config_util.load_pipeline_config(PSPNET_CONFIG, overrides='train_config { num_steps: 11 }')
  directory = str(tmp_path / 'train_dir' / 'nested')
  path = config_util.save_pipeline_config(config, directory)
  assert path == os.path.join(directory, config_util.PIPELINE_CONFIG_NAME)
  assert os.listdir(directory) == [config_util.PIPELINE_CONFIG_NAME]  # no temporary file left behind
  reloaded = config_util.load_pipeline_config(path)
  assert reloaded == config
  assert reloaded.train_config.num_steps == 11
  # Saving again replaces the file.
  config.train_config.num_steps = 12
  config_util.save_pipeline_config(config, directory)
  assert config_util.load_pipeline_config(path).train_config.num_steps == 12
  other = config_util.save_pipeline_config(config, directory, name='other.config')
  assert os.path.basename(other) == 'other.config'
  assert sorted(os.listdir(directory)) == ['other.config', config_util.PIPELINE_CONFIG_NAME]


def test_config_to_text_parses_back():
  config = text_format.Parse(ORIGINAL_TOOLKIT_CONFIG, pipeline_pb2.PipelineConfig())
  assert config_util.parse_pipeline_config(config_util.config_to_text(config)) == config


# --- Errors naming the file ---


def test_naming_config_file_adds_the_path():
  with pytest.raises(ConfigError) as info:
    with config_util.naming_config_file('configs/my.config'):
      raise ConfigError('train_config.batch_size', 0, 'must be > 0')
  assert str(info.value) == 'configs/my.config: train_config.batch_size = 0: must be > 0'
  assert info.value.config_path == 'configs/my.config'
  assert info.value.field == 'train_config.batch_size'
  assert info.value.value == 0
  assert info.value.allowed == 'must be > 0'


def test_naming_config_file_keeps_an_existing_path_and_other_errors():
  with pytest.raises(ConfigError) as info:
    with config_util.naming_config_file('outer.config'):
      raise ConfigError('f', 1, 'bad', 'inner.config')
  assert str(info.value) == 'inner.config: f = 1: bad'
  with pytest.raises(KeyError):
    with config_util.naming_config_file('outer.config'):
      raise KeyError('unrelated')
  with config_util.naming_config_file('outer.config'):
    pass


def test_naming_config_file_with_a_builder_error(tmp_path):
  path = _write(tmp_path, ORIGINAL_TOOLKIT_CONFIG.replace('decay: 0.9997', 'decay: 1.5'))
  config = config_util.load_pipeline_config(path)
  with pytest.raises(ConfigError) as info:
    with config_util.naming_config_file(path):
      model_builder.build(config.model, is_training=True)
  assert str(info.value).startswith(path + ': model.pspnet.hyperparams.batch_norm.decay = 1.5')
