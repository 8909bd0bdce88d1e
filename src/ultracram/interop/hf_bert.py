"""Hugging Face BERT <-> ultracram's BERT (``bert-*`` presets): config and tensor names.

Every tensor is mapped explicitly; a tensor that is left over or missing is an error, never a
silent skip, so a converted model either matches Hugging Face exactly or does not load.
"""

from __future__ import annotations

from typing import Any

import torch

from ultracram.config import ModelConfig, get_preset
from ultracram.errors import UltracramError


class ConversionError(UltracramError):
    """A state dict does not have the tensors the published architecture has."""


def config_from_hf_bert(hf: dict[str, Any], name: str = "bert-base") -> ModelConfig:
    """ModelConfig for a Hugging Face ``BertConfig`` (given as its dict)."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"unsupported position_embedding_type {hf['position_embedding_type']!r}")
    act = {"gelu": "gelu", "relu": "relu"}.get(hf.get("hidden_act", "gelu"))
    if act is None:
        raise ConversionError(f"unsupported hidden_act {hf.get('hidden_act')!r} (gelu or relu)")
    return get_preset(name).replace(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), activation=act, pad_token_id=hf.get("pad_token_id", 0),
        dropout=hf.get("hidden_dropout_prob", 0.1), attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        initializer_range=hf.get("initializer_range", 0.02), pooler_size=hf["hidden_size"],
    )  # fmt: skip


def _layer_map(i: int) -> dict[str, str]:
    """ultracram name -> HF name for layer i, except the fused QKV (handled separately)."""
    hf, uc = f"bert.encoder.layer.{i}.", f"encoder.layers.{i}."
    pairs = {
        "mixer.out": "attention.output.dense",
        "norm1": "attention.output.LayerNorm",
        "ffn.dense_in": "intermediate.dense",
        "ffn.dense_out": "output.dense",
        "norm2": "output.LayerNorm",
    }
    return {f"{uc}{a}.{p}": f"{hf}{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")}


def _static_map() -> dict[str, str]:
    return {
        "encoder.embeddings.word.weight": "bert.embeddings.word_embeddings.weight",
        "encoder.embeddings.position.weight": "bert.embeddings.position_embeddings.weight",
        "encoder.embeddings.token_type.weight": "bert.embeddings.token_type_embeddings.weight",
        "encoder.embeddings.norm.weight": "bert.embeddings.LayerNorm.weight",
        "encoder.embeddings.norm.bias": "bert.embeddings.LayerNorm.bias",
        "mlm_head.transform.0.weight": "cls.predictions.transform.dense.weight",
        "mlm_head.transform.0.bias": "cls.predictions.transform.dense.bias",
        "mlm_head.transform.2.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_head.transform.2.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm_head.decoder.bias": "cls.predictions.bias",
    }


# HF tensors that carry no information of their own: buffers, the tied decoder, the pooler
# (BertForMaskedLM has none; BertForPreTraining's is not used by the MLM head).
_IGNORABLE = ("bert.embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
              "bert.pooler.", "cls.seq_relationship.")  # fmt: skip


def state_dict_from_hf_bert(hf_state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``BertForMaskedLM`` state dict to ultracram's ``EncoderForMaskedLM``."""
    hf_state = {k.removeprefix("_orig_mod."): v for k, v in hf_state.items()}
    if not any(k.startswith("bert.") for k in hf_state):  # a bare BertModel: add the prefix back
        hf_state = {(k if k.startswith("cls.") else f"bert.{k}"): v for k, v in hf_state.items()}
    mapping = _static_map()
    for i in range(num_layers):
        mapping.update(_layer_map(i))
    out, used, missing = {}, set(), []
    for uc, hf in mapping.items():
        if hf in hf_state:
            out[uc] = hf_state[hf]
            used.add(hf)
        else:
            missing.append(hf)
    for i in range(num_layers):
        base = f"bert.encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            names = [f"{base}{n}.{p}" for n in ("query", "key", "value")]
            if all(n in hf_state for n in names):
                out[f"encoder.layers.{i}.mixer.qkv.{p}"] = torch.cat([hf_state[n] for n in names], dim=0)
                used.update(names)
            else:
                missing += [n for n in names if n not in hf_state]
    unused = [k for k in hf_state if k not in used and not k.startswith(_IGNORABLE)]
    if missing or unused:
        lines = [f"missing tensor {k}" for k in missing] + [f"unused tensor {k}" for k in unused]
        raise ConversionError("Hugging Face BERT state dict does not match BertForMaskedLM:\n" +
                              "\n".join(f"  - {x}" for x in lines))  # fmt: skip
    return out
