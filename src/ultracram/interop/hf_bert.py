"""Hugging Face BERT <-> ultracram's BERT (``bert-*`` presets): config and tensor names.

Every tensor is mapped explicitly; a tensor that is left over or missing is an error, never a
silent skip, so a converted model either matches Hugging Face exactly or does not load.
"""

from __future__ import annotations

from typing import Any

import torch

from ultracram.config import ModelConfig, get_preset
from ultracram.interop.weights import ConversionError

__all__ = ["ConversionError", "bert_problems", "config_from_hf_bert", "hf_bert_config", "hf_bert_names",
           "hf_state_dict_from_bert", "state_dict_from_hf_bert"]  # fmt: skip


def config_from_hf_bert(hf: dict[str, Any], name: str = "bert-base") -> ModelConfig:
    """ModelConfig for a Hugging Face ``BertConfig`` (given as its dict)."""
    if hf.get("tie_word_embeddings", True) is False:
        raise ConversionError("tie_word_embeddings=false: an untied BERT decoder is not supported")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ConversionError("a decoder BERT (is_decoder / add_cross_attention) is not supported")
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


# HF tensors that carry no information of their own: buffers, the tied decoder (checked equal to
# what it is tied to), and the heads of BertForPreTraining that the MLM model does not have.
_IGNORABLE = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids", "cls.predictions.decoder.weight",
              "cls.predictions.decoder.bias", "bert.pooler.", "cls.seq_relationship.")  # fmt: skip


_LEGACY_NORM = {"gamma": "weight", "beta": "bias"}


def hf_bert_names(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The current Hugging Face names of a BERT state dict, as ``from_pretrained`` reads them:
    ``torch.compile``'s ``_orig_mod.`` removed, the ``bert.`` prefix added to a bare ``BertModel``,
    and the TensorFlow-era ``LayerNorm.gamma`` / ``LayerNorm.beta`` of early checkpoints (Google's
    original BERT conversions) renamed to ``weight`` / ``bias``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        name = key.replace("_orig_mod.", "")
        stem, _, last = name.rpartition(".")
        if stem.endswith("LayerNorm") and last in _LEGACY_NORM:
            name = f"{stem}.{_LEGACY_NORM[last]}"
        if name in out:
            raise ConversionError(f"tensor {name} appears twice (as {key} and under its other name)")
        out[name] = value
    if not any(k.startswith("bert.") for k in out):  # a bare BertModel: add the prefix back
        out = {(k if k.startswith(("cls.", "classifier.")) else f"bert.{k}"): v for k, v in out.items()}
    return out


def state_dict_from_hf_bert(
    hf_state: dict[str, torch.Tensor], num_layers: int, task: str = "mlm"
) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``BertForMaskedLM`` state dict to ultracram's ``EncoderForMaskedLM``
    (``task="mlm"``), or a ``BertForSequenceClassification`` one to
    ``EncoderForSequenceClassification`` (``task="classification"``)."""
    hf_state = hf_bert_names(hf_state)
    mapping = _static_map()
    if task == "classification":
        mapping = {k: v for k, v in mapping.items() if k.startswith("encoder.")}
        mapping.update({"pooler.dense.weight": "bert.pooler.dense.weight", "pooler.dense.bias": "bert.pooler.dense.bias",
                        "classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"})  # fmt: skip
        ignorable: tuple[str, ...] = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
    else:
        ignorable = _IGNORABLE
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
    unused = [k for k in hf_state if k not in used and not k.startswith(ignorable)]
    if missing or unused:
        lines = [f"missing tensor {k}" for k in missing] + [f"unused tensor {k}" for k in unused]
        what = "BertForSequenceClassification" if task == "classification" else "BertForMaskedLM"
        raise ConversionError(f"Hugging Face BERT state dict does not match {what}:\n" +
                              "\n".join(f"  - {x}" for x in lines))  # fmt: skip
    # The decoder is tied to the word embeddings (and its bias to cls.predictions.bias) in HF; a
    # stored copy that differs would be silently dropped, so it is an error.
    for copy, source in (("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
                         ("cls.predictions.decoder.bias", "cls.predictions.bias")):  # fmt: skip
        if (
            task == "mlm"
            and copy in hf_state
            and source in hf_state
            and not torch.equal(hf_state[copy], hf_state[source])
        ):
            raise ConversionError(f"tensor {copy} differs from {source}: an untied decoder is not supported")
    return out


# --------------------------------------------------------------------------------------------
# Export: ultracram -> Hugging Face BERT
# --------------------------------------------------------------------------------------------


def bert_problems(config: ModelConfig, task: str = "mlm") -> list[str]:
    """Why ``config`` cannot be a native Hugging Face BERT (empty list: it can)."""
    want = dict(mixer="attention", ffn="dense", norm_position="post", bias=True, position_embedding="learned",
                embedding_norm=True, final_norm=False, tie_embeddings=True, mlm_head_transform=True)  # fmt: skip
    problems = [
        f"{k}={getattr(config, k)!r} (BERT: {v!r})" for k, v in want.items() if getattr(config, k) != v
    ]
    if config.type_vocab_size < 1:
        problems.append("type_vocab_size=0 (BERT has token-type embeddings)")
    if task == "classification" and (config.pooler != "cls_tanh" or config.pooler_size != config.hidden_size):
        problems.append(
            f"pooler={config.pooler!r}/pooler_size={config.pooler_size} (BERT: 'cls_tanh' of hidden_size)"
        )
    if task not in ("mlm", "classification"):
        problems.append(f"task {task!r} (BERT export covers mlm and classification)")
    return problems


def hf_bert_config(config: ModelConfig, task: str = "mlm", num_labels: int = 2) -> dict[str, Any]:
    """A Hugging Face ``BertConfig`` dict equivalent to ``config``."""
    out: dict[str, Any] = dict(
        model_type="bert", architectures=["BertForSequenceClassification" if task == "classification" else "BertForMaskedLM"],
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size, hidden_act=config.activation,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
        max_position_embeddings=config.max_seq_len, type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range, layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id, position_embedding_type="absolute", tie_word_embeddings=True,
        classifier_dropout=config.classifier_dropout,
    )  # fmt: skip
    if task == "classification":
        out["num_labels"] = num_labels
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        if num_labels == 1:
            out["problem_type"] = "regression"
    return out


def hf_state_dict_from_bert(
    state: dict[str, torch.Tensor], num_layers: int, hidden_size: int, task: str = "mlm"
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`state_dict_from_hf_bert`: ultracram names -> Hugging Face names."""
    mapping = _static_map()
    for i in range(num_layers):
        mapping.update(_layer_map(i))
    if task == "classification":
        mapping = {k: v for k, v in mapping.items() if not k.startswith("mlm_head.")}
        mapping.update({"pooler.dense.weight": "bert.pooler.dense.weight", "pooler.dense.bias": "bert.pooler.dense.bias",
                        "classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"})  # fmt: skip
    out = {hf: state[uc] for uc, hf in mapping.items()}
    for i in range(num_layers):
        base = f"bert.encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            q, k, v = state[f"encoder.layers.{i}.mixer.qkv.{p}"].split(hidden_size, dim=0)
            out.update({f"{base}query.{p}": q, f"{base}key.{p}": k, f"{base}value.{p}": v})
    # The decoder (weight and bias) is not written: BertForMaskedLM ties it to the word embeddings
    # and to cls.predictions.bias, and its save_pretrained leaves it out. Written, it would be
    # reported UNEXPECTED by every model without the MLM head (AutoModel).
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
