"""Preflight checks: tell a code error from a hyperparameter problem before training.

Size (~760 lines): one function per check, each with its own messages and fixes; they share
helpers and are read one at a time, so splitting them across files would only scatter them.

Each check takes a :class:`~ultracram.doctor.setup.TrainingSetup` and returns one
:class:`CheckResult` (PASS / WARN / FAIL, a one-line reason and a suggested fix). A check that
crashes is reported as FAIL with the exception, so one bug never hides the other results.

| check            | catches                                                              |
| ---------------- | -------------------------------------------------------------------- |
| vocab            | tokenizer and model vocabularies differ; token ids out of range      |
| data             | empty sequences, degenerate token distribution, [UNK] floods         |
| overlap          | validation text that also occurs in training data                    |
| labels           | labels at unmasked positions, labels shifted, [MASK] without a label |
| special_tokens   | [CLS]/[SEP]/[PAD] chosen for masking                                 |
| padding          | padding changes real tokens' outputs (mask ignored or inverted)      |
| init_loss        | loss at initialisation far from ln(V) (initialisation, label bugs)   |
| loss_function    | perfect logits do not give ~0 loss (softmax before cross-entropy)    |
| gradients        | frozen / gradient-less / NaN parameters; per-layer grad-norm ratios  |
| grad_zeroing     | gradients carried over from the previous step (no zero_grad)         |
| overfit          | one batch cannot be fitted (model/optimizer wiring)                  |
| determinism      | the same seed gives different first losses                           |
| lr_range         | learning rate above where the loss diverges, or far below the useful range |
| mixed_precision  | activations/gradients outside the fp16/bf16 ranges; bf16 autocast loss |
"""

from __future__ import annotations

import copy
import json
import math
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ultracram.config import IGNORE_INDEX, masked_token_count
from ultracram.doctor.setup import Batch, DoctorSettings, TrainingSetup, default_setup
from ultracram.fileio import atomic_write_text

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.104e-5  # below this fp16 loses precision (subnormal)
FP16_MIN_SUBNORMAL = 5.96e-8  # below this a value becomes 0 in fp16
BF16_MAX = 3.39e38


@dataclass
class CheckResult:
    """One check's verdict. ``details`` holds the numbers behind it (written to the JSON)."""

    name: str
    status: str
    reason: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class DoctorOptions:
    """How hard the checks push; the defaults keep a tiny preset under a minute on CPU."""

    overfit_steps: int = 150
    overfit_lr: float = 3e-3
    """Learning rate of the overfit check (tests the wiring, not the run's learning rate)."""
    overfit_target: float = 0.5
    """Loss (nats) that counts as fitted."""
    lr_range: tuple[float, float] = (1e-6, 1.0)
    lr_range_steps: int = 60
    determinism_steps: int = 3
    out_dir: Path | None = None


def _result(name: str, status: str, reason: str, fix: str = "", **details: Any) -> CheckResult:
    return CheckResult(name, status, reason, fix, details)


def _named_unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(model.named_parameters())  # named_parameters already lists a tied tensor once


# ------------------------------------------------------------------------------- data checks
def check_vocab(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    tv, mv = setup.tokenizer.vocab_size, setup.config.vocab_size
    max_id = max(int(setup.raw_batch_fn(s).ids.max()) for s in range(3))
    if tv != mv:
        return _result("vocab", FAIL, f"vocabulary mismatch: tokenizer has {tv} tokens, model vocab_size is {mv}",
                       f"build the model with vocab_size={tv} (--set vocab_size={tv}) or retrain the tokenizer "
                       f"with {mv} tokens", tokenizer_vocab=tv, model_vocab=mv, max_token_id=max_id)  # fmt: skip
    if max_id >= mv:
        return _result(
            "vocab",
            FAIL,
            f"vocabulary mismatch: data holds token id {max_id} >= vocab_size {mv}",
            "the data was tokenized with another tokenizer; re-tokenize it",
            max_token_id=max_id,
        )
    return _result("vocab", PASS, f"tokenizer and model agree on {mv} tokens; max id in data {max_id}",
                   tokenizer_vocab=tv, model_vocab=mv, max_token_id=max_id)  # fmt: skip


def check_data(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    tok = setup.tokenizer
    special = torch.tensor(tok.special_ids)
    counts: Counter[int] = Counter()
    empty = rows = 0
    bad_mask = 0
    for step in range(8):
        raw = setup.raw_batch_fn(step)
        body = ~torch.isin(raw.ids, special)  # (B, T) ordinary tokens
        empty += int((body.sum(1) == 0).sum())
        rows += raw.ids.shape[0]
        bad_mask += int((raw.attention_mask.bool() != (raw.ids != tok.pad_id)).sum())
        counts.update(raw.ids[raw.ids != tok.pad_id].tolist())
    total = sum(counts.values())
    probs = torch.tensor([c / total for c in counts.values()])
    entropy = float(-(probs * probs.log()).sum())
    top_id, top_count = max(((i, c) for i, c in counts.items() if i not in tok.special_ids),
                            key=lambda x: x[1], default=(-1, 0))  # fmt: skip
    unk = counts.get(tok.unk_id, 0) / max(total, 1)
    d = dict(rows=rows, empty_rows=empty, tokens=total, distinct=len(counts), unigram_entropy=entropy,
             top_token=top_id, top_fraction=top_count / max(total, 1), unk_fraction=unk, bad_mask=bad_mask)  # fmt: skip
    if empty:
        return _result(
            "data",
            FAIL,
            f"{empty} of {rows} sampled sequences have no tokens besides specials",
            "drop empty documents when building the shards",
            **d,
        )
    if bad_mask:
        return _result("data", FAIL, f"attention_mask disagrees with padding at {bad_mask} positions "
                       "(it must be 1 for real tokens, 0 for [PAD])", "build the mask as (ids != pad_id)", **d)  # fmt: skip
    if entropy < 2.0 or top_count / max(total, 1) > 0.3:
        return _result("data", FAIL, f"degenerate token distribution: unigram entropy {entropy:.2f} nats, "
                       f"token {top_id} is {top_count / total:.0%} of tokens", "check tokenization and "
                       "deduplication; natural text has entropy > 5 nats", **d)  # fmt: skip
    # The validation sample (the prepared validation split when the data has one): rows
    # (lists of ids, [CLS]/[SEP] ends removed) must hold text and ids the model can embed.
    valid = setup.data_sample_fn("validation") if setup.data_sample_fn is not None else []
    valid_note = ""
    if valid:
        v_empty = sum(1 for r in valid if all(t in tok.special_ids for t in r))
        v_max = max((max(r) for r in valid if r), default=-1)
        d.update(validation_rows=len(valid), validation_empty_rows=v_empty, validation_max_token_id=v_max)
        if v_empty:
            return _result("data", FAIL, f"{v_empty} of {len(valid)} sampled validation sequences have no tokens "
                           "besides specials", "drop empty documents when building the shards", **d)  # fmt: skip
        if v_max >= setup.config.vocab_size:
            return _result("data", FAIL, f"the validation data holds token id {v_max} >= vocab_size "
                           f"{setup.config.vocab_size}", "tokenize training and validation text with the same "
                           "tokenizer (one `ultracram data prepare` holds out its own validation split)", **d)  # fmt: skip
        valid_note = f"; {len(valid)} validation sequences, none empty"
    if unk > 0.05:
        return _result(
            "data", WARN, f"{unk:.1%} of tokens are [UNK]", "train the tokenizer on this data", **d
        )
    return _result("data", PASS, f"{rows} sequences, none empty; unigram entropy {entropy:.2f} nats, "
                   f"{len(counts)} distinct tokens, [UNK] {unk:.2%}{valid_note}", **d)  # fmt: skip


def check_overlap(setup: TrainingSetup, opts: DoctorOptions, ngram: int = 16) -> CheckResult:
    if setup.data_sample_fn is None:
        return _result("overlap", WARN, "no data sample to compare", "give the setup a data_sample_fn")
    train, valid = setup.data_sample_fn("train"), setup.data_sample_fn("validation")
    if not valid:
        return _result("overlap", WARN, "no validation split found", "prepare the data again with "
                       "`ultracram data prepare --validation_fraction 0.005` (the default; 0 disables it): it holds "
                       "out whole documents as the validation split")  # fmt: skip

    def shingles(row: list[int]) -> set[tuple[int, ...]]:
        return {tuple(row[i : i + ngram]) for i in range(0, max(len(row) - ngram + 1, 1))}

    seen = set().union(*(shingles(r) for r in train))
    valid_sh = [shingles(r) for r in valid]
    hit_rows = sum(1 for s in valid_sh if s & seen)
    frac = hit_rows / len(valid)
    d = dict(train_rows=len(train), validation_rows=len(valid), ngram=ngram, overlapping_rows=hit_rows)
    if frac > 0.05:
        return _result("overlap", FAIL, f"{frac:.0%} of validation sequences share a {ngram}-token span with "
                       "training data", "split by document before shuffling and deduplicate", **d)  # fmt: skip
    status = WARN if frac > 0.01 else PASS  # a few shared boilerplate spans are normal in web text
    return _result("overlap", status, f"{hit_rows} of {len(valid)} validation sequences share a {ngram}-token "
                   f"span with {len(train)} training sequences", "deduplicate" if status == WARN else "", **d)  # fmt: skip


# ---------------------------------------------------------------------------- masking checks
def check_labels(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    b = setup.make_batch(0)
    tok = setup.tokenizer
    labelled = b.labels != IGNORE_INDEX  # (B, T)
    k = int(labelled.sum())
    expected = masked_token_count(b.original_ids.numel(), setup.config.mask_rate)
    if k == 0:
        return _result("labels", FAIL, "no position carries a label", "labels must hold the original id at "
                       "masked positions and IGNORE_INDEX (-100) elsewhere")  # fmt: skip
    match = float((b.labels[labelled] == b.original_ids[labelled]).float().mean())
    mask_at_label = float((b.input_ids[labelled] == tok.mask_id).float().mean())
    stray_mask = int(((b.input_ids == tok.mask_id) & ~labelled).sum())
    d = dict(labelled=k, expected=expected, label_matches_original=match, mask_token_at_labels=mask_at_label,
             mask_tokens_without_label=stray_mask)  # fmt: skip
    if match < 0.99:
        for shift in (1, -1, 2, -2):
            rolled = torch.roll(b.labels, -shift, dims=1)
            ok = rolled != IGNORE_INDEX
            if ok.any() and float((rolled[ok] == b.original_ids[ok]).float().mean()) > 0.9:
                return _result("labels", FAIL, f"labels are shifted by {shift:+d} position(s): only {match:.0%} of "
                               "labels equal the token at their own position", "an MLM label belongs to the "
                               "masked position itself; do not shift labels as for a causal LM", shift=shift, **d)  # fmt: skip
        return _result("labels", FAIL, f"labels do not equal the original tokens at labelled positions "
                       f"({match:.0%} match)", "labels must be the unmasked ids", **d)  # fmt: skip
    if stray_mask or mask_at_label < 0.5:
        return _result("labels", FAIL, f"labels only partly at masked positions: {mask_at_label:.0%} of labelled "
                       f"inputs are [MASK], {stray_mask} [MASK] tokens have no label",
                       "label exactly the positions chosen for masking", **d)  # fmt: skip
    status = PASS if abs(k - expected) <= max(1, 0.1 * expected) else WARN
    return _result("labels", status, f"{k} labels (expected {expected}), all at masked positions; "
                   f"{mask_at_label:.0%} of them [MASK] in the input", "" if status == PASS else
                   "mask exactly masked_token_count(B*T, mask_rate) positions", **d)  # fmt: skip


def check_special_tokens(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    tok = setup.tokenizer
    names = {tok.pad_id: "[PAD]", tok.unk_id: "[UNK]", tok.cls_id: "[CLS]", tok.sep_id: "[SEP]",
             tok.mask_id: "[MASK]"}  # fmt: skip
    bad: Counter[str] = Counter()
    for step in range(4):
        b = setup.make_batch(step)
        changed_or_labelled = (b.labels != IGNORE_INDEX) | (b.input_ids != b.original_ids)
        for i in b.original_ids[
            changed_or_labelled & torch.isin(b.original_ids, torch.tensor(tok.special_ids))
        ]:
            bad[names[int(i)]] += 1
    if bad:
        which = ", ".join(f"{n} x{c}" for n, c in bad.most_common())
        return _result("special_tokens", FAIL, f"special tokens masked: {which}", "pass the special ids "
                       "(pad, unk, cls, sep, mask) to the collator so they are never chosen", masked=dict(bad))  # fmt: skip
    return _result("special_tokens", PASS, "no special token was masked or labelled in 4 batches")


def check_padding(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    """Outputs at real positions must not change when padding is appended."""
    raw = setup.raw_batch_fn(0)
    T = raw.ids.shape[1]
    n = max(4, T // 2)
    real = raw.ids[:1, :n]  # (1, n) a prefix of a full row: [CLS] tokens...
    j = min(masked_token_count(n, setup.config.mask_rate), n)  # positions compared (fit a sparse head)
    model = setup.build_model().eval()

    def logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, :j] = ids[0, :j]
        with torch.no_grad():
            out, lab = setup.forward_fn(model, Batch(ids, mask, labels, ids))
        return out[lab != IGNORE_INDEX][:j].float()

    ref = logits(real, torch.ones_like(real))
    padded = torch.full((1, T), setup.tokenizer.pad_id, dtype=real.dtype)
    padded[0, :n] = real[0]
    mask = (padded != setup.tokenizer.pad_id).long()
    mask[0, :n] = 1
    got = logits(padded, mask)
    diff = (
        float((got - ref).abs().max())
        if torch.isfinite(ref).all() and torch.isfinite(got).all()
        else math.inf
    )
    scale = float(ref.abs().max()) if torch.isfinite(ref).all() else 1.0
    d = dict(max_abs_diff=diff, compared_positions=j, real_tokens=n, padded_to=T)
    if diff <= 1e-4 * max(1.0, scale):
        return _result("padding", PASS, f"appending {T - n} [PAD] tokens changes no real token's output "
                       f"(max diff {diff:.1e})", **d)  # fmt: skip
    if setup.config.mixer == "fourier":
        return _result("padding", WARN, f"padding changes outputs (max diff {diff:.2g}): FNet's DFT runs over "
                       "the padded length by design", "pad every batch to one fixed length (as FNet does)", **d)  # fmt: skip
    # Which positions influence real tokens? Put random ordinary tokens where the mask says padding:
    # with a correct mask the real outputs cannot change.
    g = torch.Generator().manual_seed(0)
    noisy = padded.clone()
    noisy[0, n:] = torch.randint(
        len(setup.tokenizer.special_ids), setup.config.vocab_size, (T - n,), generator=g
    )

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(torch.isfinite(a).all() and torch.isfinite(b).all() and (a - b).abs().max() <= 1e-5)

    pad_matters = not same(got, logits(noisy, mask))
    flipped_ok = same(logits(padded, 1 - mask), logits(noisy, 1 - mask))
    d.update(padding_content_changes_outputs=pad_matters, flipped_mask_hides_padding=flipped_ok)
    fix = (
        "the mask is 1 for real tokens and 0 for padding (Hugging Face convention); pass it unchanged "
        "(SDPA boolean masks: True = may attend)"
    )
    if pad_matters and flipped_ok:
        return _result("padding", FAIL, "attention mask polarity inverted: real tokens attend to the padding "
                       f"(outputs change by {diff:.2g}); with the mask flipped the padding stops mattering", fix, **d)  # fmt: skip
    if not torch.isfinite(ref).all():
        return _result("padding", FAIL, "attention mask polarity inverted: an unpadded batch (mask all ones) "
                       "gives non-finite outputs, i.e. the model attends to no key", fix, **d)  # fmt: skip
    if pad_matters:
        return _result("padding", FAIL, f"the attention mask is not honoured: padding content changes real "
                       f"tokens' outputs (by {diff:.2g})", "pass attention_mask to every mixing layer", **d)  # fmt: skip
    return _result("padding", FAIL, f"padding changes real tokens' outputs by {diff:.2g}, though its content "
                   "does not matter", "check positions and any layer that mixes positions", **d)  # fmt: skip


# ------------------------------------------------------------------------------ loss checks
def check_init_loss(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    model = setup.build_model().eval()
    with torch.no_grad():
        losses = [float(setup.compute_loss(model, setup.make_batch(s))) for s in range(2)]
    loss, target = sum(losses) / len(losses), math.log(setup.config.vocab_size)
    rel = abs(loss - target) / target
    d = dict(loss=loss, ln_vocab=target)
    if not math.isfinite(loss):
        return _result(
            "init_loss", FAIL, f"loss at initialisation is {loss}", "look for log(0) or overflow", **d
        )
    if rel < 0.1:
        return _result("init_loss", PASS, f"initial loss {loss:.3f} ≈ ln(V) = {target:.3f}", **d)
    status = WARN if rel < 0.25 else FAIL
    return _result("init_loss", status, f"initial loss {loss:.3f} is {rel:.0%} away from ln(V) = {target:.3f}",
                   "initial logits should be small (weights ~ N(0, 0.02)); check initialisation, output "
                   "scaling and the labels", **d)  # fmt: skip


def check_loss_function(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    V = setup.config.vocab_size
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(5, V, (32,), generator=g)
    labels[::4] = IGNORE_INDEX
    perfect = torch.full((32, V), -10.0)
    perfect[torch.arange(32), labels.clamp_min(0)] = 10.0
    random_logits = torch.randn(32, V, generator=g) * 3
    loss_perfect = float(setup.loss_fn(perfect, labels))
    loss_uniform = float(setup.loss_fn(torch.zeros(32, V), labels))
    loss_random = float(setup.loss_fn(random_logits, labels))
    ref = float(F.cross_entropy(random_logits, labels, ignore_index=IGNORE_INDEX))
    softmaxed = float(F.cross_entropy(random_logits.softmax(-1), labels, ignore_index=IGNORE_INDEX))
    d = dict(loss_perfect=loss_perfect, loss_uniform=loss_uniform, ln_vocab=math.log(V), loss_random=loss_random,
             reference_random=ref)  # fmt: skip
    if loss_perfect > 0.1:
        if abs(loss_random - softmaxed) < 1e-3 * max(1.0, softmaxed):
            reason = (
                f"softmax applied before the cross-entropy: perfect logits give loss {loss_perfect:.2f} "
                f"(should be ~0), and the loss equals cross_entropy(softmax(logits))"
            )
        else:
            reason = (
                f"perfect logits give loss {loss_perfect:.2f} (should be ~0): the loss squashes its input"
            )
        return _result("loss_function", FAIL, reason, "F.cross_entropy takes raw logits; it applies "
                       "log_softmax itself. Remove the softmax / log_softmax before it", **d)  # fmt: skip
    if abs(loss_uniform - math.log(V)) > 0.01 * math.log(V):
        return _result("loss_function", FAIL, f"uniform logits give loss {loss_uniform:.3f}, not ln(V) = "
                       f"{math.log(V):.3f}", "check the loss reduction and ignore_index", **d)  # fmt: skip
    if abs(loss_random - ref) > 1e-3 * max(1.0, ref):
        return _result("loss_function", WARN, f"loss differs from plain cross-entropy ({loss_random:.3f} vs "
                       f"{ref:.3f}); label smoothing or weighting?", "intended? then ignore", **d)  # fmt: skip
    return _result(
        "loss_function", PASS, "perfect logits -> ~0, uniform -> ln(V), ignore_index honoured", **d
    )


# -------------------------------------------------------------------------- gradient checks
def _layer_of(name: str) -> str:
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return ".".join(parts[: i + 2])
    return ".".join(parts[:2]) if parts[0] == "encoder" else parts[0]


def check_gradients(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    model = setup.build_model().train()
    params = _named_unique_parameters(model)
    frozen = [n for n, p in params if not p.requires_grad]
    optimizer = setup.optimizer_factory([p for _, p in params if p.requires_grad], setup.lr)
    in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
    not_in_opt = [n for n, p in params if p.requires_grad and id(p) not in in_opt]
    loss = setup.compute_loss(model, setup.make_batch(0))
    loss.backward()
    no_grad = [n for n, p in params if p.requires_grad and p.grad is None]
    nonfinite = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
    zero = [n for n, p in params if p.grad is not None and n not in nonfinite and not p.grad.any()]
    norms: dict[str, float] = {}
    for n, p in params:
        if p.grad is not None and n not in nonfinite:
            norms[_layer_of(n)] = math.hypot(norms.get(_layer_of(n), 0.0), float(p.grad.norm()))
    positive = {k: v for k, v in norms.items() if v > 0}
    ratio = max(positive.values()) / min(positive.values()) if positive else math.inf
    d = dict(frozen=frozen, no_grad=no_grad, nonfinite=nonfinite, zero_grad=zero, not_in_optimizer=not_in_opt,
             layer_grad_norms=norms, max_min_ratio=ratio, loss=loss.item())  # fmt: skip
    if frozen:
        emb = [n for n in frozen if "embeddings" in n]
        what = "embeddings frozen" if emb else "parameters frozen"
        return _result("gradients", FAIL, f"{what}: {len(frozen)} parameter(s) have requires_grad=False: "
                       f"{', '.join(frozen[:4])}", "remove the requires_grad_(False) / no_grad around them "
                       "(pretraining trains everything)", **d)  # fmt: skip
    if nonfinite:
        return _result(
            "gradients",
            FAIL,
            f"non-finite gradients in {', '.join(nonfinite[:4])}",
            "look for log(0), division by zero or overflow in the forward",
            **d,
        )
    if no_grad or not_in_opt:
        which = no_grad or not_in_opt
        why = "get no gradient (not in the loss graph)" if no_grad else "are not in the optimizer"
        return _result(
            "gradients",
            FAIL,
            f"{len(which)} parameter(s) {why}: {', '.join(which[:4])}",
            "detach()/no_grad cut them off, or build the optimizer from model.parameters()",
            **d,
        )
    if zero:
        return _result(
            "gradients",
            WARN,
            f"all-zero gradients in {', '.join(zero[:4])}",
            "unused parameters? (an FFF/MoE unit that no token reached is normal)",
            **d,
        )
    if ratio > 1e3:
        lo, hi = min(positive, key=positive.get), max(positive, key=positive.get)
        return _result("gradients", WARN, f"gradient norms span {ratio:.0f}x across layers ({lo} "
                       f"{positive[lo]:.1e} vs {hi} {positive[hi]:.1e})", "vanishing/exploding gradients: "
                       "check normalisation placement and initialisation", **d)  # fmt: skip
    return _result("gradients", PASS, f"all {len(params)} parameters get finite gradients; layer norms "
                   f"within {ratio:.0f}x", **d)  # fmt: skip


class _GradientRecorder(torch.optim.Optimizer):
    """An optimizer that does not update: it records whether the gradient it sees still holds
    the sentinel it left in ``.grad`` at the previous step (NaN survives any accumulation)."""

    def __init__(self, params: list[nn.Parameter]):
        super().__init__(params, {})
        self.steps = 0
        self.stale = 0  # parameters whose gradient still held the sentinel

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.steps and torch.isnan(p.grad).all():
                    self.stale += 1
                p.grad.fill_(math.nan)
        self.steps += 1


def check_grad_zeroing(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    model = setup.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    recorder = _GradientRecorder(params)
    for step in range(2):
        setup.train_step(setup, model, recorder, setup.make_batch(step))
    d = dict(optimizer_steps=recorder.steps, stale_parameters=recorder.stale)
    if recorder.steps < 2:
        return _result("grad_zeroing", WARN, f"train_step called optimizer.step() {recorder.steps} times in 2 "
                       "steps", "each train step should call optimizer.step() once", **d)  # fmt: skip
    if recorder.stale:
        return _result("grad_zeroing", FAIL, f"gradients never zeroed: {recorder.stale} parameters still held "
                       "the previous step's gradient at the next optimizer.step()", "call "
                       "optimizer.zero_grad(set_to_none=True) once per step, before backward()", **d)  # fmt: skip
    return _result("grad_zeroing", PASS, "each step starts from fresh gradients", **d)


# ------------------------------------------------------------------------- training checks
def check_overfit(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    model = setup.build_model()
    optimizer = setup.optimizer_factory(list(model.parameters()), opts.overfit_lr)
    batch = setup.make_batch(0)
    losses = []
    for _ in range(opts.overfit_steps):
        losses.append(setup.train_step(setup, model, optimizer, batch))
        if losses[-1] < opts.overfit_target / 2 or not math.isfinite(losses[-1]):
            break
    first, best, last = losses[0], min(losses), losses[-1]
    d = dict(steps=len(losses), first=first, best=best, last=last, lr=opts.overfit_lr, losses=losses)
    if min(last, best) < opts.overfit_target:
        return _result("overfit", PASS, f"one batch fitted: loss {first:.2f} -> {best:.3f} in {len(losses)} steps",
                       **d)  # fmt: skip
    if math.isfinite(best) and best < 0.5 * first:
        return _result("overfit", WARN, f"one batch: loss {first:.2f} -> {best:.2f} in {len(losses)} steps, not "
                       f"below {opts.overfit_target}", "probably fine but slow; if it persists with more steps, "
                       "check the optimizer wiring", **d)  # fmt: skip
    return _result("overfit", FAIL, f"cannot overfit one batch: loss {first:.2f} -> {best:.2f} in {len(losses)} "
                   f"steps at lr {opts.overfit_lr:g}", "model/optimizer wiring is broken: is the optimizer built "
                   "from this model's parameters, is the loss the model's output, do gradients reach it?", **d)  # fmt: skip


def check_determinism(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    def run() -> list[float]:
        model = setup.build_model()
        optimizer = setup.optimizer_factory(list(model.parameters()), setup.lr)
        torch.manual_seed(setup.seed)
        return [
            setup.train_step(setup, model, optimizer, setup.make_batch(s))
            for s in range(opts.determinism_steps)
        ]

    a, b = run(), run()
    diff = max(abs(x - y) for x, y in zip(a, b))
    d = dict(first=a, second=b, max_diff=diff)
    if diff == 0.0:
        return _result("determinism", PASS, f"same seed -> identical first {len(a)} losses", **d)
    if diff < 1e-5:
        return _result(
            "determinism",
            WARN,
            f"same seed -> first losses differ by {diff:.1e}",
            "non-deterministic kernels (torch.use_deterministic_algorithms)",
            **d,
        )
    return _result(
        "determinism",
        FAIL,
        f"same seed -> first losses differ by {diff:.2g}: {a} vs {b}",
        "seed every random source (model init, masking, data order, dropout) from the run seed",
        **d,
    )


def lr_range_test(setup: TrainingSetup, opts: DoctorOptions) -> dict[str, Any]:
    """Smith's range test (Smith 2017, "Cyclical learning rates"): one step per learning rate on
    an exponential sweep; the loss falls, flattens, then blows up. Returns lrs, losses, the lr
    of the smoothed minimum, the lr where the loss diverges, and a suggested peak (the minimum
    / 3, a little below the edge, as is usual for one-cycle / warmup schedules)."""
    lo, hi = opts.lr_range
    n = opts.lr_range_steps
    lrs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    model = setup.build_model()
    optimizer = setup.optimizer_factory(list(model.parameters()), lo)
    losses, smooth = [], []
    avg, beta = 0.0, 0.7
    for i, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = setup.train_step(setup, model, optimizer, setup.make_batch(1000 + i))
        losses.append(loss)
        avg = beta * avg + (1 - beta) * loss if math.isfinite(loss) else math.inf
        smooth.append(avg / (1 - beta ** (i + 1)))
        if not math.isfinite(smooth[-1]) or (smooth[-1] > 1.5 * max(min(smooth), 1e-3) + 1.0 and i > 5):
            break
    best = min(range(len(smooth)), key=lambda i: smooth[i])
    diverge = next((lrs[i] for i in range(best, len(smooth)) if not math.isfinite(smooth[i]) or
                    smooth[i] > smooth[best] + 0.5), None)  # fmt: skip
    return dict(lrs=lrs[: len(losses)], losses=losses, smoothed=smooth, lr_at_min=lrs[best],
                lr_diverge=diverge, suggested_peak=lrs[best] / 3)  # fmt: skip


def _plot_lr_range(r: dict[str, Any], lr: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(r["lrs"], r["losses"], ".", alpha=0.4, label="loss")
    ax.plot(r["lrs"], [s if math.isfinite(s) else float("nan") for s in r["smoothed"]], label="smoothed")
    ax.axvline(r["suggested_peak"], color="g", ls="--", label=f"suggested peak {r['suggested_peak']:.1e}")
    ax.axvline(lr, color="r", ls=":", label=f"configured lr {lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("MLM loss")
    ax.set_title("learning-rate range test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_lr_range(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    r = lr_range_test(setup, opts)
    d = {k: v for k, v in r.items()}
    if opts.out_dir is not None:
        path = Path(opts.out_dir) / "lr_range.png"
        _plot_lr_range(r, setup.lr, path)
        d["plot"] = str(path)
    peak, div, lr = r["suggested_peak"], r["lr_diverge"], setup.lr
    if div is not None and lr >= div:
        return _result("lr_range", FAIL, f"learning rate too high: {lr:g} is past where the loss diverges "
                       f"({div:.1e}); suggested peak {peak:.1e}", f"--set lr={peak:.1e}", **d)  # fmt: skip
    if lr > r["lr_at_min"]:
        return _result("lr_range", FAIL, f"learning rate too high: {lr:g} is past the range-test minimum "
                       f"({r['lr_at_min']:.1e}), {lr / peak:.0f}x the suggested peak {peak:.1e}",
                       f"--set lr={peak:.1e}", **d)  # fmt: skip
    if lr > peak:
        return _result("lr_range", WARN, f"learning rate high: {lr:g} is {lr / peak:.1f}x the suggested peak "
                       f"{peak:.1e}", f"--set lr={peak:.1e}", **d)  # fmt: skip
    if lr < peak / 30:
        return _result("lr_range", WARN, f"learning rate low: {lr:g} is {peak / lr:.0f}x below the suggested "
                       f"peak {peak:.1e}", f"try --set lr={peak:.1e}", **d)  # fmt: skip
    return _result("lr_range", PASS, f"lr {lr:g} is in the useful range; suggested peak {peak:.1e} (loss "
                   f"diverges from {div:.1e})" if div else f"lr {lr:g} fine; suggested peak {peak:.1e}", **d)  # fmt: skip


def check_mixed_precision(setup: TrainingSetup, opts: DoctorOptions) -> CheckResult:
    model = setup.build_model().train()
    batch = setup.make_batch(0)
    stats = {"act_max": 0.0, "act_tiny": 0, "act_nonzero": 0}
    where = {"act_max": ""}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            a = output.detach().abs().float()
            m = float(a.max()) if a.numel() else 0.0
            if m > stats["act_max"]:
                stats["act_max"], where["act_max"] = m, names[module]
            nz = a[a > 0]
            stats["act_nonzero"] += nz.numel()
            stats["act_tiny"] += int((nz < FP16_MIN_SUBNORMAL).sum())

    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        loss = setup.compute_loss(model, batch)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    grads = torch.cat(
        [p.grad.detach().abs().flatten().float() for p in model.parameters() if p.grad is not None]
    )
    nz = grads[grads > 0]
    grad_under = float((nz < FP16_MIN_SUBNORMAL).float().mean()) if nz.numel() else 0.0
    grad_max = float(grads.max()) if grads.numel() else 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = float(setup.compute_loss(model.eval(), batch))
    with torch.no_grad():
        loss_fp32 = float(setup.compute_loss(model, batch))
    act_under = stats["act_tiny"] / max(stats["act_nonzero"], 1)
    d = dict(act_max=stats["act_max"], act_max_at=where["act_max"], act_underflow_fp16=act_under,
             grad_max=grad_max, grad_underflow_fp16=grad_under, loss_fp32=loss_fp32, loss_bf16_autocast=loss_bf16)  # fmt: skip
    if not math.isfinite(loss_bf16) or stats["act_max"] > BF16_MAX:
        return _result("mixed_precision", FAIL, f"bf16 autocast loss is {loss_bf16}", "keep this model in fp32 "
                       "and look for huge activations", **d)  # fmt: skip
    problems, fixes = [], []
    if stats["act_max"] > FP16_MAX or grad_max > FP16_MAX:
        problems.append(f"fp16 overflow: max |activation| {stats['act_max']:.3g} at {where['act_max']}")
        fixes.append("train in bf16, not fp16")
    if grad_under > 0.01:
        problems.append(f"{grad_under:.1%} of nonzero gradients underflow to 0 in fp16")
        fixes.append("use a GradScaler (loss scaling) with fp16, or bf16")
    if abs(loss_bf16 - loss_fp32) > 0.05 * max(abs(loss_fp32), 1.0):
        problems.append(f"bf16 autocast loss {loss_bf16:.3f} vs fp32 {loss_fp32:.3f}")
        fixes.append("keep the loss and softmax in fp32")
    if problems:
        return _result("mixed_precision", WARN, "; ".join(problems), "; ".join(fixes), **d)
    return _result("mixed_precision", PASS, f"max |activation| {stats['act_max']:.3g} (fp16 limit 65504), "
                   f"{grad_under:.1%} of gradients below fp16 range; bf16 autocast loss {loss_bf16:.3f} vs fp32 "
                   f"{loss_fp32:.3f}", **d)  # fmt: skip


CHECKS: dict[str, Callable[[TrainingSetup, DoctorOptions], CheckResult]] = {
    "vocab": check_vocab,
    "data": check_data,
    "overlap": check_overlap,
    "labels": check_labels,
    "special_tokens": check_special_tokens,
    "padding": check_padding,
    "init_loss": check_init_loss,
    "loss_function": check_loss_function,
    "gradients": check_gradients,
    "grad_zeroing": check_grad_zeroing,
    "overfit": check_overfit,
    "determinism": check_determinism,
    "lr_range": check_lr_range,
    "mixed_precision": check_mixed_precision,
}


def run_checks(
    setup: TrainingSetup, options: DoctorOptions | None = None, only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[CheckResult]:  # fmt: skip
    """Run the named checks (default: all, in ``CHECKS`` order); never raises for a check's crash."""
    opts = options or DoctorOptions()
    results = []
    for name in only or list(CHECKS):
        if progress:
            progress(name)
        start = time.perf_counter()
        rng = torch.get_rng_state()
        try:
            r = CHECKS[name](setup, opts)
        except Exception as e:  # a crash is a finding, not the end of the diagnosis
            r = _result(
                name,
                FAIL,
                f"{name} check crashed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                "see 'traceback' in the JSON report",
                traceback=traceback.format_exc(),
            )
        finally:
            torch.set_rng_state(rng)
        r.seconds = time.perf_counter() - start
        results.append(r)
    return results


def results_table(results: list[CheckResult], title: str = "ultracram doctor"):
    from rich.table import Table

    colour = {PASS: "green", WARN: "yellow", FAIL: "bold red"}
    table = Table(title=title, show_lines=False)
    for col in ("check", "status", "reason", "suggested fix"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.name, f"[{colour.get(r.status, '')}]{r.status}[/]", r.reason, r.fix)
    return table


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def run_preflight(
    settings: DoctorSettings | None = None,
    *,
    out_dir: str | Path = "out/doctor",
    only: list[str] | None = None,
    setup: TrainingSetup | None = None,
    options: DoctorOptions | None = None,
    console: Any = None,
) -> list[CheckResult]:
    """``ultracram doctor --preset P``: build the default setup of ``settings`` (unless a
    ``setup`` is given), run every check, print a table and write ``out_dir/doctor.json`` (and
    ``lr_range.png``). Returns the results."""
    from rich.console import Console

    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if setup is None:
        s = settings or DoctorSettings()
        setup = default_setup(s.preset, data=s.data, tokenizer=s.tokenizer, overrides=s.model, lr=s.lr,
                              batch_size=s.batch_size, seq_len=s.seq_len, seed=s.seed)  # fmt: skip
    opts = options or DoctorOptions()
    opts.out_dir = out
    console.print(f"[bold]ultracram doctor[/]: {setup.description or setup.config.name}, lr {setup.lr:g}")
    names = [n for n in CHECKS if not only or n in only]
    start = time.monotonic()

    def show(name: str) -> None:  # a spinner on a terminal; a line per check in a log
        i = names.index(name) + 1 if name in names else 0
        text = f"check {i}/{len(names)}: {name} ({time.monotonic() - start:.0f} s so far)"
        if console.is_terminal:
            status.update(text)
        else:
            console.print(text)

    with console.status("running checks") as status:
        results = run_checks(setup, opts, only, progress=show)
    console.print(results_table(results))
    counts = Counter(r.status for r in results)
    console.print(
        f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed; report: {out / 'doctor.json'}"
    )
    payload = {"setup": {"preset": setup.config.name, "model": setup.config.to_dict(), "lr": setup.lr,
                         "seed": setup.seed, "description": setup.description},
               "results": [asdict(r) for r in results]}  # fmt: skip
    atomic_write_text(out / "doctor.json", json.dumps(_jsonable(payload), indent=2) + "\n")
    return results


def deepcopy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
