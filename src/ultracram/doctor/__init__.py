"""The training doctor: preflight checks, live monitors, post-mortems and FFF explanations.

- ``checks``: ``run_preflight`` / ``run_checks`` on a replaceable ``TrainingSetup``;
- ``monitors``: ``Monitor``, opt-in statistics during pretraining (``on_step`` callback);
- ``postmortem``: diagnose a finished run from its ``metrics.csv``;
- ``explain``: which path each token takes through each FFF tree.
"""

from ultracram.doctor.checks import CHECKS, CheckResult, DoctorOptions, run_checks, run_preflight
from ultracram.doctor.postmortem import run_postmortem
from ultracram.doctor.setup import Batch, DoctorError, RawBatch, TokenizerInfo, TrainingSetup, default_setup

__all__ = [
    "CHECKS",
    "Batch",
    "CheckResult",
    "DoctorError",
    "DoctorOptions",
    "RawBatch",
    "TokenizerInfo",
    "TrainingSetup",
    "default_setup",
    "run_checks",
    "run_doctor",
    "run_preflight",
]


def run_doctor(
    preset: str = "crammed-bert-tiny",
    *,
    data: str | None = None,
    tokenizer: str | None = None,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    run_dir: str | None = None,
    out_dir: str | None = None,
):
    """``ultracram doctor``: a post-mortem of ``run_dir`` if given, else the preflight checks.
    Raises DoctorError when a preflight check FAILs, so the command exits non-zero."""
    if run_dir is not None:
        return run_postmortem(run_dir, out_dir)
    if only:
        unknown = [c for c in only if c not in CHECKS]
        if unknown:
            raise DoctorError(f"--only: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    results = run_preflight(preset, data=data, tokenizer=tokenizer, overrides=overrides,
                            out_dir=out_dir or "out/doctor", only=only)  # fmt: skip
    failed = [r.name for r in results if r.status == "FAIL"]
    if failed:
        raise DoctorError(f"{len(failed)} check(s) failed: {', '.join(failed)} (see the table above)")
    return results
