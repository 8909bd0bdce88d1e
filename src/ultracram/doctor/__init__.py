"""The training doctor: preflight checks, live monitors, post-mortems and FFF explanations.

- ``checks``: ``run_preflight`` / ``run_checks`` on a replaceable ``TrainingSetup``;
- ``monitors``: ``Monitor``, opt-in statistics during pretraining (``on_step`` callback);
- ``postmortem``: diagnose a finished run from its ``metrics.csv``;
- ``explain``: which path each token takes through each FFF tree.
"""

from ultracram.doctor.checks import CHECKS, CheckResult, DoctorOptions, run_checks, run_preflight
from ultracram.doctor.setup import Batch, RawBatch, TokenizerInfo, TrainingSetup, default_setup

__all__ = [
    "CHECKS",
    "Batch",
    "CheckResult",
    "DoctorOptions",
    "RawBatch",
    "TokenizerInfo",
    "TrainingSetup",
    "default_setup",
    "run_checks",
    "run_preflight",
]
