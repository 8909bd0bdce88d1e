"""Atomic, pickle-free training state: everything a run needs to continue exactly.

A training state is one nested dict (model / optimizer / scheduler state dicts, RNG states,
data position, elapsed budget, any JSON-able metadata). ``save_train_state`` writes it as one
``state-<step>.safetensors`` file: every tensor goes into the safetensors body, and the rest
of the structure (with each tensor replaced by a reference to its key) goes into the
safetensors header as JSON. Nothing is ever unpickled when loading, so a state file from an
untrusted source can at worst fail to load.

Writes are atomic (``ultracram.fileio``: temporary name, fsync, rename, fsync of the
directory): a kill at any moment leaves the previous state or the new one, never half of one.
Only the newest ``keep_last`` states are kept.

    path = save_train_state(run / "states", step, {"model": m.state_dict(), "step": step, ...})
    state = load_train_state(latest_state(run / "states"))

Values that survive the round trip: tensors (any dtype safetensors knows), numpy arrays,
dicts (with str, int, float or bool keys), lists, tuples, str, int, float, bool and None.
Tensors that share memory (tied weights) are stored once and come back as one tensor.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ultracram.errors import UltracramError
from ultracram.fileio import atomic_write_path, remove_stale_temporaries

STATE_PREFIX = "state-"
STATE_SUFFIX = ".safetensors"
_META_KEY = "ultracram_train_state"
_FORMAT_VERSION = 1
_STATE_NAME = re.compile(rf"^{STATE_PREFIX}(\d+){re.escape(STATE_SUFFIX)}$")


class TrainStateError(UltracramError, RuntimeError):
    """A training state cannot be saved or loaded; the message names the file and why."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def save_train_state(
    directory: str | Path, step: int, state: dict[str, Any], *, keep_last: int | None = 3
) -> Path:
    """Write ``state`` atomically to ``directory/state-<step>.safetensors`` and return its path.

    Afterwards only the newest ``keep_last`` states in ``directory`` remain (``None`` or 0
    keeps all). Tensors are copied to CPU; ``state`` itself is not modified.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    tree = _encode(state, "", tensors, seen)
    meta = json.dumps({"format_version": _FORMAT_VERSION, "step": step, "tree": tree})
    path = directory / state_file_name(step)
    atomic_write_path(path, lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: meta}))
    remove_stale_temporaries(directory, STATE_PREFIX)  # states a killed run was writing
    if keep_last:
        for old in list_states(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load_train_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by ``save_train_state``: the same nested dict, tensors on
    ``map_location``. Raises ``TrainStateError`` naming the file if it is missing, truncated
    or not a training state."""
    path = Path(path)
    if not path.is_file():
        raise TrainStateError(f"no training state at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            header = f.metadata() or {}
            if _META_KEY not in header:
                raise TrainStateError(f"{path} is a safetensors file but not an ultracram training state")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainStateError(
            f"{path} cannot be read as a training state (truncated or damaged?): {e}"
        ) from e
    try:
        meta = json.loads(header[_META_KEY])
        return _decode(meta["tree"], tensors)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TrainStateError(f"{path}: malformed training-state header: {e}") from e


def read_state_entry(path: str | Path, key: str) -> Any:
    """One top-level entry of a training state that holds no tensors (e.g. ``config``, the
    settings), read from the file's header alone; None if the state has no such entry."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
        entry = meta["tree"].get(key)
        return None if entry is None else _decode(entry, {})
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise TrainStateError(f"{path}: cannot read the training state's {key!r} entry: {e}") from e


def latest_state(directory: str | Path) -> Path | None:
    """The state with the highest step in ``directory``, or None if there is none."""
    states = list_states(directory)
    return states[-1] if states else None


def list_states(directory: str | Path) -> list[Path]:
    """Every ``state-<step>.safetensors`` in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := _STATE_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def state_step(path: str | Path) -> int:
    """The step a state file was saved at (from its name)."""
    m = _STATE_NAME.match(Path(path).name)
    if not m:
        raise TrainStateError(f"{path} is not named {STATE_PREFIX}<step>{STATE_SUFFIX}")
    return int(m[1])


def state_file_name(step: int) -> str:
    return f"{STATE_PREFIX}{step:09d}{STATE_SUFFIX}"


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if present) CUDA generator states, storable as is."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    rng: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": np_state,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Undo ``capture_rng_state`` (after a ``load_train_state`` round trip)."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])


# --------------------------------------------------------------------------------------------
# Encoding: JSON tree + flat tensor dict
# --------------------------------------------------------------------------------------------
# JSON cannot hold tuples, non-string keys or tensors, so those become small tagged objects:
#   {"__tensor__": key}   {"__ndarray__": key}   {"__tuple__": [...]}   {"__items__": [[k, v], ...]}
# Plain dicts whose keys are all strings (and none starts with "__") stay plain dicts.


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> Any:
    if isinstance(value, torch.Tensor):
        return {"__tensor__": _store(value.detach(), path, tensors, seen)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _store(torch.from_numpy(np.ascontiguousarray(value)), path, tensors, seen)}
    if isinstance(value, np.generic):
        return _encode(value.item(), path, tensors, seen)
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{path}.{k}", tensors, seen) for k, v in value.items()}
        for k in value:
            if not isinstance(k, str | int | float | bool) or k is None:
                raise TrainStateError(
                    f"cannot store dict key {k!r} at {path or '<root>'}: keys must be str/int/float/bool"
                )
        return {"__items__": [[k, _encode(v, f"{path}.{k}", tensors, seen)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors, seen) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", tensors, seen) for i, v in enumerate(value)]
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}  # JSON has no nan/inf
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TrainStateError(
        f"cannot store a {type(value).__name__} at {path or '<root>'}: a training state holds tensors, "
        "numpy arrays, dicts, lists, tuples, str, int, float, bool and None"
    )


def _store(t: torch.Tensor, path: str, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> str:
    # The same view of the same memory (tied weights) is stored once; any other tensor that
    # shares memory is copied, since safetensors refuses overlapping tensors.
    if t.device.type != "meta" and t.numel():
        ident = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
        if ident in seen:
            return seen[ident]
    else:
        ident = None
    key = path.lstrip(".") or "root"
    while key in tensors:
        key += "_"
    stored = t.to("cpu", copy=True).contiguous()
    tensors[key] = stored
    if ident is not None:
        seen[ident] = key
    return key


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) == 1:
        ((tag, payload),) = tree.items()
        if tag == "__tensor__":
            return tensors[payload]
        if tag == "__ndarray__":
            return tensors[payload].cpu().numpy()
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in payload)
        if tag == "__items__":
            return {k: _decode(v, tensors) for k, v in payload}
        if tag == "__float__":
            return float(payload)
    return {k: _decode(v, tensors) for k, v in tree.items()}


__all__ = [
    "TrainStateError",
    "capture_rng_state",
    "latest_state",
    "list_states",
    "load_train_state",
    "read_state_entry",
    "restore_rng_state",
    "save_train_state",
    "state_step",
]
