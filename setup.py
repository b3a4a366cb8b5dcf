"""Installs the PSPNet toolkit: `pip install .` (add -e for development).

Installs the packages (architectures, builders, drivers, libs, protos, dataset_tools), the top-level scripts as modules,
and console commands: pspnet-train, pspnet-train-mem-saving, pspnet-eval, pspnet-inference, pspnet-export,
pspnet-create-cityscapes-tfrecord, pspnet-make-demo-dataset. The protos are compiled at build time; the scripts
also run from the repository root (`python train.py ...`) as in the README.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements():
  with open(os.path.join(HERE, 'requirements.txt')) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith('#')]


class BuildPyWithProtos(build_py):
  """Generates protos/*_pb2.py (and the stamp that tells the installed package they are current) before copying
  the packages, so that both land in the wheel.

  A PEP 517 build (`pip install .`) runs this in an isolated environment whose sys.path lacks the source
  directory: the package is imported from HERE explicitly. Importing it compiles what is missing or stale.
  """

  def run(self):
    sys.path.insert(0, HERE)
    try:
      import protos  # pylint: disable=import-outside-toplevel,unused-import
      protos.ensure_compiled()
    finally:
      sys.path.remove(HERE)
    super().run()


SCRIPTS = ['train', 'train_mem_saving', 'eval', 'inference', 'export']

setup(
    name='pspnet-toolkit',
    version='0.1.0',
    description='TF1-style training toolkit for PSPNet50 semantic segmentation on current TensorFlow',
    python_requires='>=3.9',
    packages=['architectures', 'builders', 'drivers', 'libs', 'protos', 'dataset_tools'],
    py_modules=SCRIPTS,
    package_data={'protos': ['*.proto', '_generated.stamp']},
    install_requires=_requirements(),
    cmdclass={'build_py': BuildPyWithProtos},
    entry_points={'console_scripts': [
        'pspnet-train=train:console_main',
        'pspnet-train-mem-saving=train_mem_saving:console_main',
        'pspnet-eval=eval:console_main',
        'pspnet-inference=inference:console_main',
        'pspnet-export=export:console_main',
        'pspnet-create-cityscapes-tfrecord=dataset_tools.create_cityscapes_tfrecord:console_main',
        'pspnet-make-demo-dataset=dataset_tools.make_synthetic_cityscapes:console_main',
    ]},
)
