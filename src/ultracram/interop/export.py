"""``ultracram export --format hf``: an ultracram checkpoint -> a directory that Hugging Face
``transformers`` loads offline.

- A model that *is* a BERT (``bert-*`` presets: post-LN, learned positions, dense FFN, biases,
  token types, BERT's MLM transform) becomes a native ``BertForMaskedLM`` or
  ``BertForSequenceClassification``; no custom code.
- Every other model is written with its ultracram names plus ``configuration_ultracram.py`` and
  ``modeling_ultracram.py`` (a self-contained re-implementation shipped as a package resource),
  registered through ``auto_map`` for ``AutoConfig``, ``AutoModel``, ``AutoModelForMaskedLM`` and
  ``AutoModelForSequenceClassification`` with ``trust_remote_code=True``.

Both kinds also store the exact ultracram config (``ultracram_model``) so that ``ultracram
import`` restores it exactly. The tokenizer is written as ``tokenizer.json`` plus a
``tokenizer_config.json`` that ``AutoTokenizer`` reads.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save_file
from tokenizers import Tokenizer

from ultracram.checkpoint import TOKENIZER_NAME, load_checkpoint, read_checkpoint_config, unique_state_dict
from ultracram.fileio import atomic_replace_dir, guard_output_dir
from ultracram.interop.hf_bert import bert_problems, hf_bert_config, hf_state_dict_from_bert
from ultracram.interop.weights import ConversionError

MARKER = ".ultracram-export.json"
"""Written into every export: it marks the directory as one that ``--overwrite`` may replace."""
REMOTE_FILES = ("configuration_ultracram.py", "modeling_ultracram.py")
_CLASSES = {"mlm": "UltracramForMaskedLM", "classification": "UltracramForSequenceClassification",
            "encoder": "UltracramModel"}  # fmt: skip
_SPECIAL = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "mask_token": "[MASK]"}  # fmt: skip


def _remote_config(config_dict: dict[str, Any], task: str, num_labels: int) -> dict[str, Any]:
    auto_map = {"AutoConfig": "configuration_ultracram.UltracramConfig"}
    auto_map.update({f"AutoModel{s}": f"modeling_ultracram.{c}" for s, c in
                     (("", "UltracramModel"), ("ForMaskedLM", "UltracramForMaskedLM"),
                      ("ForSequenceClassification", "UltracramForSequenceClassification"))})  # fmt: skip
    out: dict[str, Any] = {"model_type": "ultracram", "architectures": [_CLASSES[task]], "auto_map": auto_map,
                           "pad_token_id": config_dict["pad_token_id"],
                           "tie_word_embeddings": config_dict["tie_embeddings"]}  # fmt: skip
    if task == "classification":
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return out


def _write_tokenizer(tokenizer: Path, out: Path, max_len: int) -> None:
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab()
    special = {k: v for k, v in _SPECIAL.items() if v in vocab}
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def is_export(directory: Path) -> bool:
    """Whether ``directory`` is an earlier output of ``ultracram export`` (it holds ``MARKER``)."""
    return (directory / MARKER).is_file()


def needs_remote_code(directory: str | Path) -> bool:
    """Whether the exported ``directory`` loads only with ``trust_remote_code=True`` (its
    config.json maps the Auto classes to the bundled modeling_ultracram.py)."""
    try:
        return "auto_map" in json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def export_checkpoint(checkpoint: str | Path, out: str | Path, format: str = "hf", *,
                      overwrite: bool = False) -> Path:  # fmt: skip
    """Write the ultracram checkpoint ``checkpoint`` as a Hugging Face model directory ``out``.

    Returns ``out``. The directory is written to a temporary sibling and swapped into place
    (``ultracram.fileio.atomic_replace_dir``). Before any work, ``out`` is refused when it is
    (or is inside, or holds) ``checkpoint``, cannot be written, or is a non-empty directory that
    is not an earlier export; an earlier export (``MARKER``) is replaced only with ``overwrite``.
    """
    if format != "hf":
        raise ConversionError(f"unknown export format {format!r}; known: hf")
    checkpoint, out = Path(checkpoint), Path(out)
    guard_output_dir(out, command="ultracram export", sources={"--checkpoint": checkpoint},
                     is_own_output=is_export, overwrite=overwrite)  # fmt: skip
    meta = read_checkpoint_config(checkpoint)
    model = load_checkpoint(checkpoint)
    config, task = model.config, meta["task"]
    num_labels = int(meta.get("num_labels") or 0)
    state = unique_state_dict(model)

    def build(tmp: Path) -> None:
        native = not bert_problems(config, task)
        if native:
            hf_cfg = hf_bert_config(config, task, num_labels)
            weights = hf_state_dict_from_bert(state, config.num_layers, config.hidden_size, task)
        else:
            hf_cfg = _remote_config(config.to_dict(), task, num_labels)
            weights = {k: v.clone() for k, v in state.items()}
            if task == "mlm" and config.tie_embeddings:  # stored too, so no loader sees it missing
                weights["mlm_head.decoder.weight"] = state["encoder.embeddings.word.weight"].clone()
            if task == "encoder":  # AutoModel's own names have no "encoder." prefix
                weights = {k.removeprefix("encoder."): v for k, v in weights.items()}
            for name in REMOTE_FILES:
                source = resources.files("ultracram").joinpath("resources", "hf_remote", name)
                (tmp / name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        hf_cfg.update(ultracram_model=config.to_dict(), ultracram_task=task, torch_dtype="float32")
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})  # fmt: skip
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        marker = {"command": "ultracram export", "format": format, "checkpoint": str(checkpoint.resolve())}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if meta.get("tokenizer"):
            _write_tokenizer(
                checkpoint / meta["tokenizer"].get("file", TOKENIZER_NAME), tmp, config.max_seq_len
            )

    return atomic_replace_dir(out, build)


def export_command(checkpoint: str, out: str, format: Literal["hf"] = "hf", overwrite: bool = False) -> Path:
    """write an ultracram checkpoint as a Hugging Face transformers directory

    Write a checkpoint as a directory that transformers loads offline: bert-* models as a native
    BertForMaskedLM / BertForSequenceClassification, every other model with a self-contained
    modeling_ultracram.py (load with trust_remote_code=True through AutoModel,
    AutoModelForMaskedLM or AutoModelForSequenceClassification). The tokenizer is included.
    Prints the directory written.

    Args:
        checkpoint: ultracram checkpoint directory
        out: directory to write
        format: output format
        overwrite: replace an earlier `ultracram export` output at --out (a non-empty directory
            that is not one is always refused)
    """
    path = export_checkpoint(checkpoint, out, format=format, overwrite=overwrite)
    print(path)
    if needs_remote_code(path):
        print("note: not a BERT; load it with trust_remote_code=True (it ships modeling_ultracram.py)")
    return path
