#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): every GPU path checked and measured in one command,
# about 8 minutes on one H100/H200, everything written to OUT (default out/gpu_check):
# OUT/summary.md (printed at the end), OUT/selfcheck.json, OUT/logs/, benchmark JSON and plots.
# Runs from the source tree (PYTHONPATH=src): the GPU machine has torch, Lightning, numba,
# Triton, tokenizers, safetensors, ... but no network; the two small packages it lacks
# (jsonargparse, docstring-parser) come as wheels in .whl/ (scripts/gpu_wheels.sh, run here
# first; the device call carries .whl) and go into a temporary directory.
# Extra flags go to `ultracram selfcheck` (e.g. --only train,e2e; --device cpu --tiny: dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_check}
shift || true
PYTHON=${PYTHON:-python3}
# A developer machine's .venv, where the system python3 lacks the packages.
if ! "$PYTHON" -c "import lightning" 2>/dev/null && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
if ! "$PYTHON" -c "import jsonargparse" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        SITE=$(mktemp -d)
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: jsonargparse is missing and .whl/ holds no wheels: run scripts/gpu_wheels.sh first" >&2
    fi
fi
mkdir -p "$OUT"
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m ultracram selfcheck --out "$OUT" "$@" 2>&1 | tee "$OUT/selfcheck.log"
