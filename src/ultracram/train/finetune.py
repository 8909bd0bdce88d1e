"""GLUE fine-tuning and evaluation: protocols, seeds, medians, resumable runs.

Size (~1,000 lines): data (tokenising, length-grouped batches), the checks before any training,
one run (train, evaluate, resume, its progress display), the fitted protocol's lr selection and
the multi-checkpoint GLUE table belong to one workflow; the settings are in
``finetune_settings.py``, the step in ``engine.py``, the baselines and statistics in
``baselines.py`` and ``ultracram.report``.

``run_glue`` fine-tunes each checkpoint on each task for several seeds, evaluates on the dev
sets and writes ``results.json`` and ``results.md`` (the papers' table layout, with a majority-class
and a bag-of-words row, bootstrap intervals and paired tests: ``ultracram.train.baselines``). The default
protocol is cramming's "GLUE-sane" (Geiping & Goldstein 2022, sec. 5): 5 epochs, batch 16,
AdamW lr 4e-5 with betas (0.9, 0.98) and eps 1e-6, no weight decay, cosine schedule with 10%
warmup, sequences up to 128 tokens, dropout 0.1, a 1024-wide dense+tanh pooler on [CLS].
``bert`` is BERT's original recipe (Devlin et al. 2019, sec. 4.1 and A.3): 3 epochs, batch 32,
lr 2e-5 (the paper picks the best of {5e-5, 4e-5, 3e-5, 2e-5} on dev; no sweep here), linear
decay with 10% warmup, weight decay 0.01, pooler as wide as the model. ``fit`` (the study's
default) fits the learning rate to the model: per task and checkpoint, four runs over a grid
scaled to the model's width (``finetune_settings.lr_grid``: 1e-3 to 1e-2 at hidden 64)
train on the training set less a held-out part (``holdout_split``: 10%, 100 to 2,000 examples)
and are scored on that part; the best lr then trains on the whole training set and is scored
on dev once (``select_lr``), for as many steps as the selection runs took when they trained on
a subset (``final_epochs``: SST-2's 67,349 examples). The dev labels never enter the choice, so the dev score is not
selected on (tests/test_finetune_fit.py shuffles them and gets the same choice).

Each (checkpoint, task, seed) run shows its progress (``ultracram.progress``: a bar on a terminal,
a plain line every 30 s in a log): steps, epoch, loss, examples/s and time left while training,
examples while evaluating. Each run lives in its own directory. Its training state (the
engine's one layout: model, optimizer, progress, RNG) is saved atomically every
``checkpoint_every`` steps; a rerun resumes from it and skips runs whose ``result.json``
exists. Batches depend only on (seed, epoch), so a resumed run sees exactly the batches the
uninterrupted one would have.

Training runs on the engine (``ultracram.train.engine``) like pretraining: Fabric decides the
precision (bf16 autocast on CUDA cards with bf16, fp16 on older cards, fp32 on CPU) and the
devices (``devices`` > 1: each step's batch is split across the ranks, DDP averages the
gradients), ``train_step`` takes the step, and FFF layers train on the fastest trainable
implementation (``auto``: the conditional kernels). Evaluation switches them to the
inference kernels (``for_inference``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ultracram.checkpoint import (
    CONFIG_NAME,
    load_checkpoint,
    load_checkpoint_tokenizer,
    read_checkpoint_config,
)
from ultracram.data.glue import (
    HF_SPLITS,
    TASKS,
    GlueDataError,
    GlueSplit,
    GlueTask,
    compute_metrics,
    eval_columns,
    find_split,
    load_split,
    parse_tasks,
)
from ultracram.errors import RunMismatchError
from ultracram.fileio import atomic_write_text, check_same_run, sha256_tensors
from ultracram.model import for_inference
from ultracram.progress import ProgressDisplay, hms
from ultracram.report.stats import glue_metric, resample_scores
from ultracram.train import baselines as glue_baselines
from ultracram.train import engine
from ultracram.train.engine import (
    precision_name,
    prepare,
    raw_module,
    restore_state,
    save_state,
    setup_fabric,
)
from ultracram.train.finetune_settings import (
    SELECT_MAX_TRAIN,
    FinetuneError,
    FinetuneSettings,
    holdout_size,
    lr_beyond,
    lr_grid,
    resolve_settings,
)
from ultracram.train.glue_table import glue_markdown
from ultracram.train.optim import build_optimizer
from ultracram.train.state import TrainStateError, latest_state

# --------------------------------------------------------------------------------------------
# Data: tokenisation, length-grouped batches, dynamic padding
# --------------------------------------------------------------------------------------------


@dataclass
class EncodedSplit:
    """Token ids per example (unpadded), token types and labels of one split."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    labels: torch.Tensor  # (N,) long for classes, float for regression

    def __len__(self) -> int:
        return len(self.ids)


def encode_split(split: GlueSplit, tokenizer, max_length: int) -> EncodedSplit:
    """Tokenise with the checkpoint's tokenizer (``[CLS] A [SEP] B [SEP]``), truncating pairs
    longest-first to ``max_length``, without padding (batches are padded dynamically)."""
    tok = _copy_tokenizer(tokenizer)
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    inputs = list(zip(split.text_a, split.text_b, strict=True)) if split.text_b is not None else split.text_a
    encodings = tok.encode_batch(inputs)
    dtype = torch.float32 if split.task.is_regression else torch.long
    return EncodedSplit([e.ids for e in encodings], [e.type_ids for e in encodings],
                        torch.tensor(split.labels, dtype=dtype))  # fmt: skip


def _copy_tokenizer(tokenizer):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.to_str())


def batch_order(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: bool = True
) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch, determined by (seed, epoch).

    With ``group``, a random permutation is cut into chunks of 50 batches, each chunk sorted
    by length and cut into batches, and the batch order shuffled (like HF's length-grouped
    sampler): examples in a batch have similar lengths, so dynamic padding wastes little.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    if not group:
        return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(perm), chunk):
        part = sorted(perm[start : start + chunk], key=lambda i: -lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]


def collate(data: EncodedSplit, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to the longest among them: input_ids, attention_mask,
    token_type_ids (B, T) and labels (B,)."""
    longest = max(len(data.ids[i]) for i in indices)
    ids = torch.full((len(indices), longest), pad_id, dtype=torch.long)
    types = torch.zeros((len(indices), longest), dtype=torch.long)
    mask = torch.zeros((len(indices), longest), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.ids[i])
        ids[row, :n] = torch.tensor(data.ids[i])
        types[row, :n] = torch.tensor(data.type_ids[i])
        mask[row, :n] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "labels": data.labels[list(indices)],
    }


def subsample(split: GlueSplit, limit: int | None) -> GlueSplit:
    """A fixed random subset of ``limit`` examples (the same for every seed and rerun)."""
    if limit is None or limit >= len(split):
        return split
    g = torch.Generator().manual_seed(0)
    return split.subset(sorted(torch.randperm(len(split), generator=g)[:limit].tolist()))


# --------------------------------------------------------------------------------------------
# Optimiser, schedule, precision
# --------------------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, s: FinetuneSettings) -> torch.optim.Optimizer:
    """AdamW over pretraining's parameter groups (``train.optim.build_optimizer``): with weight
    decay, biases, LayerNorm weights and scalars are not decayed."""
    return build_optimizer(model, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay)


def lr_factor(step: int, total: int, s: FinetuneSettings) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup, then cosine/linear decay to 0."""
    warmup = math.ceil(s.warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    if s.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) if s.schedule == "cosine" else max(0.0, 1 - progress)


STATE_DIR = "states"
RESULT_NAME = "result.json"


class DivergedError(FinetuneError):
    """A fine-tuning run reached a non-finite loss or gradient."""


class _Interrupted(Exception):
    """Raised by the test hook ``stop_after_steps`` to simulate a kill."""


# --------------------------------------------------------------------------------------------
# Progress of one run (``ultracram.progress``: a bar on a terminal, a plain line every 30 s in a log)
# --------------------------------------------------------------------------------------------


class _TrainProgress:
    """Steps, epoch, loss (mean of the last 50 steps), examples/s and time left of one run's
    training. Rates and time left are measured over the steps of this call: a resumed run
    does not start at step 0, so the display's own estimate (from 0) would be wrong."""

    def __init__(self, label: str, total: int, steps_per_epoch: int, epochs: float, start_step: int,
                 enabled: bool):  # fmt: skip
        self.display = ProgressDisplay(label, total, enabled=enabled, eta=False)
        self.total, self.steps_per_epoch, self.epochs = total, steps_per_epoch, max(1, math.ceil(epochs))
        self.start_step, self.start, self.examples = start_step, time.perf_counter(), 0
        self.losses: deque[float] = deque(maxlen=50)

    def update(self, step: int, examples: int, loss: float) -> None:
        if not self.display.enabled:
            return
        self.examples += examples
        self.losses.append(loss)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        left = elapsed / max(step - self.start_step, 1) * (self.total - step)
        epoch = min((step - 1) // self.steps_per_epoch + 1, self.epochs)
        info = (f"train step {step}/{self.total} epoch {epoch}/{self.epochs} "
                f"loss {sum(self.losses) / len(self.losses):.4f} {self.examples / elapsed:,.1f} ex/s  "
                f"{hms(left)} left")  # fmt: skip
        self.display.update(step, info)

    def close(self) -> None:
        self.display.close()


class _EvalProgress:
    """Examples predicted on the dev splits of one run, and examples/s."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.display = ProgressDisplay(label, total, enabled=enabled)
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def hook(self, split: str) -> Callable[[int], None]:
        """The ``on_batch`` callback of ``predict`` for ``split``."""

        def on_batch(n: int) -> None:
            if not self.display.enabled:
                return
            self.done += n
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            info = f"eval {split} {self.done}/{self.total} examples {rate:,.1f} ex/s"
            self.display.update(self.done, info)

        return on_batch

    def close(self) -> None:
        self.display.close()


# --------------------------------------------------------------------------------------------
# One run: a checkpoint, a task, a seed
# --------------------------------------------------------------------------------------------


def settings_dict(s: FinetuneSettings) -> dict[str, Any]:
    return dataclasses.asdict(s)


def finetune_run(
    checkpoint: str | Path,
    train: GlueSplit,
    devs: Sequence[GlueSplit],
    settings: FinetuneSettings,
    seed: int,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    fabric=None,
    fff: str = "auto",
    stop_after_steps: int | None = None,
    progress: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` on ``train`` with ``seed`` and evaluate on ``devs``.

    Returns (and writes to ``run_dir/result.json``) the metrics per dev split, the per-example
    dev predictions (``predictions``: {split: class ids or scores}; absent from results of older
    versions, which stay readable), the training time and a digest of the final weights.
    An existing result is returned without training;
    an existing training state is resumed. ``fabric``: the engine's Fabric (``run_glue`` makes
    one for all runs); without it, one for ``device`` with the automatic precision. ``fff``: the
    FFF implementation to train with (``auto``: the fastest trainable one). ``stop_after_steps``
    (tests) stops the run after that many optimizer steps in this call, as a kill would.
    ``progress``: show the training (step, epoch, loss, examples/s, time left) and the evaluation
    on rank zero (a bar on a terminal, a plain line every 30 s otherwise), named ``label``
    (default: the task and seed).

    A run is identified (``run_dir/run.json``) by the checkpoint's weights (the sha256 that its
    config.json records and ``load_checkpoint`` verifies), the task, the seed, the settings and
    the data sizes, not by the checkpoint's path (kept in run.json for information only): a
    checkpoint moved elsewhere reuses its finished runs. When the checkpoint at the same path
    now holds other weights, the run is refused with a ``FinetuneError`` naming the run
    directory and saying that the weights changed: an old result or training state is never
    reused for other weights, nothing there is touched, and the user chooses (another ``--out``,
    or delete that directory to retrain). Refusing rather than retraining elsewhere keeps one
    run directory per (checkpoint label, task, seed) and never trains for hours unasked.
    """
    if fabric is None:
        device = torch.device(device)
        fabric = setup_fabric(device.type, [device.index] if device.index is not None else 1)
    run_dir = Path(run_dir)
    task = train.task
    check_not_run_dir(checkpoint)
    ident = run_identity(checkpoint, train, devs, settings, seed)
    if fabric.global_rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_run_identity(run_dir, ident, record={"checkpoint": str(Path(checkpoint).resolve())})
    fabric.barrier()
    if (run_dir / RESULT_NAME).is_file():
        return json.loads((run_dir / RESULT_NAME).read_text())

    s = settings
    meta = read_checkpoint_config(checkpoint)
    torch.manual_seed(seed)  # the new head's initialisation depends on the seed
    model = load_checkpoint(
        checkpoint, task="classification", num_labels=task.num_labels,
        config_overrides={"dropout": s.dropout, "attention_dropout": s.attention_dropout,
                          "classifier_dropout": s.classifier_dropout, "pooler": s.pooler,
                          "pooler_size": s.pooler_size or meta["model"]["hidden_size"]},
    )  # fmt: skip
    config = model.config
    tokenizer = load_checkpoint_tokenizer(checkpoint)  # the model's own tokenizer, verified
    max_length = min(s.max_length, config.max_seq_len)
    pad_id = tokenizer.token_to_id("[PAD]")
    pad_id = config.pad_token_id if pad_id is None else pad_id
    use_types = config.type_vocab_size > 0
    train_enc = encode_split(train, tokenizer, max_length)
    lengths = [len(x) for x in train_enc.ids]
    steps_per_epoch = math.ceil(len(train_enc) / s.batch_size)
    total = max(1, math.ceil(s.epochs * steps_per_epoch))
    model, optimizer = prepare(fabric, model, make_optimizer(model, s), fff=fff)

    state_dir = run_dir / STATE_DIR
    state = latest_state(state_dir)
    step = 0
    if state is not None:
        try:
            step = int(restore_state(fabric, state, model, optimizer)["step"])
        except TrainStateError as e:
            raise FinetuneError(str(e)) from e
    resumed_from = step
    start = time.perf_counter()
    epoch_batches: tuple[int, list[list[int]]] = (-1, [])
    done_here = 0
    rank, world = fabric.global_rank, fabric.world_size
    show = progress and rank == 0
    name = label or f"{task.display} seed {seed}"
    bar = _TrainProgress(name, total, steps_per_epoch, s.epochs, step, enabled=show and step < total)
    try:  # the bar is closed on every exit (a live terminal bar must not outlive the run)
        while step < total:
            epoch = step // steps_per_epoch
            if epoch_batches[0] != epoch:
                epoch_batches = (epoch, batch_order(lengths, s.batch_size, seed, epoch, s.length_grouping))
            # One micro batch per step; with several ranks each takes every world-th example.
            step_ids = epoch_batches[1][step % steps_per_epoch]
            batch = {
                k: fabric.to_device(v) for k, v in collate(train_enc, step_ids[rank::world], pad_id).items()
            }
            if not use_types:
                del batch["token_type_ids"]
            result = engine.train_step(fabric, model, optimizer, [batch], grad_clip=s.grad_clip,
                                lr=s.lr * lr_factor(step, total, s))  # fmt: skip
            if not result.finite:
                raise DivergedError(f"{task.display} seed {seed}: non-finite loss or gradient at step {step} "
                                    f"(loss {result.loss:.4g}); lower the lr (now {s.lr}) or set grad_clip")  # fmt: skip
            step += 1
            done_here += 1
            bar.update(step, len(step_ids), result.loss)
            if step % s.checkpoint_every == 0 or step == total:
                save_state(
                    fabric, state_dir, step, model, optimizer, {"step": step}, config=ident, keep_last=1
                )
            if stop_after_steps is not None and done_here >= stop_after_steps and step < total:
                raise _Interrupted(f"stopped after {done_here} steps at step {step}")
    finally:
        bar.close()
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    net = for_inference(raw_module(model))  # eval mode, FFF layers on the inference kernels
    digest = sha256_tensors(net.state_dict())  # equal digests = equal weights
    eval_bar = _EvalProgress(name, sum(len(d) for d in devs), enabled=show)
    try:
        with fabric.autocast():
            evaluated = {d.split: evaluate_predictions(net, d, tokenizer, max_length, s.eval_batch_size, fabric.device,
                                                       use_types, pad_id, on_batch=eval_bar.hook(d.split))
                         for d in devs}  # fmt: skip
    finally:
        eval_bar.close()
    scores = {split: metrics for split, (metrics, _) in evaluated.items()}
    # The per-example dev predictions (class ids, or STS-B scores) let run_glue put bootstrap
    # intervals on the scores and test them against the baselines on the same examples.
    result = {"checkpoint": str(Path(checkpoint).resolve()), **ident, "metrics": scores, "steps": total,
              "resumed_from_step": resumed_from, "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start,
              "weights_sha256": digest, "precision": precision_name(fabric), "devices": world,
              "predictions": {split: preds for split, (_, preds) in evaluated.items()}}  # fmt: skip
    if rank == 0:
        atomic_write_text(run_dir / RESULT_NAME, _result_text(result))
        shutil.rmtree(state_dir, ignore_errors=True)  # the result is final; the optimizer state is not needed
    fabric.barrier()
    return result


def _result_text(result: dict[str, Any]) -> str:
    """result.json: indented, except the predictions, one line per split (indented, QQP's 40k
    predictions would take 40k lines)."""
    rest = {k: v for k, v in result.items() if k != "predictions"}
    text = json.dumps(rest, indent=2)
    if "predictions" not in result:
        return text + "\n"
    lines = [
        f"    {json.dumps(split)}: {json.dumps(p, separators=(',', ':'))}"
        for split, p in result["predictions"].items()
    ]
    return text[:-2] + ',\n  "predictions": {\n' + ",\n".join(lines) + "\n  }\n}\n"


RUN_RECORD = "run.json"
WEIGHTS_KEY = "checkpoint_weights_sha256"


def run_identity(
    checkpoint: str | Path, train: GlueSplit, devs: Sequence[GlueSplit], settings: FinetuneSettings, seed: int
) -> dict[str, Any]:
    """What makes a fine-tuning run the same run: the checkpoint's weights (the sha256 recorded
    in its config.json), task, seed, settings and data sizes; not the checkpoint's path."""
    meta = read_checkpoint_config(checkpoint)
    return {WEIGHTS_KEY: meta["weights_sha256"], "task": train.task.name, "seed": seed,
            "settings": settings_dict(settings), "train_examples": len(train),
            "dev_examples": {d.split: len(d) for d in devs}}  # fmt: skip


def _check_run_identity(run_dir: Path, ident: dict[str, Any], record: dict[str, Any] | None = None) -> None:
    """``run_dir/run.json`` records what the run is; a different run there is refused (and
    when it is missing, ``ident`` is written there, with ``record`` for information)."""
    path = run_dir / RUN_RECORD
    hint = f"use another --out or delete {run_dir} to start over"
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            stored = None  # check_same_run reports it
        if isinstance(stored, dict) and stored.get(WEIGHTS_KEY, ident[WEIGHTS_KEY]) != ident[WEIGHTS_KEY]:
            finished = "a finished" if (run_dir / RESULT_NAME).is_file() else "an unfinished"
            raise FinetuneError(
                f"{run_dir} holds {finished} run of other weights: the checkpoint's weights changed since "
                f"(sha256 {str(stored[WEIGHTS_KEY])[:12]}… recorded in {path} for "
                f"{stored.get('checkpoint', 'the checkpoint')}, now {ident[WEIGHTS_KEY][:12]}…); its "
                f"result is not reused; {hint}"
            )
        if isinstance(stored, dict) and WEIGHTS_KEY not in stored:
            raise FinetuneError(
                f"{path} was written by an older ultracram that did not record the checkpoint's weights, so "
                f"its result cannot be matched to the checkpoint; {hint}"
            )
    try:
        check_same_run(path, ident, what="fine-tuning run", hint=hint, record=record)
    except RunMismatchError as e:
        raise FinetuneError(str(e)) from e


def check_run_dir(run_dir: Path, ident: dict[str, Any], checkpoint: str | Path) -> None:
    """``_check_run_identity`` without writing anything: refuse a run directory that holds
    another run (``run_glue`` calls it for every run before any training)."""
    if (run_dir / RUN_RECORD).is_file():
        _check_run_identity(run_dir, ident, record={"checkpoint": str(Path(checkpoint).resolve())})


@torch.no_grad()
def predict(
    model: nn.Module,
    data: EncodedSplit,
    batch_size: int,
    device: torch.device,
    use_types: bool,
    pad_id: int,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Class ids (N,) or regression scores (N,), in the split's order. Batches are sorted by
    length so that dynamic padding wastes little. ``on_batch(n)`` after each batch of n
    examples (progress)."""
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    out = torch.empty(len(data), dtype=data.labels.dtype)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = {k: v.to(device) for k, v in collate(data, idx, pad_id).items()}
        logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"] if use_types else None).logits
        logits = logits.float().cpu()
        out[idx] = logits if logits.ndim == 1 else logits.argmax(-1)
        if on_batch is not None:
            on_batch(len(idx))
    return out


def evaluate(model, split: GlueSplit, tokenizer, max_length: int, batch_size: int, device, use_types: bool,
             pad_id: int, on_batch: Callable[[int], None] | None = None) -> dict[str, float]:  # fmt: skip
    """The task's metrics of ``model`` on ``split`` (``on_batch``: as in ``predict``)."""
    return evaluate_predictions(model, split, tokenizer, max_length, batch_size, device, use_types, pad_id,
                                on_batch)[0]  # fmt: skip


def evaluate_predictions(model, split: GlueSplit, tokenizer, max_length: int, batch_size: int, device,
                         use_types: bool, pad_id: int, on_batch: Callable[[int], None] | None = None
                         ) -> tuple[dict[str, float], list]:  # fmt: skip
    """``evaluate``'s metrics and the per-example predictions they come from, in the split's order."""
    enc = encode_split(split, tokenizer, max_length)
    preds = predict(model, enc, batch_size, torch.device(device), use_types, pad_id, on_batch).tolist()
    return compute_metrics(split.task, preds, enc.labels.tolist()), preds


# --------------------------------------------------------------------------------------------
# Everything: checkpoints x tasks x seeds -> results.json + results.md
# --------------------------------------------------------------------------------------------


def check_not_run_dir(checkpoint: str | Path) -> None:
    """Refuse a pretraining run directory given as the checkpoint, pointing at its ``final/``.

    ``ultracram pretrain --out runs/crammed`` writes the model to ``runs/crammed/final``; passing
    ``runs/crammed`` is the natural mistake, and "has no config.json" alone does not say what to
    pass instead. A run directory is recognised by what pretraining writes there: ``final/``
    with a config.json, ``states/`` or ``metrics.csv``."""
    c = Path(checkpoint)
    if not c.is_dir() or (c / CONFIG_NAME).is_file():
        return
    final = c / "final"
    if (final / CONFIG_NAME).is_file():
        diverged = (f" (note: {c / 'diverged.txt'} says that the run diverged)"
                    if (c / "diverged.txt").is_file() else "")  # fmt: skip
        raise FinetuneError(f"checkpoint {c} is a pretraining run directory; use {final} (its final checkpoint)"
                            f"{diverged}")  # fmt: skip
    if (c / "states").is_dir() or (c / "metrics.csv").is_file():
        raise FinetuneError(
            f"checkpoint {c} is a pretraining run directory; use {final} (its final checkpoint), which "
            "pretraining has not written yet: let the run finish (ultracram pretrain --resume)"
        )


def split_checkpoint_arg(arg: str | Path) -> tuple[str | None, Path]:
    """``NAME=DIR`` -> (NAME, DIR); a plain ``DIR`` -> (None, DIR)."""
    text = str(arg)
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name:
        return name, Path(path)
    return None, Path(text)


def checkpoint_labels(checkpoints: Sequence[str | Path]) -> list[str]:
    """Table names for checkpoints: the NAME of ``NAME=DIR``, else the directory name (its
    parent's when the directory is called ``model``), with parents added on clashes."""
    parsed = [split_checkpoint_arg(c) for c in checkpoints]
    paths = [p.resolve() for _, p in parsed]
    depth = 1
    while True:
        labels = [
            name or "/".join(p.parts[-(depth + (p.name == "model")) :])
            for (name, _), p in zip(parsed, paths, strict=True)
        ]
        if len(set(labels)) == len(labels) or depth > 8:
            return labels
        depth += 1


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {metric: {"median": m, "values": [per seed]}}}, as the papers report."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split in per_seed[0]["metrics"]:
        out[split] = {}
        for metric in per_seed[0]["metrics"][split]:
            values = [r["metrics"][split][metric] for r in per_seed]
            out[split][metric] = {"median": _median(values), "values": values}
    return out


def glue_average(task_results: dict[str, Any], include_wnli: bool = False) -> dict[str, Any]:
    """The GLUE score as in cramming: the mean over dev columns (MNLI-m and MNLI-mm separately)
    of each task's main metric (x100), WNLI excluded by default. With tasks missing, the mean
    over those present and the list of what it covers."""
    cols = [c for c in eval_columns() if include_wnli or c.task != "wnli"]
    present, values = [], []
    for c in cols:
        r = task_results.get(c.task, {}).get("summary", {}).get(c.split)
        if r:
            present.append(c.label)
            values.append(100 * r[TASKS[c.task].main_metric]["median"])
    missing = [c.label for c in cols if c.label not in present]
    return {"value": sum(values) / len(values) if values else None, "covers": present, "missing": missing,
            "complete": not missing}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The fitted protocol: the learning rate chosen on held-out training examples
# --------------------------------------------------------------------------------------------

HOLDOUT = "train-holdout"
"""Split name of the held-out training examples (the metrics of the selection runs)."""
SELECT_SEED = 0
"""Seed of the selection runs (the chosen lr then serves every seed)."""


def holdout_split(train: GlueSplit) -> tuple[GlueSplit, GlueSplit]:
    """(the rest, the held-out part) of ``train``: ``holdout_size`` examples drawn with a fixed
    generator (seed 1; ``subsample`` uses 0), the same on every rerun. The dev set is not read."""
    held_n = holdout_size(len(train))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1)).tolist()
    held = dataclasses.replace(train.subset(sorted(order[:held_n])), split=HOLDOUT)
    return train.subset(sorted(order[held_n:])), held


def select_run(run_root: Path, settings: FinetuneSettings, lr: float) -> tuple[Path, FinetuneSettings]:
    """The directory (``lr-0.002``) and the settings of the selection run at ``lr``."""
    return run_root / f"lr-{lr:g}", dataclasses.replace(settings, lr=lr)


def selection_runs(
    checkpoint: str | Path, train: GlueSplit, settings: FinetuneSettings, run_root: Path
) -> list[tuple[Path, GlueSplit, GlueSplit, FinetuneSettings]]:
    """The fitted protocol's runs for one checkpoint and task: (run dir, training part, held-out
    part, settings) for each lr of ``lr_grid(the checkpoint's hidden size)``. Each trains on at
    most ``SELECT_MAX_TRAIN`` of the examples not held out."""
    rest, held = holdout_split(train)
    rest = subsample(rest, SELECT_MAX_TRAIN)
    hidden = read_checkpoint_config(checkpoint)["model"]["hidden_size"]
    runs = [select_run(run_root, settings, lr) for lr in lr_grid(hidden)]
    return [(run_dir, rest, held, s) for run_dir, s in runs]


def final_epochs(epochs: float, train: int, select_train: int, held: int) -> float:
    """The fitted protocol's epochs for the final runs on all ``train`` examples, given the
    selection runs' ``epochs`` over ``select_train`` examples (``held`` held out): unchanged
    when the selection runs trained on every example not held out; when they trained on a
    ``SELECT_MAX_TRAIN`` subset, as many optimizer steps as they took (SST-2: 5 x 8,000 /
    67,349 = 0.59 epochs, 2,500 steps, not 21,050): the lr is chosen for a run of that length,
    and on the study's checkpoints a run 8x longer at the chosen lr scored 1-2 points lower
    (docs/study.md)."""
    return epochs if select_train >= train - held else epochs * select_train / train


def choose_lr(grid: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The chosen run of ``grid`` ([{lr, score, se}]; score None for a diverged run, ``se`` the
    bootstrap standard error of the score over the held-out examples): the lowest lr whose score
    is within one standard error of the best score (the one-standard-error rule). A held-out
    part of a few hundred examples cannot tell apart scores closer than that, and of lrs it
    cannot tell apart the lowest is the one least likely to collapse in the final runs: in the
    study's rerun (docs/study.md) bert-tiny's STS-B scored 0.223 at 1e-2 against 0.214 at 2e-3
    (se about 0.04), and its three final runs at 1e-2 collapsed to a constant (Spearman 0-3 points).
    Exact ties (a flat grid at the majority class) go to the lowest lr too; a diverged run only
    wins if all did (then the lowest lr)."""
    scored = [g for g in grid if g["score"] is not None]
    if not scored:
        return min(grid, key=lambda g: g["lr"])
    best = max(scored, key=lambda g: g["score"])
    floor = best["score"] - (best.get("se") or 0.0)
    return min((g for g in scored if g["score"] >= floor), key=lambda g: g["lr"])


def _standard_error(task: GlueTask, metric: str, held: GlueSplit, preds: Sequence | None) -> float:
    """Bootstrap standard error of ``metric`` over the held-out examples (0 without predictions)."""
    if preds is None or len(preds) != len(held):
        return 0.0
    scores = resample_scores(glue_metric(task, metric), np.asarray(held.labels), np.asarray(preds),
                             glue_baselines.N_BOOT, glue_baselines.BOOT_SEED)  # fmt: skip
    return float(np.nanstd(scores)) if np.isfinite(scores).any() else 0.0


def select_lr(
    checkpoint: str | Path, train: GlueSplit, settings: FinetuneSettings, run_root: Path, *, fabric, fff: str = "auto",
    progress: bool = False, label: str = "", log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Choose the learning rate of ``checkpoint`` on ``train``'s task by the task's main metric
    on held-out training examples (``selection_runs``, seed ``SELECT_SEED``); the dev set is
    neither passed nor read, so its labels cannot influence the choice. The choice is the lowest
    lr within one standard error of the best score (``choose_lr``); a run that diverges scores
    below every other. When the choice is an end of the lrs tried, the ladder's next step past
    it is run too, up to ``LR_EXTEND_MAX`` steps beyond the grid (``lr_beyond``). Returns what
    the results record: {metric, seed, holdout_examples, select_train_examples, grid: [{lr,
    score, se}] (ascending lr), extended (runs past the grid), chosen: {lr}, final_epochs
    (``final_epochs``)}."""
    task, metric = train.task, train.task.main_metric
    runs = selection_runs(checkpoint, train, settings, run_root)
    _, rest, held, _ = runs[0]  # every run trains on the same part and is scored on the same held-out part
    grid: list[dict[str, Any]] = []

    def run(lr: float) -> None:
        run_dir, s = select_run(run_root, settings, lr)
        try:
            r = finetune_run(checkpoint, rest, [held], s, SELECT_SEED, run_dir, fabric=fabric,
                             fff=fff, progress=progress, label=f"{label} lr {lr:g}")  # fmt: skip
            preds = (r.get("predictions") or {}).get(HOLDOUT)
            grid.append({"lr": lr, "score": r["metrics"][HOLDOUT][metric],
                         "se": _standard_error(task, metric, held, preds)})  # fmt: skip
        except DivergedError as e:
            grid.append({"lr": lr, "score": None, "diverged": str(e)})

    base = [s.lr for _, _, _, s in runs]
    for lr in base:
        run(lr)
    chosen = choose_lr(grid)
    # The choice at an end of the lrs tried: try past it, up to LR_EXTEND_MAX steps beyond the grid.
    while (lr := lr_beyond([g["lr"] for g in grid], chosen["lr"], base)) is not None:
        run(lr)
        chosen = choose_lr(grid)
    grid.sort(key=lambda g: g["lr"])
    best = max((g for g in grid if g["score"] is not None), key=lambda g: g["score"], default=None)
    within = (
        f" (within one standard error, {best['se']:.4f}, of the best)" if best and best is not chosen else ""
    )
    log(f"{label}: lr chosen on {len(held)} held-out training examples ({metric}): "
        + ", ".join(f"{g['lr']:g} -> " + ("diverged" if g["score"] is None else f"{g['score']:.4f}") for g in grid)
        + f"; chosen {chosen['lr']:g}{within}")  # fmt: skip
    return {"metric": metric, "seed": SELECT_SEED, "holdout_examples": len(held),
            "select_train_examples": len(rest), "grid": grid, "extended": len(grid) - len(base),
            "chosen": {"lr": chosen["lr"]},
            "final_epochs": final_epochs(settings.epochs, len(train), len(rest), len(held))}  # fmt: skip


def run_glue(
    checkpoints: Sequence[str | Path],
    glue_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tasks: str | Sequence[str] = "all",
    seeds: int = 1,
    protocol: str = "sane",
    overrides: FinetuneSettings | dict[str, Any] | None = None,
    task_overrides: dict[str, dict[str, Any]] | None = None,
    device: str | None = None,
    devices: int = 1,
    precision: str = "auto",
    fff: str = "auto",
    include_wnli: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune and evaluate every checkpoint on every task with ``seeds`` seeds; write
    ``out_dir/results.json`` and ``out_dir/results.md``. Reruns skip finished runs and resume
    interrupted ones. Tasks without a train split are skipped with a note.

    ``device`` (``cpu``, ``cuda``, ``cuda:1``; default: CUDA if there is one), ``devices`` (ranks
    that share each step's batch; DDP), ``precision`` (``auto`` or a Fabric precision) and
    ``fff`` (the FFF training implementation) go to the engine (``ultracram.train.engine``).
    ``glue_dirs``: directories, or ``nyu-mll/glue`` (``glue``) to load through Hugging Face
    ``datasets`` (``ultracram.data.glue.load_split``). ``progress``: each run's training and
    evaluation progress on standard output (``finetune_run``).

    The table has two reference rows per task, trained on the same training examples and scored
    on the same dev examples (``ultracram.train.baselines``: "majority" and "bag-of-words (TF-IDF
    + logreg)", cached in ``out_dir/baselines/TASK.json``). Every score gets a 95% percentile
    bootstrap interval over the dev examples (for several seeds, that of the run nearest the
    median), and each checkpoint's main metric a paired bootstrap test against each baseline;
    results.md says per column which checkpoints beat the bag of words and which are at chance.

    ``protocol="fit"`` (or any task whose lr is left null) first chooses the lr per checkpoint and
    task on held-out training examples (``select_lr``; runs in ``runs/LABEL/TASK/select/``), then
    trains every seed with it; the task entry records the choice under ``selection``."""
    if not checkpoints:
        raise FinetuneError("no checkpoint given; pass --checkpoint DIR (several to compare)")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise FinetuneError(f"--seeds must be an integer >= 1, got {seeds!r}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise FinetuneError(f"--devices must be an integer >= 1, got {devices!r}")
    if not glue_dirs:
        raise FinetuneError("no GLUE directory given; pass --glue_dir DIR")
    chosen = parse_tasks(tasks)  # the settings first: they need no file
    if isinstance(task_overrides, dict):
        # The generated CLI turns "-" into "_" in flag names (--per_task.sst-2.epochs arrives as
        # "sst_2"); no task name has "_", so it is dropped like the "-" that resolve_settings drops.
        task_overrides = {
            (str(k).replace("_", "") if str(k).replace("_", "").lower().replace("-", "") in TASKS else k): v
            for k, v in task_overrides.items()
        }
    settings = resolve_settings(chosen, protocol, overrides, task_overrides)
    labels = checkpoint_labels(checkpoints)
    checkpoints = [split_checkpoint_arg(c)[1] for c in checkpoints]
    for c in checkpoints:  # fail early on a bad checkpoint, before any training
        check_not_run_dir(c)
        read_checkpoint_config(c)
        if not (Path(c) / "tokenizer.json").is_file():
            raise FinetuneError(f"checkpoint {c} has no tokenizer.json; GLUE needs the pretraining tokenizer")
        load_checkpoint_tokenizer(c)  # the model's own tokenizer (sha256, vocabulary size)
        load_checkpoint(c)  # checksum, tensor names and shapes, finite weights
    dev = _parse_device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {out} exists and is not a directory")

    data: dict[str, tuple[GlueSplit, list[GlueSplit]]] = {}
    full_sizes: dict[str, dict[str, int]] = {}  # examples before subsampling, per split
    notes: list[str] = []
    for t in chosen:
        if find_split(t, "train", glue_dirs) is None:
            notes.append(f"{t.display} skipped: no train split in {', '.join(map(str, glue_dirs))} "
                         f"(expected {t.display}/train.tsv or {t.name}/train-*.parquet)")  # fmt: skip
            continue
        s = settings[t.name]
        full_train = load_split(t, "train", glue_dirs)
        train = subsample(full_train, s.max_train_examples)
        full_sizes[t.name] = {"train": len(full_train)}
        devs = []
        for split in t.dev_splits:
            try:
                full_dev = load_split(t, split, glue_dirs)
                full_sizes[t.name][split] = len(full_dev)
                devs.append(subsample(full_dev, s.max_eval_examples))
            except GlueDataError:
                if find_split(t, split, glue_dirs) is not None:
                    raise
                notes.append(f"{t.display}: no {split} split found; not evaluated on it")
        if not devs:
            notes.append(f"{t.display} skipped: no dev split found")
            continue
        data[t.name] = (train, devs)
    if not data:
        expected = "; ".join(
            f"{t.display}: {t.display}/train.tsv + {', '.join(f'{t.display}/{sp}.tsv' for sp in t.dev_splits)} "
            f"or {t.name}/train-*.parquet + "
            f"{', '.join(f'{t.name}/{HF_SPLITS.get(sp, sp)}-*.parquet' for sp in t.dev_splits)}"
            for t in chosen
        )
        raise GlueDataError(
            f"no GLUE data for the asked task(s) {', '.join(t.name for t in chosen)} in "
            f"{', '.join(map(str, glue_dirs))} (nothing to fine-tune; each task needs a train and a dev split); "
            f"expected {expected}"
        )
    # Every run directory that already holds a run must hold this one (same weights, settings):
    # refuse before any training rather than after some runs have finished.
    # (With the fitted protocol the final runs' lr is not known yet: their selection runs are checked.)
    for ckpt, label in zip(checkpoints, labels, strict=True):
        for name, (train, devs) in data.items():
            root = out / "runs" / label.replace("/", "__") / name
            if settings[name].lr is None:
                for run_dir, rest, held, s in selection_runs(ckpt, train, settings[name], root / "select"):
                    check_run_dir(run_dir, run_identity(ckpt, rest, [held], s, SELECT_SEED), ckpt)
                continue
            for seed in range(seeds):
                check_run_dir(
                    root / f"seed-{seed}", run_identity(ckpt, train, devs, settings[name], seed), ckpt
                )

    try:
        fabric = setup_fabric(dev.type, [dev.index] if dev.index is not None and devices == 1 else devices,
                              precision=precision)  # fmt: skip
    except (ValueError, RuntimeError, TypeError) as e:
        raise FinetuneError(
            f"cannot set up {devices} {dev.type} device(s) with precision {precision!r}: {e}"
        ) from e
    except Exception as e:  # Lightning's MisconfigurationException (no such device, ...)
        if type(e).__name__ != "MisconfigurationException":
            raise
        raise FinetuneError(
            f"cannot set up {devices} {dev.type} device(s) with precision {precision!r}: {e}"
        ) from e
    fabric.launch()  # with several devices: one process per device (a no-op for one)
    if fabric.global_rank != 0:
        log = _silent
    out.mkdir(parents=True, exist_ok=True)
    for n in notes:
        log(f"note: {n}")

    # The reference rows, before any training (cheap, and a table without them can mislead):
    # trained on the very GlueSplits the encoders get, cached in OUT/baselines/TASK.json. Rank
    # zero alone computes them and the statistics; the other ranks write nothing.
    resamples = glue_baselines.Resamples()
    computed: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    if fabric.global_rank == 0:
        for name, (train, devs) in data.items():
            computed[name], reused = glue_baselines.cached_task_baselines(out, train, devs)
            scores = "; ".join(
                f"{b} "
                + ", ".join(
                    f"{sp} {m} {v:.4f}" for sp, got in by_split.items() for m, v in got["metrics"].items()
                )
                for b, by_split in computed[name].items()
            )
            log(f"baselines {TASKS[name].display}{' (reused)' if reused else ''}: {scores}")
    baseline_rows = glue_baselines.baseline_entries(computed, data, resamples) if computed else []
    for row in baseline_rows:
        row["average"] = glue_average(row["tasks"], include_wnli)

    results: dict[str, Any] = {"protocol": protocol, "seeds": list(range(seeds)), "device": str(fabric.device),
                               "devices": fabric.world_size, "precision": precision_name(fabric),
                               "settings": {k: settings_dict(v) for k, v in settings.items()},
                               "glue_dirs": [str(d) for d in glue_dirs], "notes": notes,
                               "bootstrap": glue_baselines.BOOTSTRAP if computed else None,
                               "baselines": baseline_rows, "checkpoints": []}  # fmt: skip
    n_runs, run_number = len(checkpoints) * len(data) * seeds, 0
    predictions: dict[tuple[str, str], list[dict[str, list]]] = {}  # (task, label) -> per seed {split: preds}
    for ckpt, label in zip(checkpoints, labels, strict=True):
        entry: dict[str, Any] = {"label": label, "path": str(ckpt), "tasks": {}}
        for name, (train, devs) in data.items():
            root = out / "runs" / label.replace("/", "__") / name
            task_settings, selection = settings[name], None
            if task_settings.lr is None:  # the fitted protocol: choose the lr first, without the dev set
                selection = select_lr(ckpt, train, task_settings, root / "select", fabric=fabric, fff=fff,
                                      progress=progress and fabric.global_rank == 0,
                                      label=f"{label} {TASKS[name].display} selection", log=log)  # fmt: skip
                task_settings = dataclasses.replace(
                    task_settings, lr=selection["chosen"]["lr"], epochs=selection["final_epochs"]
                )
            per_seed = []
            for seed in range(seeds):
                run_dir = root / f"seed-{seed}"
                run_number += 1
                r = finetune_run(ckpt, train, devs, task_settings, seed, run_dir, fabric=fabric, fff=fff,
                                 progress=progress and fabric.global_rank == 0,
                                 label=f"GLUE {run_number}/{n_runs} {label} {TASKS[name].display} seed {seed}")  # fmt: skip
                per_seed.append(r)
                if r.get("predictions"):  # for the paired tests between checkpoints
                    predictions.setdefault((name, label), []).append(r["predictions"])
                scores = ", ".join(
                    f"{sp} {m} {v:.4f}" for sp, ms in r["metrics"].items() for m, v in ms.items()
                )
                log(f"{label} {TASKS[name].display} seed {seed}: {scores} "
                    f"({r['train_seconds']:.0f}s train, {r['steps']} steps)")  # fmt: skip
            entry["tasks"][name] = {
                "train_examples": len(train), "dev_examples": {d.split: len(d) for d in devs},
                "available_examples": full_sizes[name],
                "summary": summarize(per_seed),
                "train_seconds": [r["train_seconds"] for r in per_seed],
                **({"selection": selection} if selection else {}),
            }  # fmt: skip
            if name in computed:  # intervals, and the paired tests against the baselines
                glue_baselines.add_statistics(entry["tasks"][name], per_seed, devs, computed[name], resamples)
        entry["average"] = glue_average(entry["tasks"], include_wnli)
        results["checkpoints"].append(entry)
        if fabric.global_rank == 0:
            _write_results(out, results)
    if fabric.global_rank == 0:
        if len(checkpoints) > 1 and computed:
            results["pairwise"] = pairwise_tests(data, labels, predictions, seeds)
            _write_results(out, results)
        atomic_write_text(out / "results.md", glue_markdown(results))
    log(glue_markdown(results))
    return results


def pairwise_tests(
    data: dict[str, tuple[GlueSplit, list[GlueSplit]]], labels: Sequence[str],
    predictions: dict[tuple[str, str], list[dict[str, list]]], seeds: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """The paired bootstrap of every pair of checkpoints on every dev column (the main metric,
    each checkpoint's run nearest the median seed, with Welch's test across seeds when there are
    several: ``ultracram.report.compare.compare_systems``), as dicts of ``PairTest``'s fields.
    Checkpoints whose runs kept no predictions (older versions) are left out."""
    from ultracram.report.compare import DevSet, compare_systems

    tests = []
    for c in eval_columns():
        if c.task not in data:
            continue
        dev = next((d for d in data[c.task][1] if d.split == c.split), None)
        if dev is None:
            continue
        systems = {
            label: [np.asarray(p[c.split]) for p in predictions.get((c.task, label), [])] for label in labels
        }
        systems = {k: v for k, v in systems.items() if len(v) == seeds and all(len(p) == len(dev) for p in v)}
        if len(systems) > 1:
            column = DevSet(c.label, c.task, TASKS[c.task].main_metric, np.asarray(dev.labels), systems)
            tests += [dataclasses.asdict(t) for t in compare_systems(column)]
    return tests


def _parse_device(device: str | None) -> torch.device:
    """``--device`` as a torch device (default: CUDA if there is one); a bad name or a CUDA
    device on a machine without one is a ``FinetuneError``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise FinetuneError(f"--device {device!r} is not a device: expected cpu, cuda or cuda:N ({e})") from e
    if dev.type not in ("cpu", "cuda"):
        raise FinetuneError(f"--device {device!r}: GLUE fine-tuning runs on cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FinetuneError(
                f"--device {device!r}: CUDA is not available on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FinetuneError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def _silent(message: str) -> None:
    """The log of ranks other than zero."""


def _write_results(out: Path, results: dict[str, Any]) -> None:
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")


def iter_results(results: dict[str, Any]) -> Iterator[tuple[str, str, str, float]]:
    """(checkpoint label, column label, metric, median) for every reported score."""
    for entry in results["checkpoints"]:
        for c in eval_columns():
            r = entry["tasks"].get(c.task, {}).get("summary", {}).get(c.split)
            if r:
                for metric, v in r.items():
                    yield entry["label"], c.label, metric, v["median"]


_UNSET = FinetuneSettings()  # every protocol value unset: the protocol decides
_NO_TASK_SETTINGS: dict[str, dict[str, Any]] = {}  # read only (a jsonargparse default must be a dict)


def glue_command(
    checkpoint: list[str],
    glue_dir: list[str],
    tasks: str = "all",
    out: str = "out/glue",
    seeds: int = 1,
    protocol: Literal["fit", "sane", "bert"] = "sane",
    finetune: FinetuneSettings = _UNSET,
    per_task: dict[str, dict[str, Any]] = _NO_TASK_SETTINGS,
    include_wnli: bool = False,
    device: str | None = None,
    devices: int = 1,
    precision: str = "auto",
) -> dict[str, Any]:
    """fine-tune checkpoints on GLUE and evaluate on the dev sets

    Fine-tune each --checkpoint on each GLUE task for --seeds seeds, evaluate on dev, and write
    OUT/results.json and OUT/results.md (one row per checkpoint, median over seeds, average
    last). Reruns skip finished runs and resume interrupted ones. Settings: the --protocol, then
    --finetune.KEY VALUE for every task, then --per_task.TASK.KEY VALUE for one task (e.g.
    --finetune.lr 2e-5 --per_task.rte.epochs 10); a --config file holds the same keys. See
    docs/glue.md.

    Args:
        checkpoint: checkpoint directory with tokenizer.json, as [NAME=]DIR; repeat to compare
            several in one table.
        glue_dir: glue_data directory, HF parquet directory, or nyu-mll/glue (or glue) to load
            through Hugging Face datasets (its cache when offline); repeat to search several in order.
        tasks: 'all' or a comma list, e.g. cola,sst2.
        out: output directory.
        seeds: seeds per task; the median is reported.
        protocol: cramming's GLUE-sane, BERT's original recipe, or fit (the learning rate
            chosen per task and checkpoint on held-out training examples); it sets every
            fine-tuning setting left at null.
        finetune: fine-tuning settings for every task (null: the protocol's).
        per_task: settings for one task, e.g. --per_task.rte.epochs 10 (keys as --finetune).
        include_wnli: count WNLI in the average.
        device: cpu, cuda or cuda:N (default: cuda when available).
        devices: processes that share each step's batch (DDP), as in pretrain.
        precision: auto (bf16-mixed on CUDA with bf16, 16-mixed on older cards, 32-true on CPU,
            as in pretrain) or a Lightning precision.
    """
    try:
        return run_glue(checkpoint, glue_dir, out, tasks=tasks, seeds=seeds, protocol=protocol, overrides=finetune,
                        task_overrides=per_task, device=device, devices=devices, precision=precision,
                        include_wnli=include_wnli)  # fmt: skip
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"finished runs and each unfinished run's newest training state are kept in {out}; "
                                "the same command resumes them") from None  # fmt: skip
