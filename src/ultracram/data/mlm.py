"""Masked-language-model batches: exact mask counts, 80/10/10 replacement, reproducible."""

from __future__ import annotations

import torch

from ultracram.config import IGNORE_INDEX, masked_token_count


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
