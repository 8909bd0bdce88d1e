"""Settings of a pretraining run: the typed config with its checks, the recipes, the resume
rules and the budget. Kept free of torch so that building the ``ultracram pretrain`` parser
(jsonargparse, from these fields and their docstrings: ``ultracram.cli``) stays quick;
``ultracram.train.pretrain`` runs the training."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ultracram.config import ConfigError, get_preset
from ultracram.errors import UltracramError
from ultracram.settings import build


class PretrainError(UltracramError, RuntimeError):
    """Pretraining cannot start or cannot go on (bad budget, diverged run, ...)."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings (null: the recipe's value)

    Every knob of a pretraining run; ``None`` means "from the recipe" (``RECIPES``). Field
    docstrings feed ``ultracram pretrain --help``; a config file has the same keys."""

    preset: str = "crammed-bert"
    """Model preset (ultracram models lists them)."""
    data: str | None = None
    """Directory of token shards made by ultracram data prepare (required)."""
    out: str = "out/pretrain"
    """Run directory: states/, metrics.csv, tensorboard/, loss_curve.png, final/."""
    budget: str = "24h"
    """Stop rule: wall-clock time (``24h``, ``30m``, ``90s``), tokens (``50M-tokens``) or optimizer
    steps (``200-steps``). Time counts across resumes."""
    recipe: Literal["auto", "cramming", "bert"] = "auto"
    """Optimizer / schedule / batch recipe; auto: bert for bert-* presets, cramming otherwise."""
    lr: float | None = None
    """Peak learning rate (cramming 1e-3, bert 1e-4); a new one on --resume replaces the lowered
    rate of the health recoveries."""
    beta1: float | None = None
    """AdamW beta1 (cramming and bert 0.9)."""
    beta2: float | None = None
    """AdamW beta2 (cramming 0.98, bert 0.999)."""
    eps: float | None = None
    """AdamW epsilon (cramming 1e-12, bert 1e-6)."""
    weight_decay: float | None = None
    """AdamW weight decay, never on biases, norms and scalars (cramming and bert 0.01)."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this, 0 disables (cramming 0.5, bert 1.0)."""
    schedule: Literal["auto", "budget-triangle", "warmup-linear", "constant"] = "auto"
    """Learning-rate shape over the budget fraction (cramming budget-triangle, bert warmup-linear)."""
    lr_peak_at: float | None = None
    """Budget fraction where the learning rate peaks (triangle 0.75; BERT warmup 0.01)."""
    lr_start: float | None = None
    """Budget-triangle: learning rate at fraction 0, as a fraction of the peak (cramming 0.25)."""
    batch_size: int | None = None
    """Target global batch in sequences, reached by accumulation; null: the recipe's (cramming
    8192, BERT 256), scaled down on a time or token budget that would leave fewer than ~200
    optimizer steps (the batch plan, printed at the start; docs/pretraining.md)."""
    micro_batch_size: int = 128
    """Sequences per device per forward/backward pass."""
    batch_ramp_until: float | None = None
    """Budget fraction at which the batch reaches batch_size, 0: no ramp (cramming 0.6, bert 0)."""
    mask_rate: float | None = None
    """MLM masking rate (default: the preset's, 25% crammed / 15% BERT)."""
    seed: int = 0
    """Seed of the initialisation and of the data order and masking."""
    checkpoint_every_min: float = 30.0
    """Save a resumable state every this many minutes of training (and at the end)."""
    checkpoint_every_steps: int = 0
    """Also save every this many optimizer steps (0: off)."""
    keep_last: int = 3
    """Keep the newest this many training states."""
    accelerator: str = "auto"
    """Fabric accelerator: auto, cpu, cuda, ..."""
    devices: str = "auto"
    """Devices per node (a number, or auto)."""
    num_nodes: int = 1
    """Nodes (under SLURM / torchrun Fabric reads the rest from the environment)."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Distribution: auto (single device or DDP), ddp, fsdp."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """auto: bf16 autocast where the GPU supports it, fp16 with loss scaling otherwise, fp32 on CPU."""
    compile: bool = False
    """torch.compile the model (static shapes: fixed micro batch, sparse MLM head)."""
    fff_implementation: str = "auto"
    """FFF implementation for FFF presets (ultracram.kernels.FFF_IMPLEMENTATIONS); auto: the fastest trainable one."""
    nan_lr_factor: float = 0.5
    """After a non-finite loss/gradient: roll back and multiply the learning rate by this."""
    max_recoveries: int = 3
    """Give up after this many rollbacks."""
    log_every_steps: int | None = None
    """Write a metrics row every this many optimizer steps; null: every step for the first
    100, then every 10 (short runs still get a curve)."""
    val_batches: int = 4
    """Micro batches of the final validation (fixed, seeded differently from training)."""
    monitor_every: int = 0
    """The doctor's live monitors (loss spikes, update ratios, attention entropy, dead units, FFF
    leaf usage) armed every this many steps on rank zero; findings go to OUT/monitor.jsonl and the
    console, a summary to OUT/monitor.json. 0: off."""
    peak_flops: float | None = None
    """MFU denominator in FLOP/s (default: data sheet on GPUs, measured matmul peak on CPU)."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    wandb: bool = False
    """Log to Weights & Biases too (if installed)."""
    progress: bool = True
    """Show a progress bar."""
    model: dict[str, Any] = field(default_factory=dict)
    """Model config overrides, one flag each (--model.num_layers 4 --model.fff_depth 3) or an
    object (--model '{"num_layers": 4}'); keys are ModelConfig's fields (docs/pretraining.md);
    vocab_size comes from the shards."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "pretraining config")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "pretraining config") -> PretrainConfig:
        """Build from plain values (a run's recorded settings, a study's), reporting every
        unknown key, wrong type and bad value at once (``ultracram.settings.build``)."""
        return build(cls, values, where)

    def problems(self) -> list[str]:
        """Every bad value of this config (types are checked by the parser or ``from_dict``)."""
        problems = []
        try:
            parse_budget(self.budget)
        except PretrainError as e:
            problems.append(str(e))
        for name in ("lr", "eps", "batch_size", "peak_flops"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                problems.append(f"{name}: must be > 0, got {v}")
        for name in ("lr", "eps", "weight_decay", "grad_clip", "peak_flops"):
            v = getattr(self, name)
            if v is not None and math.isinf(v):
                problems.append(f"{name}: must be finite, got {v}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                problems.append(f"{name}: must be >= 0, got {v}")
        for name in ("checkpoint_every_steps", "max_recoveries", "val_batches"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("log_every_steps", "num_nodes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "lr_peak_at", "lr_start", "batch_ramp_until", "mask_rate"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                problems.append(f"{name}: must be in [0, 1), got {v}")
        if self.micro_batch_size < 1:
            problems.append(f"micro_batch_size: must be >= 1, got {self.micro_batch_size}")
        if not 0.0 < self.nan_lr_factor <= 1.0:
            problems.append(f"nan_lr_factor: must be in (0, 1], got {self.nan_lr_factor}")
        if self.monitor_every < 0:
            problems.append(f"monitor_every: must be >= 0, got {self.monitor_every}")
        if self.keep_last < 1:
            problems.append(f"keep_last: must be >= 1, got {self.keep_last}")
        if not self.checkpoint_every_min > 0:
            problems.append(f"checkpoint_every_min: must be > 0, got {self.checkpoint_every_min}")
        if self.devices != "auto" and not str(self.devices).isdigit():
            problems.append(f"devices: expected a number or 'auto', got {self.devices!r}")
        elif self.devices != "auto" and int(self.devices) < 1:
            problems.append(f"devices: must be >= 1 (or 'auto'), got {self.devices!r}")
        if self.fff_implementation != "auto":
            from ultracram.kernels import FFF_IMPLEMENTATIONS  # numba: not on `ultracram --help`'s path

            if self.fff_implementation not in FFF_IMPLEMENTATIONS:
                problems.append(f"fff_implementation: unknown {self.fff_implementation!r}; known: "
                                f"auto, {', '.join(FFF_IMPLEMENTATIONS)}")  # fmt: skip
        try:
            get_preset(self.preset, **{k: v for k, v in self.model.items() if k != "vocab_size"})
        except ConfigError as e:
            problems += [f"model: {p}" for p in e.problems]
        return problems


RECIPES: dict[str, dict[str, Any]] = {
    # Geiping & Goldstein 2022, "Cramming", final recipe (appendix A).
    "cramming": dict(lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-12, weight_decay=0.01, grad_clip=0.5,
                     schedule="budget-triangle", lr_peak_at=0.75, lr_start=0.25, batch_size=8192,
                     batch_ramp_until=0.6),
    # Devlin et al. 2019: 1e-4, warmup 10k of 1M steps, linear decay, batch 256.
    "bert": dict(lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, grad_clip=1.0,
                 schedule="warmup-linear", lr_peak_at=0.01, lr_start=0.0, batch_size=256,
                 batch_ramp_until=0.0),
}  # fmt: skip


def resolve_recipe(config: PretrainConfig) -> PretrainConfig:
    """A copy with every ``None`` / ``auto`` recipe field filled in from the recipe table."""
    recipe = config.recipe
    if recipe == "auto":
        recipe = "bert" if config.preset.startswith("bert") else "cramming"
    values = {k: v for k, v in RECIPES[recipe].items() if getattr(config, k) in (None, "auto")}
    return dataclasses.replace(config, recipe=recipe, **values)


RESUME_CHANGEABLE: frozenset[str] = frozenset({
    # Where the run stops and where it lives.
    "budget", "out",
    # What is reported and kept: logging, checkpointing, monitoring, the final validation.
    "progress", "tensorboard", "wandb", "log_every_steps", "checkpoint_every_min", "checkpoint_every_steps",
    "keep_last", "monitor_every", "peak_flops", "val_batches",
    # The health policy.
    "max_recoveries", "nan_lr_factor",
    # How the steps are computed, not which: hardware, distribution, numerics, kernels.
    "accelerator", "devices", "num_nodes", "strategy", "precision", "compile", "fff_implementation",
    # The peak learning rate: the way out of a run that keeps diverging.
    "lr",
})  # fmt: skip
"""The settings ``--resume`` may change; every other setting must equal the run's own.

A resumed run continues one trajectory, so what defines it stays fixed: the model (preset,
model overrides, mask rate), the data and its order (data, seed, micro_batch_size, batch_size,
batch_ramp_until) and the optimizer and schedule shape (recipe, beta1, beta2, eps,
weight_decay, grad_clip, schedule, lr_peak_at, lr_start). What may change:

- ``budget``: extend (or shorten) the run; the schedule follows the fraction of the new budget.
- ``out``: the run is found through it, so a moved run directory resumes.
- reporting and bookkeeping: progress, tensorboard, wandb, log_every_steps, checkpoint_every_min,
  checkpoint_every_steps, keep_last, monitor_every, peak_flops (the MFU denominator) and
  val_batches (the final validation only).
- the health policy: max_recoveries, nan_lr_factor.
- accelerator, devices, num_nodes, strategy: a run's batches depend only on the micro batch and
  the global batch, not on how many devices share them; precision, compile, fff_implementation:
  how a step is computed, not what it computes (up to rounding). A new precision resets the
  recovery count.
- ``lr``: a new peak learning rate applies from the resumed step on; it replaces the lowered
  learning rate of the health recoveries (lr scale back to 1) and resets their count, so a run
  that stopped after ``max_recoveries`` can continue with a lower ``--lr``.
"""


def resume_differences(stored: dict[str, Any], new: PretrainConfig) -> list[str]:
    """``name: stored -> new`` for each setting outside ``RESUME_CHANGEABLE`` that differs
    between ``stored`` (the run's recorded settings, recipe resolved) and ``new`` (resolved
    too). Settings a run recorded by an older version lacks are not compared; ``data`` is
    compared as a normalised absolute path."""
    import os

    def norm(name: str, value: Any) -> Any:
        value = json.loads(json.dumps(value))
        if name == "data" and isinstance(value, str) and value:
            return os.path.normpath(os.path.abspath(value))
        return value

    mine = new.to_dict()
    diffs = []
    for name in mine:
        if name in RESUME_CHANGEABLE or name not in stored:
            continue
        a, b = norm(name, stored[name]), norm(name, mine[name])
        if a != b:
            diffs.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return diffs


# --------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_SCALE = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}
_TIME = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|sec|m|min|h|d)\s*$")
_COUNT = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([kKMGBT]?)[\s_-]*(tokens|steps)\s*$")


@dataclass(frozen=True)
class Budget:
    """A stop rule: ``kind`` is time (seconds), tokens or steps; ``amount`` its size."""

    kind: Literal["time", "tokens", "steps"]
    amount: float

    def fraction(self, elapsed_s: float, tokens: int, steps: int) -> float:
        used = {"time": elapsed_s, "tokens": tokens, "steps": steps}[self.kind]
        return min(1.0, used / self.amount)

    def __str__(self) -> str:
        if self.kind == "time":
            return f"{self.amount / 3600:g}h" if self.amount >= 3600 else f"{self.amount / 60:g}min"
        return f"{self.amount:,.0f} {self.kind}"


def parse_budget(text: str) -> Budget:
    """``24h`` / ``30m`` / ``90s`` / ``1.5d``, ``50M-tokens`` / ``2e6 tokens``, ``300-steps``."""
    if m := _TIME.match(text):
        amount = float(m[1]) * _UNITS[m[2]]
        kind = "time"
    elif m := _COUNT.match(text):
        amount = float(m[1]) * _SCALE[m[2]]
        kind = m[3]
    else:
        raise PretrainError(
            f"budget: cannot parse {text!r}; expected a time (24h, 30m, 90s), a token count "
            "(50M-tokens) or a step count (300-steps)"
        )
    if not math.isfinite(amount):
        raise PretrainError(f"budget: must be finite, got {text!r}")
    if amount <= 0:
        raise PretrainError(f"budget: must be positive, got {text!r}")
    if kind != "time" and amount != int(amount):
        raise PretrainError(f"budget: a {kind} budget must be a whole number of {kind}, got {text!r} "
                            f"({amount:g} {kind})")  # fmt: skip
    return Budget(kind, amount)  # type: ignore[arg-type]


__all__ = [
    "RECIPES",
    "RESUME_CHANGEABLE",
    "Budget",
    "PretrainConfig",
    "PretrainError",
    "parse_budget",
    "resolve_recipe",
    "resume_differences",
]
