"""Compiles protos/*.proto into protos/*_pb2.py with the protoc that grpcio-tools carries.

    python -m protos.compile            # regenerate in place
    python -m protos.compile --out DIR  # write elsewhere (the staleness test compares the two)

Importing the ``protos`` package runs this automatically when the generated modules are missing or stale, so
users never call protoc themselves. Each file is written to a temporary name and renamed, so a training and an
evaluation process starting together never import a half-written module.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

PROTO_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PROTO_DIR)


def proto_files():
  return sorted(glob.glob(os.path.join(PROTO_DIR, '*.proto')))


def _run_protoc(args):
  """Runs grpcio-tools' protoc in a child process.

  In-process protoc (grpc_tools.protoc.main) can crash the interpreter when TensorFlow, which links its own
  protobuf, is already loaded; a child process is isolated from that.
  """
  try:
    import grpc_tools  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise RuntimeError('Compiling protos/*.proto needs grpcio-tools: pip install -r requirements.txt') from e
  result = subprocess.run([sys.executable, '-m', 'grpc_tools.protoc'] + args[1:], capture_output=True,
                          text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError('protoc failed (exit %d): %s' % (result.returncode, result.stderr.strip()))


def generator_version():
  """Version of the code generator; part of the staleness check."""
  try:
    from importlib.metadata import version  # pylint: disable=import-outside-toplevel
    return 'grpcio-tools ' + version('grpcio-tools')
  except Exception:  # pylint: disable=broad-except
    return 'grpcio-tools unknown'


def atomic_write(path, text):
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp_')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def compile_protos(out_dir=REPO_ROOT):
  """Runs protoc on every protos/*.proto; output lands in out_dir/protos/*_pb2.py.

  Args:
    out_dir: root under which protos/ is written (the repository root by default).

  Returns:
    The paths written.

  Raises:
    RuntimeError: if grpcio-tools is missing or protoc reports an error (its message names the .proto file).
  """
  rel = [os.path.relpath(p, REPO_ROOT) for p in proto_files()]
  dest = os.path.join(out_dir, 'protos')
  os.makedirs(dest, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix='protoc_')
  try:
    args = ['protoc', '-I' + REPO_ROOT, '--python_out=' + scratch] + [os.path.join(REPO_ROOT, r) for r in rel]
    _run_protoc(args)
    written = []
    for r in rel:
      name = os.path.basename(r)[:-len('.proto')] + '_pb2.py'
      with open(os.path.join(scratch, 'protos', name)) as f:
        atomic_write(os.path.join(dest, name), f.read())
      written.append(os.path.join(dest, name))
    return written
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default=REPO_ROOT, help='root to write protos/*_pb2.py under')
  args = parser.parse_args(argv)
  for path in compile_protos(args.out):
    print('wrote', path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
