"""Training-state files: exact round trip, atomicity, keep-last, no pickles, clear errors."""

import json
import random

import numpy as np
import pytest
import torch

from ultracram.model import build_model
from ultracram.train.state import (
    TrainStateError,
    capture_rng_state,
    latest_state,
    list_states,
    load_train_state,
    restore_rng_state,
    save_train_state,
    state_step,
)


def _assert_same(a, b):
    if isinstance(a, dict):  # an OrderedDict comes back as a plain dict, in the same order
        assert isinstance(b, dict)
    else:
        assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def _optimizer_state():
    model = build_model("crammed-bert-tiny", "mlm")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(5, 4096, (2, 16))
    model(ids, labels=ids).loss.backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    return model, opt, sched


def test_round_trip_is_exact(tmp_path):
    model, opt, sched = _optimizer_state()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),  # int keys, 0-dim "step" tensors, param_groups lists
        "scheduler": sched.state_dict(),
        "rng": capture_rng_state(),
        "data": {"step": 7, "epoch": 0},
        "meta": {"name": "x", "ratio": 0.25, "none": None, "flag": True, "nan": float("nan"),
                 "tuple": (1, "a"), "__dunder": 3, 5: "int key"},
        "array": np.arange(6, dtype=np.uint16).reshape(2, 3),
        "bf16": torch.randn(3).bfloat16(),
    }  # fmt: skip
    path = save_train_state(tmp_path, 12, state)
    assert path.name == "state-000000012.safetensors" and state_step(path) == 12
    loaded = load_train_state(path)
    _assert_same(state, loaded)
    # The loaded dicts restore the objects exactly.
    model2, opt2, sched2 = _optimizer_state()
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    _assert_same(opt.state_dict(), opt2.state_dict())


def test_tied_weights_stored_once(tmp_path):
    model = build_model("crammed-bert-tiny", "mlm")
    sd = model.state_dict()
    assert sd["encoder.embeddings.word.weight"].data_ptr() == sd["mlm_head.decoder.weight"].data_ptr()
    path = save_train_state(tmp_path, 0, {"model": sd})
    loaded = load_train_state(path)["model"]
    assert loaded["encoder.embeddings.word.weight"] is loaded["mlm_head.decoder.weight"]
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) == len({t.data_ptr() for t in sd.values()})


def test_rng_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_train_state(tmp_path, 0, {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_train_state(latest_state(tmp_path))["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_keep_last_and_latest(tmp_path):
    assert latest_state(tmp_path / "missing") is None
    for step in (5, 100, 20, 1000):
        save_train_state(tmp_path, step, {"step": step}, keep_last=2)
    assert [state_step(p) for p in list_states(tmp_path)] == [100, 1000]
    assert load_train_state(latest_state(tmp_path)) == {"step": 1000}
    save_train_state(tmp_path, 2000, {"step": 2000}, keep_last=None)
    assert len(list_states(tmp_path)) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_failed_write_keeps_previous_state(tmp_path):
    save_train_state(tmp_path, 1, {"x": torch.ones(2)})
    with pytest.raises(TrainStateError, match="cannot store a object"):
        save_train_state(tmp_path, 2, {"x": object()})
    assert [state_step(p) for p in list_states(tmp_path)] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(TrainStateError, match="no training state"):
        load_train_state(tmp_path / "nope.safetensors")
    path = save_train_state(tmp_path, 3, {"x": torch.ones(1000)})
    truncated = tmp_path / "state-000000004.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TrainStateError, match="truncated or damaged"):
        load_train_state(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04pickle-ish bytes")
    with pytest.raises(TrainStateError, match=str(garbage.name)):
        load_train_state(garbage)
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(1)}, str(other))
    with pytest.raises(TrainStateError, match="not an ultracram training state"):
        load_train_state(other)


def test_header_is_plain_json(tmp_path):
    """The non-tensor part is readable JSON (no pickle anywhere in the file)."""
    path = save_train_state(tmp_path, 0, {"meta": {"a": [1, 2]}, "t": torch.zeros(1)})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    tree = json.loads(header["__metadata__"]["ultracram_train_state"])["tree"]
    assert tree == {"meta": {"a": [1, 2]}, "t": {"__tensor__": "t"}}


def test_a_killed_writers_temporaries_are_swept(tmp_path):
    """A kill while ``state-9`` was written leaves ``.state-000000009.safetensors.tmp-PID``;
    the next save removes it (its process is gone) but never a live writer's file."""
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".state-000000009.safetensors.tmp-{dead_pid}"
    stale.write_bytes(b"half a state")
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # another live writer
    try:
        live = tmp_path / f".state-000000010.safetensors.tmp-{writer.pid}"
        live.write_bytes(b"being written")
        save_train_state(tmp_path, 12, {"step": 12})
        assert not stale.exists() and live.exists()
        live.unlink()
    finally:
        writer.kill()
    assert [p.name for p in list_states(tmp_path)] == ["state-000000012.safetensors"]
