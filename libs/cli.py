"""What every command's entry point shares: absl's app.run with user errors as one line, quiet start-up.

    from libs import cli
    cli.import_tensorflow_quietly()  # before anything imports TensorFlow
    ...
    def console_main():
      define_flags()
      cli.run(main)

A user error (libs.config_errors.UserError and its ConfigError, a flag that does not parse, a missing required
flag, app.UsageError, a file that cannot be opened) prints one line `error: <message>` on stderr and exits with
status 2. `--debug` (a flag of every command) or the environment variable PSPNET_DEBUG=1 shows the traceback
instead. Any other exception is a bug and keeps its traceback (status 1).

TensorFlow's start-up lines (oneDNN notices, "All log messages before absl::InitializeLog() ...") are written by
its C++ logging before TF_CPP_MIN_LOG_LEVEL is honoured; import_tensorflow_quietly() drops the lines below that
level (INFO unless set: warnings and errors are kept) and passes everything else through. TensorFlow's deprecation
notices about the toolkit's own TF1-style calls are silenced while the command runs, unless --debug.
"""
import contextlib
import importlib
import os
import re
import sys
import tempfile

from absl import app
from absl import flags

from libs.config_errors import UserError

FLAGS = flags.FLAGS
DEBUG_ENV = 'PSPNET_DEBUG'
# Exit status of a user error (that of a command-line usage error, as argparse's).
USER_ERROR_STATUS = 2
# Files the user named: these OSErrors carry the file name and are the user's to fix (permissions, missing).
_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_ABSL_PRELUDE = 'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR'
# absl/TensorFlow C++ log line: severity letter, MMDD, time.
_CPP_LOG_LINE = re.compile(r'^([IWEF])\d{4} \d\d:\d\d:\d\d')
_CPP_SEVERITIES = 'IWEF'
_HELP_FLAGS = ('help', 'helpshort', 'helpfull', 'helpxml', '?')
# Second lines of multi-line C++ log messages (cpu_feature_guard's).
_CONTINUATIONS = ('To enable the following instructions:',)

flags.DEFINE_boolean('debug', False, 'Show the Python traceback of a user error (a bad config, flag, file or '
                     'checkpoint) instead of the one-line message; the environment variable %s=1 does the same.'
                     % DEBUG_ENV)


def debug_enabled(debug_flag=False):
  """Whether tracebacks of user errors are wanted (--debug or PSPNET_DEBUG=1)."""
  return bool(debug_flag) or os.environ.get(DEBUG_ENV, '').strip().lower() in ('1', 'true', 'yes')


def is_user_error(error):
  """Whether an exception is the user's to fix (printed as one line) rather than a bug (traceback)."""
  if isinstance(error, (UserError, app.UsageError, flags.Error)):
    return True
  return isinstance(error, _FILE_ERRORS) and error.filename is not None


def error_line(error):
  """The one line printed for a user error: `error: <message>` with the message's lines joined."""
  message = str(error)
  if isinstance(error, _FILE_ERRORS) and error.filename is not None:
    message = '%s: %s' % (error.filename, error.strerror or message)
  return 'error: ' + ' '.join(line.strip() for line in message.splitlines() if line.strip())


def exit_with_user_error(error):
  """Prints error_line(error) on stderr and exits with USER_ERROR_STATUS."""
  sys.stdout.flush()
  sys.stderr.write(error_line(error) + '\n')
  sys.stderr.flush()
  sys.exit(USER_ERROR_STATUS)


def _drop_startup_noise(lines, min_level):
  """The lines without the absl prelude and C++ log lines below min_level (with their continuation lines)."""
  kept, dropping = [], False
  for line in lines:
    match = _CPP_LOG_LINE.match(line)
    if match:
      dropping = _CPP_SEVERITIES.index(match.group(1)) < min_level
    elif line.startswith(_ABSL_PRELUDE):
      dropping = True
      continue
    elif dropping and not line.startswith(_CONTINUATIONS):
      dropping = False
    if not dropping:
      kept.append(line)
  return kept


def import_tensorflow_quietly():
  """Imports TensorFlow with the C++ start-up lines below TF_CPP_MIN_LOG_LEVEL dropped.

  Everything else written to stderr during the import (warnings, errors) is passed on once the import is done.
  A no-op when TensorFlow is already imported.
  """
  if 'tensorflow' in sys.modules:
    return
  # Lines below the level the user set are dropped; unset: only INFO (TensorFlow itself then runs at 2, see
  # libs/compat.py, but a warning printed while it starts is kept).
  try:
    min_level = int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', '1'))
  except ValueError:
    min_level = 0
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.stderr.flush()
  try:
    saved_stderr = os.dup(2)
  except OSError:  # no file descriptor 2 (e.g. a detached process): nothing to keep clean
    importlib.import_module('tensorflow')
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      importlib.import_module('tensorflow')
    finally:
      sys.stderr.flush()
      os.dup2(saved_stderr, 2)
      os.close(saved_stderr)
      captured.seek(0)
      text = captured.read().decode('utf-8', errors='replace')
      kept = _drop_startup_noise(text.splitlines(True), min_level)
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()


@contextlib.contextmanager
def _deprecations_silenced(silence):
  """TensorFlow's deprecation notices off inside the block (they are about the toolkit's TF1-style calls,
  nothing a user can act on)."""
  deprecation = None
  if silence and 'tensorflow' in sys.modules:
    try:
      from tensorflow.python.util import deprecation  # pylint: disable=import-outside-toplevel,g-direct-tensorflow-import
    except ImportError:
      deprecation = None
  if deprecation is None:
    yield
    return
  with deprecation.silence():
    yield


def _parse_flags(argv):
  """absl's flag parsing with a parse error (unknown flag, bad value, missing required flag) as one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write('%s (--help lists the flags)\n' % error_line(e))
    sys.exit(USER_ERROR_STATUS)
  except SystemExit as e:
    # absl's help flags print the help and exit with status 1; asking for help is no failure.
    if e.code == 1 and any(arg.lstrip('-').split('=')[0] in _HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise


def _adopt_key_flags(main):
  """Lists the flags of main's module in --help when the main module is an installed command's wrapper.

  absl's --help shows the key flags of sys.argv[0]'s module; for `pspnet-train` that is the console-script
  wrapper, which defines none.
  """
  module_name = main.__module__
  if module_name == '__main__':
    module_name = sys.argv[0]
  for name in (module_name, __name__):
    for flag in FLAGS.get_key_flags_for_module(name):
      FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  main_module = sys.modules.get('__main__')
  script = sys.modules.get(main.__module__)
  if main_module is not None and script is not None and not main_module.__doc__:
    main_module.__doc__ = script.__doc__


def _with_user_errors(main):
  def wrapped(argv):
    debug = debug_enabled(FLAGS.debug)
    try:
      with _deprecations_silenced(not debug):
        return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if debug or not is_user_error(e):
        raise
      exit_with_user_error(e)

  return wrapped


def run(main, argv=None):
  """absl's app.run(main) with user errors as one line on stderr (status 2); see the module docstring.

  Args:
    main: fn(argv) -> exit status or None, the command's main.
    argv: the command line (None: sys.argv).
  """
  _adopt_key_flags(main)
  app.run(_with_user_errors(main), argv=argv, flags_parser=_parse_flags)
