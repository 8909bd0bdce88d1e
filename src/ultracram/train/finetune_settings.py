"""GLUE fine-tuning settings: ``FinetuneSettings`` (one run's hyperparameters), the protocols
(ultracram's fitted one, cramming's GLUE-sane and BERT's), the learning-rate grid of the fitted
protocol, and how the settings for all tasks and the per-task ones are merged onto a protocol
and checked (every unknown key, bad value and unknown task at once).

On the command line (``ultracram glue``, ``ultracram study``): ``--protocol bert``,
``--finetune.lr 2e-5`` (every task), ``--per_task.rte.epochs 10`` (one task); in a config
file the same keys: ``{"protocol": ..., "finetune": {...}, "per_task": {"rte": {...}}}``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ultracram.data.glue import TASKS, GlueTask
from ultracram.errors import UltracramError
from ultracram.settings import coerce_fields, suggest

Schedule = Literal["cosine", "linear", "constant"]


class FinetuneError(UltracramError, ValueError):
    """Bad fine-tuning settings or a run directory that does not match them."""


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning settings (null: the protocol's value)

    Hyperparameters of one fine-tuning run; ``resolve_settings`` fills the None fields from a
    protocol (``PROTOCOL_VALUES``)."""

    epochs: float | None = None
    """Passes over the training set, fractions allowed (fit: 5, sane: 5, bert: 3)."""
    batch_size: int | None = None
    """Training examples per step (fit: 16, sane: 16, bert: 32)."""
    lr: float | None = None
    """Peak learning rate of AdamW (fit: chosen per task and model from lr_grid on held-out
    training examples; sane: 4e-5, bert: 2e-5)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float | None = None
    """AdamW beta2 (fit: 0.98, sane: 0.98, bert: 0.999)."""
    eps: float = 1e-6
    """AdamW epsilon."""
    weight_decay: float | None = None
    """Decoupled weight decay, never on biases and LayerNorm weights (fit: 0.01, sane: 0, bert: 0.01)."""
    schedule: Schedule | None = None
    """Learning-rate decay after warmup: cosine or linear to 0, or constant (fit and sane: cosine,
    bert: linear)."""
    warmup_fraction: float = 0.1
    """Fraction of the steps with linear warmup from 0."""
    max_length: int = 128
    """Longest tokenised example; longer pairs are truncated longest-first."""
    dropout: float = 0.1
    """Dropout on embeddings and sublayer outputs during fine-tuning."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities during fine-tuning."""
    classifier_dropout: float = 0.1
    """Dropout before the classifier."""
    pooler: Literal["cls_tanh", "cls", "mean"] = "cls_tanh"
    """Pooling of the encoder output (dense+tanh on [CLS], raw [CLS], or the mean)."""
    pooler_size: int | None = None
    """Width of the cls_tanh pooler; 0: the model's hidden size (fit: 0, sane: 1024, bert: 0)."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value; 0: no clipping (fit: 1, sane: 0, bert: 1)."""
    max_train_examples: int | None = None
    """Use a fixed random subset of this many training examples (same for every seed)."""
    max_eval_examples: int | None = None
    """Evaluate on a fixed random subset of each dev set (scores then differ from the full dev)."""
    length_grouping: bool = True
    """Group examples of similar length into batches (within shuffled chunks of 50 batches)."""
    eval_batch_size: int = 64
    """Examples per evaluation batch."""
    checkpoint_every: int = 500
    """Save the resumable training state every this many steps (and at the end of training)."""

    def __post_init__(self) -> None:
        problems = _problems(dataclasses.asdict(self))
        if problems:
            raise FinetuneError("invalid fine-tuning settings:\n" + "\n".join(f"  - {p}" for p in problems))


def _problems(v: dict[str, Any]) -> list[str]:
    out = []
    for f in dataclasses.fields(FinetuneSettings):
        value = v[f.name]
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"{f.name}: must be a finite number, got {value}")
    if out:
        return out
    for name in ("epochs", "lr", "eps"):
        if v[name] is not None and not v[name] > 0:
            out.append(f"{name}: must be > 0, got {v[name]}")
    for name in ("batch_size", "max_length", "eval_batch_size", "checkpoint_every"):
        if v[name] is not None and v[name] < 1:
            out.append(f"{name}: must be >= 1, got {v[name]}")
    for name in ("beta1", "beta2", "dropout", "attention_dropout", "classifier_dropout", "warmup_fraction"):
        if v[name] is not None and not 0 <= v[name] < 1:
            out.append(f"{name}: must be in [0, 1), got {v[name]}")
    for name in ("max_train_examples", "max_eval_examples"):
        if v[name] is not None and v[name] < 1:
            out.append(f"{name}: must be >= 1 or none, got {v[name]}")
    for name in ("pooler_size", "grad_clip", "weight_decay"):
        if v[name] is not None and v[name] < 0:
            out.append(f"{name}: must be >= 0, got {v[name]}")
    if v["max_length"] < 3:
        out.append(f"max_length: must leave room for [CLS] and [SEP], got {v['max_length']}")
    return out


# The values a protocol sets: every field that defaults to None.
PROTOCOL_VALUES: dict[str, dict[str, Any]] = {
    # ultracram's "fit": GLUE-sane's schedule with BERT's regularisation (weight decay, clipping,
    # a pooler as wide as the model), and the learning rate left open (None): run_glue chooses it
    # per task and checkpoint from lr_grid(hidden size) on held-out training examples. A fixed lr
    # tuned for 110M-parameter models is far too small for hidden-64 models (issue 20).
    "fit": dict(epochs=5.0, batch_size=16, lr=None, beta2=0.98, weight_decay=0.01, schedule="cosine",
                pooler_size=0, grad_clip=1.0),
    # Geiping & Goldstein 2022, "GLUE-sane": one setting for every task.
    "sane": dict(epochs=5.0, batch_size=16, lr=4e-5, beta2=0.98, weight_decay=0.0, schedule="cosine",
                 pooler_size=1024, grad_clip=0.0),
    # Devlin et al. 2019: 3 epochs, batch 32, 2e-5, linear decay, BERT's pooler.
    "bert": dict(epochs=3.0, batch_size=32, lr=2e-5, beta2=0.999, weight_decay=0.01, schedule="linear",
                 pooler_size=0, grad_clip=1.0),
}  # fmt: skip
PROTOCOLS: dict[str, FinetuneSettings] = {name: FinetuneSettings(**v) for name, v in PROTOCOL_VALUES.items()}
"""Each protocol's complete settings (the fit protocol's lr is None: chosen per task and model)."""

# The fitted protocol's learning-rate grid, around a guess scaled from GLUE-sane's 4e-5 at
# BERT-base's width 768 as (768 / width) ** 1.5, rounded to the nearest step of a 1-2-5 ladder:
# the grid is that step, the one below and the two above. Why 1.5 and not muP's 1 (Adam's update
# per weight is about the lr, and a layer's output change grows with its fan-in, so the lr for a
# given change shrinks as 1 / width): the small presets are also shallow (2 and 4 layers against
# 12), and measured on held-out SST-2 examples their best lr lies above the 1 / width guess:
# crammed-bert-tiny (width 64; 1 / width guess 5e-4) peaked at 2e-3 on the sample slice and kept
# rising to 2e-3 on the full set, crammed-bert-mini (width 256; guess 1e-4) kept rising to 5e-4
# (docs/glue.md). Hidden 64 -> 1e-3 .. 1e-2; 256 -> 1e-4 .. 1e-3; 768 -> 2e-5 .. 2e-4.
LR_LADDER = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
LR_REFERENCE = (4e-5, 768)
"""(lr, hidden size) the grid is scaled from: GLUE-sane's learning rate for BERT-base."""
LR_WIDTH_EXPONENT = 1.5
"""The guess is LR_REFERENCE's lr x (its width / the model's width) ** this."""

LR_EXTEND_MAX = 2
"""When the chosen lr is an end of the grid, up to this many further ladder steps past it are
tried, one at a time, until the choice lies inside (``lr_beyond``): the width rule is a guess
(crammed-bert-tiny after 10M tokens chose 5e-4 on CoLA and 2e-2 on MRPC, both past its grid;
docs/glue.md)."""

HOLDOUT_FRACTION = 0.1
"""Share of the training examples held out to choose the learning rate on (fit protocol)..."""
HOLDOUT_MIN, HOLDOUT_MAX = 100, 2000
"""...at least 100 examples (a quarter of the training set if that is less), at most 2,000."""
SELECT_MAX_TRAIN = 8000
"""The grid's runs train on at most this many of the remaining examples (a fixed random subset):
choosing among a few learning rates needs a signal, not the whole of MNLI or QQP."""


def lr_grid(hidden_size: int) -> tuple[float, ...]:
    """The fitted protocol's learning rates for a model of width ``hidden_size`` (see LR_LADDER)."""
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
    lr, width = LR_REFERENCE
    center = lr * (width / hidden_size) ** LR_WIDTH_EXPONENT
    i = min(range(len(LR_LADDER)), key=lambda k: abs(math.log(LR_LADDER[k] / center)))
    i = min(max(i, 1), len(LR_LADDER) - 3)  # keep one step below and two above
    return LR_LADDER[i - 1 : i + 3]


def lr_beyond(tried: Sequence[float], chosen: float, grid: Sequence[float]) -> float | None:
    """The next lr to try after ``tried`` (the lrs run so far, ``grid`` and any extension) chose
    ``chosen``: the ladder's step past it when it is the lowest or highest tried, at most
    LR_EXTEND_MAX steps beyond ``grid``; None when the choice is inside, or no step is left.
    (The choice is the lowest lr within one standard error of the best, ``finetune.choose_lr``,
    so a grid that scores alike at its low end, every lr at the majority class, say, is
    extended downwards, where such a model may still learn.)"""
    if len(tried) - len(grid) >= LR_EXTEND_MAX or chosen not in LR_LADDER:
        return None
    step = -1 if chosen == min(tried) else 1 if chosen == max(tried) else 0
    i = LR_LADDER.index(chosen) + step
    return LR_LADDER[i] if step and 0 <= i < len(LR_LADDER) else None


def holdout_size(n: int) -> int:
    """Examples of a training set of ``n`` held out for the fitted protocol's selection."""
    return min(HOLDOUT_MAX, max(round(HOLDOUT_FRACTION * n), min(HOLDOUT_MIN, n // 4)))


def resolve_settings(
    tasks: Sequence[GlueTask],
    protocol: str = "sane",
    overrides: FinetuneSettings | dict[str, Any] | None = None,
    task_overrides: dict[str, dict[str, Any]] | None = None,
    where: str = "settings",
) -> dict[str, FinetuneSettings]:
    """Settings per task: the protocol, then ``overrides`` for every task (its values that are
    not None), then the task's own ``task_overrides``. Every unknown key, bad value and unknown
    task is reported at once."""
    if protocol not in PROTOCOLS:
        raise FinetuneError(f"{where}: unknown protocol {protocol!r}{suggest(protocol, PROTOCOLS)}; "
                            f"known: {', '.join(PROTOCOLS)}")  # fmt: skip
    if isinstance(overrides, FinetuneSettings):
        overrides = dataclasses.asdict(overrides)
    common, problems = coerce_fields(FinetuneSettings, overrides or {}, "all tasks")
    common = {k: v for k, v in common.items() if v is not None}
    if not isinstance(task_overrides or {}, dict):
        raise FinetuneError(
            f"{where}: per-task settings must be an object of TASK: {{...}}, got {task_overrides!r}"
        )
    per_task = {}
    for name, values in (task_overrides or {}).items():
        key = str(name).lower().replace("-", "")
        if key not in TASKS:
            problems.append(f"unknown task {name!r} in per-task settings{suggest(key, TASKS)} "
                            f"(known: {', '.join(TASKS)})")  # fmt: skip
            continue
        typed, task_problems = coerce_fields(FinetuneSettings, values, key)
        per_task[key] = {k: v for k, v in typed.items() if v is not None}
        problems += task_problems
    result = {}
    for t in tasks:
        values = {**dataclasses.asdict(PROTOCOLS[protocol]), **common, **per_task.get(t.name, {})}
        problems += [f"{t.name}: {p}" for p in _problems(values)]
        if not problems:
            result[t.name] = FinetuneSettings(**values)
    if problems:
        raise FinetuneError(f"invalid {where}:\n" + "\n".join(f"  - {p}" for p in problems))
    return result
