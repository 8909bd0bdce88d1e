"""Masked-language-model batches: exact mask counts, 80/10/10 replacement, reproducible."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ultracram.config import IGNORE_INDEX, masked_token_count

# Ids fixed by ``ultracram.data.tokenizer.SPECIAL_TOKENS``: [PAD] [UNK] [CLS] [SEP] [MASK].
PAD_ID, MASK_ID = 0, 4
SPECIAL_IDS = (0, 1, 2, 3, 4)


def mask_tokens(
    input_ids: torch.Tensor,
    mask_rate: float,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask exactly ``masked_token_count(B*T, mask_rate)`` positions of a batch.

    input_ids (B, T) -> (masked input ids (B, T), labels (B, T)) with labels = IGNORE_INDEX
    except at masked positions. Special tokens and padding are never masked. Of the chosen
    positions, 80% become [MASK], 10% a random non-special token and 10% stay unchanged
    (Devlin et al. 2019). The count is exact over the batch so the sparse MLM head has a
    static shape; if a batch has fewer maskable tokens than that, all of them are masked.
    Everything random comes from ``generator``, so (seed, step) determines the batch.
    """
    ids = input_ids.clone()
    maskable = ~torch.isin(ids, torch.tensor(list(special_ids), dtype=ids.dtype))  # (B, T)
    k = min(masked_token_count(ids.numel(), mask_rate), int(maskable.sum()))
    # Random scores, non-maskable pushed to the end; the k best are masked.
    scores = torch.rand(ids.shape, generator=generator)
    scores[~maskable] = 2.0
    chosen = torch.topk(scores.view(-1), k, largest=False).indices  # (k,)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels.view(-1)[chosen] = ids.view(-1)[chosen]
    # Exact 80/10/10 split of the chosen positions, in a random order.
    perm = chosen[torch.randperm(k, generator=generator)]
    n_mask, n_random = round(0.8 * k), round(0.1 * k)
    ids.view(-1)[perm[:n_mask]] = mask_token_id
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[list(special_ids)] = False
    non_special = allowed.nonzero().squeeze(1)  # candidate random replacements
    pick = torch.randint(len(non_special), (n_random,), generator=generator)
    ids.view(-1)[perm[n_mask : n_mask + n_random]] = non_special[pick].to(ids.dtype)
    return ids, labels


# --------------------------------------------------------------------------------------------
# Batches fully determined by (seed, step)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order (num_rows,) in which epoch ``epoch`` visits the rows; depends on nothing else."""
    return np.random.default_rng([seed, epoch, num_rows]).permutation(num_rows)


def batch_rows(num_rows: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Row indices (batch_size,) of the global batch at ``step``.

    Global sample p = step * batch_size + j (j < batch_size) is row ``perm_e[p % num_rows]`` of
    epoch e = p // num_rows, so a batch that straddles an epoch boundary takes the end of one
    permutation and the start of the next, and no step depends on any earlier step.
    """
    if num_rows <= 0:
        raise ValueError("no rows to draw batches from")
    p = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, pos = np.divmod(p, num_rows)
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = epoch_permutation(num_rows, seed, int(e))[pos[sel]]
    return out


def mlm_batch(
    shards,
    *,
    step: int,
    batch_size: int,
    seed: int,
    mask_rate: float,
    rank: int = 0,
    world_size: int = 1,
    mask_token_id: int = MASK_ID,
    special_ids: tuple[int, ...] = SPECIAL_IDS,
) -> dict[str, torch.Tensor]:
    """The MLM batch of ``step``: a pure function of (data, seed, step, rank, world_size).

    ``shards`` is a ``TokenShards`` (anything with ``len``, ``get_rows`` and ``vocab_size``).
    ``batch_size`` is the global batch; rank r of ``world_size`` gets rows
    [r*B/W, (r+1)*B/W) of it, so the ranks' rows together are exactly the single-process batch.
    Each rank masks exactly ``masked_token_count(B/W * T, mask_rate)`` positions with a
    generator seeded from (seed, step, rank, world_size). Returns int64 tensors input_ids,
    attention_mask and labels, each (B/W, T); labels are IGNORE_INDEX except at masked positions.
    """
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must split evenly over world_size {world_size} "
                         f"(rank {rank})")  # fmt: skip
    local = batch_size // world_size
    rows = batch_rows(len(shards), step, batch_size, seed)[rank * local : (rank + 1) * local]
    ids = torch.from_numpy(shards.get_rows(rows))  # (B/W, T) int64
    g = torch.Generator().manual_seed(_mix_seed(seed, step, rank, world_size))
    masked, labels = mask_tokens(ids, mask_rate, mask_token_id=mask_token_id, vocab_size=shards.vocab_size,
                                 special_ids=special_ids, generator=g)  # fmt: skip
    return {"input_ids": masked, "attention_mask": (ids != PAD_ID).long(), "labels": labels}


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (a hash, so nearby steps get unrelated streams)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class MLMBatches:
    """``mlm_batch`` with its settings bound: ``batches(step)`` is the batch of ``step``.

    Holds no iteration state, so resuming at step s just calls ``batches(s)``; the epoch
    permutations are cached.
    """

    shards: Any
    batch_size: int
    seed: int
    mask_rate: float
    rank: int = 0
    world_size: int = 1

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        return mlm_batch(self.shards, step=step, batch_size=self.batch_size, seed=self.seed,
                         mask_rate=self.mask_rate, rank=self.rank, world_size=self.world_size)  # fmt: skip

    def steps_per_epoch(self) -> float:
        return len(self.shards) / self.batch_size
