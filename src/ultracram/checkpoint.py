"""The model checkpoint format: a directory holding

- ``config.json``: the model config, the task and number of labels, the ultracram version,
  the sha256 of the weights file and, when known, the tokenizer it was trained with;
- ``model.safetensors``: the weights (tied tensors stored once);
- ``tokenizer.json`` (optional): a copy of the tokenizer.

Loading never unpickles anything, verifies the checksum, checks every tensor name and shape
and that every weight is finite; ``load_checkpoint_tokenizer`` checks that ``tokenizer.json``
is the one the model was trained with (its recorded sha256 and its vocabulary size). Each
failure is a ``CheckpointError`` that names the file and the problem.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from ultracram import __version__
from ultracram.config import ConfigError, ModelConfig, get_preset
from ultracram.errors import UltracramError
from ultracram.fileio import atomic_replace_dir, sha256_file
from ultracram.model import TASKS, Encoder, EncoderForMaskedLM, EncoderForSequenceClassification, build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
FORMAT_VERSION = 1


class CheckpointError(UltracramError, RuntimeError):
    """A checkpoint cannot be loaded; the message says which file and why."""


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each shared (tied) tensor once, under its first name."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen and t.numel():
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save_checkpoint(
    model: nn.Module,
    directory: str | Path,
    *,
    tokenizer_path: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` atomically (``ultracram.fileio.atomic_replace_dir``):
    files go to a temporary sibling directory, are fsynced, then swapped into place, so a crash
    never leaves a half-written checkpoint nor loses the previous one.

    ``model`` must have a ``config`` attribute (every ultracram model has). ``extra`` is stored
    under ``"extra"`` in config.json (e.g. training metadata).
    """
    directory = Path(directory)
    config: ModelConfig = model.config
    task, num_labels = _task_of(model)

    def build(tmp: Path) -> None:
        weights = tmp / WEIGHTS_NAME
        save_file(unique_state_dict(model), str(weights), metadata={"format": "pt"})
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "ultracram_version": __version__,
            "task": task,
            "num_labels": num_labels,
            "model": config.to_dict(),
            "weights_sha256": sha256_file(weights),
            "tokenizer": None,
            "extra": extra or {},
        }
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / TOKENIZER_NAME)
            meta["tokenizer"] = {"file": TOKENIZER_NAME, "sha256": sha256_file(tmp / TOKENIZER_NAME),
                                 "vocab_size": _tokenizer_vocab_size(tmp / TOKENIZER_NAME)}  # fmt: skip
            _check_vocab(config, meta["tokenizer"]["vocab_size"], tmp / TOKENIZER_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    return atomic_replace_dir(directory, build)


def _task_of(model: nn.Module) -> tuple[str, int]:
    if isinstance(model, EncoderForMaskedLM):
        return "mlm", 0
    if isinstance(model, EncoderForSequenceClassification):
        return "classification", model.num_labels
    if isinstance(model, Encoder):
        return "encoder", 0
    raise CheckpointError(f"cannot save a {type(model).__name__}: not an ultracram model")


def _tokenizer_vocab_size(path: Path) -> int:
    return Tokenizer.from_file(str(path)).get_vocab_size()


def _check_vocab(config: ModelConfig, tokenizer_vocab: int, where: Path) -> None:
    if tokenizer_vocab != config.vocab_size:
        raise CheckpointError(
            f"vocabulary mismatch: tokenizer {where} has {tokenizer_vocab} tokens but the model's "
            f"vocab_size is {config.vocab_size}; train the model with this tokenizer's vocabulary size"
        )


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """Parse and check ``config.json`` of a checkpoint directory (no weights are read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is not a directory")
    path = directory / CONFIG_NAME
    if not path.is_file():
        if (directory / "final" / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"checkpoint {directory} has no {CONFIG_NAME}: it looks like a pretraining run directory; "
                f"use {directory / 'final'} (the run's final model)"
            )
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG_NAME}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(meta).__name__}, not an object: not an ultracram checkpoint"
        )
    missing = [k for k in ("model", "task", "weights_sha256") if k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not an ultracram checkpoint")
    return meta


def load_checkpoint(
    directory: str | Path,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    map_location: str | torch.device = "cpu",
    config_overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """Load a checkpoint directory into a fresh model.

    With ``task`` different from the stored one (e.g. an MLM checkpoint loaded for
    ``classification``), the shared encoder weights are loaded and the new head keeps its
    fresh initialisation; every encoder tensor must still be present with the right shape.
    ``task="encoder"`` loads the encoder of an MLM or classification checkpoint (its head is
    left out), and an ``encoder`` checkpoint can be given a head the same way.
    ``config_overrides`` change fields that do not affect shapes (e.g. dropout for fine-tuning).
    """
    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    values = dict(meta["model"])
    if values.get("name", "custom") != "custom":
        try:  # the preset must exist, so that a typo'd or foreign preset name is caught
            get_preset(values["name"])
        except ConfigError as e:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from e
    try:
        config = ModelConfig.from_dict(
            {**values, **(config_overrides or {})}, where=str(directory / CONFIG_NAME)
        )
    except ConfigError as e:
        raise CheckpointError(str(e)) from e

    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS_NAME}")
    digest = sha256_file(weights_path)
    if digest != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path} is corrupt or was modified: sha256 {digest[:12]}… does not match "
            f"{meta['weights_sha256'][:12]}… recorded in {CONFIG_NAME}"
        )
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{weights_path} cannot be read as safetensors (truncated or damaged?): {e}"
        ) from e
    check_finite(state, source=str(weights_path))

    if meta.get("tokenizer"):
        tok = meta["tokenizer"]
        _check_vocab(config, int(tok["vocab_size"]), directory / tok["file"])

    stored_task = meta["task"]
    if stored_task not in TASKS:
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: unknown task {stored_task!r}; known: {', '.join(TASKS)}"
        )
    task = task or stored_task
    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r} for checkpoint {directory}; known: {', '.join(TASKS)}")
    num_labels = num_labels if num_labels is not None else (meta.get("num_labels") or 2)
    model = build_model(config, task, num_labels=num_labels)  # type: ignore[arg-type]
    source = str(weights_path)
    if (task == "encoder") != (stored_task == "encoder"):
        state = encoder_names(state, stored=stored_task, wanted=task)
        source += f" (the encoder of its {stored_task} model)" if task == "encoder" else ""
    # A bare encoder wanted from a task checkpoint must match it exactly (nothing is fresh), so
    # only a new head (another task that has one) makes the load partial.
    load_weights(model, state, source=source, partial=task != stored_task and task != "encoder")
    return model.to(map_location)


def encoder_names(state: dict[str, torch.Tensor], *, stored: str, wanted: str) -> dict[str, torch.Tensor]:
    """``state`` (saved for task ``stored``) renamed for a model of task ``wanted``.

    The bare ``Encoder`` (task ``encoder``) names its tensors ``embeddings.*``, ``layers.*``; the
    MLM and classification models hold that same module as ``encoder``, so their names carry an
    ``encoder.`` prefix. Going to ``encoder`` keeps the ``encoder.`` tensors only (the head is
    dropped) and strips the prefix; going from ``encoder`` to a task model adds it.
    """
    if wanted == "encoder" and stored != "encoder":
        return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if stored == "encoder" and wanted != "encoder":
        return {f"encoder.{k}": v for k, v in state.items()}
    return state


def check_finite(state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise a ``CheckpointError`` naming ``source`` and the first tensor holding NaN or inf
    (a checksum only proves the file is unchanged, not that training went well)."""
    for name, t in state.items():
        if t.is_floating_point() or t.is_complex():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                kinds = [k for k, m in (("NaN", torch.isnan(t)), ("inf", torch.isinf(t))) if bool(m.any())]
                raise CheckpointError(
                    f"{source}: tensor {name} {tuple(t.shape)} holds {bad} non-finite value(s) "
                    f"({' and '.join(kinds)}); the weights are unusable (did training diverge?)"
                )


def load_checkpoint_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint, checked to be the one its model was trained with.

    ``tokenizer.json`` must exist and parse; when ``config.json`` records the tokenizer's sha256
    (every checkpoint saved with a tokenizer does), the file must match it; and the vocabulary
    size read from the file itself must equal the model's ``vocab_size`` (checkpoints that
    predate the record are checked on the vocabulary size only). A swapped tokenizer (another
    vocabulary) would otherwise map the text to the wrong embeddings silently.
    """
    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    record = meta.get("tokenizer")
    if record is not None and not isinstance(record, dict):
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: 'tokenizer' must be an object or null, got {record!r}"
        )
    record = record or {}
    name = record.get("file") or TOKENIZER_NAME
    path = directory / str(name)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {name}; the checkpoint's tokenizer is needed")
    expected = record.get("sha256")
    if expected:
        digest = sha256_file(path)
        if digest != expected:
            raise CheckpointError(
                f"{path} is not the tokenizer this checkpoint was trained with: sha256 {digest[:12]}… does "
                f"not match {str(expected)[:12]}… recorded in {directory / CONFIG_NAME}; restore the "
                "checkpoint's own tokenizer.json"
            )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception for any parse error
        raise CheckpointError(f"{path} cannot be read as a tokenizers tokenizer.json: {e}") from e
    vocab_size = (meta.get("model") or {}).get("vocab_size") if isinstance(meta.get("model"), dict) else None
    if vocab_size is not None and tokenizer.get_vocab_size() != vocab_size:
        raise CheckpointError(
            f"vocabulary mismatch: tokenizer {path} has {tokenizer.get_vocab_size()} tokens but the model in "
            f"{directory / CONFIG_NAME} has vocab_size {vocab_size}; this is not the checkpoint's tokenizer"
        )
    return tokenizer


def load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str, partial: bool = False
) -> None:
    """Copy ``state`` into ``model``, checking every name and shape.

    Names are compared with the model's unique (untied) state dict. With ``partial`` (a new
    task head on a pretrained encoder), only the ``encoder.`` tensors must match: others are
    ignored on either side. Any problem raises a ``CheckpointError`` listing every tensor.
    """
    expected = unique_state_dict(model)
    if partial:
        expected = {k: v for k, v in expected.items() if k.startswith("encoder.")}
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    problems = [f"missing tensor {k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [f"unexpected tensor {k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    problems += [
        f"shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit the model:\n" + "\n".join(f"  - {p}" for p in problems))
    missing, _ = model.load_state_dict(state, strict=False)
    # Whatever load_state_dict still calls missing must be a tied alias or a fresh head.
    tied_or_new = set(model.state_dict()) - set(expected)
    leftover = [k for k in missing if k not in tied_or_new]
    if leftover:
        raise CheckpointError(f"{source}: tensors not loaded: {', '.join(leftover)}")
