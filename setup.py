"""Installs the PSPNet toolkit: `pip install .` (add -e for development).

Installs the packages (architectures, builders, drivers, libs, protos, dataset_tools), the top-level scripts as modules,
and console commands: pspnet-train, pspnet-train-mem-saving, pspnet-eval, pspnet-inference, pspnet-export,
pspnet-create-cityscapes-tfrecord, pspnet-make-demo-dataset. The protos are compiled at build time; the scripts
also run from the repository root (`python train.py ...`) as in the README.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements():
  with open(os.path.join(HERE, 'requirements.txt')) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith('#')]


class BuildPyWithProtos(build_py):
  """Generates protos/*_pb2.py before copying the packages."""

  def run(self):
    from protos import compile as proto_compile  # pylint: disable=import-outside-toplevel
    proto_compile.compile_protos()
    super().run()


SCRIPTS = ['train', 'train_mem_saving', 'eval', 'inference', 'export']

setup(
    name='pspnet-toolkit',
    version='0.1.0',
    description='TF1-style training toolkit for PSPNet50 semantic segmentation on current TensorFlow',
    python_requires='>=3.9',
    packages=['architectures', 'builders', 'drivers', 'libs', 'protos', 'dataset_tools'],
    py_modules=SCRIPTS,
    package_data={'protos': ['*.proto']},
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
