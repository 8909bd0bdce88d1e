"""Bad inputs and faults for `tokenizer train`, `data prepare`, `export` and `import`: each ends in a
one-line error that names the file or flag, with no traceback, and leaves every file that existed
before byte-identical (the issue "nothing lost, nothing silently wrong").

Each row builds its inputs in ``tmp_path``, snapshots every file's bytes there, runs the CLI entry
``ultracram.cli.main`` and checks the exit code, the message and the snapshot.
"""

import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ultracram.checkpoint import save_checkpoint
from ultracram.cli import main
from ultracram.data.corpus import TokenShards, prepare_corpus
from ultracram.data.tokenizer import save_tokenizer, train_tokenizer
from ultracram.model import build_model

SEQ = 16
WORDS = [
    "the",
    "city",
    "river",
    "north",
    "south",
    "house",
    "music",
    "film",
    "school",
    "team",
    "game",
    "war",
    "king",
    "church",
    "road",
    "station",
    "language",
    "island",
    "village",
    "party",
    "army",
    "year",
    "world",
    "people",
    "time",
    "family",
    "book",
    "water",
    "light",
]


def _text(n_docs: int = 40, seed: int = 0) -> str:
    docs = []
    for d in range(n_docs):
        words = [WORDS[(d * 7 + i * (3 + seed)) % len(WORDS)] for i in range(30)]
        docs.append(" ".join(words) + ".")
    return "\n\n".join(docs) + "\n"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny corpus, its tokenizer, a finished prepare and a bert-tiny / fnet-tiny checkpoint,
    built once outside the rows' ``tmp_path`` (rows copy what they need)."""
    d = tmp_path_factory.mktemp("assets")
    (d / "text.txt").write_text(_text(), encoding="utf-8")
    save_tokenizer(train_tokenizer([_text()], vocab_size=120, min_frequency=1), d / "tok" / "tokenizer.json")
    save_tokenizer(
        train_tokenizer([_text(seed=1)], vocab_size=110, min_frequency=1), d / "tok2" / "tokenizer.json"
    )
    prepare_corpus([d / "text.txt"], d / "prepared", d / "tok" / "tokenizer.json", SEQ, workers=0,
                   max_token_ratio=1.0)  # fmt: skip
    torch.manual_seed(0)
    for preset in ("bert-tiny", "fnet-tiny"):
        save_checkpoint(build_model(preset, "mlm"), d / preset)
    return {name: d / name for name in ("text.txt", "tok", "tok2", "prepared", "bert-tiny", "fnet-tiny")}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return rc, out.out + out.err


# Each row: (tmp_path, assets) -> (argv, substrings the message must hold).
Row = Callable[[Path, dict], tuple[list[str], list[str]]]


def _tok(t: Path, a: dict, *extra: str, out: Path | None = None) -> list[str]:
    text = t / "in.txt"
    if not text.exists():
        shutil.copy(a["text.txt"], text)
    return ["tokenizer", "train", "--input", str(text), "--out", str(out or t / "tokout"), "--vocab_size", "100",
            "--max_documents", "5", *extra]  # fmt: skip


def _prep(t: Path, a: dict, *extra: str, inputs: list[Path] | None = None, out: Path | None = None,
          tokenizer: Path | None = None) -> list[str]:  # fmt: skip
    if inputs is None:
        inputs = [t / "in.txt"]
        if not inputs[0].exists():
            shutil.copy(a["text.txt"], inputs[0])
    return ["data", "prepare", "--input", *map(str, inputs), "--tokenizer", str(tokenizer or a["tok"] / "tokenizer.json"),
            "--out", str(out or t / "data"), "--seq_len", str(SEQ), "--workers", "0", "--max_token_ratio", "1.0",
            *extra]  # fmt: skip


def _finished(t: Path, a: dict) -> Path:
    shutil.copytree(a["prepared"], t / "data")
    (t / "data" / "notes.txt").write_text("mine\n")  # not the prepare's: must survive anything
    return t / "data"


def _ckpt(t: Path, a: dict, preset: str = "bert-tiny") -> Path:
    shutil.copytree(a[preset], t / "ckpt")
    return t / "ckpt"


def _file(path: Path, data: bytes = b"precious\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _run_dir(t: Path) -> Path:
    _file(t / "run" / "last.ckpt", b"weights")
    _file(t / "run" / "metrics.csv", b"step,loss\n1,2.0\n")
    return t / "run"


def _earlier_export(t: Path, a: dict) -> Path:
    from ultracram.interop.export import export_checkpoint

    return export_checkpoint(_ckpt(t, a), t / "hf")


def _earlier_import(t: Path, a: dict) -> Path:
    from ultracram.interop.importer import import_checkpoint

    hf = _earlier_export(t, a)
    return import_checkpoint(hf, t / "back")


ROWS: dict[str, Row] = {
    # tokenizer train
    "tok-out-is-a-file": lambda t, a: (
        _tok(t, a, out=_file(t / "out.txt")),
        ["--out", "out.txt", "not a directory"],
    ),
    "tok-out-parent-is-a-file": lambda t, a: (_tok(t, a, out=_file(t / "f") / "sub"), ["--out", "is a file"]),
    "tok-existing-tokenizer": lambda t, a: (
        _tok(t, a, out=_file(t / "tk" / "tokenizer.json").parent),
        ["tokenizer.json", "--overwrite"],
    ),
    "tok-missing-input": lambda t, a: (
        [*_tok(t, a)[:3], str(t / "nope.txt"), *_tok(t, a)[4:]],
        ["nope.txt", "no such file"],
    ),
    "tok-dir-without-text": lambda t, a: (
        [*_tok(t, a)[:3], str(_file(t / "d" / "x.json").parent), *_tok(t, a)[4:]],
        ["directory has no text files"],
    ),
    "tok-non-utf8": lambda t, a: (
        [*_tok(t, a)[:3], str(_file(t / "bad.txt", b"\x80abc\n")), *_tok(t, a)[4:]],
        ["bad.txt: line 1"],
    ),
    "tok-vocab-too-small": lambda t, a: ([*_tok(t, a)[:-4], "--vocab_size", "3"], ["vocab_size", "3"]),
    "tok-max-documents-zero": lambda t, a: (_tok(t, a, "--max_documents", "0"), ["--max_documents", "0"]),
    # data prepare
    "prep-workers-negative": lambda t, a: (_prep(t, a, "--workers", "-1"), ["--workers", "-1"]),
    "prep-shard-sequences-zero": lambda t, a: (_prep(t, a, "--shard_sequences", "0"), ["--shard_sequences"]),
    "prep-seq-len-2": lambda t, a: (_prep(t, a, "--seq_len", "2"), ["seq_len", "2"]),
    "prep-validation-fraction-negative": lambda t, a: (
        _prep(t, a, "--validation_fraction", "-0.1"),
        ["--validation_fraction must be in [0, 0.5)", "-0.1"],
    ),
    "prep-validation-fraction-half": lambda t, a: (
        _prep(t, a, "--validation_fraction", "0.5"),
        ["--validation_fraction must be in [0, 0.5)", "0.5"],
    ),
    "prep-validation-fraction-nan": lambda t, a: (
        _prep(t, a, "--validation_fraction", "nan"),
        ["--validation_fraction", "nan"],  # the parser's own refusal; prepare_corpus refuses NaN too
    ),
    "prep-validation-fraction-not-a-number": lambda t, a: (
        _prep(t, a, "--validation_fraction", "ten"),
        ["validation_fraction", "ten"],
    ),
    "prep-out-is-a-file": lambda t, a: (_prep(t, a, out=_file(t / "o.bin")), ["--out", "o.bin"]),
    "prep-out-parent-is-a-file": lambda t, a: (
        _prep(t, a, out=_file(t / "f") / "sub"),
        ["--out", "is a file"],
    ),
    "prep-missing-tokenizer": lambda t, a: (
        _prep(t, a, tokenizer=t / "none.json"),
        ["none.json", "no such tokenizer"],
    ),
    "prep-corrupt-tokenizer": lambda t, a: (
        _prep(t, a, tokenizer=_file(t / "bad.json", b"{not json")),
        ["bad.json", "cannot load tokenizer"],
    ),
    "prep-empty-corpus": lambda t, a: (
        _prep(t, a, inputs=[_file(t / "empty.txt", b"\n\n")]),
        ["empty.txt", "empty"],
    ),
    "prep-corrupt-gz": lambda t, a: (
        _prep(t, a, inputs=[_file(t / "x.txt.gz", b"not gzip")]),
        ["x.txt.gz", "cannot decompress"],
    ),
    "prep-too-short-corpus": lambda t, a: (
        _prep(t, a, "--seq_len", "512", inputs=[_file(t / "s.txt", b"a b c\n")]),
        ["s.txt", "no sequences"],
    ),
    "prep-finished-other-settings": lambda t, a: (
        _prep(t, a, "--seq_len", "32", out=_finished(t, a)),
        ["manifest.json", "seq_len", "--overwrite"],
    ),
    "prep-finished-overwrite-bad-input": lambda t, a: (
        _prep(
            t,
            a,
            "--overwrite",
            out=_finished(t, a),
            inputs=[_file(t / "x.txt.gz", gzip.compress(b"ok\n")[:9])],
        ),
        ["x.txt.gz"],
    ),
    "prep-foreign-manifest": lambda t, a: (
        _prep(t, a, out=_file(t / "o" / "manifest.json", b"[1, 2]").parent),
        ["manifest.json", "not the manifest"],
    ),
    "prep-foreign-tokenizer": lambda t, a: (
        _prep(
            t, a, out=_file(t / "o" / "tokenizer.json", (a["tok2"] / "tokenizer.json").read_bytes()).parent
        ),
        ["tokenizer.json", "--out"],
    ),
    # export
    "export-out-is-checkpoint": lambda t, a: (
        ["export", "--checkpoint", str(_ckpt(t, a)), "--out", str(t / "ckpt")],
        ["--checkpoint", "ckpt"],
    ),
    "export-out-inside-checkpoint": lambda t, a: (
        ["export", "--checkpoint", str(_ckpt(t, a)), "--out", str(t / "ckpt" / "hf"), "--overwrite"],
        ["inside"],
    ),
    "export-out-holds-checkpoint": lambda t, a: (
        ["export", "--checkpoint", str(_ckpt(t, a)), "--out", str(t), "--overwrite"],
        ["holds --checkpoint"],
    ),
    "export-out-is-a-run": lambda t, a: (
        ["export", "--checkpoint", str(_ckpt(t, a)), "--out", str(_run_dir(t)), "--overwrite"],
        ["run", "not empty"],
    ),
    "export-earlier-export": lambda t, a: (
        ["export", "--checkpoint", str(t / "ckpt"), "--out", str(_earlier_export(t, a))],
        ["hf", "--overwrite"],
    ),
    "export-missing-checkpoint": lambda t, a: (
        ["export", "--checkpoint", str(t / "nock"), "--out", str(t / "hf")],
        ["nock"],
    ),
    # import
    "import-out-is-source": lambda t, a: (
        ["import", "--from", str(_earlier_export(t, a)), "--out", str(t / "hf")],
        ["--from", "hf"],
    ),
    "import-out-is-a-run": lambda t, a: (
        ["import", "--from", str(_earlier_export(t, a)), "--out", str(_run_dir(t)), "--overwrite"],
        ["not empty"],
    ),
    "import-earlier-import": lambda t, a: (
        ["import", "--from", str(t / "hf"), "--out", str(_earlier_import(t, a))],
        ["back", "--overwrite"],
    ),
    "import-no-config": lambda t, a: (
        ["import", "--from", str(_file(t / "src" / "x.bin").parent), "--out", str(t / "uc")],
        ["config.json"],
    ),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_is_one_clear_error_and_changes_nothing(name, tmp_path, assets, capsys):
    argv, needles = ROWS[name](tmp_path, assets)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    rc, text = _run(argv, capsys)
    assert rc != 0, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, (needle, text)
    after = _snapshot(tmp_path)
    changed = [p for p, data in before.items() if after.get(p) != data]
    assert not changed, f"{name}: files changed or removed: {changed}"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
@pytest.mark.parametrize("command", ["tokenizer", "data"])
def test_unwritable_out_is_refused_before_work(command, tmp_path, assets, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = locked / "out"
        argv = _tok(tmp_path, assets, out=out) if command == "tokenizer" else _prep(tmp_path, assets, out=out)
        rc, text = _run(argv, capsys)
    finally:
        locked.chmod(0o700)
    assert rc == 1 and "not writable" in text and "Traceback" not in text


# ---------------------------------------------------------------------------------------------
# What the guards still allow
# ---------------------------------------------------------------------------------------------


def test_prepare_overwrite_swaps_only_on_success(tmp_path, assets, capsys):
    out = _finished(tmp_path, assets)
    old_seq = TokenShards(out).seq_len
    assert main(_prep(tmp_path, assets, "--seq_len", "32", out=out)) == 1  # refused without --overwrite
    assert TokenShards(out).seq_len == old_seq
    assert main(_prep(tmp_path, assets, "--seq_len", "32", "--overwrite", out=out)) == 0
    assert TokenShards(out).seq_len == 32
    assert (out / "notes.txt").read_text() == "mine\n"  # a file that is not the prepare's is kept
    assert sorted(p.name for p in out.glob("shard_*")) == [
        s["file"] for s in TokenShards(out).manifest["shards"]
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.")]  # no leftovers
    # the same settings again: nothing to do, the shards are not rewritten
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(_prep(tmp_path, assets, "--seq_len", "32", out=out)) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # ... unless a shard is damaged: then it is rebuilt (no --overwrite needed, same settings)
    shard = sorted(out.glob("shard_*"))[0]
    good = shard.read_bytes()
    shard.write_bytes(b"\0" * len(good))
    assert main(_prep(tmp_path, assets, "--seq_len", "32", out=out)) == 0
    assert shard.read_bytes() == good


def test_tokenizer_overwrite(tmp_path, assets, capsys):
    out = tmp_path / "tokout"
    assert main(_tok(tmp_path, assets, out=out)) == 0
    first = (out / "tokenizer.json").read_bytes()
    assert main(_tok(tmp_path, assets, out=out)) == 1
    assert (out / "tokenizer.json").read_bytes() == first
    assert main(_tok(tmp_path, assets, "--overwrite", "--no-lowercase", out=out)) == 0
    assert (out / "tokenizer.json").read_bytes() != first


@pytest.mark.parametrize("preset", ["bert-tiny", "fnet-tiny"])
def test_export_overwrite_and_remote_code_note(preset, tmp_path, assets, capsys):
    ckpt = _ckpt(tmp_path, assets, preset)
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert ("trust_remote_code=True" in out) == (preset != "bert-tiny")
    assert (
        json.loads((tmp_path / "hf" / ".ultracram-export.json").read_text())["command"] == "ultracram export"
    )
    (tmp_path / "hf" / "stale.txt").write_text("x")
    assert main([*argv, "--overwrite"]) == 0
    assert not (tmp_path / "hf" / "stale.txt").exists()
    (tmp_path / "empty").mkdir()  # an empty directory is fine without --overwrite
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "empty")]) == 0


def test_import_overwrite(tmp_path, assets, capsys):
    hf = _earlier_export(tmp_path, assets)
    back = tmp_path / "back"
    assert main(["import", "--from", str(hf), "--out", str(back)]) == 0
    assert main(["import", "--from", str(hf), "--out", str(back), "--overwrite"]) == 0
    assert json.loads((back / "config.json").read_text())["extra"]["imported_from"] == str(hf.resolve())


def test_a_killed_export_overwrite_leaves_the_earlier_export_intact(tmp_path, assets):
    """SIGKILL while `export --overwrite` writes the new weights: the earlier export is untouched
    (byte for byte), and the same command run again completes."""
    import signal
    import subprocess
    import sys

    hf = _earlier_export(tmp_path, assets)
    before = {p.relative_to(hf): p.read_bytes() for p in hf.rglob("*") if p.is_file()}
    script = (
        "import os, signal, sys\n"
        "import ultracram.interop.export as export\n"
        "real = export.save_file\n"
        "def dying(tensors, path, **kw):\n"
        "    real(tensors, path, **kw)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # after the weights, before the swap\n"
        "export.save_file = dying\n"
        "from ultracram.cli import main\n"
        f"sys.exit(main(['export', '--checkpoint', {str(tmp_path / 'ckpt')!r}, '--out', {str(hf)!r}, '--overwrite']))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    after = {p.relative_to(hf): p.read_bytes() for p in hf.rglob("*") if p.is_file()}
    assert after == before
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(hf), "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # leftovers swept
