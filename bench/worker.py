"""Worker entry point: `python -m bench.worker MODULE SPEC_JSON` runs bench.MODULE.measure(spec) in this (fresh)
process and prints the result after bench.common.RESULT_MARKER (see bench/common.py)."""
import importlib
import json
import sys

from bench import common


def main(argv):
  module, spec = argv[1], json.loads(argv[2])
  result = importlib.import_module('bench.' + module).measure(spec)
  sys.stdout.write('\n' + common.RESULT_MARKER + json.dumps(result, default=float) + '\n')
  sys.stdout.flush()
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
