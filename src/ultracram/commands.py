"""Commands that join layers which do not import each other (``ultracram.cli``'s table points
here only for those): pretraining with the doctor's live monitor."""

from __future__ import annotations

from pathlib import Path

from ultracram.settings import suggest
from ultracram.train.pretrain_config import PretrainConfig, PretrainError


def resume_hint(out: Path) -> str:
    """What an interrupted run kept, and the command that continues it."""
    from ultracram.train.state import latest_state, state_step

    newest = latest_state(out / "states")
    if newest is None:
        return f"no training state was written yet in {out}; run the same command again to start over"
    return (f"the newest training state is {newest} (step {state_step(newest)}); continue with: "
            f"ultracram pretrain --config {out / 'pretrain_config.json'} --resume")  # fmt: skip


def check_data_dir(data: Path) -> None:
    """``--data`` is a directory of token shards (it has a manifest.json), else an error that
    names a sibling directory of shards with a close name."""
    if (data / "manifest.json").is_file():
        return
    parent = data.parent if data.parent.is_dir() else None
    shards = [p.name for p in parent.iterdir() if (p / "manifest.json").is_file()] if parent else []
    raise PretrainError(f"--data {data}: no manifest.json; expected a directory made by `ultracram data "
                        f"prepare`{suggest(data.name, shards)}")  # fmt: skip


def pretrain_command(settings: PretrainConfig, resume: bool = False) -> dict:
    """masked-LM pretraining on Lightning Fabric under a time, token or step budget

    MLM pretraining of a preset on token shards (ultracram data prepare) until a budget is
    spent: wall-clock time (24h, 30m), tokens (50M-tokens) or steps (300-steps). CPU, one GPU,
    DDP or FSDP through Fabric (several nodes: launch under torchrun or SLURM). Checkpoints are
    atomic; --resume continues exactly. Settings: recipe defaults < --config FILE (YAML or
    JSON; a run's OUT/pretrain_config.json reproduces it) < flags. None means "from the recipe".

    Args:
        settings: the run's settings (their fields are this command's flags).
        resume: continue the run in --out from its newest training state; only the budget, lr,
            logging, checkpointing, health and device settings may differ from the run's.
    """
    if not settings.data:
        raise PretrainError("--data is required: a directory made by `ultracram data prepare`")
    check_data_dir(Path(settings.data))  # before torch and Lightning load: a typo fails in a second

    from ultracram.doctor.monitors import Monitor
    from ultracram.train.pretrain import pretrain

    try:
        summary = pretrain(settings, resume=resume, monitor=Monitor)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(resume_hint(Path(settings.out))) from None
    if summary.get("status") == "diverged":
        raise PretrainError(
            f"training diverged: {summary.get('divergence')}; summary.json and final/ in {settings.out} "
            "were written, but the model is not usable: start a new run with a lower --lr"
        )
    return summary
