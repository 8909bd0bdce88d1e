"""GLUE fine-tuning settings: ``FinetuneSettings`` (one run's hyperparameters), the protocols
(cramming's GLUE-sane and BERT's), and how overrides for all tasks and per task are merged and
checked (every unknown key, bad value and unknown task reported at once)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ultracram.data.glue import TASKS, GlueTask
from ultracram.errors import UltracramError

Schedule = Literal["cosine", "linear", "constant"]


class FinetuneError(UltracramError, ValueError):
    """Bad fine-tuning settings or a run directory that does not match them."""


@dataclass(frozen=True)
class FinetuneSettings:
    """Hyperparameters of one fine-tuning run. Field docstrings feed the docs."""

    epochs: float = 5.0
    """Passes over the training set (fractions allowed)."""
    batch_size: int = 16
    """Training examples per step."""
    lr: float = 4e-5
    """Peak learning rate of AdamW."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.98
    """AdamW beta2 (cramming: 0.98; BERT: 0.999)."""
    eps: float = 1e-6
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (never on biases and LayerNorm weights)."""
    schedule: Schedule = "cosine"
    """Learning-rate decay after warmup: cosine or linear to 0, or constant."""
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
    pooler_size: int | None = 1024
    """Width of the cls_tanh pooler; None = the model's hidden size (BERT)."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value; None = no clipping."""
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
        if not v[name] > 0:
            out.append(f"{name}: must be > 0, got {v[name]}")
    for name in ("batch_size", "max_length", "eval_batch_size", "checkpoint_every"):
        if v[name] < 1:
            out.append(f"{name}: must be >= 1, got {v[name]}")
    for name in ("beta1", "beta2", "dropout", "attention_dropout", "classifier_dropout", "warmup_fraction"):
        if not 0 <= v[name] < 1:
            out.append(f"{name}: must be in [0, 1), got {v[name]}")
    for name in ("max_train_examples", "max_eval_examples", "pooler_size"):
        if v[name] is not None and v[name] < 1:
            out.append(f"{name}: must be >= 1 or none, got {v[name]}")
    if v["max_length"] < 3:
        out.append(f"max_length: must leave room for [CLS] and [SEP], got {v['max_length']}")
    return out


PROTOCOLS: dict[str, FinetuneSettings] = {
    "sane": FinetuneSettings(),
    "bert": FinetuneSettings(epochs=3.0, batch_size=32, lr=2e-5, beta2=0.999, weight_decay=0.01,
                             schedule="linear", pooler_size=None, grad_clip=1.0),
}  # fmt: skip


def _coerce(name: str, value: Any) -> Any:
    """A CLI/JSON value for field ``name`` in the field's type; raises ValueError."""
    hint = typing.get_type_hints(FinetuneSettings)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if isinstance(value, str) and value.lower() in ("none", "null") and optional:
        return None
    if value is None:
        if optional:
            return None
        raise ValueError("may not be none")
    base = args[0] if optional else hint
    if typing.get_origin(base) is Literal:
        if value not in typing.get_args(base):
            raise ValueError(f"expected one of {', '.join(map(repr, typing.get_args(base)))}")
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise ValueError("expected true or false")
    if base is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("expected an integer")
        return int(value)
    if base is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    return value


def resolve_settings(
    tasks: Sequence[GlueTask],
    protocol: str = "sane",
    overrides: dict[str, Any] | None = None,
    task_overrides: dict[str, dict[str, Any]] | None = None,
    where: str = "settings",
) -> dict[str, FinetuneSettings]:
    """Settings per task: the protocol, then ``overrides`` for every task, then the task's own
    ``task_overrides``. Every unknown key, bad value and unknown task is reported at once."""
    if protocol not in PROTOCOLS:
        raise FinetuneError(f"{where}: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    fields = {f.name for f in dataclasses.fields(FinetuneSettings)}
    problems: list[str] = []

    def clean(values: dict[str, Any], label: str) -> dict[str, Any]:
        out = {}
        for k, v in values.items():
            if k not in fields:
                problems.append(f"{label}: unknown setting {k!r}{did_you_mean(k, fields)} "
                                f"(known: {', '.join(sorted(fields))})")  # fmt: skip
                continue
            try:
                out[k] = _coerce(k, v)
            except (ValueError, TypeError) as e:
                problems.append(f"{label}: {k}={v!r}: {e}")
        return out

    if not isinstance(overrides or {}, dict):
        raise FinetuneError(
            f"{where}: settings for all tasks must be an object of KEY: VALUE, got {overrides!r}"
        )
    if not isinstance(task_overrides or {}, dict):
        raise FinetuneError(
            f"{where}: per-task settings must be an object of TASK: {{...}}, got {task_overrides!r}"
        )
    common = clean(overrides or {}, "all tasks")
    per_task = {}
    for name, values in (task_overrides or {}).items():
        key = str(name).lower().replace("-", "")
        if key not in TASKS:
            problems.append(f"unknown task {name!r} in per-task settings{did_you_mean(key, TASKS)} "
                            f"(known: {', '.join(TASKS)})")  # fmt: skip
            continue
        if not isinstance(values, dict):
            problems.append(f"{key}: per-task settings must be an object of KEY: VALUE, got {values!r}")
            continue
        per_task[key] = clean(values, key)
    result = {}
    for t in tasks:
        values = {**dataclasses.asdict(PROTOCOLS[protocol]), **common, **per_task.get(t.name, {})}
        problems += [f"{t.name}: {p}" for p in _problems(values)]
        if not problems:
            result[t.name] = FinetuneSettings(**values)
    if problems:
        raise FinetuneError(f"invalid {where}:\n" + "\n".join(f"  - {p}" for p in problems))
    return result


def load_settings_file(path: str | Path) -> dict[str, Any]:
    """A JSON settings file: ``{"protocol": "sane", "all": {...}, "tasks": {"rte": {...}}}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FinetuneError(f"{path}: cannot read the settings file as JSON: {e}") from e
    if not isinstance(data, dict):
        raise FinetuneError(f"{path}: expected a JSON object with keys protocol, all, tasks; "
                            f"got a JSON {type(data).__name__}")  # fmt: skip
    unknown = set(data) - {"protocol", "all", "tasks"}
    if unknown:
        hints = "".join(did_you_mean(k, ("protocol", "all", "tasks")) for k in sorted(unknown))
        raise FinetuneError(f"{path}: unknown key(s) {sorted(unknown)}{hints}; expected protocol, all, tasks")
    if "protocol" in data and not isinstance(data["protocol"], str):
        raise FinetuneError(
            f"{path}: 'protocol' must be a string ({', '.join(PROTOCOLS)}), got {data['protocol']!r}"
        )
    if not isinstance(data.get("all", {}), dict):
        raise FinetuneError(f"{path}: 'all' must be an object of KEY: VALUE, got {data['all']!r}")
    tasks = data.get("tasks", {})
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise FinetuneError(f"{path}: 'tasks' must be an object of TASK: {{KEY: VALUE}}, got {tasks!r}")
    return data


def did_you_mean(name: str, known) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``known`` to ``name`` (difflib), or ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_set_options(options: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``KEY=VALUE`` (every task) and ``TASK.KEY=VALUE`` (one task) -> (overrides, per task).
    Values stay strings here; ``resolve_settings`` converts them to each field's type."""
    common: dict[str, Any] = {}
    per_task: dict[str, dict[str, Any]] = {}
    bad = []
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            bad.append(opt)
            continue
        task, dot, field = key.rpartition(".")
        (per_task.setdefault(task, {}) if dot else common)[field] = value
    if bad:
        raise FinetuneError(f"--set expects KEY=VALUE or TASK.KEY=VALUE (e.g. lr=2e-5, rte.epochs=10), "
                            f"got {', '.join(map(repr, bad))}")  # fmt: skip
    return common, per_task
