"""Masked-LM pretraining on Lightning Fabric under a wall-clock or token budget.

Size (~660 lines): the preflight checks, the loop, its health recovery and its outputs
(summary, final checkpoint, divergence verdict, progress) are one workflow; the step, Fabric
setup and training states are in ``engine.py``. The preflight (~150 lines) is the next part to
move out (``train/preflight.py``) when this file grows again.

Shape (litgpt's): ``pretrain(config)`` -> ``setup`` (Fabric: devices, strategy, precision)
-> ``main`` (data, model, optimizer, resume) -> ``fit`` (the loop) -> ``validate``.
The same code runs on CPU, one GPU, DDP / FSDP over several GPUs and several nodes: Fabric's
launcher (or torchrun / SLURM, which Fabric detects) starts the processes; nothing here manages
processes by hand.

Recipes (``recipe="auto"`` picks by preset):

- ``cramming`` (Geiping & Goldstein 2022) for crammed / FFF / FNet / Switch presets: AdamW
  lr 1e-3, betas (0.9, 0.98), eps 1e-12, weight decay 0.01 (not on norms, biases or scalars),
  gradient clipping 0.5, the "budget-triangle" learning rate (25% of peak -> peak at 75% of the
  budget -> 0), a batch ramp by gradient accumulation to 8192 sequences at 60% of the budget,
  no dropout.
- ``bert`` (Devlin et al. 2019) for bert-* presets: AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-6,
  weight decay 0.01, clipping 1.0, linear warmup over 1% of the budget then linear decay,
  batch 256, 15% masking (the preset's mask_rate).

All resumable state is one training state in the engine's layout (``engine.save_state``):
model, optimizer, progress (step, data position, tokens, elapsed budget, the learning-rate scale
the health check lowers, recoveries), RNG states and the settings. Side effects (files, prints)
happen on rank zero only. Precision, compile, distribution and the FFF implementation are
applied by the engine (``setup_fabric``, ``prepare``) and nowhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ultracram.checkpoint import save_checkpoint
from ultracram.config import ModelConfig, get_preset
from ultracram.data.corpus import TokenShards, has_validation
from ultracram.data.mlm import mlm_batch
from ultracram.errors import optional_import
from ultracram.fileio import atomic_write_text
from ultracram.model import build_model, flops_per_token
from ultracram.progress import ProgressDisplay, hms
from ultracram.train import engine
from ultracram.train.engine import (
    model_loss,
    module_state,
    precision_name,
    prepare,
    raw_module,
    restore_state,
    save_state,
    setup_fabric,
    synchronize,
)
from ultracram.train.metrics import (
    MetricsLogger,
    divergence,
    memory_gb,
    peak_flops,
    plot_loss_curve,
    read_metrics,
)
from ultracram.train.optim import BudgetSchedule, accumulation_steps, build_optimizer
from ultracram.train.plan import cap_accumulation, plan_batch
from ultracram.train.pretrain_config import (
    RESUME_CHANGEABLE,
    Budget,
    PretrainConfig,
    PretrainError,
    parse_budget,
    resolve_recipe,
    resume_differences,
)
from ultracram.train.state import TrainStateError, latest_state, read_state_entry, state_step

# --------------------------------------------------------------------------------------------
# setup -> main -> fit -> validate
# --------------------------------------------------------------------------------------------


@dataclass
class FaultInjection:
    """Test hook: make the loss or the gradients non-finite at chosen steps (once each, or
    every time with ``repeat``), to exercise the health check."""

    nan_loss_steps: set[int] = field(default_factory=set)
    nan_grad_steps: set[int] = field(default_factory=set)
    always_nan_loss: bool = False
    repeat: bool = False
    after_step: Callable[[int], None] | None = None
    """Called with the step number after each completed step (and its checkpoint, if any)."""
    fired: set[tuple[str, int]] = field(default_factory=set)

    def hooks(self, step: int) -> dict[str, Callable]:
        """``loss_hook`` / ``grad_hook`` for ``engine.train_step`` at optimizer step ``step``."""

        def loss_hook(loss: torch.Tensor) -> torch.Tensor:
            return loss * float("nan") if self.fire("loss", step) else loss

        def grad_hook(model: nn.Module) -> None:
            if self.fire("grad", step):
                next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))

        return {"loss_hook": loss_hook, "grad_hook": grad_hook}

    def fire(self, what: str, step: int) -> bool:
        if what == "loss" and self.always_nan_loss:
            return True
        steps = self.nan_loss_steps if what == "loss" else self.nan_grad_steps
        if step in steps and (self.repeat or (what, step) not in self.fired):
            self.fired.add((what, step))
            return True
        return False


# A live monitor, e.g. ``ultracram.doctor.monitors.Monitor``: built as ``factory(model, every=N)``,
# told ``on_step(step, model, loss) -> findings`` after each step, then ``summary()`` and ``close()``.
# It is passed in (the CLI passes the doctor's), so training does not import the doctor.
MonitorFactory = Callable[..., Any]


def pretrain(
    config: PretrainConfig, *, resume: bool = False, faults: FaultInjection | None = None,
    monitor: MonitorFactory | None = None,
) -> dict:  # fmt: skip
    """Run (or, with ``resume``, continue) a pretraining run; returns the summary dict that is
    also written to ``<out>/summary.json`` (on rank zero). ``monitor``: the live monitor built
    when ``config.monitor_every`` > 0 (``ultracram.doctor.monitors.Monitor``)."""
    if not config.data:
        raise PretrainError("--data is required: a directory made by `ultracram data prepare`")
    if config.wandb:  # before any file is written: a missing package must not leave a half-started run
        optional_import("wandb", "--wandb (logging to Weights & Biases)")
    if config.monitor_every and monitor is None:
        raise PretrainError("monitor_every is set but no monitor was given: pass "
                            "monitor=ultracram.doctor.monitors.Monitor (the CLI does)")  # fmt: skip
    fit_batch = config.batch_size is None  # from the recipe: fitted to the budget (train/plan.py)
    config, previous = preflight(resolve_recipe(config), resume, planned_batch=fit_batch)
    fabric = setup(config)
    return fabric.launch(main, config, resume, faults, monitor, previous, fit_batch and not resume)


# Files a run writes in its --out directory; a new run (without --resume) refuses to start where
# any of them is, so that nothing of an earlier run is overwritten.
RUN_OUTPUTS = ("states", "pretrain_config.json", "metrics.csv", "summary.json", "final", "diverged.txt")


def preflight(
    config: PretrainConfig, resume: bool, planned_batch: bool = False
) -> tuple[PretrainConfig, dict[str, Any] | None]:
    """Every check that can be made before a file is written, so that bad input leaves the run
    directory as it was: ``--out`` usable, a new run not over an old one, ``--resume`` with the
    run's own settings (``RESUME_CHANGEABLE`` may differ), the shards readable, their sequences
    within the model's length and their token ids within the vocabulary. ``config`` has its
    recipe resolved. Returns ``config`` (a resumed run whose batch the plan chose, when
    ``planned_batch``, keeps that batch) and the settings stored with the run being resumed
    (None otherwise)."""
    out = Path(config.out)
    _check_out_dir(out)
    states_dir = out / "states"
    newest = latest_state(states_dir)
    previous = None
    if resume:
        if newest is None:
            raise PretrainError(f"--resume: no training state in {states_dir}; start without --resume")
        previous = stored_settings(newest, out)
        if planned_batch and previous and previous.get("batch_size"):
            config = dataclasses.replace(config, batch_size=int(previous["batch_size"]))
        diffs = resume_differences(previous or {}, config)
        if diffs:
            raise PretrainError(
                f"--resume: {newest} was written with other settings (stored -> new: {'; '.join(diffs)}); "
                f"a resumed run must keep them: only {', '.join(sorted(RESUME_CHANGEABLE))} may change. "
                f"Drop those flags (the run's settings are in {out / 'pretrain_config.json'}), or start a new "
                "run in another --out"
            )
    elif newest is not None:
        raise PretrainError(
            f"{out} already holds a run (states in {states_dir}); pass --resume to continue it, "
            "or choose another --out"
        )
    else:
        found = [name for name in RUN_OUTPUTS if (out / name).is_file() or _nonempty_dir(out / name)]
        if found:
            raise PretrainError(f"{out} already holds the outputs of a run ({', '.join(found)}) and no training "
                                "state to resume; choose another --out (or move them away)")  # fmt: skip
    shards = TokenShards(config.data)
    model_config_for(config, shards)
    check_token_ids(shards)
    if has_validation(shards):
        check_token_ids(TokenShards(config.data, split="validation"))
    return config, previous


def _nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_out_dir(out: Path) -> None:
    """``--out`` is a directory, or can be made one, and is writable."""
    if out.exists() and not out.is_dir():
        raise PretrainError(f"--out {out}: exists and is not a directory")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PretrainError(f"--out {out}: cannot be created, {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PretrainError(f"--out {out}: {existing} is not writable")


def stored_settings(state_path: Path, out: Path) -> dict[str, Any] | None:
    """The settings a run recorded: the ``config`` entry of its training state (read from the
    state's header, without its tensors), else ``OUT/pretrain_config.json``; None if neither."""

    try:
        config = read_state_entry(state_path, "config") or {}
    except TrainStateError:  # unreadable here: restore_state reports it, naming the file
        config = {}
    if config:
        return config
    path = out / "pretrain_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_token_ids(shards: TokenShards, chunk: int = 1 << 24) -> None:
    """Raise ``PretrainError`` naming the shard when a shard's sha256 differs from the one its
    manifest recorded (modified or damaged since ``data prepare``), or a token id is outside the
    vocabulary the model is built with (the manifest's ``vocab_size``): an embedding lookup
    would fail (or, on GPU, read garbage) mid-run. One read of each shard, in ``chunk``-token
    pieces that feed both the hash and the largest id."""
    for entry in shards.entries:
        n = int(entry["sequences"]) * shards.seq_len
        path = shards.directory / entry["file"]
        item = np.dtype(shards.dtype).itemsize
        raw = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.empty(0, np.uint8)
        digest, top, limit = hashlib.sha256(), -1, n * item  # bytes of the manifest's n tokens
        for i in range(0, len(raw), chunk * item):  # pieces of whole tokens
            piece = np.asarray(raw[i : i + chunk * item])
            digest.update(piece)
            ids = piece[: max(0, min(len(piece), limit - i)) // item * item].view(shards.dtype)
            if ids.size:
                top = max(top, int(ids.max()))
        if entry.get("sha256") and digest.hexdigest() != entry["sha256"]:
            raise PretrainError(f"{path}: its sha256 differs from the one recorded in "
                                f"{shards.directory / 'manifest.json'}: the shard was modified or damaged "
                                "since `ultracram data prepare`; prepare the data again")  # fmt: skip
        if top >= shards.vocab_size:
            raise PretrainError(
                f"{path}: token id {top} is outside the vocabulary ({shards.vocab_size} ids, "
                f"vocab_size in {shards.directory / 'manifest.json'}); the shards do not match their "
                "manifest: prepare them again with `ultracram data prepare`"
            )


def setup(config: PretrainConfig):
    """Fabric for ``config``'s devices, strategy and precision (``engine.setup_fabric``)."""
    return setup_fabric(
        config.accelerator, config.devices, config.num_nodes, config.strategy, config.precision
    )


@dataclass
class Progress:
    """Where the run is; saved in every training state."""

    step: int = 0  # optimizer steps taken
    micro_step: int = 0  # data position: micro batches consumed over all ranks (see fit)
    tokens: int = 0  # tokens trained on (global)
    elapsed_s: float = 0.0  # training wall time, across resumes
    lr_scale: float = 1.0  # lowered by each health recovery
    recoveries: int = 0
    micro_seconds: float = 0.0  # measured seconds per micro batch (smoothed); 0: not yet measured


def main(
    fabric, config: PretrainConfig, resume: bool, faults: FaultInjection | None, monitor_factory: MonitorFactory | None,
    previous: dict[str, Any] | None = None, fit_batch: bool = False,
) -> dict:  # fmt: skip
    """Data, model, optimizer, batch plan, resume, loop, validation, outputs. ``previous``: the
    settings stored with the run being resumed (``preflight``), to apply a new ``lr`` /
    ``precision``. ``fit_batch``: the batch comes from the recipe and is fitted to the budget."""

    out = Path(config.out)
    states_dir = out / "states"
    if resume and latest_state(states_dir) is None:
        raise PretrainError(f"--resume: no training state in {states_dir}; start without --resume")
    if not resume and latest_state(states_dir) is not None:
        raise PretrainError(
            f"{out} already holds a run (states in {states_dir}); pass --resume to continue it, "
            "or choose another --out"
        )
    shards = TokenShards(config.data)
    model_config = model_config_for(config, shards)
    budget = parse_budget(config.budget)

    fabric.seed_everything(config.seed)
    with fabric.init_module(empty_init=False):
        model = build_model(model_config, "mlm")
    optimizer = build_optimizer(model, lr=config.lr, betas=(config.beta1, config.beta2),
                                eps=config.eps, weight_decay=config.weight_decay)  # fmt: skip
    model, optimizer = prepare(
        fabric, model, optimizer, fff=config.fff_implementation, compile=config.compile
    )

    progress = Progress()
    if budget.kind == "time" and not resume:  # seconds per micro batch: the plan's and the budget cap's
        t0 = time.perf_counter()
        progress.micro_seconds = probe_micro_seconds(fabric, model, shards, config, model_config)
        progress.elapsed_s += _synced_time(
            fabric, time.perf_counter() - t0
        )  # the probe is paid from the budget
    plan = plan_batch(budget, recipe_batch=config.batch_size, explicit=not fit_batch, micro_batch=config.micro_batch_size,
                      world=fabric.world_size, seq_len=shards.seq_len, data_sequences=len(shards),
                      ramp_until=config.batch_ramp_until, micro_seconds=progress.micro_seconds or None)  # fmt: skip
    if not resume:
        config = dataclasses.replace(config, batch_size=plan.batch_size)
        fabric.print(plan.summary(budget, config.micro_batch_size, fabric.world_size))
        if plan.warning():
            fabric.print(f"warning: {plan.warning()}")
    start = latest_state(states_dir) if resume else None
    if start is not None:
        progress = _restore(fabric, start, model, optimizer)
        fabric.print(f"resumed from {start} (step {progress.step}, {progress.tokens:,} tokens, "
                     f"{progress.elapsed_s / 60:.1f} min of budget used)")  # fmt: skip
        _apply_resume_changes(fabric, config, previous or {}, progress)
    else:
        _save(fabric, states_dir, config, model, optimizer, progress)  # step 0: the rollback floor

    logger = None
    if fabric.global_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pretrain_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        logger = MetricsLogger(out, resume_step=progress.step if resume else None,
                               tensorboard=config.tensorboard, wandb=config.wandb,
                               run_config=config.to_dict())  # fmt: skip
    monitor = None
    if config.monitor_every and monitor_factory is not None and fabric.global_rank == 0:
        # Hooks on rank zero only: they observe activations and never change the computation.
        monitor = monitor_factory(raw_module(model), every=config.monitor_every)
    try:
        fit(fabric, config, budget, model, optimizer, shards, model_config, progress, logger, faults, monitor)
        val_loss = validate(fabric, config, model, shards, model_config)
    finally:
        if logger is not None:
            logger.close()
        if monitor is not None:
            atomic_write_text(
                out / "monitor.json", json.dumps(monitor.summary(), indent=2, default=str) + "\n"
            )
            monitor.close()
    return _finish(fabric, config, model, model_config, shards, progress, val_loss, budget)


def _apply_resume_changes(
    fabric, config: PretrainConfig, previous: dict[str, Any], progress: Progress
) -> None:
    """A new ``lr`` on resume replaces the learning rate the health recoveries lowered (scale back
    to 1) and resets their count; a new precision resets the count (``RESUME_CHANGEABLE``)."""
    if "lr" in previous and previous["lr"] != config.lr:
        fabric.print(f"--lr {config.lr:g} (was {previous['lr']:g}, x{progress.lr_scale:.3g} after "
                     f"{progress.recoveries} recoveries): learning rate scale and recovery count reset")  # fmt: skip
        progress.lr_scale, progress.recoveries = 1.0, 0
    elif "precision" in previous and previous["precision"] != config.precision and progress.recoveries:
        fabric.print(f"--precision {config.precision} (was {previous['precision']}): recovery count reset")
        progress.recoveries = 0


def model_config_for(config: PretrainConfig, shards) -> ModelConfig:
    """The preset with the overrides, the shards' vocabulary and the chosen mask rate."""
    overrides = dict(config.model)
    overrides["vocab_size"] = shards.vocab_size
    if config.mask_rate is not None:
        overrides["mask_rate"] = config.mask_rate
    model_config = get_preset(config.preset, **overrides)
    if shards.seq_len > model_config.max_seq_len:
        raise PretrainError(f"{config.data}: sequences of {shards.seq_len} tokens exceed the model's "
                            f"max_seq_len {model_config.max_seq_len}")  # fmt: skip
    return model_config


def save_initial_checkpoint(config: PretrainConfig, directory: str | Path) -> Path:
    """The model ``pretrain(config)`` starts from (the preset with its overrides, the shards'
    vocabulary, the same seed: the weights of its step-0 state) as a checkpoint with the
    shards' tokenizer in ``directory``: the no-pretraining control that the study and the
    budget curve fine-tune next to the pretrained model, to show what pretraining bought."""
    if not config.data:
        raise PretrainError("--data is required: a directory made by `ultracram data prepare`")
    shards = TokenShards(config.data)
    model_config = model_config_for(config, shards)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(config.seed)  # what fabric.seed_everything(config.seed) does for torch
        model = build_model(model_config, "mlm")
    extra = {"pretrain": {"preset": config.preset, "seed": config.seed, "steps": 0, "tokens": 0,
                          "control": "no pretraining: the initial weights"}}  # fmt: skip
    return save_checkpoint(model, directory, tokenizer_path=shards.tokenizer_path, extra=extra)


class _MicroBatches:
    """The micro batches of one optimizer step, built on access (``engine.train_step`` takes any
    sequence): ``units`` are the data positions (``mlm_batch`` steps) of this rank's micro batches."""

    def __init__(self, fabric, shards, config: PretrainConfig, mask_rate: float, units: list[int],
                 on_micro: Callable[[int, int], None] | None = None):  # fmt: skip
        self.fabric, self.shards, self.config, self.mask_rate, self.units = (
            fabric,
            shards,
            config,
            mask_rate,
            units,
        )
        self.on_micro = on_micro  # told (index, count) as each micro batch is built: progress within a step

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, a: int) -> dict[str, torch.Tensor]:
        if self.on_micro is not None:
            self.on_micro(a, len(self.units))
        batch = mlm_batch(self.shards, step=self.units[a], batch_size=self.config.micro_batch_size,
                          seed=self.config.seed, mask_rate=self.mask_rate)  # fmt: skip
        return {k: self.fabric.to_device(torch.as_tensor(v)) for k, v in batch.items()}


def fit(
    fabric, config: PretrainConfig, budget: Budget, model, optimizer, shards, model_config: ModelConfig,
    progress: Progress, logger, faults: FaultInjection | None, monitor=None,
) -> None:  # fmt: skip
    """The training loop: one iteration = one optimizer step of ``accumulation`` micro batches.
    ``monitor``: an ``ultracram.doctor.monitors.Monitor`` told about every finished step."""

    world = fabric.world_size
    micro_global = config.micro_batch_size * world
    schedule = BudgetSchedule(config.schedule, peak_at=config.lr_peak_at, start=config.lr_start)
    seq_len = shards.seq_len
    train_flops_per_token = 3 * flops_per_token(model_config, seq_len)["total"]  # fwd + 2x fwd for bwd
    peak = config.peak_flops or peak_flops(fabric.device)[0]
    states_dir = Path(config.out) / "states"
    last_save = progress.elapsed_s
    window = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}
    bar = _ProgressBar(budget, enabled=config.progress and fabric.global_rank == 0)
    last_bad: dict[str, Any] = {}

    while True:
        fraction = budget.fraction(progress.elapsed_s, progress.tokens, progress.step)
        if fraction >= 1.0:
            break
        t0 = time.perf_counter()
        accumulation = accumulation_steps(fraction, config.batch_size, config.micro_batch_size,
                                          config.batch_ramp_until, world)  # fmt: skip
        # The step must end within the budget: a time budget stops within about one micro batch.
        accumulation = cap_accumulation(accumulation, budget, elapsed_s=progress.elapsed_s, tokens=progress.tokens,
                                        micro_seconds=progress.micro_seconds or None,
                                        tokens_per_micro=micro_global * seq_len)  # fmt: skip
        lr = config.lr * schedule(fraction) * progress.lr_scale
        # The data unit is one per-device micro batch, masked on its own: unit u is
        # mlm_batch(step=u), and micro batch a of this step on rank r is unit
        # base + a*world + r. So every unit has the exact mask count the sparse head expects,
        # and a run's batches depend only on the micro batch size and the global batch,
        # not on how many devices share them (1 device x 4 accumulation = 2 x 2 = 4 x 1).
        batches = _MicroBatches(fabric, shards, config, model_config.mask_rate,
                                [progress.micro_step + a * world + fabric.global_rank for a in range(accumulation)],
                                on_micro=lambda a, n, t0=t0: bar.micro(a, n, progress, t0))  # fmt: skip
        result = engine.train_step(fabric, model, optimizer, batches, grad_clip=config.grad_clip, lr=lr,
                            **(faults.hooks(progress.step) if faults is not None else {}))  # fmt: skip
        loss_value, norm = result.loss, result.grad_norm
        step_time = time.perf_counter() - t0
        if not result.finite:
            progress.elapsed_s += _synced_time(fabric, step_time)
            last_bad = {"step": progress.step + 1, "loss": loss_value, "grad_norm": norm, "lr": lr}
            _recover(fabric, config, states_dir, model, optimizer, progress, last_bad, logger)
            continue

        step_tokens = accumulation * micro_global * seq_len
        progress.step += 1
        progress.micro_step += accumulation * world
        progress.tokens += step_tokens
        step_time = _synced_time(fabric, time.perf_counter() - t0)
        progress.elapsed_s += step_time
        # Seconds per micro batch for the next step's budget cap: quick to rise (a slower step is
        # believed at once, so the budget holds), slow to fall (smoothed over steps).
        measured = step_time / accumulation
        progress.micro_seconds = max(measured, 0.7 * progress.micro_seconds + 0.3 * measured)
        if monitor is not None:
            _report_findings(
                fabric, Path(config.out), monitor.on_step(progress.step, raw_module(model), loss_value)
            )
        window["loss"] += loss_value
        window["n"] += 1
        window["tokens"] += step_tokens
        window["time"] += step_time
        fraction = budget.fraction(progress.elapsed_s, progress.tokens, progress.step)
        done = fraction >= 1.0
        if progress.step % _log_every(config, progress.step) == 0 or done:
            tokens_per_s = window["tokens"] / max(window["time"], 1e-9)
            row = {
                "step": progress.step, "tokens": progress.tokens, "elapsed_s": progress.elapsed_s,
                "fraction": fraction, "loss": window["loss"] / window["n"], "lr": lr,
                "batch_size": accumulation * micro_global, "grad_norm": norm, "tokens_per_s": tokens_per_s,
                "mfu": tokens_per_s * train_flops_per_token / peak if peak else math.nan,
                "memory_gb": memory_gb(fabric.device),
            }  # fmt: skip
            if logger is not None:
                logger.log(row)
            bar.update(fraction, progress, row)
            window = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}
        due_time = progress.elapsed_s - last_save >= config.checkpoint_every_min * 60
        due_steps = config.checkpoint_every_steps and progress.step % config.checkpoint_every_steps == 0
        if done or due_time or due_steps:
            _save(fabric, states_dir, config, model, optimizer, progress)
            last_save = progress.elapsed_s
        if faults is not None and faults.after_step is not None:
            faults.after_step(progress.step)
    bar.close()


def _log_every(config: PretrainConfig, step: int) -> int:
    """Steps between metrics rows: the setting, or every step for the first 100 then every 10."""
    if config.log_every_steps is not None:
        return config.log_every_steps
    return 1 if step <= 100 else 10


def probe_micro_seconds(fabric, model, shards, config: PretrainConfig, model_config: ModelConfig,
                        repeats: int = 2) -> float:  # fmt: skip
    """Seconds one micro batch takes (forward + backward), the fastest of ``repeats`` after a
    warm-up, on a batch training never uses; gradients and random state are left as they were,
    so the run is the same with or without the probe. Rank zero's figure on every rank."""
    batch = mlm_batch(shards, step=0, batch_size=config.micro_batch_size, seed=config.seed + 20_011,
                      mask_rate=model_config.mask_rate)  # fmt: skip
    batch = {k: fabric.to_device(torch.as_tensor(v)) for k, v in batch.items()}
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    best = math.inf
    for i in range(repeats + 1):  # the first pass warms up (allocations, kernels, compile)
        synchronize(fabric.device)
        t0 = time.perf_counter()
        terms = model_loss(model, batch)
        fabric.backward(terms.task_loss if terms.aux is None else terms.task_loss + terms.aux)
        synchronize(fabric.device)
        if i:
            best = min(best, time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state_all(rng[1])
    return _synced_time(fabric, best)


def _report_findings(fabric, out: Path, findings: list) -> None:
    """Print the doctor's live findings and append them to OUT/monitor.jsonl."""
    if not findings:
        return
    with open(out / "monitor.jsonl", "a", encoding="utf-8") as f:
        for finding in findings:
            f.write(json.dumps(dataclasses.asdict(finding), default=str) + "\n")
            fabric.print(f"doctor [{finding.severity}] {finding.message}")


def _synced_time(fabric, seconds: float) -> float:
    """Rank zero's clock decides, so that every rank takes the same budget decisions."""
    if fabric.world_size == 1:
        return seconds
    return float(fabric.broadcast(seconds, src=0))


def _recover(fabric, config, states_dir, model, optimizer, progress: Progress, bad: dict, logger) -> None:
    """Non-finite loss or gradient: roll back to the newest state, lower the learning rate."""
    progress.recoveries += 1
    if progress.recoveries > config.max_recoveries:
        last_good = latest_state(states_dir)
        lower = config.lr * progress.lr_scale * config.nan_lr_factor
        precision = precision_name(fabric)
        other = "" if precision == "32-true" else f" (or --precision 32-true instead of {precision})"
        report = (
            f"training diverged: loss {bad['loss']:.4g}, gradient norm {bad['grad_norm']:.4g} at step "
            f"{bad['step']} (lr {bad['lr']:.3g}); this is the {progress.recoveries}th non-finite step and "
            f"max_recoveries is {config.max_recoveries}. Each time the run rolled back to its last good "
            f"state and multiplied the learning rate by {config.nan_lr_factor}. Continue from the last good "
            f"state{f' (step {state_step(last_good)})' if last_good else ''} with a lower learning rate: "
            f"--resume --lr {lower:.3g}{other}, which resets the lowered learning rate and the recovery "
            "count; if it fails again, check the data."
        )
        if fabric.global_rank == 0:
            (Path(config.out) / "diverged.txt").write_text(report + "\n")
        raise PretrainError(report)
    path = latest_state(states_dir)
    if path is None:  # cannot happen: a state is written before the first step
        raise PretrainError(
            f"non-finite loss at step {bad['step']} and no state in {states_dir} to roll back to"
        )
    keep = (progress.elapsed_s, progress.lr_scale * config.nan_lr_factor, progress.recoveries)
    restored = _restore(fabric, path, model, optimizer)
    # Budget time already spent stays spent; the lowered learning rate and the count persist.
    progress.__dict__.update(dataclasses.asdict(restored))
    progress.elapsed_s, progress.lr_scale, progress.recoveries = keep
    fabric.print(
        f"non-finite {'loss' if not math.isfinite(bad['loss']) else 'gradient'} at step {bad['step']} "
        f"(loss {bad['loss']:.4g}, grad norm {bad['grad_norm']:.4g}): rolled back to step "
        f"{state_step(path)}, learning rate x{progress.lr_scale:.3g} (recovery {progress.recoveries}/"
        f"{config.max_recoveries})"
    )
    if logger is not None:
        logger.truncate(progress.step)
        logger.log_scalar("health/recoveries", progress.recoveries, progress.step)


def _save(fabric, states_dir: Path, config, model, optimizer, progress: Progress) -> None:
    save_state(fabric, states_dir, progress.step, model, optimizer, dataclasses.asdict(progress),
               config=config.to_dict(), keep_last=config.keep_last)  # fmt: skip


def _restore(fabric, path: Path, model, optimizer) -> Progress:
    return Progress(**restore_state(fabric, path, model, optimizer))


@torch.no_grad()
def validate(fabric, config: PretrainConfig, model, shards, model_config: ModelConfig) -> float:
    """MLM loss on ``val_batches`` fixed micro batches, whatever the number of devices: rank r
    takes units r, r + world, ...; every rank runs the same number of forwards (FSDP gathers
    weights in each), a unit past the end counting zero.

    The data (``validation_source`` names it for the summary): the prepared validation split
    (``TokenShards(split="validation")``, whole documents ``data prepare`` held out) when the
    shards have one, units 0 .. val_batches-1 drawn with a seed fixed across runs (10_007), so
    runs of any seed are scored on the same rows and masks: held-out text, a measure of
    generalisation. Without one (older prepares, ``--validation_fraction 0``), the training
    shards with fresh masks (units of a seed training never uses, seed + 10_007): that measures
    the training distribution, not generalisation (GLUE does that)."""

    if config.val_batches <= 0:
        return math.nan
    if has_validation(shards):
        data, seed = TokenShards(shards.directory, split="validation"), 10_007
    else:
        data, seed = shards, config.seed + 10_007

    model.eval()
    world = fabric.world_size
    total = torch.zeros((), device=fabric.device)
    count = torch.zeros((), device=fabric.device)
    for i in range(math.ceil(config.val_batches / world)):
        unit = i * world + fabric.global_rank
        batch = mlm_batch(data, step=min(unit, config.val_batches - 1), batch_size=config.micro_batch_size,
                          seed=seed, mask_rate=model_config.mask_rate)  # fmt: skip
        batch = {k: fabric.to_device(torch.as_tensor(v)) for k, v in batch.items()}
        terms = model_loss(model, batch)
        weight = float(unit < config.val_batches)
        total += weight * terms.task_loss * terms.count
        count += weight * terms.count
    model.train()
    total = fabric.all_reduce(total, reduce_op="sum")
    count = fabric.all_reduce(count.float(), reduce_op="sum")
    return float(total / count.clamp_min(1.0))


def validation_source(shards_dir) -> str:
    """What ``validate`` measures on for the data ``shards_dir`` (a prepared directory or its
    ``TokenShards``): "validation split" or "training shards (no validation split)"."""
    return "validation split" if has_validation(shards_dir) else "training shards (no validation split)"


def _finish(fabric, config, model, model_config, shards, progress: Progress, val_loss, budget) -> dict:
    """Final model directory (the foundation's checkpoint format), summary, loss curve."""
    state = module_state(fabric, model)
    out = Path(config.out)
    summary: dict[str, Any] = {}
    if fabric.global_rank == 0:
        final = build_model(model_config, "mlm")  # plain CPU module: no Fabric / compile / FSDP wrappers
        final.load_state_dict(state)
        rows = read_metrics(out / "metrics.csv")
        tail = rows[-max(1, len(rows) // 10) :]
        summary = {
            "preset": config.preset, "recipe": config.recipe, "budget": str(budget),
            "steps": progress.step, "tokens": progress.tokens, "elapsed_s": round(progress.elapsed_s, 2),
            "recoveries": progress.recoveries,
            "first_loss": rows[0]["loss"] if rows else math.nan,
            "final_loss": sum(r["loss"] for r in tail) / len(tail) if tail else math.nan,
            "val_loss": val_loss, "val_source": validation_source(shards), "ln_vocab": math.log(model_config.vocab_size),
            "tokens_per_s": progress.tokens / max(progress.elapsed_s, 1e-9),
            "devices": fabric.world_size, "precision": precision_name(fabric),
            "batch_size": config.batch_size, "micro_batch_size": config.micro_batch_size,
        }  # fmt: skip
        if budget.kind == "time":  # a time budget stops within about one micro batch: say by how much
            summary["budget_s"] = budget.amount
            summary["overrun_s"] = round(progress.elapsed_s - budget.amount, 2)
            summary["micro_seconds"] = round(progress.micro_seconds, 4)
        save_checkpoint(final, out / "final", tokenizer_path=shards.tokenizer_path,
                        extra={"pretrain": {**summary, "config": config.to_dict()}})  # fmt: skip
        plot_loss_curve(out / "metrics.csv", out / "loss_curve.png",
                        title=f"{config.preset}: {progress.tokens / 1e6:.1f}M tokens, {budget}")  # fmt: skip
        reason = divergence(summary["first_loss"], summary["final_loss"], summary["ln_vocab"], val_loss)
        summary["status"] = "diverged" if reason else "ok"
        if reason:
            summary["divergence"] = reason
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        over = f" ({summary['overrun_s']:+.1f} s over the budget)" if "overrun_s" in summary else ""
        fabric.print(
            f"done: {progress.step} steps, {progress.tokens:,} tokens in {progress.elapsed_s / 60:.2f} min{over}; "
            f"MLM loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f} (val {val_loss:.3f} on the "
            f"{summary['val_source']}, "
            f"ln V = {summary['ln_vocab']:.3f}); model: {out / 'final'}"
        )
        if reason:
            fabric.print(f"DIVERGED: {reason}; the model in {out / 'final'} is not usable (try a lower --lr)")
    status = fabric.broadcast({k: summary.get(k) for k in ("status", "divergence")}, src=0)
    fabric.barrier()
    return summary if fabric.global_rank == 0 else status


class _ProgressBar:
    """Progress over the budget fraction with loss, tokens/s and budget left
    (``ultracram.progress``: a bar on a terminal, plain lines in a log), and within a step, the
    micro batch being accumulated (a large batch takes minutes per step on a CPU)."""

    def __init__(self, budget: Budget, enabled: bool):
        self.budget = budget
        # The budget fraction of a resumed run does not start at 0: budget left is computed
        # here, not estimated by the display.
        self.display = ProgressDisplay("pretraining", 1.0, enabled=enabled, eta=False)
        self.last = ""  # the latest step's figures

    def micro(self, index: int, count: int, progress: Progress, t0: float) -> None:
        if not self.display.enabled or count < 2:
            return
        elapsed = progress.elapsed_s + time.perf_counter() - t0
        fraction = self.budget.fraction(elapsed, progress.tokens, progress.step)
        self.display.update(
            fraction, f"step {progress.step + 1}: micro batch {index + 1}/{count}  {self.last}"
        )

    def update(self, fraction: float, progress: Progress, row: dict) -> None:
        if not self.display.enabled:
            return
        rate = row["tokens_per_s"]
        if self.budget.kind == "time":
            left = self.budget.amount - progress.elapsed_s
        elif self.budget.kind == "tokens":
            left = (self.budget.amount - progress.tokens) / max(rate, 1e-9)
        else:
            left = progress.elapsed_s / max(progress.step, 1) * (self.budget.amount - progress.step)
        info = (f"step {progress.step} loss {row['loss']:.3f} lr {row['lr']:.2e} bs {row['batch_size']} "
                f"{rate:,.0f} tok/s  budget left {hms(left)}")  # fmt: skip
        self.last = f"loss {row['loss']:.3f}"
        self.display.update(fraction, info)

    def close(self) -> None:
        self.display.close()


__all__ = [
    "Budget",
    "FaultInjection",
    "PretrainConfig",
    "PretrainError",
    "fit",
    "main",
    "parse_budget",
    "preflight",
    "pretrain",
    "save_initial_checkpoint",
    "setup",
    "validate",
    "validation_source",
]
