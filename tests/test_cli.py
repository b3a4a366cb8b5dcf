"""The commands' shared entry point (libs/cli.py): a user error is one `error: ...` line on stderr and status 2,
--debug / PSPNET_DEBUG=1 show its traceback, a bug keeps its traceback, --help lists the flags (also from an
installed command's wrapper), and TensorFlow's start-up lines stay off the output. Subprocesses of the real
scripts, as a user runs them."""
import os
import subprocess
import sys

import pytest

from libs import cli
from tests.conftest import REPO_ROOT
from tests.conftest import tiny_pipeline_text

# A bound on each command: they fail before any training step.
TIMEOUT_S = 300


def _run(args, env=None, code=None):
  """Runs a script of the repository (or `python -c code`) from the repository root; returns the process."""
  command = [sys.executable] + (['-c', code] if code is not None else [os.path.join(REPO_ROOT, args[0])])
  full_env = dict(os.environ)
  full_env.pop(cli.DEBUG_ENV, None)
  full_env.update(env or {})
  return subprocess.run(command + list(args[1:] if code is None else args), cwd=REPO_ROOT, env=full_env,
                        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def _stderr_lines(proc):
  return [line for line in proc.stderr.splitlines() if line.strip()]


def _assert_one_error_line(proc, *parts):
  lines = _stderr_lines(proc)
  assert proc.returncode == cli.USER_ERROR_STATUS, proc.stderr
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith('error: '), proc.stderr
  for part in parts:
    assert part in lines[0], proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.fixture
def bad_config(tmp_path):
  path = tmp_path / 'bad.config'
  path.write_text(tiny_pipeline_text('/nonexistent/train.record', batch_size=0))
  return str(path)


def test_bad_config_value_is_one_line(tmp_path, bad_config):
  proc = _run(['train.py', '--config_path', bad_config, '--logdir', str(tmp_path / 'train')])
  _assert_one_error_line(proc, bad_config, 'train_config.batch_size = 0', 'must be > 0')
  assert not os.path.exists(tmp_path / 'train' / 'model.ckpt-0.index')


def test_debug_flag_and_environment_show_the_traceback(tmp_path, bad_config):
  for flag, env in ((['--debug'], None), ([], {cli.DEBUG_ENV: '1'})):
    proc = _run(['train.py', '--config_path', bad_config, '--logdir', str(tmp_path / 'train')] + flag, env=env)
    assert proc.returncode != 0
    assert 'Traceback (most recent call last)' in proc.stderr
    assert 'train_config.batch_size = 0' in proc.stderr.splitlines()[-1]


def test_missing_config_file_is_one_line(tmp_path):
  missing = str(tmp_path / 'missing.config')
  proc = _run(['eval.py', '--config_path', missing, '--train_dir', str(tmp_path), '--eval_dir',
               str(tmp_path / 'eval')])
  _assert_one_error_line(proc, '--config_path', missing, 'does not exist')


@pytest.mark.parametrize('args,parts', [
    (['--num_clones=x'], ['--num_clones=x', "invalid literal for int() with base 10: 'x'"]),
    (['--no_such_flag'], ["Unknown command line flag 'no_such_flag'"]),
])
def test_bad_flag_is_one_line(tmp_path, bad_config, args, parts):
  proc = _run(['train.py', '--config_path', bad_config, '--logdir', str(tmp_path)] + args)
  _assert_one_error_line(proc, *parts)


def test_missing_required_flag_is_one_line(bad_config):
  proc = _run(['train.py', '--config_path', bad_config])
  _assert_one_error_line(proc, '--logdir')


def test_missing_checkpoint_is_one_line(tmp_path, bad_config):
  missing = str(tmp_path / 'nope')
  proc = _run(['export.py', '--config_path', bad_config, '--output_dir', str(tmp_path / 'out'),
               '--trained_checkpoint', missing])
  _assert_one_error_line(proc, '--trained_checkpoint', missing, 'no such checkpoint')


def test_export_refuses_a_shape_that_cannot_fit_before_allocating(tmp_path, bad_config):
  out = tmp_path / 'out'
  proc = _run(['export.py', '--config_path', bad_config, '--output_dir', str(out),
               '--input_shape', '1,100000,100000,3'])
  _assert_one_error_line(proc, '--input_shape = 1,100000,100000,3', '10000000000 pixels',
                         'at most %d' % 2 ** 27)
  assert not out.exists()


def test_a_bug_keeps_its_traceback():
  code = ('import sys; sys.path.insert(0, %r)\n'
          'from libs import cli\n'
          'def main(argv):\n'
          '  raise RuntimeError("a bug")\n'
          'cli.run(main)\n' % REPO_ROOT)
  proc = _run([], code=code)
  assert proc.returncode == 1
  assert 'Traceback (most recent call last)' in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == 'RuntimeError: a bug'


def test_user_error_from_main_is_one_line_without_tensorflow():
  code = ('import sys; sys.path.insert(0, %r)\n'
          'from libs import cli\n'
          'from libs.config_errors import UserError\n'
          'def main(argv):\n'
          '  raise UserError("--x = 3: must be\\n  < 2")\n'
          'cli.run(main)\n' % REPO_ROOT)
  proc = _run([], code=code)
  assert proc.returncode == cli.USER_ERROR_STATUS
  assert _stderr_lines(proc) == ['error: --x = 3: must be < 2']


def _wrapper_code(module):
  """What an installed console script runs: its own file as sys.argv[0], then the entry point."""
  return ('import sys; sys.path.insert(0, %r)\n'
          "sys.argv[0] = '/venv/bin/pspnet-command'\n"
          'from %s import console_main\n'
          'sys.exit(console_main())\n' % (REPO_ROOT, module))


@pytest.mark.parametrize('module,expected', [
    ('train', ['--config_path', '--logdir', '--num_clones', '--[no]debug']),
    ('train_mem_saving', ['--config_path', '--logdir', '--checkpoint_nodes', '--[no]debug']),
    ('export', ['--config_path', '--input_shape', '--trained_checkpoint', '--[no]debug']),
])
def test_installed_command_help_lists_the_flags(module, expected):
  proc = _run(['--help'], code=_wrapper_code(module))
  assert proc.returncode == 0, proc.stderr
  for flag in expected:
    assert flag in proc.stdout, proc.stdout
  assert 'USAGE: /venv/bin/pspnet-command [flags]' not in proc.stdout


def test_script_help_exits_zero_and_lists_train_flags():
  proc = _run(['train_mem_saving.py', '--help'])
  assert proc.returncode == 0, proc.stderr
  assert '--checkpoint_nodes' in proc.stdout and '--logdir' in proc.stdout and '--[no]debug' in proc.stdout


def test_startup_noise_is_dropped_and_warnings_kept():
  lines = [
      'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n',
      'I0000 00:00:1796193054.300810   21866 port.cc:153] oneDNN custom operations are on.\n',
      'I0000 00:00:1796193054.573007   27733 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n',
      'To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n',
      'W0000 00:00:1796193054.300810   21866 gpu.cc:1] A real warning.\n',
      '/x/y.py:3: UserWarning: a Python warning\n',
  ]
  assert cli._drop_startup_noise(lines, 1) == lines[4:]  # pylint: disable=protected-access
  assert cli._drop_startup_noise(lines, 2) == lines[5:]  # pylint: disable=protected-access
  assert cli._drop_startup_noise(lines, 0) == lines[1:]  # pylint: disable=protected-access


def test_dataset_tool_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
  args = ['dataset_tools/create_cityscapes_tfrecord.py', '--cityscapes_dir', str(tmp_path / 'nope'),
          '--split_type', 'train', '--output_dir', str(tmp_path / 'out')]
  proc = _run(args)
  lines = _stderr_lines(proc)
  assert proc.returncode == 1  # the converter's status for data it cannot convert
  assert len(lines) == 1 and lines[0].startswith('error: %s' % (tmp_path / 'nope')), proc.stderr
  proc = _run(args + ['--debug'])
  assert 'Traceback (most recent call last)' in proc.stderr
