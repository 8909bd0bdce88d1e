"""``ultracram import``: a published checkpoint directory -> an ultracram checkpoint.

Formats (``auto`` tells them apart by ``config.json``):

- ``hf-bert``: Hugging Face ``BertForMaskedLM`` / ``BertForPreTraining`` (-> bert-base architecture
  with its MLM head) or ``BertForSequenceClassification``; ``model_type: bert``.
- ``cramming``: cramming's crammedBERT and UltraFastBERT (``arch`` section; ``intermed_type: fff``
  -> ultrafastbert-KxD).
- ``hf-ultracram``: a directory written by ``ultracram export --format hf`` for a non-BERT preset
  (``model_type: ultracram``).

Nothing is fetched from the network. The tokenizer (``tokenizer.json``, or a BERT ``vocab.txt``
turned into a WordPiece ``tokenizer.json``) is copied into the checkpoint when present.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import BertWordPieceTokenizer

from ultracram.checkpoint import CheckpointError, load_weights, save_checkpoint, unique_state_dict
from ultracram.config import ConfigError, ModelConfig
from ultracram.fileio import guard_output_dir
from ultracram.interop.cramming import config_from_cramming, state_dict_from_cramming
from ultracram.interop.hf_bert import config_from_hf_bert, hf_state_dict_from_bert, state_dict_from_hf_bert
from ultracram.interop.weights import ConversionError, load_foreign_state
from ultracram.model import build_model

FORMATS = ("auto", "hf-bert", "cramming", "hf-ultracram")


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ConversionError(f"{directory} is not a directory")
    path = directory / "config.json"
    if not path.is_file():
        raise ConversionError(f"{directory} has no config.json")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return cfg


def detect_format(cfg: dict[str, Any], where: str = "config.json") -> str:
    """The import format of a parsed ``config.json``; an unknown architecture is an error."""
    if isinstance(cfg.get("arch"), dict):
        return "cramming"
    if cfg.get("model_type") == "bert":
        return "hf-bert"
    if cfg.get("model_type") == "ultracram":
        return "hf-ultracram"
    if "format_version" in cfg and "model" in cfg:
        raise ConversionError(
            f"{where} is already an ultracram checkpoint: use it directly, no import needed"
        )
    found = cfg.get("model_type") or cfg.get("architectures") or "none"
    raise ConversionError(
        f"{where}: unknown architecture (model_type/architectures: {found!r}); importable: Hugging Face "
        "BERT (model_type 'bert'), cramming crammedBERT / UltraFastBERT (an 'arch' section), "
        "ultracram's own HF export (model_type 'ultracram')"
    )


def _check_shapes(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    bad = [
        f"shape mismatch for tensor {k}: checkpoint {tuple(state[k].shape)}, config implies {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if bad:
        raise ConversionError(f"{source}:\n" + "\n".join(f"  - {b}" for b in bad))


def _num_labels(cfg: dict[str, Any]) -> int:
    return int(cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2)


def _from_hf_bert(cfg: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    archs = cfg.get("architectures") or ["BertForMaskedLM"]
    task = "classification" if "BertForSequenceClassification" in archs else "mlm"
    num_labels = _num_labels(cfg)
    try:
        # An ultracram export stores its exact config (preset name, dropouts) beside BERT's.
        stored = cfg.get("ultracram_model")
        config = ModelConfig.from_dict(stored) if stored else config_from_hf_bert(cfg)
    except (ConfigError, KeyError) as e:
        raise ConversionError(f"{source}: config.json is not a usable BertConfig: {e}") from e
    model = build_model(config, task, num_labels=num_labels)  # type: ignore[arg-type]
    expected = hf_state_dict_from_bert(unique_state_dict(model), config.num_layers, config.hidden_size, task)
    stripped = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if not any(k.startswith("bert.") for k in stripped):
        stripped = {
            (k if k.startswith(("cls.", "classifier.")) else f"bert.{k}"): v for k, v in stripped.items()
        }
    _check_shapes(expected, stripped, source)
    load_weights(model, state_dict_from_hf_bert(stripped, config.num_layers, task), source=source)
    return model


def _from_cramming(cfg: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    arch = cfg["arch"]
    if not any(k.startswith("encoder.") for k in state) and any(k.startswith("embedding.") for k in state):
        state = {f"encoder.{k}": v for k, v in state.items()}  # a bare ScriptableLM (AutoModel) state dict
    emb = state.get("encoder.embedding.word_embedding.weight")
    config = config_from_cramming(arch, vocab_size=int(emb.shape[0]) if emb is not None else None)
    model = build_model(config, "mlm")
    load_weights(model, state_dict_from_cramming(state, arch, config, source), source=source)
    return model


def _from_hf_ultracram(cfg: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    try:
        config = ModelConfig.from_dict(cfg["ultracram_model"], where=f"{source}: ultracram_model")
    except KeyError as e:
        raise ConversionError(f"{source}: config.json lacks 'ultracram_model'") from e
    except ConfigError as e:
        raise ConversionError(str(e)) from e
    task = cfg.get("ultracram_task", "mlm")
    if task == "encoder":  # ultracram's Encoder, like HF's AutoModel, has no "encoder." prefix
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
    if config.tie_embeddings and "mlm_head.decoder.weight" in state:
        if not torch.equal(state["mlm_head.decoder.weight"], state.get("encoder.embeddings.word.weight")):
            raise ConversionError(f"{source}: tensor mlm_head.decoder.weight differs from the tied embedding")
        state = {k: v for k, v in state.items() if k != "mlm_head.decoder.weight"}
    model = build_model(config, task, num_labels=_num_labels(cfg))
    load_weights(model, state, source=source)
    return model


_IMPORTERS = {"hf-bert": _from_hf_bert, "cramming": _from_cramming, "hf-ultracram": _from_hf_ultracram}


def _tokenizer_file(directory: Path, tmp: Path) -> Path | None:
    """``tokenizer.json`` as is, or a WordPiece tokenizer built from a BERT ``vocab.txt``."""
    if (directory / "tokenizer.json").is_file():
        return directory / "tokenizer.json"
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        return None
    lowercase = True
    tok_cfg = directory / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            lowercase = bool(json.loads(tok_cfg.read_text()).get("do_lower_case", True))
        except json.JSONDecodeError as e:
            raise ConversionError(f"{tok_cfg} is not valid JSON: {e}") from e
    tok = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
    path = tmp / "tokenizer.json"
    tok.save(str(path))
    return path


def is_import(directory: Path) -> bool:
    """Whether ``directory`` is an earlier output of ``ultracram import`` (an ultracram checkpoint
    whose config.json records ``extra.imported_from``)."""
    try:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("extra"), dict) and "imported_from" in cfg["extra"]


def import_checkpoint(
    source: str | Path, out: str | Path, format: str = "auto", *, overwrite: bool = False
) -> Path:
    """Convert the checkpoint directory ``source`` into an ultracram checkpoint at ``out``.

    Args:
        source: a local directory with ``config.json`` and ``model.safetensors`` or
            ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``).
        out: the ultracram checkpoint directory to write (``load_checkpoint`` reads it).
        format: ``auto``, ``hf-bert``, ``cramming`` or ``hf-ultracram``.

    Every tensor is mapped explicitly; a missing, unused or mis-shaped tensor is a
    ``ConversionError`` that names it. Before any work, ``out`` is refused when it is (or is
    inside, or holds) ``source``, cannot be written, or is a non-empty directory that is not an
    earlier import; an earlier import is replaced only with ``overwrite``.
    """
    source, out = Path(source), Path(out)
    if format not in FORMATS:
        raise ConversionError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    guard_output_dir(out, command="ultracram import", sources={"--source": source}, is_own_output=is_import,
                     overwrite=overwrite)  # fmt: skip
    cfg = _read_config(source)
    detected = detect_format(cfg, str(source / "config.json"))
    if format != "auto" and format != detected:
        raise ConversionError(f"{source} looks like a {detected!r} checkpoint, not {format!r}")
    state, weights = load_foreign_state(source)
    try:
        model = _IMPORTERS[detected](cfg, state, str(weights))
    except CheckpointError as e:  # load_weights' check, phrased with ultracram names
        raise ConversionError(str(e)) from e
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer_file(source, Path(tmp))
        try:
            return save_checkpoint(model, out, tokenizer_path=tokenizer,
                                   extra={"imported_from": str(source.resolve()), "import_format": detected})  # fmt: skip
        except CheckpointError as e:
            raise ConversionError(str(e)) from e


def import_command(
    source: str,
    out: str,
    format: Literal["auto", "hf-bert", "cramming", "hf-ultracram"] = "auto",
    overwrite: bool = False,
) -> Path:
    """convert a published checkpoint (HF BERT, crammedBERT, UltraFastBERT) into an ultracram one

    Convert a local checkpoint directory (config.json + model.safetensors or pytorch_model.bin,
    read with torch.load(weights_only=True)) into an ultracram checkpoint. Formats: hf-bert
    (BertForMaskedLM -> bert-base architecture with its MLM head), cramming (crammedBERT ->
    crammed-bert; UltraFastBERT, intermed_type fff -> ultrafastbert-KxD), hf-ultracram (a
    directory written by `ultracram export`). Every tensor is mapped explicitly; missing, unused
    or mis-shaped tensors are errors. No network access. Prints the checkpoint written.

    Args:
        source: checkpoint directory to convert
        out: ultracram checkpoint directory to write
        format: source format (auto: detected from config.json)
        overwrite: replace an earlier `ultracram import` output at --out (a non-empty directory
            that is not one is always refused)
    """
    path = import_checkpoint(source, out, format=format, overwrite=overwrite)
    print(path)
    return path
