"""The batch plan: how big a batch a pretraining run can afford within its budget.

The recipes' batches are made for their papers' budgets: cramming ramps to 8,192 sequences
for a day on one GPU, BERT uses 256 for a million steps. On a budget of minutes, or on a
slow device, the recipe's batch leaves a handful of optimizer steps (3 steps in 8 minutes for
crammed-bert-tiny on 2 CPU cores: the loss does not move). So, when the batch size comes from
the recipe, the run fits it to the budget:

- the sequences the budget affords, S: a token budget's tokens / seq_len; a time budget's
  seconds / (seconds per micro batch, measured by a short probe before training) x micro
  batch x devices;
- with a batch ramp to B over the fraction r of the budget, a run makes about (1 + r) S / B
  optimizer steps (the ramp's smaller batches make more of them);
- B is the largest multiple of (micro batch x devices) that leaves at least ``MIN_STEPS``
  steps, never more than the recipe's batch nor than the data holds (one step at most one
  pass over the shards), and at least one micro batch per device.

A step budget keeps the recipe's batch (capped by the data): the user chose the number of steps.
An explicit ``--batch_size`` is kept as given, with a warning when it leaves fewer than
``FEW_STEPS`` steps. Torch-free: the plan is arithmetic on measured numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ultracram.train.pretrain_config import Budget

MIN_STEPS = 200
"""Optimizer steps a fitted batch leaves at least (where the budget affords one micro batch per step)."""
FEW_STEPS = 50
"""Fewer expected steps than this: the run will hardly train, and the plan says so."""


@dataclass(frozen=True)
class BatchPlan:
    """The batch a run uses and what it expects from it."""

    batch_size: int
    """Target global batch in sequences."""
    steps: float | None
    """Optimizer steps expected within the budget (None: unknown, no throughput measured)."""
    sequences: float | None
    """Sequences the budget affords (None: unknown)."""
    reason: str
    """Where the batch comes from, in words."""

    def summary(self, budget: Budget, micro_batch: int, world: int) -> str:
        steps = f"~{self.steps:,.0f} optimizer steps" if self.steps is not None else "steps unknown"
        return (f"plan: batch {self.batch_size:,} sequences ({micro_batch} per micro batch x {world} device(s), "
                f"accumulated), {steps} within {budget}; {self.reason}")  # fmt: skip

    def warning(self) -> str | None:
        if self.steps is not None and self.steps < FEW_STEPS:
            return (f"only ~{self.steps:.0f} optimizer steps fit in this budget at batch {self.batch_size:,}: the "
                    "model will hardly train; give a longer --budget, a smaller --batch_size or a smaller "
                    "--micro_batch_size")  # fmt: skip
        return None


def affordable_sequences(budget: Budget, seq_len: int, micro_batch: int, world: int,
                         micro_seconds: float | None) -> float | None:  # fmt: skip
    """Sequences the budget affords (None: a step budget, or a time budget without a probe)."""
    if budget.kind == "tokens":
        return budget.amount / seq_len
    if budget.kind == "time" and micro_seconds:
        return budget.amount / micro_seconds * micro_batch * world
    return None


def expected_steps(sequences: float | None, batch: int, ramp_until: float) -> float | None:
    """Optimizer steps for ``sequences`` at a batch ramping linearly to ``batch`` over the
    fraction ``ramp_until`` of the budget: the ramp averages half the batch, so (1 + r) S / B."""
    if sequences is None:
        return None
    return (1.0 + ramp_until) * sequences / batch


def plan_batch(budget: Budget, *, recipe_batch: int, explicit: bool, micro_batch: int, world: int, seq_len: int,
               data_sequences: int, ramp_until: float, micro_seconds: float | None) -> BatchPlan:  # fmt: skip
    """The batch of a run (see the module docstring for the rule)."""
    unit = micro_batch * world
    sequences = affordable_sequences(budget, seq_len, micro_batch, world, micro_seconds)
    if explicit:
        return BatchPlan(recipe_batch, expected_steps(sequences, recipe_batch, ramp_until), sequences,
                         "--batch_size as given")  # fmt: skip
    data_cap = max(unit, data_sequences // unit * unit)
    batch, reasons = recipe_batch, ["the recipe's batch"]
    if sequences is not None:
        fitted = max(unit, int((1.0 + ramp_until) * sequences / MIN_STEPS) // unit * unit)
        if fitted < batch:
            batch = fitted
            reasons = [f"the recipe's {recipe_batch:,} scaled down so that ~{MIN_STEPS} steps fit the budget"]
    if data_cap < batch:
        batch = data_cap
        reasons.append(f"capped at the {data_sequences:,} sequences of the data (one pass per step at most)")
    if micro_seconds:
        reasons.append(f"probe: {micro_seconds:.3g} s per micro batch")
    return BatchPlan(batch, expected_steps(sequences, batch, ramp_until), sequences, "; ".join(reasons))


def cap_accumulation(accumulation: int, budget: Budget, *, elapsed_s: float, tokens: int, micro_seconds: float | None,
                     tokens_per_micro: int) -> int:  # fmt: skip
    """Micro batches the next step may take so that it ends within the budget: a time budget
    ends within about one micro batch (``micro_seconds``, measured), a token budget at its
    token count (rounded up to a micro batch). At least one."""
    if budget.kind == "time" and micro_seconds:
        left = budget.amount - elapsed_s
        return max(1, min(accumulation, math.floor(left / micro_seconds)))
    if budget.kind == "tokens":
        left = budget.amount - tokens
        return max(1, min(accumulation, math.ceil(left / tokens_per_micro)))
    return accumulation


__all__ = [
    "FEW_STEPS",
    "MIN_STEPS",
    "BatchPlan",
    "affordable_sequences",
    "cap_accumulation",
    "expected_steps",
    "plan_batch",
]
