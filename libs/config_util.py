"""Reads, validates, overrides and saves pipeline configs (protos/pipeline.proto).

Parsing is strict: `text_format.Parse` rejects unknown or misspelt fields, wrong types, and a non-repeated field
given twice (`text_format.Merge`, which silently keeps the last, is used only for deliberate overrides). Every
error names the config file.
"""
import contextlib
import os
import tempfile

from google.protobuf import text_format

from libs.config_errors import ConfigError
from libs.config_errors import UserError
from protos import pipeline_pb2

PIPELINE_CONFIG_NAME = 'pipeline.config'


def parse_pipeline_config(text, config_path='<string>'):
  """Parses text-format PipelineConfig strictly.

  Raises:
    UserError: naming config_path, the line and column, and the parser's complaint (e.g. the unknown field).
  """
  config = pipeline_pb2.PipelineConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise UserError('%s: invalid config: %s' % (config_path, e)) from None
  return config


def load_pipeline_config(config_path, overrides=None, flag='--config_path', overrides_flag='--config_override'):
  """Reads a pipeline config file, applies optional text-format overrides, and returns the message.

  Args:
    config_path: path of a text-format PipelineConfig.
    overrides: optional text-format PipelineConfig fragment merged on top (e.g. from --config_override:
      'train_config { num_steps: 10 }'); repeated fields in it are appended.
    flag: the flag that gave config_path, named in errors.
    overrides_flag: the flag that gave overrides, named in errors.

  Raises:
    UserError: when the file is missing, a directory or unreadable, or the config or the override does not
      parse; the message names the file (or the override's flag) and the problem.
  """
  if os.path.isdir(config_path):
    raise UserError('%s = %r: is a directory; expected a text-format pipeline config file (e.g. '
                    'configs/pspnet_1.0_713_resnet_v1.config)' % (flag, config_path))
  if not os.path.isfile(config_path):
    raise UserError('%s = %r: config file does not exist' % (flag, config_path))
  try:
    with open(config_path) as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError('cannot read config file %s: %s' % (config_path, e)) from None
  config = parse_pipeline_config(text, config_path)
  if overrides:
    try:
      text_format.Merge(overrides, config)
    except text_format.ParseError as e:
      raise UserError('%s = %r: invalid config override: %s' % (overrides_flag, overrides, e)) from None
  return config


def config_source(config_path, overrides=None, overrides_flag='--config_override'):
  """How errors name a config loaded by load_pipeline_config: the file, and the override flag when one was
  merged (a bad value may come from either)."""
  if not overrides:
    return config_path
  return '%s (with %s %r)' % (config_path, overrides_flag, overrides)


@contextlib.contextmanager
def naming_config_file(config_path):
  """Re-raises ConfigErrors raised inside the block with the config file named in the message."""
  try:
    yield
  except ConfigError as e:
    if e.config_path:
      raise
    raise e.with_config_path(config_path) from None


def config_to_text(config):
  return text_format.MessageToString(config)


def _process_umask():
  """The umask, read without changing it where /proc tells it (os.umask can only read it by setting it)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  umask = os.umask(0o022)
  os.umask(umask)
  return umask


# The mode open() would give a new file (mkstemp's are 0600), read once at import.
_NEW_FILE_MODE = 0o666 & ~_process_umask()


def atomic_write(path, data):
  """Writes text or bytes to path through a temporary file and a rename, so readers never see half a file.

  The file gets the mode of a file created by open() (0666 minus the umask), not mkstemp's 0600.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.tmp')
  try:
    os.fchmod(fd, _NEW_FILE_MODE)
    with os.fdopen(fd, 'wb' if isinstance(data, bytes) else 'w') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_pipeline_config(config, directory, name=PIPELINE_CONFIG_NAME):
  """Writes the effective config (after overrides and defaults filled by the user) into `directory`."""
  path = os.path.join(directory, name)
  atomic_write(path, config_to_text(config))
  return path
