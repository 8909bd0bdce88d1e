"""Read the weights of a foreign checkpoint directory: safetensors (checked tensor by tensor before
anything is loaded) or a PyTorch ``.bin`` read with ``torch.load(weights_only=True)`` only.

A damaged file is an error that names the tensor where that is possible: the safetensors header
says where every tensor's bytes lie, so a truncated or tampered file shows which tensor is cut
short or inconsistent, before a single tensor is materialised.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ultracram.errors import UltracramError


class ConversionError(UltracramError):
    """A foreign checkpoint cannot be converted; the message names the file, key or tensor."""


# safetensors dtype -> bytes per element
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip

SAFETENSORS_NAMES = ("model.safetensors", "model.safetensors.index.json")
BIN_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_safetensors(path: Path) -> None:
    """Validate a safetensors file's header against its size; errors name the tensor.

    Layout: 8-byte little-endian header length N, N bytes of JSON
    ``{name: {dtype, shape, data_offsets: [start, end]}}``, then the data; offsets are relative
    to the end of the header and the byte ranges must tile the data exactly.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConversionError(f"{path}: truncated ({size} bytes): no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ConversionError(
                f"{path}: truncated or not safetensors: header of {n} bytes, file has {size}"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConversionError(f"{path}: damaged safetensors header (not JSON): {e}") from e
    data = size - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{path}: damaged header entry for tensor {name}: {info!r}") from e
        if dtype not in _ITEMSIZE:
            raise ConversionError(f"{path}: tensor {name} has unknown dtype {dtype!r}")
        if end > data:
            raise ConversionError(
                f"{path}: tensor {name} is truncated: its bytes end at {end} but the file holds only "
                f"{data} bytes of data (file cut short?)"
            )
        if end - start != math.prod(shape) * _ITEMSIZE[dtype]:
            raise ConversionError(
                f"{path}: tensor {name} is inconsistent: shape {shape} {dtype} needs "
                f"{math.prod(shape) * _ITEMSIZE[dtype]} bytes, header gives {end - start} (tampered?)"
            )
        spans.append((start, end, name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise ConversionError(f"{path}: tensor {name} starts at byte {start}, expected {pos} (tampered?)")
        pos = end
    if pos != data:
        raise ConversionError(f"{path}: {data - pos} bytes after the last tensor (tampered or wrong file?)")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(f"{path} cannot be read as safetensors: {e}") from e


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors have many types; all mean the same to the user
        raise ConversionError(
            f"{path} cannot be read with torch.load(weights_only=True) (truncated, damaged, or it "
            f"holds Python objects other than tensors): {e}"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a flat state dict of tensors")
    return state


def _load_index(path: Path, loader) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: not a valid shard index (needs a 'weight_map'): {e}") from e
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise ConversionError(f"{path} names shard {shard}, which is missing")
        state.update(loader(shard_path))
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise ConversionError(f"{path}: tensors listed in the index but absent from the shards: {missing}")
    return state


def load_foreign_state(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of a foreign checkpoint directory (safetensors preferred), as float32 where
    it was floating point, with ``torch.compile``'s ``_orig_mod.`` prefixes removed; and the file."""
    candidates = [
        (directory / "model.safetensors", _load_safetensors),
        (directory / "model.safetensors.index.json", lambda p: _load_index(p, _load_safetensors)),
        (directory / "pytorch_model.bin", _load_bin),
        (directory / "pytorch_model.bin.index.json", lambda p: _load_index(p, _load_bin)),
    ]
    for path, loader in candidates:
        if path.is_file():
            state = loader(path)
            break
    else:
        raise ConversionError(
            f"{directory} has no weights: expected one of model.safetensors, pytorch_model.bin "
            "(or their .index.json for sharded checkpoints)"
        )
    out = {}
    for k, v in state.items():
        name = k.replace("_orig_mod.", "")  # torch.compile wraps modules; the prefix may sit anywhere
        if name in out:
            raise ConversionError(f"{path}: tensor {name} appears twice (with and without '_orig_mod.')")
        out[name] = v.float() if v.is_floating_point() else v
    for k, v in out.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ConversionError(f"{path}: tensor {k} holds NaN or infinite values (damaged checkpoint?)")
    return out, path


def take(state: dict[str, torch.Tensor], used: set[str], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``state[name]``, checked against ``shape``; marks it used. Errors name the tensor."""
    if name not in state:
        raise ConversionError(f"missing tensor {name} (expected shape {shape})")
    t = state[name]
    if tuple(t.shape) != tuple(shape):
        raise ConversionError(
            f"shape mismatch for tensor {name}: checkpoint {tuple(t.shape)}, expected {shape}"
        )
    used.add(name)
    return t


def check_all_used(state: dict[str, torch.Tensor], used: set[str], source: str) -> None:
    unused = sorted(k for k in state if k not in used)
    if unused:
        raise ConversionError(
            f"{source}: unused tensors (not part of the architecture in the config):\n"
            + "\n".join(f"  - {k} {tuple(state[k].shape)}" for k in unused)
        )
