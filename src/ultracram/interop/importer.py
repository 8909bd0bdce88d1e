"""``ultracram import``: a published checkpoint directory -> an ultracram checkpoint.

Formats (``auto`` tells them apart by ``config.json``):

- ``hf-bert``: Hugging Face ``BertForMaskedLM`` / ``BertForPreTraining`` (-> bert-base architecture
  with its MLM head) or ``BertForSequenceClassification``; ``model_type: bert``.
- ``cramming``: cramming's crammedBERT and UltraFastBERT (``arch`` section; ``intermed_type: fff``
  -> ultrafastbert-KxD).
- ``hf-ultracram``: a directory written by ``ultracram export --format hf`` for a non-BERT preset
  (``model_type: ultracram``).

The source is a local directory or, when no such directory exists, a Hugging Face hub id
(``bert-base-uncased``, ``pbelcak/UltraFastBERT-1x11-long``): ``huggingface_hub`` (optional)
resolves it into its usual cache, downloading only what an import reads (config, weights,
tokenizer files) unless the model is cached already; with ``HF_HUB_OFFLINE`` set nothing is
fetched. The tokenizer (``tokenizer.json``, or a BERT ``vocab.txt`` turned into a WordPiece
``tokenizer.json``) is copied into the checkpoint when present.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import BertWordPieceTokenizer

from ultracram.checkpoint import CheckpointError, load_weights, save_checkpoint, unique_state_dict
from ultracram.config import ConfigError, ModelConfig
from ultracram.errors import optional_import
from ultracram.fileio import guard_output_dir
from ultracram.interop.cramming import config_from_cramming, state_dict_from_cramming
from ultracram.interop.hf_bert import (
    config_from_hf_bert,
    hf_bert_names,
    hf_state_dict_from_bert,
    state_dict_from_hf_bert,
)
from ultracram.interop.weights import BIN_NAMES, SAFETENSORS_NAMES, ConversionError, load_foreign_state
from ultracram.model import build_model

FORMATS = ("auto", "hf-bert", "cramming", "hf-ultracram")


# ---------------------------------------------------------------------------------------------
# Hugging Face hub ids
# ---------------------------------------------------------------------------------------------

# huggingface_hub's rule for a model id: "name" or "namespace/name", letters, digits, "-", "_",
# ".", starting and ending with a letter, digit or "_", at most 96 characters, no "--" or "..".
_HUB_ID = re.compile(r"(?:\w[\w.-]*\w/|\w/)?\w(?:[\w.-]*\w)?", re.ASCII)
# What an import reads, and nothing else (a hub repo often also holds TensorFlow, Flax, ONNX and
# Core ML copies of the weights). Weights are asked for in two steps, safetensors first, so that
# a repo holding both formats is not downloaded twice.
HUB_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
HUB_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
HUB_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin")


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hugging Face hub model id (``org/name`` or ``name``);
    a path (``./x``, ``/x``, ``a/b/c``, ``~``) never does."""
    return (
        len(name) <= 96
        and _HUB_ID.fullmatch(name) is not None
        and "--" not in name
        and ".." not in name
        and not name.endswith(".git")
    )


def _env_flag(value: str) -> bool:
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline(hub: Any) -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now. huggingface_hub reads it once,
    at import, so a value set later in the process (a test, a notebook) is read here."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var):
            return _env_flag(os.environ[var])
    return bool(getattr(hub.constants, "HF_HUB_OFFLINE", False))


def hub_cache_dir(hub: Any) -> Path:
    """The hub cache as huggingface_hub chooses it (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), from the environment as it is now: huggingface_hub fixes it at
    import, so ``HF_HOME`` set later would otherwise be ignored."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"]))) / "hub"
    return Path(hub.constants.HF_HUB_CACHE)


def _import_hub(repo_id: str) -> Any:
    return optional_import(
        "huggingface_hub", f"--source {repo_id} (no such directory, so read as a Hugging Face hub id)"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def snapshot_from_hub(repo_id: str) -> Path:
    """The directory of hub model ``repo_id`` in the Hugging Face cache, downloaded first when it
    is not there (config, weights and tokenizer files only) unless ``HF_HUB_OFFLINE`` is set.
    Every failure is a one-line ``ConversionError`` naming the id."""
    hub = _import_hub(repo_id)
    try:
        errors = importlib.import_module("huggingface_hub.errors")
    except ImportError:  # huggingface_hub < 0.24 kept its errors in utils
        errors = importlib.import_module("huggingface_hub.utils")
    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # () catches nothing: older versions
    offline, cache = hub_offline(hub), hub_cache_dir(hub)
    get_it = (
        "run `ultracram import` once with network access (HF_HUB_OFFLINE unset) to download it, "
        "or set HF_HOME to a Hugging Face cache that holds it"
    )

    def download(patterns: tuple[str, ...]) -> Path:
        return Path(hub.snapshot_download(repo_id, allow_patterns=list(patterns), cache_dir=str(cache),
                                          local_files_only=offline))  # fmt: skip

    try:
        path = download(HUB_FILES + HUB_SAFETENSORS)
        if not any((path / name).is_file() for name in SAFETENSORS_NAMES):
            path = download(HUB_FILES + HUB_BIN)  # an older repo: PyTorch weights only
    except incomplete as e:
        raise ConversionError(
            f"hub model {repo_id}: its copy in the Hugging Face cache {cache} is incomplete; {get_it}"
        ) from e
    except errors.LocalEntryNotFoundError as e:
        why = (
            "HF_HUB_OFFLINE is set"
            if offline
            else f"the hub cannot be reached: {_first_line(e.__cause__ or e)}"
        )
        raise ConversionError(
            f"--source {repo_id} is not a local directory, and the Hugging Face hub model {repo_id} is not in "
            f"the cache {cache} ({why}): {get_it}"
        ) from e
    except errors.GatedRepoError as e:
        raise ConversionError(
            f"hub model {repo_id} is gated: accept its conditions at https://huggingface.co/{repo_id} and log "
            "in (`hf auth login`), then run again"
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise ConversionError(
            f"--source {repo_id} is neither a local directory nor a model on the Hugging Face hub (a private "
            "model needs `hf auth login`)"
        ) from e
    except (OSError, ValueError) as e:  # other HTTP errors (HfHubHTTPError is an OSError), a bad id
        raise ConversionError(f"hub model {repo_id} cannot be downloaded: {_first_line(e)}") from e
    if not (path / "config.json").is_file():
        raise ConversionError(f"hub model {repo_id} has no config.json ({path}): not a checkpoint to import")
    if not any((path / name).is_file() for name in SAFETENSORS_NAMES + BIN_NAMES):
        hint = f"; {get_it}" if offline else ""
        raise ConversionError(
            f"hub model {repo_id} has no model.safetensors or pytorch_model.bin (looked in {path}){hint}"
        )
    return path


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
    try:
        stripped = hf_bert_names(state)
    except ConversionError as e:
        raise ConversionError(f"{source}: {e}") from e
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
            ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``), or, when no
            such directory exists, a Hugging Face hub id (``snapshot_from_hub``).
        out: the ultracram checkpoint directory to write (``load_checkpoint`` reads it).
        format: ``auto``, ``hf-bert``, ``cramming`` or ``hf-ultracram``.

    Every tensor is mapped explicitly; a missing, unused or mis-shaped tensor is a
    ``ConversionError`` that names it. Before any work, ``out`` is refused when it is (or is
    inside, or holds) ``source``, cannot be written, or is a non-empty directory that is not an
    earlier import; an earlier import is replaced only with ``overwrite``.
    """
    out = Path(out)
    if format not in FORMATS:
        raise ConversionError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    hub_id = None
    if not os.path.lexists(source) and looks_like_hub_id(str(source)):
        hub_id = str(source)
        # Checked before any download; the cache stands for the source (never write into it).
        cache = hub_cache_dir(_import_hub(hub_id))
        guard_output_dir(out, command="ultracram import", sources={"the Hugging Face cache": cache},
                         is_own_output=is_import, overwrite=overwrite)  # fmt: skip
        source = snapshot_from_hub(hub_id)
    else:
        source = Path(source)
        guard_output_dir(out, command="ultracram import", sources={"--source": source},
                         is_own_output=is_import, overwrite=overwrite)  # fmt: skip
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
            extra = {"imported_from": hub_id or str(source.resolve()), "import_format": detected}
            if hub_id:  # the snapshot directory is named by the commit it holds
                extra.update(hub_commit=source.name, hub_snapshot=str(source))
            return save_checkpoint(model, out, tokenizer_path=tokenizer, extra=extra)
        except CheckpointError as e:
            raise ConversionError(str(e)) from e


def import_command(
    source: str,
    out: str,
    format: Literal["auto", "hf-bert", "cramming", "hf-ultracram"] = "auto",
    overwrite: bool = False,
) -> Path:
    """convert a published checkpoint (HF BERT, crammedBERT, UltraFastBERT) into an ultracram one

    Convert a checkpoint (config.json + model.safetensors or pytorch_model.bin, read with
    torch.load(weights_only=True)) into an ultracram checkpoint. The source is a local directory
    or a Hugging Face hub id (bert-base-uncased, pbelcak/UltraFastBERT-1x11-long), fetched with
    huggingface_hub into its usual cache (HF_HOME) unless cached already; with HF_HUB_OFFLINE=1
    only the cache is used. Formats: hf-bert (BertForMaskedLM -> bert-base architecture with its
    MLM head), cramming (crammedBERT -> crammed-bert; UltraFastBERT, intermed_type fff ->
    ultrafastbert-KxD), hf-ultracram (a directory written by `ultracram export`). Every tensor is
    mapped explicitly; missing, unused or mis-shaped tensors are errors. Prints the checkpoint
    written.

    Args:
        source: checkpoint directory to convert, or a Hugging Face hub model id
        out: ultracram checkpoint directory to write
        format: source format (auto: detected from config.json)
        overwrite: replace an earlier `ultracram import` output at --out (a non-empty directory
            that is not one is always refused)
    """
    path = import_checkpoint(source, out, format=format, overwrite=overwrite)
    print(path)
    return path
