"""Commands that join layers which do not import each other (``ultracram.cli``'s table points
here only for those): pretraining with the doctor's live monitor."""

from __future__ import annotations

from ultracram.train.pretrain_config import PretrainConfig, PretrainError


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
    from ultracram.doctor.monitors import Monitor
    from ultracram.train.pretrain import pretrain

    if not settings.data:
        raise PretrainError("--data is required: a directory made by `ultracram data prepare`")
    summary = pretrain(settings, resume=resume, monitor=Monitor)
    if summary.get("status") == "diverged":
        raise PretrainError(
            f"training diverged: {summary.get('divergence')}; summary.json and final/ in {settings.out} "
            "were written, but the model is not usable: start a new run with a lower --lr"
        )
    return summary
