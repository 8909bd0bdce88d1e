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
import`` restores it exactly. Tied weights (the MLM decoder) are left out, as ``save_pretrained``
does: the loaders tie them again, and a stored copy is an UNEXPECTED tensor for ``AutoModel``.

The tokenizer is written as ``tokenizer.json`` plus a standard ``tokenizer_config.json``
(``PreTrainedTokenizerFast``, BERT's special tokens): it runs no custom code. transformers 4's
``AutoTokenizer`` takes the class from it; transformers 5's reads ``config.json`` first, which
for a non-BERT export names the custom model code, so there ``AutoTokenizer`` asks for
``trust_remote_code`` (for the config, not the tokenizer) while ``PreTrainedTokenizerFast``
loads the same tokenizer without it. ``model_input_names`` is written out: transformers 5's
``PreTrainedTokenizerFast`` would otherwise leave out the token types a BERT needs for pairs.
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


def _write_tokenizer(tokenizer: Path, out: Path, max_len: int, token_types: bool) -> None:
    """``tokenizer.json`` as trained, and a ``tokenizer_config.json`` naming transformers' generic
    ``PreTrainedTokenizerFast``: it runs ``tokenizer.json`` as is, so the ids are exactly
    ultracram's (``BertTokenizerFast`` would rebuild the normaliser from its own defaults, e.g.
    lower-casing a cased vocabulary), and it needs no remote code."""
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab()
    special = {k: v for k, v in _SPECIAL.items() if v in vocab}
    inputs = (
        ["input_ids", "token_type_ids", "attention_mask"] if token_types else ["input_ids", "attention_mask"]
    )
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
               "model_input_names": inputs, "clean_up_tokenization_spaces": False, **special}  # fmt: skip
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
            # unique_state_dict already holds the tied decoder once, as the word embedding; the
            # remote UltracramForMaskedLM declares the tie (_tied_weights_keys), as BertForMaskedLM does.
            weights = {k: v.clone() for k, v in state.items()}
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
            _write_tokenizer(checkpoint / meta["tokenizer"].get("file", TOKENIZER_NAME), tmp, config.max_seq_len,
                             token_types=config.type_vocab_size > 0)  # fmt: skip

    return atomic_replace_dir(out, build)


_AUTO_CLASSES = {"mlm": "AutoModelForMaskedLM", "classification": "AutoModelForSequenceClassification",
                 "encoder": "AutoModel"}  # fmt: skip


def export_summary(directory: str | Path) -> list[str]:
    """What an export holds and how to load it, as printed by ``ultracram export``: the model class,
    whether it needs ``trust_remote_code``, and one line of Python each for the tokenizer and the
    model (both tried by the tests)."""
    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    model_class = (cfg.get("architectures") or ["?"])[0]
    task = cfg.get("ultracram_task", "mlm")
    auto = _AUTO_CLASSES.get(task, "AutoModel")
    where = repr(str(directory))
    if needs_remote_code(directory):
        lines = [f"  model: {model_class} ({cfg['ultracram_model'].get('name', 'custom')}, no native transformers "
                 "class): custom code in modeling_ultracram.py; loading it needs trust_remote_code=True",
                 f"    from transformers import {auto}; model = {auto}.from_pretrained({where}, trust_remote_code=True)"]  # fmt: skip
    else:
        lines = [f"  model: {model_class}, a native transformers class: no trust_remote_code needed",
                 f"    from transformers import {auto}; model = {auto}.from_pretrained({where})"]  # fmt: skip
    if not (directory / "tokenizer.json").is_file():
        return [*lines, "  tokenizer: none (the checkpoint has no tokenizer.json)"]
    if needs_remote_code(directory):
        # transformers 5's AutoTokenizer reads config.json (custom code) before tokenizer_config.json,
        # so it would ask; the tokenizer class itself never needs remote code.
        tokenizer = ["  tokenizer: PreTrainedTokenizerFast (tokenizer.json), no custom code; AutoTokenizer of "
                     "transformers 5 reads config.json first, so it wants trust_remote_code=True here",
                     "    from transformers import PreTrainedTokenizerFast; "
                     f"tokenizer = PreTrainedTokenizerFast.from_pretrained({where})"]  # fmt: skip
    else:
        tokenizer = ["  tokenizer: PreTrainedTokenizerFast (tokenizer.json), no custom code",
                     f"    from transformers import AutoTokenizer; tokenizer = AutoTokenizer.from_pretrained({where})"]  # fmt: skip
    return [*lines, *tokenizer]


def export_command(checkpoint: str, out: str, format: Literal["hf"] = "hf", overwrite: bool = False) -> Path:
    """write an ultracram checkpoint as a Hugging Face transformers directory

    Write a checkpoint as a directory that transformers loads offline: bert-* models as a native
    BertForMaskedLM / BertForSequenceClassification, every other model with a self-contained
    modeling_ultracram.py (load with trust_remote_code=True through AutoModel,
    AutoModelForMaskedLM or AutoModelForSequenceClassification). The tokenizer is included, with
    a standard tokenizer_config.json (no custom code). Prints the directory written, the model
    class, whether trust_remote_code is needed, and one line of Python each to load the
    tokenizer and the model.

    Args:
        checkpoint: ultracram checkpoint directory
        out: directory to write
        format: output format
        overwrite: replace an earlier `ultracram export` output at --out (a non-empty directory
            that is not one is always refused)
    """
    path = export_checkpoint(checkpoint, out, format=format, overwrite=overwrite)
    print(path)
    print("\n".join(export_summary(path)))
    return path
