#!/usr/bin/env bash
# Create .venv (or $VENV) and install ultracram with its test tools.
# CPU machines: torch is installed first from the pinned CPU build, so that nothing later
# pulls a CUDA build. GPU users: set TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url
# https://download.pytorch.org/whl/cu124") before running, or install torch yourself first.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $TORCH_SPEC 2>&1 | grep -v WARNING || true
"$VENV/bin/python" -m pip install -q -e ".[dev]" 2>&1 | grep -v WARNING || true
"$VENV/bin/python" - <<'PY'
import torch
if torch.version.cuda and not torch.cuda.is_available():
    raise SystemExit(f"a CUDA build of torch ({torch.__version__}) was installed on a machine without a GPU")
print(f"installed: torch {torch.__version__}")
PY
