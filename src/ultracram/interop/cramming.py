"""cramming's crammedBERT (Geiping & Goldstein 2022) and UltraFastBERT (Belcak & Wattenhofer 2023,
built on the cramming code) -> ultracram's crammed-bert / ultrafastbert-KxD.

A published checkpoint is a directory with ``config.json`` holding the hydra ``arch`` section
(``crammedBertConfig``) and the state dict of ``ScriptableLMForPreTraining``. Names and shapes
below follow ``cramming/architectures/{crammed_bert,components,attention,embeddings}.py`` and
UltraFastBERT's ``training/cramming/architectures/{crammed_bert,fff}.py``:

    encoder.embedding.word_embedding.weight              (V, H)
    encoder.embedding.pos_embedding.scale_factor         (1,)     scaled-sinusoidal
    encoder.embedding.norm.{weight,bias}                 (H,)
    encoder.layers.{i}.norm1 / norm2.{weight,bias}       (H,)     pre-LN block
    encoder.layers.{i}.attn.self_attention.query_key_value.weight  (3H, H)  rows (head, q/k/v, d)
    encoder.layers.{i}.attn.self_attention.norm_factor   ()       buffer: 1/sqrt(head dim)
    encoder.layers.{i}.attn.dense.weight                 (H, H)
    encoder.layers.{i}.ffn.dense_in.weight               (I, H)   GLU: value half, then gate half
    encoder.layers.{i}.ffn.dense_out.weight              (H, I/2) (H, I) without GLU
    encoder.layers.{i}.ffn.linear_in.{weight,bias}       (K*N, H), (K*N,)  FFF, N = 2^(D+1)-1
    encoder.layers.{i}.ffn.linear_out.weight             (H, K*N)
    encoder.final_norm.{weight,bias}                     (H,)
    decoder.weight                                       (V, H)   tied to the word embedding

Differences from ultracram's presets, and how they are bridged exactly:

- cramming's LayerNorms keep their biases (``use_bias: False`` only removes Linear biases), while
  ultracram's crammed-bert has ``bias=False`` everywhere. The import uses ``bias=True`` and sets
  every Linear bias the checkpoint lacks to zero, which computes the same function.
- cramming's fused QKV (``SeqFirstSelfAttention``, the GPT-NeoX layout) orders the rows per head,
  ``(head, q/k/v, d)``; ultracram orders them ``(q/k/v, head, d)``. Rows are permuted.
- cramming masks padding by adding -10000 to the scores; ultracram masks with -inf (SDPA). The
  softmax weight of a padded key is exp(-10000) = 0 in float32 either way.
- The scaled-sinusoid scale is a (1,)-tensor in cramming and a scalar in ultracram.
- The downstream head is not imported (pretraining checkpoints only); cramming's ``avg`` pooler
  with a dense layer has no ultracram equivalent, so fine-tuning uses ultracram's cls_tanh pooler
  of the same width (``classification_head.head_dim``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ultracram.config import ConfigError, ModelConfig, get_preset
from ultracram.interop.weights import ConversionError, check_all_used, take

_ACTIVATIONS = {"GELU": ("gelu", False), "GELUglu": ("gelu", True), "ReLU": ("relu", False),
                "ReLUglu": ("relu", True)}  # fmt: skip
_ATTENTION = ("self-attention", "pytorch-flash-attention")
_POSITIONS = {
    "scaled-sinusoidal": "scaled_sinusoidal",
    "sinusoidal": "scaled_sinusoidal",
    "learned": "learned",
}


def _get(d: dict[str, Any], path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _number(value: Any, default: float) -> float:
    """Hydra interpolations (``${arch.hidden_dropout_prob}``) may remain unresolved in a config."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def is_fff(arch: dict[str, Any]) -> bool:
    return arch.get("intermed_type") == "fff"


def config_from_cramming(arch: dict[str, Any], vocab_size: int | None = None) -> ModelConfig:
    """ModelConfig for a cramming ``arch`` dict; every unsupported setting is reported at once."""
    problems = []

    def need(path: str, allowed: tuple, default: Any = None) -> Any:
        value = _get(arch, path, default)
        if value not in allowed:
            problems.append(
                f"arch.{path} = {value!r} is not supported (supported: {', '.join(map(repr, allowed))})"
            )
        return value

    need("norm", ("LayerNorm",))
    need("norm_scheme", ("pre",), "pre")
    nonlin = need("nonlin", tuple(_ACTIVATIONS))
    intermed_type = need("intermed_type", ("ff", "fff"), "ff")
    attention_type = need("attention.type", _ATTENTION)
    need("attention.causal_attention", (False,), False)
    need("attention.rotary_embedding", (False, None), False)
    need("attention.sequence_op", ("torch-softmax",), "torch-softmax")
    need("attention.skip_output_projection", (False,), False)
    position = need("embedding.pos_embedding", tuple(_POSITIONS))
    need("tie_weights", (True,), True)
    need("ffn_layer_frequency", (1,), 1)
    need("objective_layout", ("MLM",), "MLM")
    hidden = arch.get("hidden_size")
    if not isinstance(hidden, int):
        problems.append(f"arch.hidden_size = {hidden!r}: expected an integer")
    elif _get(arch, "embedding.embedding_dim", hidden) != hidden:
        problems.append(
            f"arch.embedding.embedding_dim ({_get(arch, 'embedding.embedding_dim')}) must equal hidden_size"
        )
    vocab = _get(arch, "embedding.vocab_size") or vocab_size
    if not isinstance(vocab, int):
        problems.append("arch.embedding.vocab_size is not set and cannot be read from the weights")
    for key in ("num_transformer_layers", "intermed_size", "attention.num_attention_heads"):
        if not isinstance(_get(arch, key), int):
            problems.append(f"arch.{key} = {_get(arch, key)!r}: expected an integer")
    if intermed_type == "fff" and not isinstance(arch.get("intermed_depth"), int):
        problems.append(
            f"arch.intermed_depth = {arch.get('intermed_depth')!r}: expected an integer (FFF depth)"
        )
    if problems:
        raise ConversionError(
            "cramming config cannot be imported:\n" + "\n".join(f"  - {p}" for p in problems)
        )

    activation, glu = _ACTIVATIONS[nonlin]
    sparse = arch.get("sparse_prediction", True)
    pooler = _get(arch, "classification_head.pooler", "zero_index")
    with_dense = _get(arch, "classification_head.include_ff_layer", True)
    values: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=hidden, num_layers=arch["num_transformer_layers"],
        num_heads=arch["attention"]["num_attention_heads"], max_seq_len=_get(arch, "embedding.max_seq_length", 128),
        mixer="attention", norm_position="pre", activation=activation, bias=True,
        position_embedding=_POSITIONS[position], type_vocab_size=0,
        embedding_norm=bool(_get(arch, "embedding.normalization", True)), final_norm=bool(arch.get("final_norm", True)),
        tie_embeddings=True, mlm_head_transform=not arch.get("skip_head_transform", True),
        sparse_prediction=bool(sparse), mask_rate=_number(sparse, 0.25) if 0 < _number(sparse, 0.25) < 1 else 0.25,
        dropout=_number(arch.get("hidden_dropout_prob"), 0.1),
        attention_dropout=_number(_get(arch, "attention.dropout_prob"), 0.1),
        classifier_dropout=_number(_get(arch, "classification_head.classifier_dropout"), 0.1),
        layer_norm_eps=_number(arch.get("norm_eps"), 1e-12), pad_token_id=_get(arch, "embedding.pad_token_id", 0),
        initializer_range=_number(_get(arch, "init.std"), 0.02),
        pooler="cls_tanh" if with_dense else ("mean" if pooler == "avg" else "cls"),
        pooler_size=_get(arch, "classification_head.head_dim", 1024) if with_dense else hidden,
    )  # fmt: skip
    if intermed_type == "fff":
        k, d = arch["intermed_size"], arch["intermed_depth"]
        name = f"ultrafastbert-{k}x{d}"
        values.update(ffn="fff", fff_trees=k, fff_depth=d)
    else:
        name = "crammed-bert"
        values.update(ffn="glu" if glu else "dense", intermediate_size=arch["intermed_size"])
    del attention_type
    try:
        return get_preset(name).replace(**values, name=name)
    except ConfigError as e:
        raise ConversionError(f"cramming config gives an invalid ultracram config: {e}") from e


def state_dict_from_cramming(
    state: dict[str, torch.Tensor], arch: dict[str, Any], config: ModelConfig, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename (and where needed permute) a cramming ``ScriptableLMForPreTraining`` state dict to
    ultracram's ``EncoderForMaskedLM`` names. Missing, unused or mis-shaped tensors are errors."""
    if "head.weight" in state or any(k.startswith("pooler.") for k in state):
        raise ConversionError(
            f"{source}: this is a cramming sequence-classification checkpoint (head.*, pooler.*); only "
            "pretraining (MLM) checkpoints can be imported: fine-tune the imported model with ultracram"
        )
    H, V, nh = config.hidden_size, config.vocab_size, config.num_heads
    hd = H // nh
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def bias(name: str, shape: tuple[int, ...], present: bool) -> torch.Tensor:
        """A Linear bias: from the checkpoint where the published config has one, else zero."""
        return take(state, used, name, shape) if present else torch.zeros(shape)

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = take(state, used, f"{src}.weight", (H,))
        out[f"{dst}.bias"] = take(state, used, f"{src}.bias", (H,))

    use_bias = bool(arch.get("use_bias", False))
    qkv_bias = bool(_get(arch, "attention.qkv_bias", False))
    e = "encoder.embedding."
    out["encoder.embeddings.word.weight"] = take(state, used, f"{e}word_embedding.weight", (V, H))
    kind = _get(arch, "embedding.pos_embedding")
    if kind == "scaled-sinusoidal":
        out["encoder.embeddings.position.scale"] = take(
            state, used, f"{e}pos_embedding.scale_factor", (1,)
        ).reshape(())
    elif kind == "sinusoidal":  # no parameter: a scaled sinusoid with scale 1 is the same function
        out["encoder.embeddings.position.scale"] = torch.tensor(1.0)
    else:
        L = config.max_seq_len
        out["encoder.embeddings.position.weight"] = take(
            state, used, f"{e}pos_embedding.embedding.weight", (L, H)
        )
        if f"{e}pos_embedding.position_ids" in state:  # a buffer: arange, carries nothing
            used.add(f"{e}pos_embedding.position_ids")
    if config.embedding_norm:
        norm(f"{e}norm", "encoder.embeddings.norm")

    for i in range(config.num_layers):
        c, u = f"encoder.layers.{i}.", f"encoder.layers.{i}."
        norm(f"{c}norm1", f"{u}norm1")
        norm(f"{c}norm2", f"{u}norm2")
        a = f"{c}attn.self_attention."
        if _get(arch, "attention.type") == "self-attention":
            # GPT-NeoX layout: output rows (head, q/k/v, d) -> ultracram's (q/k/v, head, d).
            w = take(state, used, f"{a}query_key_value.weight", (3 * H, H))
            out[f"{u}mixer.qkv.weight"] = w.view(nh, 3, hd, H).transpose(0, 1).reshape(3 * H, H)
            b = bias(f"{a}query_key_value.bias", (3 * H,), qkv_bias)
            out[f"{u}mixer.qkv.bias"] = b.view(nh, 3, hd).transpose(0, 1).reshape(3 * H)
            if f"{a}norm_factor" in state:  # a buffer; SDPA uses the same 1/sqrt(head dim)
                factor = take(state, used, f"{a}norm_factor", ())
                if not math.isclose(float(factor), hd**-0.5, rel_tol=1e-5):
                    raise ConversionError(
                        f"{a}norm_factor is {float(factor)}, expected 1/sqrt({hd}) = {hd**-0.5}"
                    )
        else:  # pytorch-flash-attention: rows already (q/k/v, head, d)
            out[f"{u}mixer.qkv.weight"] = take(state, used, f"{a}Wqkv.weight", (3 * H, H))
            out[f"{u}mixer.qkv.bias"] = bias(f"{a}Wqkv.bias", (3 * H,), qkv_bias)
        out[f"{u}mixer.out.weight"] = take(state, used, f"{c}attn.dense.weight", (H, H))
        out[f"{u}mixer.out.bias"] = bias(f"{c}attn.dense.bias", (H,), use_bias)
        f = f"{c}ffn."
        if config.ffn == "fff":
            width = config.fff_trees * config.fff_nodes
            out[f"{u}ffn.linear_in.weight"] = take(state, used, f"{f}linear_in.weight", (width, H))
            out[f"{u}ffn.linear_in.bias"] = take(state, used, f"{f}linear_in.bias", (width,))
            out[f"{u}ffn.linear_out.weight"] = take(state, used, f"{f}linear_out.weight", (H, width))
        else:
            I = config.intermediate_size  # noqa: E741
            inner = I // 2 if config.ffn == "glu" else I
            out[f"{u}ffn.dense_in.weight"] = take(state, used, f"{f}dense_in.weight", (I, H))
            out[f"{u}ffn.dense_in.bias"] = bias(f"{f}dense_in.bias", (I,), use_bias)
            out[f"{u}ffn.dense_out.weight"] = take(state, used, f"{f}dense_out.weight", (H, inner))
            out[f"{u}ffn.dense_out.bias"] = bias(f"{f}dense_out.bias", (H,), use_bias)
    if config.final_norm:
        norm("encoder.final_norm", "encoder.final_norm")
    if config.mlm_head_transform:
        out["mlm_head.transform.0.weight"] = take(state, used, "prediction_head.dense.weight", (H, H))
        out["mlm_head.transform.0.bias"] = bias("prediction_head.dense.bias", (H,), use_bias)
        norm("prediction_head.norm", "mlm_head.transform.2")
    out["mlm_head.decoder.bias"] = bias("decoder.bias", (V,), bool(arch.get("decoder_bias", False)))
    if "decoder.weight" in state:  # cramming always ties it; a stored copy must be the embedding
        dec = take(state, used, "decoder.weight", (V, H))
        if not torch.equal(dec, out["encoder.embeddings.word.weight"]):
            raise ConversionError(
                f"{source}: decoder.weight differs from encoder.embedding.word_embedding.weight, but "
                "cramming ties them; the checkpoint is inconsistent"
            )
    check_all_used(state, used, source)
    return out
