"""The MLM validation loss with its interval: every model scored on the same masked sequences.

``mlm_eval_batch`` fixes the sequences and masks once per set of shards; ``mlm_validation``
scores one model on them: the loss per masked token, its 95% bootstrap interval over sequences,
and the per-sequence sums and counts that ``ultracram.report.compare.compare_losses`` pairs
across models. The study and the budget curve (``ultracram bench budget``) both use it, so
their losses are on one ruler. Pretraining's own ``validate`` is a different number: each
preset's mask rate, on ``val_batches`` micro batches, without an interval.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ultracram.config import IGNORE_INDEX
from ultracram.data.corpus import TokenShards, has_validation
from ultracram.data.mlm import MASK_ID, PAD_ID, SPECIAL_IDS, mask_tokens
from ultracram.report.compare import loss_interval, pooled_loss

# The MLM validation loss of the report: every model is scored on the same sequences with the
# same masks, so that the per-sequence losses pair up across models. Hence one masking rate for
# all, BERT's 15% (cramming trains at 25%, so its loss here is not its training loss), and a
# seed of its own: the masks are those of no training step.
MLM_EVAL_SEQUENCES = 256
MLM_EVAL_MASK_RATE = 0.15
MLM_EVAL_SEED = 20_011


def mlm_eval_batch(
    shards_dir: Path, sequences: int = MLM_EVAL_SEQUENCES
) -> tuple[dict[str, torch.Tensor], str]:
    """The fixed masked sequences of the MLM validation loss: the first ``sequences`` rows of the
    validation split (held-out documents), or without one the last rows of the training shards;
    masked by ``mask_tokens`` (exact count, 80/10/10) from ``MLM_EVAL_SEED``. Returns
    (input_ids, attention_mask, labels, each (n, T)) and a description of the source."""
    if has_validation(shards_dir):
        data, source = TokenShards(shards_dir, split="validation"), "validation split"
        rows = np.arange(min(sequences, len(data)))
    else:
        data, source = TokenShards(shards_dir), "the last rows of the training shards: no validation split"
        rows = np.arange(max(0, len(data) - sequences), len(data))
    ids = torch.from_numpy(data.get_rows(rows))  # (n, T) int64
    masked, labels = mask_tokens(ids, MLM_EVAL_MASK_RATE, mask_token_id=MASK_ID, vocab_size=data.vocab_size,
                                 special_ids=SPECIAL_IDS, generator=torch.Generator().manual_seed(MLM_EVAL_SEED))  # fmt: skip
    return {"input_ids": masked, "attention_mask": (ids != PAD_ID).long(), "labels": labels}, source


@torch.inference_mode()
def per_sequence_mlm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: str, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """(n,) summed cross-entropy over each sequence's masked tokens and (n,) their counts. The
    head runs on the masked positions only (as sparse prediction does in training): dense
    logits (n, T, V) would take 0.5 GB per 32 sequences at a 32k vocabulary."""
    model = model.to(device).eval()
    sums, counts = [], []
    for start in range(0, len(batch["input_ids"]), batch_size):
        ids, mask, labels = (batch[k][start : start + batch_size].to(device)
                             for k in ("input_ids", "attention_mask", "labels"))  # fmt: skip
        hidden = model.encoder(ids, mask)  # (B, T, H)
        masked = labels != IGNORE_INDEX  # (B, T)
        logits = model.mlm_head(hidden[masked]).float()  # (k, V)
        loss = F.cross_entropy(logits, labels[masked], reduction="none")  # (k,)
        row = masked.nonzero()[:, 0]  # (k,) the sequence of each masked token
        sums.append(torch.zeros(len(ids), device=device).index_add_(0, row, loss).cpu())
        counts.append(masked.sum(1).cpu())
    return torch.cat(sums).double().numpy(), torch.cat(counts).numpy()


def mlm_validation(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], source: str, device: str
) -> dict[str, Any]:
    """The MLM loss per masked token of ``model`` on ``batch`` (``mlm_eval_batch``) with its 95%
    bootstrap interval over sequences, and the per-sequence sums and counts that the report
    pairs across models (``inputs_sha256`` says whether two models saw the same inputs)."""
    sums, counts = per_sequence_mlm_loss(model, batch, device)
    low, high = loss_interval(sums, counts)
    digest = hashlib.sha256(
        batch["input_ids"].numpy().tobytes() + batch["labels"].numpy().tobytes()
    ).hexdigest()
    return {"loss": pooled_loss(counts, sums), "ci": [low, high], "source": source, "sequences": len(sums),
            "masked_tokens": int(counts.sum()), "mask_rate": MLM_EVAL_MASK_RATE, "seed": MLM_EVAL_SEED,
            "inputs_sha256": digest, "loss_sum": sums.tolist(), "count": counts.tolist()}  # fmt: skip
