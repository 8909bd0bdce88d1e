"""The training doctor: preflight checks, live monitors, post-mortems and FFF explanations.

- ``checks``: ``run_preflight`` / ``run_checks`` on a replaceable ``TrainingSetup``;
- ``monitors``: ``Monitor``, opt-in statistics during pretraining (``on_step`` callback);
- ``postmortem``: diagnose a finished run from its ``metrics.csv``;
- ``explain``: which path each token takes through each FFF tree.
"""

from ultracram.doctor.checks import CHECKS, CheckResult, DoctorOptions, run_checks, run_preflight
from ultracram.doctor.postmortem import run_postmortem
from ultracram.doctor.setup import (
    Batch,
    DoctorError,
    DoctorSettings,
    RawBatch,
    TokenizerInfo,
    TrainingSetup,
    default_setup,
)
from ultracram.settings import suggest

__all__ = [
    "CHECKS",
    "Batch",
    "CheckResult",
    "DoctorError",
    "DoctorOptions",
    "DoctorSettings",
    "RawBatch",
    "TokenizerInfo",
    "TrainingSetup",
    "default_setup",
    "run_checks",
    "run_doctor",
    "run_preflight",
]


def run_doctor(settings: DoctorSettings) -> object:
    """preflight checks before training, or a post-mortem of a run (code error or hyperparameters?)

    Preflight (--preset): checks labels, masking, padding, initial loss, loss function,
    gradients, one-batch overfitting, determinism, an lr range test and mixed precision on the
    setup ultracram pretrain uses (the recipe's optimizer, clipping and learning rate); each
    PASS/WARN/FAIL with a reason and a fix; writes OUT/doctor.json and OUT/lr_range.png. Without
    --data it uses the embedded Wikipedia sample and a tokenizer trained on it. Tiny presets take
    about a minute on CPU; full-size presets (crammed-bert, bert-base) take many minutes.
    Post-mortem (--run RUN_DIR): diagnoses RUN_DIR/metrics.csv (divergence, plateau, lr too
    high/low) and writes a Markdown/HTML report with figures to RUN_DIR/doctor (or --out).
    Raises DoctorError when a preflight check FAILs, so the command exits non-zero.

    Args:
        settings: what to check (its fields are this command's flags).
    """
    s = settings
    if s.run is not None:
        return run_postmortem(s.run, s.out)
    if s.only:
        unknown = [c for c in s.only if c not in CHECKS]
        if unknown:
            hints = "".join(suggest(c, CHECKS) for c in unknown)
            raise DoctorError(
                f"--only: unknown check(s) {', '.join(unknown)}{hints}; known: {', '.join(CHECKS)}"
            )
    results = run_preflight(s, out_dir=s.out or "out/doctor", only=s.only)
    failed = [r.name for r in results if r.status == "FAIL"]
    if failed:
        raise DoctorError(f"{len(failed)} check(s) failed: {', '.join(failed)} (see the table above)")
    return results
