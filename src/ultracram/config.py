"""Model configurations: one typed, frozen dataclass and the named presets.

Every architectural variant is a typed field (``mixer``, ``ffn``, ``norm_position``, ...);
``ultracram.model.build`` resolves them in one table. A config validates itself when it is
built and reports *every* problem in one :class:`ConfigError`, so a typo in a config file
is found at once and not after an hour of training.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ultracram.settings import SettingsError, coerce_fields, describe, type_ok

Mixer = Literal["attention", "fourier"]
FeedForwardKind = Literal["dense", "glu", "fff", "moe"]
NormPosition = Literal["pre", "post"]
PositionEmbedding = Literal["learned", "scaled_sinusoidal"]
Pooler = Literal["cls_tanh", "cls", "mean"]
Activation = Literal["gelu", "relu"]
FFFTraining = Literal["hard", "soft"]

# Label value that the losses ignore (PyTorch's and Hugging Face's convention).
IGNORE_INDEX = -100


class ConfigError(SettingsError):
    """A model or pretraining configuration is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str], where: str = "model config"):
        super().__init__(problems, where)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a transformer encoder. Field docstrings feed ``--help`` and the docs."""

    name: str = "custom"
    """Preset name this config came from (informational)."""
    vocab_size: int = 32768
    """Vocabulary size; must match the tokenizer the model is trained with."""
    hidden_size: int = 768
    """Width of the residual stream."""
    num_layers: int = 16
    """Number of transformer blocks."""
    num_heads: int = 12
    """Attention heads; hidden_size must be divisible by it."""
    intermediate_size: int = 3072
    """Inner width of a dense/GLU/MoE expert FFN (a GLU splits it into two halves, cramming-style)."""
    max_seq_len: int = 128
    """Longest sequence the position embeddings cover."""
    mixer: Mixer = "attention"
    """Token mixing: self-attention, or FNet's Fourier transform (Lee-Thorp et al. 2021)."""
    ffn: FeedForwardKind = "glu"
    """Feedforward block: dense, gated (GLU), fast feedforward tree (FFF) or Switch MoE."""
    activation: Activation = "gelu"
    """Nonlinearity inside the feedforward block."""
    norm_position: NormPosition = "pre"
    """LayerNorm before each sublayer (pre, cramming) or after the residual add (post, BERT)."""
    bias: bool = False
    """Biases in linear layers and LayerNorms (BERT: yes; cramming: none)."""
    position_embedding: PositionEmbedding = "scaled_sinusoidal"
    """Learned absolute positions (BERT) or a sinusoid times one learned scalar (cramming)."""
    type_vocab_size: int = 0
    """Token-type (segment) embeddings; 0 disables them."""
    embedding_norm: bool = True
    """LayerNorm after the embedding sum."""
    final_norm: bool = True
    """LayerNorm after the last block (pre-LN models need it)."""
    tie_embeddings: bool = True
    """Share the input embedding matrix with the MLM decoder."""
    mlm_head_transform: bool = False
    """BERT's MLM transform (dense, activation, LayerNorm) before the decoder."""
    sparse_prediction: bool = True
    """Compute MLM logits only at masked positions, a fixed count per batch (cramming)."""
    mask_rate: float = 0.25
    """MLM masking rate; the data collator and the sparse head both read it."""
    fff_depth: int = 11
    """Depth D of each FFF tree: 2^(D+1)-1 nodes, D+1 of them visited per token."""
    fff_trees: int = 1
    """Number K of parallel FFF trees whose outputs are summed."""
    fff_training: FFFTraining = "hard"
    """FFF routing while training: hard (UltraFastBERT: one path, only visited nodes learn) or
    soft (sigmoid decisions, every node weighted by its reach probability; Belcak & Wattenhofer's
    FFF paper). Evaluation and inference always route hard."""
    fff_soft_temperature: float = 1.0
    """Soft mode: a node sends a token right with probability sigmoid(pre-activation / temperature)."""
    fff_hardening_weight: float = 0.0
    """Soft mode: weight of the decision-entropy ("hardening") loss added to the training loss."""
    moe_experts: int = 8
    """Number of experts in a Switch MoE layer."""
    moe_capacity_factor: float = 1.25
    """Expert capacity = ceil(factor * tokens / experts); overflowing tokens skip the FFN."""
    moe_aux_loss_weight: float = 0.01
    """Weight of the Switch load-balancing loss added to the training loss."""
    dropout: float = 0.0
    """Dropout on embeddings and sublayer outputs (cramming pretrains without it)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of weights."""
    pad_token_id: int = 0
    """Token id of [PAD]."""
    pooler: Pooler = "cls_tanh"
    """Sequence-classification pooling: dense+tanh on [CLS], raw [CLS], or the mean over tokens."""
    pooler_size: int = 1024
    """Width of the cls_tanh pooler (cramming uses 1024; BERT uses hidden_size)."""
    classifier_dropout: float = 0.1
    """Dropout before the classifier."""

    def __post_init__(self) -> None:
        problems = validate_values(dataclasses.asdict(self))
        if problems:
            raise ConfigError(problems)

    # -- convenience ---------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def fff_nodes(self) -> int:
        """Nodes in one FFF tree."""
        return 2 ** (self.fff_depth + 1) - 1

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated like any other config)."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "model config") -> ModelConfig:
        """Build a config from a plain dict, reporting unknown keys (with a suggestion), wrong
        types and inconsistent sizes together in one :class:`ConfigError`. Values in the
        field's type as text (``"4"`` from a command line) are converted."""
        typed, problems = coerce_fields(cls, values)
        merged = {**_DEFAULTS, **typed}
        problems += validate_values(merged)
        if problems:
            raise ConfigError(problems, where)
        return cls(**merged)


def validate_values(v: dict[str, Any]) -> list[str]:
    """Every problem with a dict of ModelConfig values: types first, then consistency."""
    hints = typing.get_type_hints(ModelConfig)
    problems = []
    for name, annotation in hints.items():
        if name in v and not type_ok(v[name], annotation):
            problems.append(
                f"{name}: expected {describe(annotation)}, got {v[name]!r} ({type(v[name]).__name__})"
            )
    bad_types = {p.split(":")[0] for p in problems}

    def ok(*names: str) -> bool:
        return all(n in v and n not in bad_types for n in names)

    for n in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len"):
        if ok(n) and v[n] < 1:
            problems.append(f"{n}: must be >= 1, got {v[n]}")
    if ok("hidden_size", "num_heads") and v["num_heads"] >= 1 and v["hidden_size"] % v["num_heads"]:
        problems.append(f"hidden_size ({v['hidden_size']}) is not divisible by num_heads ({v['num_heads']})")
    if ok("ffn", "intermediate_size") and v["ffn"] == "glu" and v["intermediate_size"] % 2:
        problems.append(f"intermediate_size ({v['intermediate_size']}) must be even for a GLU feedforward")
    if ok("fff_depth") and not 0 <= v["fff_depth"] <= 20:
        problems.append(f"fff_depth: must be in 0..20, got {v['fff_depth']}")
    if ok("fff_trees") and v["fff_trees"] < 1:
        problems.append(f"fff_trees: must be >= 1, got {v['fff_trees']}")
    if ok("fff_soft_temperature") and not v["fff_soft_temperature"] > 0:
        problems.append(f"fff_soft_temperature: must be > 0, got {v['fff_soft_temperature']}")
    if ok("fff_hardening_weight") and v["fff_hardening_weight"] < 0:
        problems.append(f"fff_hardening_weight: must be >= 0, got {v['fff_hardening_weight']}")
    if ok("moe_experts") and v["moe_experts"] < 1:
        problems.append(f"moe_experts: must be >= 1, got {v['moe_experts']}")
    if ok("moe_capacity_factor") and v["moe_capacity_factor"] <= 0:
        problems.append(f"moe_capacity_factor: must be > 0, got {v['moe_capacity_factor']}")
    for n in ("dropout", "attention_dropout", "classifier_dropout"):
        if ok(n) and not 0.0 <= v[n] < 1.0:
            problems.append(f"{n}: must be in [0, 1), got {v[n]}")
    if ok("mask_rate") and not 0.0 < v["mask_rate"] < 1.0:
        problems.append(f"mask_rate: must be in (0, 1), got {v['mask_rate']}")
    if ok("pad_token_id", "vocab_size") and not 0 <= v["pad_token_id"] < v["vocab_size"]:
        problems.append(
            f"pad_token_id ({v['pad_token_id']}) is outside the vocabulary (size {v['vocab_size']})"
        )
    if ok("norm_position", "final_norm") and v["norm_position"] == "post" and v["final_norm"]:
        problems.append(
            "final_norm: a post-LayerNorm model already ends in a LayerNorm; set final_norm=False"
        )
    if ok("type_vocab_size") and v["type_vocab_size"] < 0:
        problems.append(f"type_vocab_size: must be >= 0, got {v['type_vocab_size']}")
    return problems


def masked_token_count(num_tokens: int, mask_rate: float) -> int:
    """Exact number of masked positions in a batch of ``num_tokens`` tokens.

    The collator masks exactly this many and the sparse MLM head gathers exactly this many,
    so the head's shapes never change between steps and ``torch.compile`` keeps one graph
    (cramming's "sparse prediction", Geiping & Goldstein 2022, sec. 4.2).
    """
    return max(1, math.ceil(num_tokens * mask_rate))


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


# --------------------------------------------------------------------------------------------
# Presets. Python data, one table; `ultrafastbert-KxD` is resolved for any K and D.
# --------------------------------------------------------------------------------------------

_BERT = dict(
    vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
    max_seq_len=512, mixer="attention", ffn="dense", norm_position="post", bias=True,
    position_embedding="learned", type_vocab_size=2, embedding_norm=True, final_norm=False,
    tie_embeddings=True, mlm_head_transform=True, sparse_prediction=False, mask_rate=0.15,
    dropout=0.1, attention_dropout=0.1, pooler_size=768,
)  # fmt: skip
# Cramming's bert-c5 (Geiping & Goldstein 2022, appendix): pre-LN, no biases, GLU, no dropout.
_CRAMMED = dict(
    vocab_size=32768, hidden_size=768, num_layers=16, num_heads=12, intermediate_size=3072,
    max_seq_len=128, mixer="attention", ffn="glu", norm_position="pre", bias=False,
    position_embedding="scaled_sinusoidal", type_vocab_size=0, embedding_norm=True, final_norm=True,
    tie_embeddings=True, mlm_head_transform=False, sparse_prediction=True, mask_rate=0.25,
    dropout=0.0, attention_dropout=0.0, pooler_size=1024,
)  # fmt: skip
# The tiny shape shared by every family's tiny preset: fast enough for CI and a CPU quick start.
_TINY = dict(
    vocab_size=4096, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, pooler_size=64
)
# The mini shape (Turc et al. 2019's BERT-mini: 4 layers, hidden 256): about 16x the tiny's
# compute per token, still trainable on a CPU in minutes; ultracram's CPU budget curve
# (docs/budget.md) compares it with the tiny shape.
_MINI = dict(
    vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, pooler_size=256
)

PRESETS: dict[str, dict[str, Any]] = {
    "bert-base": _BERT,
    "crammed-bert": _CRAMMED,
    "ultrafastbert-1x11": {**_CRAMMED, "ffn": "fff", "fff_trees": 1, "fff_depth": 11},
    "ultrafastbert-128x4": {**_CRAMMED, "ffn": "fff", "fff_trees": 128, "fff_depth": 4},
    # FNet (Lee-Thorp et al. 2021) on the crammed skeleton: Fourier mixing, GLU FFN.
    "fnet": {**_CRAMMED, "mixer": "fourier"},
    # Switch Transformer (Fedus et al. 2021) FFN on the crammed skeleton; experts are dense GELU FFNs.
    "switch": {**_CRAMMED, "ffn": "moe", "moe_experts": 8, "intermediate_size": 1536},
    "bert-tiny": {**_BERT, **_TINY, "max_seq_len": 128},
    "crammed-bert-tiny": {**_CRAMMED, **_TINY},
    "ultrafastbert-tiny": {**_CRAMMED, **_TINY, "ffn": "fff", "fff_trees": 1, "fff_depth": 5},
    "fnet-tiny": {**_CRAMMED, **_TINY, "mixer": "fourier"},
    "switch-tiny": {**_CRAMMED, **_TINY, "ffn": "moe", "moe_experts": 4, "intermediate_size": 128},
    "bert-mini": {**_BERT, **_MINI, "max_seq_len": 128},
    "crammed-bert-mini": {**_CRAMMED, **_MINI},
    # depth 9: 1,023 neurons in the tree (about the dense 1,024), 10 of them used per token.
    "ultrafastbert-mini": {**_CRAMMED, **_MINI, "ffn": "fff", "fff_trees": 1, "fff_depth": 9},
    "fnet-mini": {**_CRAMMED, **_MINI, "mixer": "fourier"},
    "switch-mini": {**_CRAMMED, **_MINI, "ffn": "moe", "moe_experts": 4, "intermediate_size": 512},
}

_FFF_NAME = re.compile(r"^ultrafastbert-(\d+)x(\d+)$")


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named preset, optionally with fields overridden.

    ``ultrafastbert-KxD`` works for any K trees of depth D, not only the listed ones.
    """
    if name in PRESETS:
        values = PRESETS[name]
    elif m := _FFF_NAME.match(name):
        values = {**_CRAMMED, "ffn": "fff", "fff_trees": int(m[1]), "fff_depth": int(m[2])}
    else:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError([f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)}, ultrafastbert-KxD)"])
    return ModelConfig.from_dict({**values, "name": name, **overrides})


__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "ConfigError",
    "ModelConfig",
    "get_preset",
    "masked_token_count",
    "preset_names",
    "validate_values",
]
