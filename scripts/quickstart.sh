#!/usr/bin/env bash
# The quick start's first command: install into .venv, then run the main job, a small
# comparison study on the embedded sample data: three tiny presets (crammedBERT, UltraFastBERT,
# FNet), 60 s of CPU pretraining each, SST-2 fine-tuning with the learning rate fitted on
# held-out training examples, each model next to its no-pretraining control and the majority and
# bag-of-words baselines, with 95% intervals and paired tests. SST-2 only: on the embedded slices
# of the other tasks (1,000 training examples) no tiny model leaves the majority class (see
# docs/study.md). The report goes to out/quickstart/report.html (and report.md).
# Extra flags go to `ultracram study` (see `ultracram study --help`), e.g. --tasks all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ultracram study --out out/quickstart --models crammed-bert-tiny,ultrafastbert-tiny,fnet-tiny \
    --tasks sst2 "$@"
