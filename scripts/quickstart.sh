#!/usr/bin/env bash
# The quick start's first command: install into .venv, then run the main job on the
# embedded sample data. Output goes to out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ultracram quickstart "$@"
