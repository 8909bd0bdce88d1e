#!/usr/bin/env bash
# The quick start's first command: install into .venv, then run the main job, a small
# comparison study of the five tiny presets on the embedded sample data (a few minutes of
# CPU per model). The report goes to out/quickstart/report.html (and report.md).
# Extra flags go to `ultracram study` (see `ultracram study --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ultracram study --out out/quickstart "$@"
