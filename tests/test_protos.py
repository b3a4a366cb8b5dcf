"""The generated protos are current, and protoc errors name the .proto file."""
import os
import shutil

import pytest

import protos
from protos import compile as proto_compile


def test_generated_modules_match_the_sources(tmp_path):
  protos.ensure_compiled()
  for path in proto_compile.compile_protos(str(tmp_path)):
    name = os.path.basename(path)
    with open(path) as fresh, open(os.path.join(proto_compile.PROTO_DIR, name)) as current:
      assert fresh.read() == current.read(), name


def test_protoc_error_names_the_file(tmp_path, monkeypatch):
  root = tmp_path / 'repo'
  shutil.copytree(proto_compile.PROTO_DIR, str(root / 'protos'),
                  ignore=shutil.ignore_patterns('*_pb2.py', '__pycache__', '_generated.stamp'))
  with open(str(root / 'protos' / 'eval.proto'), 'a') as f:
    f.write('\nmessage Broken { optional int32 = 1; }\n')
  monkeypatch.setattr(proto_compile, 'REPO_ROOT', str(root))
  monkeypatch.setattr(proto_compile, 'PROTO_DIR', str(root / 'protos'))
  with pytest.raises(RuntimeError, match=r'protoc failed .*eval\.proto'):
    proto_compile.compile_protos(str(tmp_path / 'out'))
