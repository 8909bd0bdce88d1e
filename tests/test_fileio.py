"""ultracram.fileio: the one persistence layer (atomic files and directories, sha256, run
identity), including kills at the worst moments."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ultracram import fileio
from ultracram.errors import RunMismatchError, UltracramError
from ultracram.fileio import (
    atomic_replace_dir,
    atomic_write_path,
    atomic_write_text,
    check_same_run,
    recover_dir,
    sha256_bytes,
    sha256_file,
)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_tree(files: dict[str, str]):
    def build(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)

    return build


def tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


# --------------------------------------------------------------------------------------------
# sha256
# --------------------------------------------------------------------------------------------


def test_sha256_helpers_are_the_only_ones(tmp_path):
    data = os.urandom(3 << 20)  # more than one read block
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f") == expected == sha256_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=7) == expected

    from ultracram import checkpoint
    from ultracram.data import corpus

    assert checkpoint.sha256_file is sha256_file  # old import paths keep working
    assert corpus.file_sha256 is sha256_file


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def test_atomic_write_removes_stale_temporaries_of_dead_processes(tmp_path):
    target = tmp_path / "a.json"
    stale = tmp_path / f".a.json.tmp-{dead_pid()}"
    stale.write_text("half")
    live = tmp_path / f".a.json.tmp-{os.getppid()}"  # the parent process is alive
    live.write_text("in progress")
    other = tmp_path / ".b.json.tmp-1"
    other.write_text("another file's")
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not stale.exists()
    assert live.exists() and other.exists()


def test_atomic_write_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "tokenizer.json"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("")  # a writer killed half-way would leave this
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_path(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_save_tokenizer_never_leaves_an_empty_file(tmp_path, monkeypatch):
    from tokenizers import Tokenizer

    from ultracram.data.tokenizer import save_tokenizer, train_tokenizer

    tok = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=40, min_frequency=1)
    path = save_tokenizer(tok, tmp_path / "tok" / "tokenizer.json")
    before = path.read_bytes()
    assert Tokenizer.from_file(str(path)).get_vocab_size() == tok.get_vocab_size()

    class Killed(Exception):
        pass

    def save_then_die(self, p, pretty=True):
        Path(p).write_bytes(b"")
        raise Killed

    monkeypatch.setattr(Tokenizer, "save", save_then_die)
    with pytest.raises(Killed):
        save_tokenizer(tok, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]


def test_metrics_truncate_is_atomic_and_drops_a_cut_row(tmp_path):
    from ultracram.train.metrics import MetricsLogger, read_metrics

    m = MetricsLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        m.log({"step": step, "tokens": 10 * step, "loss": 1.0 / step})
    m.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("4,40,0.5,0.1,1.2e")  # a kill in the middle of a row
    MetricsLogger(tmp_path, resume_step=2, tensorboard=False).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv")] == [1, 2]
    assert not list(tmp_path.glob(".metrics.csv.tmp-*"))


# --------------------------------------------------------------------------------------------
# directories
# --------------------------------------------------------------------------------------------


def test_atomic_replace_dir_creates_and_replaces(tmp_path):
    target = tmp_path / "sub" / "ckpt"
    assert atomic_replace_dir(target, write_tree({"a.txt": "1", "d/b.txt": "2"})) == target
    assert tree(target) == {"a.txt": "1", "d/b.txt": "2"}
    atomic_replace_dir(target, write_tree({"c.txt": "3"}))
    assert tree(target) == {"c.txt": "3"}  # replaced, not merged
    assert sorted(p.name for p in target.parent.iterdir()) == ["ckpt"]


def test_atomic_replace_dir_leaves_target_untouched_when_build_fails(tmp_path):
    target = tmp_path / "ckpt"
    atomic_replace_dir(target, write_tree({"a.txt": "old"}))

    def broken(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise ValueError("vocabulary mismatch")

    with pytest.raises(ValueError, match="vocabulary mismatch"):
        atomic_replace_dir(target, broken)
    assert tree(target) == {"a.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_fallback_swap_restores_the_old_copy_when_the_second_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    atomic_replace_dir(target, write_tree({"a.txt": "old"}))
    monkeypatch.setattr(fileio, "exchange_paths", lambda a, b: False)  # no renameat2
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".ckpt.tmp-"):
            raise OSError("simulated failure between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(OSError, match="between the renames"):
        atomic_replace_dir(target, write_tree({"a.txt": "new"}))
    assert tree(target) == {"a.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    atomic_replace_dir(target, write_tree({"a.txt": "new"}))  # the fallback path on its own
    assert tree(target) == {"a.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
def test_exchange_paths_swaps_atomically(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y").write_text("b")
    if not fileio.exchange_paths(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this C library or file system cannot exchange")
    assert (tmp_path / "a" / "y").read_text() == "b"
    assert (tmp_path / "b" / "x").read_text() == "a"


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_kill_during_build_keeps_the_old_directory(tmp_path):
    target = tmp_path / "ckpt"
    atomic_replace_dir(target, write_tree({"a.txt": "old"}))
    child = run_child(f"""
        import os, signal
        from pathlib import Path
        from ultracram.fileio import atomic_replace_dir

        def build(tmp):
            (tmp / "a.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_replace_dir(Path({str(target)!r}), build)
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert tree(target) == {"a.txt": "old"}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt.tmp-")
    recover_dir(target)  # the dead writer's half-built directory goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert tree(target) == {"a.txt": "old"}


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_kill_between_the_fallback_renames_is_recovered(tmp_path):
    target = tmp_path / "ckpt"
    atomic_replace_dir(target, write_tree({"a.txt": "old"}))
    child = run_child(f"""
        import os, signal
        from pathlib import Path
        from ultracram import fileio

        fileio.exchange_paths = lambda a, b: False  # as where renameat2 is missing
        real_replace = os.replace

        def replace(src, dst):
            if Path(src).name.startswith(".ckpt.tmp-"):  # the old copy is aside, the new not yet in
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)

        fileio.os.replace = replace

        def build(tmp):
            (tmp / "a.txt").write_text("new")

        fileio.atomic_replace_dir(Path({str(target)!r}), build)
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not target.exists()  # the worst moment: only the old copy, aside
    assert any(p.name.startswith(".ckpt.old-") for p in tmp_path.iterdir())
    recover_dir(target)
    assert tree(target) == {"a.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_replace_dir_recovers_first(tmp_path):
    target = tmp_path / "ckpt"
    old = tmp_path / f".ckpt.old-{dead_pid()}"
    old.mkdir()
    (old / "a.txt").write_text("old")
    seen = {}

    def build(tmp: Path) -> None:
        seen["before"] = tree(target) if target.exists() else None
        (tmp / "a.txt").write_text("new")

    atomic_replace_dir(target, build)
    assert seen["before"] == {"a.txt": "old"}  # restored before the new build
    assert tree(target) == {"a.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_checkpoint_replaces_through_atomic_replace_dir(tmp_path, monkeypatch):
    import torch

    from ultracram.checkpoint import load_checkpoint, save_checkpoint
    from ultracram.config import get_preset
    from ultracram.model import build_model

    torch.manual_seed(0)
    model = build_model(get_preset("bert-tiny"), "mlm")
    save_checkpoint(model, tmp_path / "ckpt")
    calls = []
    real = fileio.atomic_replace_dir

    def spy(target, build):
        calls.append(Path(target))
        return real(target, build)

    monkeypatch.setattr("ultracram.checkpoint.atomic_replace_dir", spy)
    save_checkpoint(model, tmp_path / "ckpt")
    assert calls == [tmp_path / "ckpt"]
    load_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# --------------------------------------------------------------------------------------------
# check_same_run
# --------------------------------------------------------------------------------------------


def test_check_same_run_records_then_accepts_the_same_run(tmp_path):
    path = tmp_path / "run" / "run.json"
    ident = {"preset": "bert-tiny", "settings": {"lr": 4e-5, "tasks": ("rte", "mrpc")}}
    check_same_run(path, ident, what="fine-tuning run", hint="use another --out")
    assert json.loads(path.read_text()) == {
        "preset": "bert-tiny",
        "settings": {"lr": 4e-5, "tasks": ["rte", "mrpc"]},
    }
    check_same_run(path, ident, what="fine-tuning run", hint="use another --out")  # tuples == lists


def test_check_same_run_names_every_differing_key(tmp_path):
    path = tmp_path / "run.json"
    check_same_run(
        path, {"preset": "bert-tiny", "settings": {"lr": 4e-5, "seed": 0, "old": 1}}, what="w", hint="h"
    )
    with pytest.raises(RunMismatchError) as e:
        check_same_run(path, {"preset": "bert-tiny", "settings": {"lr": 1e-3, "seed": 0, "new": "x"}},
                       what="fine-tuning run", hint="use another --out directory")  # fmt: skip
    msg = str(e.value)
    assert isinstance(e.value, UltracramError) and isinstance(e.value, ValueError)
    assert "\n" not in msg
    assert msg.startswith(f"{path} records a fine-tuning run with different settings")
    assert "settings.lr: 4e-05 -> 0.001" in msg
    assert 'settings.new: (absent) -> "x"' in msg and "settings.old: 1 -> (absent)" in msg
    assert "preset" not in msg and "seed" not in msg
    assert msg.endswith("; use another --out directory")
    assert json.loads(path.read_text())["settings"]["lr"] == 4e-5  # the record is not overwritten


def test_check_same_run_record_is_written_but_not_compared(tmp_path):
    path = tmp_path / "study.json"
    check_same_run(
        path, {"settings": {"a": 1}}, what="study", hint="h", record={"environment": {"torch": "1"}}
    )
    assert json.loads(path.read_text()) == {"environment": {"torch": "1"}, "settings": {"a": 1}}
    check_same_run(
        path, {"settings": {"a": 1}}, what="study", hint="h", record={"environment": {"torch": "2"}}
    )
    with pytest.raises(RunMismatchError, match=r"settings\.a: 1 -> 2"):
        check_same_run(path, {"settings": {"a": 2}}, what="study", hint="h", record={"environment": {}})


def test_check_same_run_unreadable_record(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{not json")
    with pytest.raises(RunMismatchError, match=r"run\.json cannot be read as the record of a study .*; hint"):
        check_same_run(path, {"a": 1}, what="study", hint="hint")
