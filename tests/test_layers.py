"""The layers of the toolkit import downward only (README, "Layout"):

    protos -> libs (low-level pieces) -> architectures -> builders -> drivers -> scripts

Every import of every module is read from its source (module level and inside functions); a module may import
its own layer and the layers below it, never one above. The scripts (train.py, eval.py, ..., dataset_tools/,
bench/) sit on top and may import anything.
"""
import ast
import os

import pytest

from tests.conftest import REPO_ROOT

LAYERS = ('protos', 'libs', 'architectures', 'builders', 'drivers')
SCRIPT_LAYER = len(LAYERS)
FIRST_PARTY = LAYERS + ('dataset_tools', 'bench', 'tests')


def _rank(module):
  """The layer of a first-party module name ('libs.metrics' -> 1), scripts on top, None for third-party."""
  top = module.split('.')[0]
  if top in LAYERS:
    return LAYERS.index(top)
  if top in FIRST_PARTY or os.path.isfile(os.path.join(REPO_ROOT, top + '.py')):
    return SCRIPT_LAYER
  return None


def _imports(path):
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.lineno, node.module


def _layer_modules():
  for layer in LAYERS:
    for name in sorted(os.listdir(os.path.join(REPO_ROOT, layer))):
      if name.endswith('.py') and not name.endswith('_pb2.py'):
        yield layer, os.path.join(layer, name)


def back_edges(paths_and_layers):
  """[(path, line, imported module)] of the imports that go up a layer."""
  found = []
  for layer, path in paths_and_layers:
    for line, module in _imports(os.path.join(REPO_ROOT, path)):
      rank = _rank(module)
      if rank is not None and rank > LAYERS.index(layer):
        found.append((path, line, module))
  return found


def test_layers_import_downward_only():
  assert back_edges(list(_layer_modules())) == []


def test_every_layer_module_is_checked():
  checked = {path for _, path in _layer_modules()}
  assert 'libs/metrics.py' in checked and 'drivers/trainer.py' in checked and 'builders/model_builder.py' in checked
  assert len(checked) > 40


# name -> (layer of the module, its source, the import the check must report)
BACK_EDGES = {
    'libs imports builders': ('libs', 'from builders import model_builder\n', 'builders'),
    'libs imports drivers inside a function': ('libs', 'def f():\n  from drivers import exporter\n', 'drivers'),
    'architectures imports builders': ('architectures', 'import builders.model_builder\n', 'builders.model_builder'),
    'builders import the dataset tools': ('builders', 'from dataset_tools import cityscapes_labels\n', 'dataset_tools'),
    'protos import libs': ('protos', 'from libs.compat import tf\n', 'libs.compat'),
    'drivers import a script': ('drivers', 'import train\n', 'train'),
}


@pytest.mark.parametrize('case', sorted(BACK_EDGES))
def test_a_back_edge_is_found(tmp_path, monkeypatch, case):
  layer, source, module = BACK_EDGES[case]
  # The check itself, on a module written to a scratch tree laid out like the repository.
  (tmp_path / layer).mkdir()
  (tmp_path / layer / 'bad.py').write_text(source)
  (tmp_path / 'train.py').write_text('')
  monkeypatch.setattr('tests.test_layers.REPO_ROOT', str(tmp_path))
  assert back_edges([(layer, os.path.join(layer, 'bad.py'))]) == [(os.path.join(layer, 'bad.py'),
                                                                   source.count('\n'), module)]
