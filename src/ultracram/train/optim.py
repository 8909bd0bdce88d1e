"""Parameter groups, the optimizer, and schedules driven by the elapsed fraction of a budget.

Cramming (Geiping & Goldstein 2022) ties every schedule to the *fraction of the budget spent*
rather than to a step count, because under a wall-clock budget the number of steps is unknown
in advance. ``fraction`` below is always in [0, 1]: elapsed time / time budget, or tokens seen /
token budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


def parameter_groups(model: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay; biases, LayerNorm weights and scalars (the scaled
    sinusoid's scale) do not (BERT and cramming both exempt them: decaying a gain or an offset
    towards zero has no regularising meaning). Tied parameters appear once."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters() if isinstance(model, nn.Module) else model:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module | Iterable[nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """AdamW over ``parameter_groups`` (of a model or a list of parameters); ``foreach``
    kernels where the device has them. Pretraining, fine-tuning, the doctor and the benchmarks
    all build their optimizer here."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


@dataclass(frozen=True)
class BudgetSchedule:
    """Learning-rate multiplier as a function of the budget fraction.

    ``budget-triangle`` (cramming): rise linearly from ``start`` x peak at fraction 0 to the
    peak at ``peak_at``, then decay linearly to zero at fraction 1.
    ``warmup-linear`` (BERT): rise from 0 to the peak at ``peak_at`` (the warmup fraction), then
    decay linearly to zero. ``constant``: the peak throughout.
    """

    kind: str = "budget-triangle"
    peak_at: float = 0.75
    start: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.peak_at < 1.0:
            raise ValueError(f"peak_at must be in [0, 1), got {self.peak_at}")

    def __call__(self, fraction: float) -> float:
        f = min(max(fraction, 0.0), 1.0)
        return SCHEDULES[self.kind](f, self.peak_at, self.start)


def _triangle(f: float, peak_at: float, start: float) -> float:
    if f < peak_at:
        return start + (1.0 - start) * f / peak_at
    return (1.0 - f) / (1.0 - peak_at)


def _warmup_linear(f: float, peak_at: float, start: float) -> float:
    if f < peak_at:
        return f / peak_at
    return (1.0 - f) / (1.0 - peak_at)


SCHEDULES = {
    "budget-triangle": _triangle,
    "warmup-linear": _warmup_linear,
    "constant": lambda f, peak_at, start: 1.0,
}


# During the ramp the global batch grows in steps of this many per-device micro batches (or the
# whole batch, if smaller): 1, 2, 4 and 8 devices then take exactly the same batches.
RAMP_GRANULARITY = 8


def accumulation_steps(
    fraction: float, target_batch: int, micro_batch: int, ramp_until: float, world: int = 1
) -> int:
    """Micro batches each of ``world`` devices accumulates at this budget fraction (cramming's
    batch-size ramp).

    The global batch, counted in per-device micro batches of ``micro_batch`` sequences, grows
    linearly with the budget fraction and reaches ``target_batch`` sequences (rounded up to
    whole micro batches) at ``ramp_until`` (0 disables the ramp). While it ramps it is rounded
    up to a multiple of ``RAMP_GRANULARITY`` micro batches, so the batches of a run do not
    depend on the device count (any count dividing 8 and the full batch). At least one micro
    batch per device. Small batches early make the first, fast-moving steps cheap; large ones
    later average out gradient noise (Geiping & Goldstein 2022, sec. 4.3).
    """
    full = max(1, math.ceil(target_batch / micro_batch))
    units = full
    if ramp_until > 0 and fraction < ramp_until:
        step = min(RAMP_GRANULARITY, full)
        units = min(full, step * math.ceil(max(1, math.ceil(full * fraction / ramp_until)) / step))
    return max(1, math.ceil(units / world))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def grad_norm(parameters: Iterable[torch.Tensor]) -> float:
    """Global L2 norm of the gradients (inf/nan if any gradient is non-finite)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


__all__ = [
    "RAMP_GRANULARITY",
    "SCHEDULES",
    "BudgetSchedule",
    "accumulation_steps",
    "build_optimizer",
    "grad_norm",
    "parameter_groups",
    "set_learning_rate",
]
