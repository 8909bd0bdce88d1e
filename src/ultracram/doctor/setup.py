"""``TrainingSetup``: the parts of an MLM training loop that the doctor checks, each replaceable.

A preflight check never reaches into a training script; it calls these parts. Tests plant a bug
by replacing one part (``dataclasses.replace(setup, loss_fn=buggy)``) and assert that the right
check fails. ``default_setup`` builds the parts ultracram's own pretraining uses: the recipe's
optimizer (``train.optim.build_optimizer`` with its parameter groups, betas, eps and weight
decay), the recipe's gradient clipping, and the engine's ``train_step``, the very step
``ultracram pretrain`` takes (a test checks that both give the same weights).

Shapes: B batch, T sequence, V vocabulary, k masked positions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ultracram.config import IGNORE_INDEX, ModelConfig, get_preset
from ultracram.data.corpus import TokenShards, has_validation
from ultracram.data.mlm import mask_tokens
from ultracram.data.sample import read_sample_paragraphs
from ultracram.data.tokenizer import load_tokenizer, train_tokenizer
from ultracram.errors import UltracramError
from ultracram.model import build_model
from ultracram.settings import SettingsError
from ultracram.train import engine
from ultracram.train.optim import build_optimizer
from ultracram.train.pretrain_config import RECIPES, PretrainConfig, resolve_recipe


class DoctorError(UltracramError, ValueError):
    """Bad doctor input (unknown override key, unreadable data); the message names it."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What the checks need to know about the tokenizer."""

    vocab_size: int
    pad_id: int = 0
    unk_id: int = 1
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)


@dataclass
class RawBatch:
    """Unmasked token ids (B, T) with [CLS] ... [SEP] and right padding; mask (B, T), 1 = real."""

    ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass
class Batch:
    """A masked batch: ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B, T) with
    IGNORE_INDEX except at masked positions; ``original_ids`` are the ids before masking."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    original_ids: torch.Tensor


# The replaceable parts, with the signatures the checks call.
ModelFactory = Callable[[ModelConfig], nn.Module]  # config -> freshly initialised MLM model
RawBatchFn = Callable[[int], RawBatch]  # step -> unmasked batch (deterministic in step)
MaskFn = Callable[
    [torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]
]  # ids -> (input, labels)
ForwardFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]  # -> (logits (k, V), labels (k,))
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (k, V), labels (k,)) -> scalar
OptimizerFactory = Callable[[list[nn.Parameter], float], torch.optim.Optimizer]
TrainStep = Callable[["TrainingSetup", nn.Module, torch.optim.Optimizer, Batch], float]


def mlm_forward(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and the labels they predict (sparse heads return k rows)."""
    out = model(batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    labels = out.labels if out.labels is not None else batch.labels
    return out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on raw logits over the labelled positions."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def recipe_optimizer(recipe: str) -> OptimizerFactory:
    """The pretraining recipe's optimizer (``train.pretrain_config.RECIPES``) as a factory:
    AdamW over ``parameter_groups`` (no decay on norms, biases, scalars)."""
    r = RECIPES[recipe]

    def factory(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return build_optimizer(params, lr=lr, betas=(r["beta1"], r["beta2"]), eps=r["eps"],
                               weight_decay=r["weight_decay"])  # fmt: skip

    return factory


def standard_train_step(
    setup: TrainingSetup, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch
) -> float:
    """The engine's ``train_step`` (zero_grad, forward, loss, backward, the recipe's clipping,
    step unless non-finite) on one micro batch, with the setup's loss. Returns the loss."""
    return engine.train_step(setup.fabric, model, optimizer, [batch], grad_clip=setup.grad_clip,
                             loss_fn=setup.loss_terms).loss  # fmt: skip


@dataclass
class TrainingSetup:
    """Everything a preflight check needs, as replaceable parts (see the module docstring)."""

    config: ModelConfig
    tokenizer: TokenizerInfo
    raw_batch_fn: RawBatchFn
    mask_fn: MaskFn
    model_factory: ModelFactory = field(default=lambda config: _build_mlm(config))
    forward_fn: ForwardFn = mlm_forward
    loss_fn: LossFn = mlm_loss
    optimizer_factory: OptimizerFactory = field(default_factory=lambda: recipe_optimizer("cramming"))
    train_step: TrainStep = standard_train_step
    lr: float = 1e-3
    """Peak learning rate the run will use."""
    grad_clip: float | None = 0.5
    """Gradient clipping of the recipe (None: none)."""
    recipe: str = "cramming"
    fabric: Any = field(default_factory=lambda: engine.setup_fabric("cpu", 1, precision="32-true"))
    """The engine's Fabric the steps run on (one CPU process, fp32)."""
    seed: int = 0
    data_sample_fn: Callable[[str], list[list[int]]] | None = None
    """split ("train" / "validation") -> a sample of token-id sequences, for the data checks."""
    description: str = ""

    def make_batch(self, step: int) -> Batch:
        """The masked batch of ``step``; masking randomness comes from (seed, step)."""
        raw = self.raw_batch_fn(step)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        input_ids, labels = self.mask_fn(raw.ids, gen)
        return Batch(input_ids, raw.attention_mask, labels, raw.ids)

    def build_model(self, seed: int | None = None) -> nn.Module:
        torch.manual_seed(self.seed if seed is None else seed)
        return self.model_factory(self.config)

    def compute_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits, labels = self.forward_fn(model, batch)
        return self.loss_fn(logits, labels)

    def loss_terms(self, model: nn.Module, batch: Batch) -> engine.LossTerms:
        """``compute_loss`` as the engine takes it: the mean and the labelled count it is over."""
        logits, labels = self.forward_fn(model, batch)
        return engine.LossTerms(self.loss_fn(logits, labels), (labels != IGNORE_INDEX).sum())

    def replace(self, **changes: Any) -> TrainingSetup:
        return dataclasses.replace(self, **changes)


def _build_mlm(config: ModelConfig) -> nn.Module:
    return build_model(config, "mlm")


def standard_mask_fn(config: ModelConfig, tok: TokenizerInfo) -> MaskFn:
    """ultracram's collator (``ultracram.data.mlm.mask_tokens``) with the config's mask rate."""

    def mask(ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(ids, config.mask_rate, mask_token_id=tok.mask_id, vocab_size=tok.vocab_size,
                           special_ids=tok.special_ids, generator=gen)  # fmt: skip

    return mask


def rows_batch_fn(
    rows: Sequence[Sequence[int]], tok: TokenizerInfo, *, batch_size: int, seq_len: int, seed: int
) -> RawBatchFn:
    """Batches of ``[CLS] row [SEP]`` with right padding. Row lengths vary (half to full length)
    so that every batch exercises the attention mask."""
    if not rows:
        raise DoctorError("no training sequences to build batches from")

    def fn(step: int) -> RawBatch:
        g = torch.Generator().manual_seed(seed * 7919 + step)
        pick = torch.randint(len(rows), (batch_size,), generator=g).tolist()
        ids = torch.full((batch_size, seq_len), tok.pad_id, dtype=torch.long)
        body = seq_len - 2
        lengths = torch.randint(body // 2, body + 1, (batch_size,), generator=g).tolist()
        lengths[0] = body  # one full row per batch
        for b, (r, n) in enumerate(zip(pick, lengths)):
            seq = list(rows[r][:n])
            row = [tok.cls_id, *seq, tok.sep_id]
            ids[b, : len(row)] = torch.tensor(row)
        return RawBatch(ids, (ids != tok.pad_id).long())

    return fn


def _tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    def tid(name: str, default: int) -> int:
        i = tokenizer.token_to_id(name)
        return default if i is None else i

    return TokenizerInfo(vocab_size=tokenizer.get_vocab_size(), pad_id=tid("[PAD]", 0),
                         unk_id=tid("[UNK]", 1), cls_id=tid("[CLS]", 2), sep_id=tid("[SEP]", 3),
                         mask_id=tid("[MASK]", 4))  # fmt: skip


@dataclass(frozen=True)
class DoctorSettings:
    """What ``ultracram doctor`` checks: a preflight of a preset's setup, or a run's post-mortem."""

    preset: str = "crammed-bert-tiny"
    """Model preset (ultracram models lists them)."""
    data: str | None = None
    """Token-shard directory (ultracram data prepare); null: the embedded Wikipedia sample."""
    tokenizer: str | None = None
    """tokenizer.json; null: DATA/tokenizer.json, or one trained on the sample."""
    model: dict[str, Any] = field(default_factory=dict)
    """Model config overrides, as in pretrain: --model.num_layers 1 --model.mask_rate 0.15."""
    lr: float | None = None
    """Peak learning rate; null: the recipe's (as ultracram pretrain picks it)."""
    seed: int = 0
    """Seed of the model, the batches and the masking."""
    batch_size: int = 8
    """Sequences per check batch."""
    seq_len: int = 64
    """Tokens per sequence."""
    only: list[str] | None = None
    """Run only these checks (repeat the flag, or a comma list): vocab, data, overlap, labels,
    special_tokens, padding, init_loss, loss_function, gradients, grad_zeroing, overfit,
    determinism, lr_range, mixed_precision."""
    run: str | None = None
    """Post-mortem of this run directory instead of the preflight checks."""
    out: str | None = None
    """Output directory; null: out/doctor, or RUN/doctor with --run."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr: must be > 0, got {self.lr}")
        if problems:
            raise SettingsError(problems, "doctor settings")


def _split_rows(rows: list[list[int]], valid_fraction: float = 0.05) -> tuple[list, list]:
    """Deterministic train/validation split by a hash of each row (as a pipeline would)."""
    train, valid = [], []
    for r in rows:
        h = int(hashlib.blake2b(str(r[:32]).encode(), digest_size=4).hexdigest(), 16)
        (valid if h % 1000 < valid_fraction * 1000 else train).append(r)
    return train, valid


def default_setup(
    preset: str = "crammed-bert-tiny",
    *,
    data: str | Path | None = None,
    tokenizer: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    lr: float | None = None,
    recipe: str = "auto",
    batch_size: int = 8,
    seq_len: int = 64,
    seed: int = 0,
) -> TrainingSetup:
    """The setup ultracram's pretraining uses, on ``data`` or on the embedded sample.

    ``recipe`` (``auto``: by preset, as ``ultracram pretrain`` picks it) gives the optimizer,
    the clipping and, unless ``lr`` is given, the peak learning rate.

    Without ``data``, a WordPiece tokenizer sized to the preset's vocabulary is trained on the
    embedded Wikipedia sample (a few seconds); if the sample cannot fill that vocabulary, the
    model's ``vocab_size`` is set to the tokenizer's (as the quick start does).
    With ``data`` (a token-shard directory from ``ultracram.data.corpus``), ``tokenizer`` is the
    tokenizer.json the shards were made with (default: ``data/tokenizer.json``).
    """
    overrides = dict(overrides or {})
    config = get_preset(preset, **overrides)
    recipe = resolve_recipe(PretrainConfig(preset=preset, recipe=recipe)).recipe  # type: ignore[arg-type]
    lr = RECIPES[recipe]["lr"] if lr is None else lr
    seq_len = min(seq_len, config.max_seq_len)
    if data is None:
        paragraphs = read_sample_paragraphs()
        tok = (
            load_tokenizer(tokenizer)
            if tokenizer
            else train_tokenizer(paragraphs, vocab_size=config.vocab_size)
        )
        info = _tokenizer_info(tok)
        if tokenizer is None and info.vocab_size != config.vocab_size and "vocab_size" not in overrides:
            config = config.replace(vocab_size=info.vocab_size)
        rows = [e.ids for e in tok.encode_batch(paragraphs, add_special_tokens=False) if e.ids]
        # Long paragraphs are cut into seq_len windows so a batch is not all one article.
        body = seq_len - 2
        rows = [r[i : i + body] for r in rows for i in range(0, len(r), body) if len(r[i : i + body]) > 4]
        train_rows, valid_rows = _split_rows(rows)
        description = f"{preset} on the embedded Wikipedia sample ({len(rows)} windows)"
    else:
        train_rows, valid_rows, info, description, data_vocab = _shard_rows(Path(data), tokenizer, seq_len)
        if "vocab_size" not in overrides:  # as pretraining does: the model is sized to the shards
            config = config.replace(vocab_size=data_vocab)
    samples = {"train": train_rows, "validation": valid_rows}
    return TrainingSetup(
        config=config,
        tokenizer=info,
        raw_batch_fn=rows_batch_fn(train_rows, info, batch_size=batch_size, seq_len=seq_len, seed=seed),
        mask_fn=standard_mask_fn(config, info),
        optimizer_factory=recipe_optimizer(recipe),
        lr=lr,
        grad_clip=RECIPES[recipe]["grad_clip"],
        recipe=recipe,
        seed=seed,
        data_sample_fn=lambda split: samples[split][:4000],
        description=description,
    )


def _shard_rows(data: Path, tokenizer: str | Path | None, seq_len: int):
    """Rows of token ids sampled from token shards (``ultracram.data.corpus.TokenShards``):
    training rows from the training split, validation rows from the validation split
    ``data prepare`` held out (``val_*.bin``) or, for data without one, from a separately
    prepared ``validation/`` directory beside the shards; none when neither exists (the overlap
    check then says so).
    """
    try:
        shards = TokenShards(data)
    except UltracramError as e:
        raise DoctorError(f"--data {data}: {e}") from e
    tok_path = Path(tokenizer) if tokenizer else shards.tokenizer_path
    if not tok_path.exists():
        raise DoctorError(f"--data {data}: no tokenizer at {tok_path}; pass --tokenizer PATH")
    info = _tokenizer_info(load_tokenizer(tok_path))
    valid_dir = data / "validation"
    try:
        if has_validation(shards):
            valid = TokenShards(data, split="validation")
        else:  # older layout: a validation prepare of its own beside the shards
            valid = TokenShards(valid_dir) if (valid_dir / "manifest.json").is_file() else None
    except UltracramError as e:
        raise DoctorError(f"--data {data}: {e}") from e
    rows = {split: _sample_rows(s, info, seq_len - 2) if s is not None else [] for split, s in
            (("train", shards), ("validation", valid))}  # fmt: skip
    held_out = f", {len(valid)} validation" if valid is not None else ", no validation split"
    return (
        rows["train"],
        rows["validation"],
        info,
        f"shards {data} ({len(shards)} sequences{held_out})",
        shards.vocab_size,
    )


def _sample_rows(shards: Any, info: TokenizerInfo, length: int, count: int = 4000) -> list[list[int]]:
    """Up to ``count`` sequences spread evenly over the shards, without their [CLS]/[SEP] ends."""
    import numpy as np

    n = len(shards)
    idx = np.unique(np.linspace(0, n - 1, num=min(count, n)).astype(np.int64)) if n else []
    out = []
    for row in shards.get_rows(idx).tolist() if n else []:
        if row and row[0] == info.cls_id:
            row = row[1:]
        if row and row[-1] == info.sep_id:
            row = row[:-1]
        out.append(row[:length])
    return out
