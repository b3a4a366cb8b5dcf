"""The error types of user input: UserError for anything the user gave (flags, files, checkpoints, shapes), and
ConfigError for a bad configuration value, so that every message names the same three things.

The scripts (libs/cli.py) print a UserError as one line `error: <message>` without a traceback; any other
exception is a bug and keeps its traceback.

    raise ConfigError('train_config.batch_size', 0, 'must be > 0')
    -> ValueError: train_config.batch_size = 0: must be > 0

libs/config_util.py adds the config file to errors raised while validating a file:

    -> ValueError: configs/my.config: train_config.batch_size = 0: must be > 0
"""


class UserError(ValueError):
  """Input the user gave (a flag, a file, a checkpoint, a shape) is not usable; the message names it, the value
  and what is allowed. A ValueError, so callers that catch ValueError keep working."""


class ConfigError(UserError):
  """A configuration field holds a value that is not allowed.

  Attributes:
    field: dotted field path from the top of the pipeline config (e.g. 'model.pspnet.num_classes').
    value: the offending value.
    allowed: what would have been accepted, as a sentence fragment.
    config_path: the file the value came from, when known.
  """

  def __init__(self, field, value, allowed, config_path=None):
    self.field = field
    self.value = value
    self.allowed = allowed
    self.config_path = config_path
    super(ConfigError, self).__init__(self._message())

  def _message(self):
    prefix = '%s: ' % self.config_path if self.config_path else ''
    return '%s%s = %r: %s' % (prefix, self.field, self.value, self.allowed)

  def with_config_path(self, config_path):
    """Returns a copy of this error that also names the config file."""
    return ConfigError(self.field, self.value, self.allowed, config_path)


def require_oneof(message, oneof_name, field_path, allowed=None):
  """Returns the name of the set field of a oneof, or raises ConfigError naming the choices.

  Args:
    message: a protobuf message.
    oneof_name: name of the oneof group in it.
    field_path: dotted path of `message` for the error message.
    allowed: names to list as allowed; defaults to every field of the oneof.
  """
  which = message.WhichOneof(oneof_name)
  if which is None:
    if allowed is None:
      allowed = [f.name for f in message.DESCRIPTOR.oneofs_by_name[oneof_name].fields]
    raise ConfigError(field_path, None, 'exactly one of {%s} must be set' % ', '.join(allowed))
  return which


def require_positive_int(config, name, field_path):
  """Returns config.<name>, raising ConfigError when the field is unset or <= 0."""
  if not config.HasField(name):
    raise ConfigError('%s.%s' % (field_path, name), None, 'must be set to an integer > 0')
  value = getattr(config, name)
  if value <= 0:
    raise ConfigError('%s.%s' % (field_path, name), value, 'must be > 0')
  return value
