"""Protocol-buffer messages of the toolkit's configuration (see pipeline.proto for the top level).

The ``*_pb2.py`` modules are generated, not committed: importing this package compiles them with the protoc
that grpcio-tools carries whenever they are missing or older than the ``.proto`` sources (a content hash is
kept in ``_generated.stamp``), so no manual protoc step exists. ``setup.py`` compiles them at build time for
installed copies.
"""
import hashlib
import os

from protos import compile as _compile

_STAMP = os.path.join(_compile.PROTO_DIR, '_generated.stamp')


def _sources_digest():
  digest = hashlib.sha256()
  for path in _compile.proto_files():
    digest.update(os.path.basename(path).encode())
    with open(path, 'rb') as f:
      digest.update(f.read())
  digest.update(_compile.generator_version().encode())
  return digest.hexdigest()


def _up_to_date(digest):
  try:
    with open(_STAMP) as f:
      if f.read().strip() != digest:
        return False
  except OSError:
    return False
  return all(os.path.exists(p[:-len('.proto')] + '_pb2.py') for p in _compile.proto_files())


def ensure_compiled():
  """Regenerates the _pb2 modules when they are missing or stale; a no-op otherwise."""
  digest = _sources_digest()
  if not _up_to_date(digest):
    _compile.compile_protos()
    _compile.atomic_write(_STAMP, digest + '\n')


ensure_compiled()
