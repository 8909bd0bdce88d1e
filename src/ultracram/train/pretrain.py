"""Masked-LM pretraining on Lightning Fabric under a wall-clock or token budget.

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

All resumable state lives in one dict (``_train_state``): model, optimizer, schedule (the
learning-rate scale the health check lowers), progress (step, data position, tokens, elapsed
budget, recoveries) and RNG states. Side effects (files, prints) happen on rank zero only.
Precision, compile and distribution are decided in ``setup`` and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultracram.config import ModelConfig, get_preset
from ultracram.fileio import atomic_write_text
from ultracram.progress import ProgressDisplay, hms
from ultracram.train.optim import (
    BudgetSchedule,
    accumulation_steps,
    build_optimizer,
    set_learning_rate,
)
from ultracram.train.pretrain_config import (
    Budget,
    PretrainConfig,
    PretrainError,
    config_from_args,
    parse_budget,
    resolve_recipe,
)
from ultracram.train.state import (
    capture_rng_state,
    latest_state,
    load_train_state,
    restore_rng_state,
    save_train_state,
    state_step,
)

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

    def fire(self, what: str, step: int) -> bool:
        if what == "loss" and self.always_nan_loss:
            return True
        steps = self.nan_loss_steps if what == "loss" else self.nan_grad_steps
        if step in steps and (self.repeat or (what, step) not in self.fired):
            self.fired.add((what, step))
            return True
        return False


def pretrain(config: PretrainConfig, *, resume: bool = False, faults: FaultInjection | None = None) -> dict:
    """Run (or, with ``resume``, continue) a pretraining run; returns the summary dict that is
    also written to ``<out>/summary.json`` (on rank zero)."""
    config.check()
    config = resolve_recipe(config)
    fabric = setup(config)
    return fabric.launch(main, config, resume, faults)


def setup(config: PretrainConfig):
    """The one place where devices, distribution and precision are chosen."""
    from lightning.fabric import Fabric

    accelerator = config.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    precision = config.precision
    if precision == "auto":
        if accelerator == "cuda":
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    strategy: Any = config.strategy
    if strategy == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        from ultracram.model.encoder import Block

        # Shard at transformer-block granularity: each block's weights are gathered only while
        # it runs (the usual FSDP wrap policy for transformers).
        strategy = FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    devices = config.devices if config.devices == "auto" else int(config.devices)
    if devices == "auto" and accelerator == "cpu":
        devices = 1  # "auto" on CPU would start one process per core; ask explicitly for DDP on CPU
    return Fabric(accelerator=accelerator, devices=devices, num_nodes=config.num_nodes,
                  strategy=strategy, precision=precision)  # fmt: skip


@dataclass
class Progress:
    """Where the run is; saved in every training state."""

    step: int = 0  # optimizer steps taken
    micro_step: int = 0  # data position: micro batches consumed over all ranks (see fit)
    tokens: int = 0  # tokens trained on (global)
    elapsed_s: float = 0.0  # training wall time, across resumes
    lr_scale: float = 1.0  # lowered by each health recovery
    recoveries: int = 0


def main(fabric, config: PretrainConfig, resume: bool, faults: FaultInjection | None) -> dict:
    from ultracram.data.corpus import TokenShards

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
    from ultracram.model import build_model

    with fabric.init_module(empty_init=False):
        model = build_model(model_config, "mlm")
    select_fff_implementation(model, config.fff_implementation, fabric.device)
    optimizer = build_optimizer(model, lr=config.lr, betas=(config.beta1, config.beta2),
                                eps=config.eps, weight_decay=config.weight_decay)  # fmt: skip
    if config.compile:
        # Compiled before setup: Fabric re-applies the compilation around its own wrapper.
        model = torch.compile(model)
    model, optimizer = fabric.setup(model, optimizer)

    progress = Progress()
    start = latest_state(states_dir) if resume else None
    if start is not None:
        progress = _restore(fabric, start, model, optimizer)
        fabric.print(f"resumed from {start} (step {progress.step}, {progress.tokens:,} tokens, "
                     f"{progress.elapsed_s / 60:.1f} min of budget used)")  # fmt: skip
    else:
        _save(fabric, states_dir, config, model, optimizer, progress)  # step 0: the rollback floor

    logger = None
    if fabric.global_rank == 0:
        from ultracram.train.metrics import MetricsLogger

        out.mkdir(parents=True, exist_ok=True)
        (out / "pretrain_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        logger = MetricsLogger(out, resume_step=progress.step if resume else None,
                               tensorboard=config.tensorboard, wandb=config.wandb,
                               run_config=config.to_dict())  # fmt: skip
    monitor = None
    if config.monitor_every and fabric.global_rank == 0:
        from ultracram.doctor.monitors import Monitor

        # Hooks on rank zero only: they observe activations and never change the computation.
        monitor = Monitor(_raw(model), every=config.monitor_every)
    try:
        fit(fabric, config, budget, model, optimizer, shards, model_config, progress, logger, faults, monitor)
        val_loss = validate(fabric, config, model, shards, model_config)
    finally:
        if logger is not None:
            logger.close()
        if monitor is not None:
            atomic_write_text(out / "monitor.json", json.dumps(monitor.summary(), indent=2, default=str) + "\n")
            monitor.close()
    return _finish(fabric, config, model, model_config, shards, progress, val_loss, budget)


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


def select_fff_implementation(model: nn.Module, name: str, device: torch.device) -> None:
    """Point every FFF layer at one implementation. ``auto``: the fastest *trainable* one for
    the device (``ultracram.kernels.default_training_implementation``: the conditional
    forward+backward kernels where numba / Triton are there, else ``gather``)."""
    from ultracram.kernels import default_training_implementation
    from ultracram.model import FastFeedForward

    if name == "auto":
        name = default_training_implementation(device)
    for m in model.modules():
        if isinstance(m, FastFeedForward):
            m.implementation = name


def fit(
    fabric, config: PretrainConfig, budget: Budget, model, optimizer, shards, model_config: ModelConfig,
    progress: Progress, logger, faults: FaultInjection | None, monitor=None,
) -> None:  # fmt: skip
    """The training loop: one iteration = one optimizer step of ``accumulation`` micro batches.
    ``monitor``: an ``ultracram.doctor.monitors.Monitor`` told about every finished step."""
    from ultracram.data.mlm import mlm_batch
    from ultracram.model import flops_per_token
    from ultracram.train.metrics import memory_gb, peak_flops

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
        accumulation = accumulation_steps(fraction, config.batch_size, micro_global, config.batch_ramp_until)
        lr = config.lr * schedule(fraction) * progress.lr_scale
        set_learning_rate(optimizer, lr)
        loss_sum = torch.zeros((), device=fabric.device)
        for a in range(accumulation):
            # The data unit is one per-device micro batch, masked on its own: unit u is
            # mlm_batch(step=u), and micro batch a of this step on rank r is unit
            # base + a*world + r. So every unit has the exact mask count the sparse head expects,
            # and a run's batches depend only on the micro batch size and the global batch,
            # not on how many devices share them (1 device x 4 accumulation = 2 x 2 = 4 x 1).
            unit = progress.micro_step + a * world + fabric.global_rank
            batch = mlm_batch(shards, step=unit, batch_size=config.micro_batch_size, seed=config.seed,
                              mask_rate=model_config.mask_rate)  # fmt: skip
            batch = {k: fabric.to_device(torch.as_tensor(v)) for k, v in batch.items()}
            with fabric.no_backward_sync(model, enabled=a < accumulation - 1):
                local_sum, local_count, aux = _mlm_loss_terms(model, batch)
                if faults is not None and faults.fire("loss", progress.step):
                    local_sum = local_sum * float("nan")
                # Normalise by the masked count over *all* ranks, so a step's gradient is the
                # gradient of the global mean loss however the masks fall across ranks (DDP
                # averages gradients over ranks, hence the factor world).
                count = fabric.all_reduce(local_count.float(), reduce_op="sum").clamp_min(1.0)
                loss = world * local_sum / count
                if aux is not None:
                    loss = loss + aux  # already weighted (Encoder.aux_loss)
                fabric.backward(loss / accumulation)
            loss_sum += (local_sum / count).detach()
        if faults is not None and faults.fire("grad", progress.step):
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
        loss_value = float(fabric.all_reduce(loss_sum, reduce_op="sum")) / accumulation
        norm = _clip(fabric, model, optimizer, config.grad_clip)
        step_time = time.perf_counter() - t0
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            optimizer.zero_grad(set_to_none=True)
            progress.elapsed_s += _synced_time(fabric, step_time)
            last_bad = {"step": progress.step + 1, "loss": loss_value, "grad_norm": norm, "lr": lr}
            _recover(fabric, config, states_dir, model, optimizer, progress, last_bad, logger)
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        step_tokens = accumulation * micro_global * seq_len
        progress.step += 1
        progress.micro_step += accumulation * world
        progress.tokens += step_tokens
        step_time = time.perf_counter() - t0
        progress.elapsed_s += _synced_time(fabric, step_time)
        if monitor is not None:
            _report_findings(fabric, Path(config.out), monitor.on_step(progress.step, _raw(model), loss_value))
        window["loss"] += loss_value
        window["n"] += 1
        window["tokens"] += step_tokens
        window["time"] += step_time
        fraction = budget.fraction(progress.elapsed_s, progress.tokens, progress.step)
        done = fraction >= 1.0
        if progress.step % config.log_every_steps == 0 or done:
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


def _report_findings(fabric, out: Path, findings: list) -> None:
    """Print the doctor's live findings and append them to OUT/monitor.jsonl."""
    if not findings:
        return
    with open(out / "monitor.jsonl", "a", encoding="utf-8") as f:
        for finding in findings:
            f.write(json.dumps(dataclasses.asdict(finding), default=str) + "\n")
            fabric.print(f"doctor [{finding.severity}] {finding.message}")


def _mlm_loss_terms(model, batch: dict[str, torch.Tensor]):
    """(sum of token losses, number of predicted tokens, auxiliary loss) of one micro batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                labels=batch["labels"])  # fmt: skip
    logits, labels = out.logits, out.labels  # (k, V), (k,) sparse; or (B, T, V), (B, T) dense
    from ultracram.config import IGNORE_INDEX

    labels = labels.reshape(-1)
    total = nn.functional.cross_entropy(logits.reshape(labels.numel(), -1).float(), labels,
                                        ignore_index=IGNORE_INDEX, reduction="sum")  # fmt: skip
    return total, (labels != IGNORE_INDEX).sum(), out.aux_loss


def _clip(fabric, model, optimizer, max_norm: float) -> float:
    """Clip to ``max_norm`` (0: only measure) and return the global gradient norm (inf/nan if
    any gradient is non-finite; Fabric unscales fp16 gradients first)."""
    if max_norm and max_norm > 0:
        norm = fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
        return float(norm)
    from ultracram.train.optim import grad_norm

    return grad_norm(model.parameters())


def _synced_time(fabric, seconds: float) -> float:
    """Rank zero's clock decides, so that every rank takes the same budget decisions."""
    if fabric.world_size == 1:
        return seconds
    return float(fabric.broadcast(seconds, src=0))


def _recover(fabric, config, states_dir, model, optimizer, progress: Progress, bad: dict, logger) -> None:
    """Non-finite loss or gradient: roll back to the newest state, lower the learning rate."""
    progress.recoveries += 1
    if progress.recoveries > config.max_recoveries:
        report = (
            f"training diverged: loss {bad['loss']:.4g}, gradient norm {bad['grad_norm']:.4g} at step "
            f"{bad['step']} (lr {bad['lr']:.3g}); this is the {progress.recoveries}th non-finite step and "
            f"max_recoveries is {config.max_recoveries}. Each time the run rolled back to its last good "
            f"state and multiplied the learning rate by {config.nan_lr_factor}. Try a lower --lr, "
            "--precision 32-true, or check the data; resume from the last good state with --resume."
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


def _train_state(fabric, config, model, optimizer, progress: Progress) -> dict[str, Any]:
    """The one dict that holds everything a resumed run needs."""
    return {
        "model": _module_state(fabric, model),
        "optimizer": _optimizer_state(fabric, model, optimizer),
        "schedule": {"lr_scale": progress.lr_scale},
        "progress": dataclasses.asdict(progress),
        "rng": capture_rng_state(),
        "config": config.to_dict(),
    }


def _save(fabric, states_dir: Path, config, model, optimizer, progress: Progress) -> None:
    state = _train_state(fabric, config, model, optimizer, progress)  # every rank joins (FSDP gathers)
    if fabric.global_rank == 0:
        save_train_state(states_dir, progress.step, state, keep_last=config.keep_last)
    fabric.barrier()


def _restore(fabric, path: Path, model, optimizer) -> Progress:
    state = load_train_state(path)
    _load_module_state(fabric, model, state["model"])
    _load_optimizer_state(fabric, model, optimizer, state["optimizer"])
    restore_rng_state(state["rng"])
    progress = Progress(**state["progress"])
    progress.lr_scale = state["schedule"]["lr_scale"]
    return progress


def _is_fsdp(fabric) -> bool:
    from lightning.fabric.strategies import FSDPStrategy

    return isinstance(fabric.strategy, FSDPStrategy)


def _raw(model) -> nn.Module:
    """The user's module under Fabric's (``.module``) and torch.compile's (``._orig_mod``) wrappers."""
    from lightning.fabric.wrappers import _FabricModule

    if isinstance(model, _FabricModule):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _module_state(fabric, model) -> dict[str, torch.Tensor]:
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            _raw(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return _raw(model).state_dict()


def _optimizer_state(fabric, model, optimizer) -> dict[str, Any]:
    opt = getattr(optimizer, "optimizer", optimizer)
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(_raw(model), opt,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # fmt: skip
    return opt.state_dict()


def _load_module_state(fabric, model, state: dict[str, torch.Tensor]) -> None:
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(_raw(model), state, options=StateDictOptions(full_state_dict=True))
        return
    _raw(model).load_state_dict(state)


def _load_optimizer_state(fabric, model, optimizer, state: dict[str, Any]) -> None:
    opt = getattr(optimizer, "optimizer", optimizer)
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(_raw(model), opt, state, options=StateDictOptions(full_state_dict=True))
        return
    opt.load_state_dict(state)


@torch.no_grad()
def validate(fabric, config: PretrainConfig, model, shards, model_config: ModelConfig) -> float:
    """MLM loss on ``val_batches`` fixed micro batches drawn with a different seed from a step
    range training never reaches. The shards have no held-out split, so this measures the
    training distribution with fresh masks, not generalisation (GLUE does that)."""
    if config.val_batches <= 0:
        return math.nan
    from ultracram.data.mlm import mlm_batch

    model.eval()
    world = fabric.world_size
    total = torch.zeros((), device=fabric.device)
    count = torch.zeros((), device=fabric.device)
    for i in range(config.val_batches):
        batch = mlm_batch(shards, step=i * world + fabric.global_rank, batch_size=config.micro_batch_size,
                          seed=config.seed + 10_007, mask_rate=model_config.mask_rate)  # fmt: skip
        batch = {k: fabric.to_device(torch.as_tensor(v)) for k, v in batch.items()}
        s, c, _ = _mlm_loss_terms(model, batch)
        total += s
        count += c
    model.train()
    total = fabric.all_reduce(total, reduce_op="sum")
    count = fabric.all_reduce(count.float(), reduce_op="sum")
    return float(total / count.clamp_min(1.0))


def _finish(fabric, config, model, model_config, shards, progress: Progress, val_loss, budget) -> dict:
    """Final model directory (the foundation's checkpoint format), summary, loss curve."""
    from ultracram.checkpoint import save_checkpoint
    from ultracram.model import build_model

    state = _module_state(fabric, model)
    out = Path(config.out)
    summary: dict[str, Any] = {}
    if fabric.global_rank == 0:
        from ultracram.train.metrics import plot_loss_curve, read_metrics

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
            "val_loss": val_loss, "ln_vocab": math.log(model_config.vocab_size),
            "tokens_per_s": progress.tokens / max(progress.elapsed_s, 1e-9),
            "devices": fabric.world_size, "precision": _precision_name(fabric),
        }  # fmt: skip
        save_checkpoint(final, out / "final", tokenizer_path=shards.tokenizer_path,
                        extra={"pretrain": {**summary, "config": config.to_dict()}})  # fmt: skip
        plot_loss_curve(out / "metrics.csv", out / "loss_curve.png",
                        title=f"{config.preset}: {progress.tokens / 1e6:.1f}M tokens, {budget}")  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        fabric.print(
            f"done: {progress.step} steps, {progress.tokens:,} tokens in {progress.elapsed_s / 60:.1f} min; "
            f"MLM loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f} (val {val_loss:.3f}, "
            f"ln V = {summary['ln_vocab']:.3f}); model: {out / 'final'}"
        )
    fabric.barrier()
    return summary


def _precision_name(fabric) -> str:
    precision = fabric.strategy.precision
    return getattr(precision, "precision", type(precision).__name__)


class _ProgressBar:
    """Progress over the budget fraction with loss, tokens/s and budget left
    (``ultracram.progress``: a bar on a terminal, plain lines in a log)."""

    def __init__(self, budget: Budget, enabled: bool):
        self.budget = budget
        # The budget fraction of a resumed run does not start at 0: budget left is computed
        # here, not estimated by the display.
        self.display = ProgressDisplay("pretraining", 1.0, enabled=enabled, eta=False)

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
        self.display.update(fraction, info)

    def close(self) -> None:
        self.display.close()


def run_from_args(args) -> dict:
    """Entry point of ``ultracram pretrain``."""
    config, resume = config_from_args(args)
    if not config.data:
        raise PretrainError("--data is required: a directory made by `ultracram data prepare`")
    return pretrain(config, resume=resume)


__all__ = [
    "Budget",
    "FaultInjection",
    "PretrainConfig",
    "PretrainError",
    "fit",
    "main",
    "parse_budget",
    "pretrain",
    "run_from_args",
    "setup",
    "validate",
]
