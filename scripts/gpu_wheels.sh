#!/usr/bin/env bash
# The pure-Python packages ultracram needs that the lent GPU machine's image lacks (docs/gpu.md):
# jsonargparse (the command line) and docstring-parser (its help texts). Run once here, where
# the package index is reachable; the wheels go to .whl/ (ignored by git), which the device
# call carries (run(..., carry=[".whl"])) and scripts/gpu_check.sh installs into a temporary
# directory there when `import jsonargparse` fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "jsonargparse==4.53.0" "docstring-parser==0.18.0"
ls -l .whl
