#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): every GPU path checked and measured in one command,
# about 8 minutes on one H100/H200, everything written to OUT (default out/gpu_check):
# OUT/summary.md (printed at the end), OUT/selfcheck.json, OUT/logs/, benchmark JSON and plots.
# Runs from the source tree without installing anything (PYTHONPATH=src): the GPU machine has
# torch, Lightning, numba, Triton, tokenizers, safetensors, ... but no network.
# Extra flags go to `ultracram selfcheck` (e.g. --only train,e2e; --device cpu --tiny: dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_check}
shift || true
PYTHON=${PYTHON:-python3}
# A developer machine's .venv, where the system python3 lacks the packages.
if ! "$PYTHON" -c "import lightning" 2>/dev/null && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
mkdir -p "$OUT"
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m ultracram selfcheck --out "$OUT" "$@" 2>&1 | tee "$OUT/selfcheck.log"
