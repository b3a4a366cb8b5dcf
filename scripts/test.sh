#!/usr/bin/env bash
# Sets up ./.venv and runs the test suite (about 10 minutes on 2 CPU cores), then checks the packaging: a wheel
# built from a clean copy of the sources installs into a fresh venv and its commands run (about 2 minutes with
# the wheels already on local disk). PSPNET_SKIP_WHEEL_CHECK=1 skips the packaging check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q tests "$@"

if [ "${PSPNET_SKIP_WHEEL_CHECK:-}" != "1" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir "$work/src"
  # The tracked and new files only: generated protos/*_pb2.py of this checkout must not hide a broken build.
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work/src"
  else
    tar --exclude=./.venv --exclude='./build' --exclude='*_pb2.py' --exclude='./protos/_generated.stamp' -cf - . \
      | tar -xf - -C "$work/src"
  fi
  python -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -q "$work/src"
  # From another directory, so that nothing is imported from the sources.
  cd "$work"
  for command in pspnet-train pspnet-train-mem-saving pspnet-eval pspnet-inference pspnet-export; do
    "$work/venv/bin/$command" --help > "$work/help.txt"
    grep -q -- '--config_path' "$work/help.txt" || { echo "$command --help does not list --config_path" >&2; exit 1; }
  done
  for command in pspnet-create-cityscapes-tfrecord pspnet-make-demo-dataset; do
    "$work/venv/bin/$command" --help > /dev/null
  done
  echo "Packaging: the wheel installs into a fresh venv and its commands run."
fi
