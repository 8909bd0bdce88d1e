"""``build_model``: the one place where a config and a task become a module.

Variants are resolved by table lookups (``MIXERS``, ``FEEDFORWARDS``, ``TASKS``), never by
if/elif chains spread over files.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ultracram.config import ModelConfig, get_preset
from ultracram.model.encoder import Encoder, ScaledSinusoidalPositions
from ultracram.model.feedforward import SwitchFeedForward
from ultracram.model.heads import EncoderForMaskedLM, EncoderForSequenceClassification

Task = Literal["mlm", "classification", "encoder"]

TASKS = {
    "mlm": lambda config, num_labels: EncoderForMaskedLM(config),
    "classification": lambda config, num_labels: EncoderForSequenceClassification(config, num_labels),
    "encoder": lambda config, num_labels: Encoder(config),
}


def build_model(config: ModelConfig | str, task: Task = "mlm", num_labels: int = 2) -> nn.Module:
    """Build a freshly initialised model.

    Args:
        config: a ``ModelConfig`` or a preset name (``ultracram models`` lists them).
        task: ``mlm`` (pretraining), ``classification`` (``num_labels == 1`` is regression),
            or ``encoder`` (hidden states only).
        num_labels: classes of the classification head.
    """
    if isinstance(config, str):
        config = get_preset(config)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    model = TASKS[task](config, num_labels)
    init_weights(model, config)
    return model


@torch.no_grad()
def init_weights(model: nn.Module, config: ModelConfig) -> None:
    """BERT's initialisation: weights ~ N(0, initializer_range), biases 0, LayerNorm 1/0.

    With tied embeddings and std 0.02, the initial MLM logits are small, so the initial loss
    is close to ln(vocab_size): a check the doctor relies on.
    """
    std = config.initializer_range
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, SwitchFeedForward):
            nn.init.normal_(m.w_in, 0.0, std)
            nn.init.normal_(m.w_out, 0.0, std)
        elif isinstance(m, ScaledSinusoidalPositions):
            m.scale.fill_(1.0 / math.sqrt(config.hidden_size))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Unique parameters (tied ones once), split into embedding (the token, position and
    token-type tables, as in Kaplan et al. 2020's "non-embedding" count) and everything else."""
    embedding_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Embedding | ScaledSinusoidalPositions)
        for p in m.parameters()
    }
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding = sum(p.numel() for i, p in unique.items() if i in embedding_ids)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token (one multiply-add = 2 FLOPs), counting only arithmetic that a
    conditional implementation must do (an FFF token touches K*(D+1) nodes, a Switch token one
    expert). Training costs about 3x forward (backward = 2x forward; Kaplan et al. 2020).

    Per layer, with H hidden, I intermediate, T sequence length:
      attention: 2*4*H^2 (QKV + output projections) + 2*2*T*H (scores and weighted sum)
      fourier:   5*H*log2(H) + 5*T*log2(T) per token (FFT along both axes, the usual 5 n log2 n)
      dense:     2*2*H*I        glu: 2*(H*I + H*I/2)        fff: 2*2*H*K*(D+1)
      moe:       2*2*H*I + 2*H*E (router)
    MLM head: 2*H*V at the predicted positions (mask_rate of tokens for sparse prediction),
    plus 2*H^2 for BERT's transform.
    """
    h, i, t = config.hidden_size, config.intermediate_size, seq_len or config.max_seq_len
    mixer = {
        "attention": 2 * 4 * h * h + 2 * 2 * t * h,
        "fourier": 5 * h * math.log2(h) + 5 * t * math.log2(max(t, 2)),
    }[config.mixer]
    ffn = {
        "dense": 2 * 2 * h * i,
        "glu": 2 * (h * i + h * i // 2),
        "fff": 2 * 2 * h * config.fff_trees * (config.fff_depth + 1),
        "moe": 2 * 2 * h * i + 2 * h * config.moe_experts,
    }[config.ffn]
    fraction = config.mask_rate if config.sparse_prediction else 1.0
    head = fraction * (2 * h * config.vocab_size + (2 * h * h if config.mlm_head_transform else 0))
    layers = config.num_layers * (mixer + ffn)
    return {"layers": float(layers), "ffn": float(config.num_layers * ffn), "mlm_head": float(head),
            "total": float(layers + head)}  # fmt: skip
