"""Bad input to ``ultracram glue``: one clear line, no traceback, nothing changed on disk.

Each row builds its inputs under tmp_path (a tiny checkpoint, small GLUE slices from the
package's embedded sample), snapshots the bytes of every file there, runs the CLI and checks:
a non-zero exit, a message naming the file or key, no "Traceback", and every file that existed
before byte-identical afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ultracram.checkpoint import save_checkpoint
from ultracram.cli import main
from ultracram.config import get_preset
from ultracram.data.glue import load_glue_tsv
from ultracram.data.sample import sample_glue_dir
from ultracram.data.tokenizer import train_tokenizer
from ultracram.fileio import sha256_file
from ultracram.model import build_model

TASK_DIRS = ("SST-2", "STS-B", "RTE")
FAST = ["--finetune.max_train_examples", "16", "--finetune.max_eval_examples", "16", "--finetune.epochs", "1",
        "--finetune.batch_size", "8"]  # fmt: skip


def _tiny_model(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(get_preset("crammed-bert-tiny", vocab_size=vocab), "mlm")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny checkpoint (``ckpt``), a tokenizer with another vocabulary (``other.json``) and
    GLUE slices (``glue``), built once; each row copies them into its own tmp_path."""
    root = tmp_path_factory.mktemp("base")
    text = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv").text_a
    tok = train_tokenizer(text, vocab_size=300, min_frequency=1)
    tok.save(str(root / "tokenizer.json"))
    train_tokenizer(text[::-1], vocab_size=250, min_frequency=1).save(str(root / "other.json"))
    save_checkpoint(_tiny_model(tok.get_vocab_size()), root / "ckpt", tokenizer_path=root / "tokenizer.json")
    for name in TASK_DIRS:
        shutil.copytree(sample_glue_dir() / name, root / "glue" / name)
    return root


class Case:
    """The inputs of one row, under ``root`` (tmp_path)."""

    def __init__(self, root: Path, base: Path):
        self.root = root
        self.ckpt = root / "ckpt"
        self.glue = root / "glue"
        self.out = root / "out"
        self.other_tokenizer = base / "other.json"
        shutil.copytree(base / "ckpt", self.ckpt)
        shutil.copytree(base / "glue", self.glue)

    def argv(self, *extra: str, tasks: str = "sst2", checkpoint: Path | str | None = None) -> list[str]:
        ckpt = str(checkpoint if checkpoint is not None else self.ckpt)
        return ["glue", "--checkpoint", ckpt, "--glue_dir", str(self.glue), "--out", str(self.out),
                "--tasks", tasks, "--device", "cpu", *FAST, *extra]  # fmt: skip

    def config(self) -> dict:
        return json.loads((self.ckpt / "config.json").read_text())

    def write_config(self, meta: dict) -> None:
        (self.ckpt / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    def edit_tsv(self, rel: str, line: int, edit: Callable[[list[str]], list[str]]) -> None:
        """Replace the tab-separated fields of 1-based ``line`` of glue/``rel``."""
        path = self.glue / rel
        lines = path.read_text(encoding="utf-8").split("\n")
        lines[line - 1] = "\t".join(edit(lines[line - 1].split("\t")))
        path.write_text("\n".join(lines), encoding="utf-8")


def _run_ok(case: Case, *extra: str) -> None:
    assert main(case.argv(*extra)) == 0, "the setup run should succeed"


# --------------------------------------------------------------------------------------------
# Rows: setup(case) -> (argv, substrings the message must contain)
# --------------------------------------------------------------------------------------------


def nan_weights(c: Case):
    weights = c.ckpt / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in sorted(state) if k.endswith("final_norm.weight"))
    state[name][0] = float("nan")
    save_file(state, str(weights), metadata={"format": "pt"})
    meta = c.config()
    meta["weights_sha256"] = sha256_file(weights)  # the checksum matches: only the values are bad
    c.write_config(meta)
    return c.argv(), ["model.safetensors", name, "non-finite"]


def inf_weights(c: Case):
    weights = c.ckpt / "model.safetensors"
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name].view(-1)[0] = float("inf")
    save_file(state, str(weights), metadata={"format": "pt"})
    meta = c.config()
    meta["weights_sha256"] = sha256_file(weights)
    c.write_config(meta)
    return c.argv(), ["model.safetensors", name, "inf"]


def swapped_tokenizer(c: Case):
    shutil.copyfile(c.other_tokenizer, c.ckpt / "tokenizer.json")
    return c.argv(), ["tokenizer.json", "sha256", "config.json"]


def swapped_tokenizer_old_checkpoint(c: Case):
    meta = c.config()
    meta["tokenizer"] = None  # saved before the tokenizer was recorded
    c.write_config(meta)
    shutil.copyfile(c.other_tokenizer, c.ckpt / "tokenizer.json")
    return c.argv(), ["tokenizer.json", "vocabulary mismatch"]


def corrupt_tokenizer(c: Case):
    meta = c.config()
    meta["tokenizer"] = None
    c.write_config(meta)
    (c.ckpt / "tokenizer.json").write_text("{not json")
    return c.argv(), ["tokenizer.json"]


def weights_changed_after_finished_run(c: Case):
    _run_ok(c)
    vocab = c.config()["model"]["vocab_size"]
    tok = c.root / "tok.json"
    shutil.copyfile(c.ckpt / "tokenizer.json", tok)
    save_checkpoint(_tiny_model(vocab, seed=1), c.ckpt, tokenizer_path=tok)  # same path, other weights
    run_dir = c.out / "runs" / "ckpt" / "sst2" / "seed-0"
    return c.argv(), [str(run_dir), "weights", "changed"]


def settings_changed_after_finished_run(c: Case):
    _run_ok(c)
    return c.argv("--lr", "1e-3"), ["run.json", "settings.lr"]


def tampered_weights(c: Case):
    weights = c.ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return c.argv(), ["model.safetensors", "corrupt or was modified"]


def missing_config(c: Case):
    (c.ckpt / "config.json").unlink()
    return c.argv(), [str(c.ckpt), "config.json"]


def config_not_json(c: Case):
    (c.ckpt / "config.json").write_text('{"model": ')
    return c.argv(), ["config.json", "not valid JSON"]


def missing_tokenizer(c: Case):
    (c.ckpt / "tokenizer.json").unlink()
    return c.argv(), [str(c.ckpt), "tokenizer.json"]


def pretraining_run_dir(c: Case):
    run = c.root / "run"
    run.mkdir()
    c.ckpt.rename(run / "final")
    (run / "summary.json").write_text("{}\n")
    return c.argv(checkpoint=run), [
        f"{run} is a pretraining run directory",
        f"use {run / 'final'} (its final checkpoint)",
    ]


def unfinished_pretraining_run_dir(c: Case):
    run = c.root / "run"
    (run / "states").mkdir(parents=True)  # no final/ yet: the run is still going (or was killed)
    (run / "metrics.csv").write_text("step,tokens,elapsed_s,fraction,loss\n")
    return c.argv(checkpoint=run), [
        f"{run} is a pretraining run directory",
        str(run / "final"),
        "not written yet",
    ]


def stsb_score_out_of_range_tsv(c: Case):
    c.edit_tsv("STS-B/train.tsv", 4, lambda f: [*f[:-1], "7.5"])
    return c.argv(tasks="stsb"), ["STS-B/train.tsv:4", "7.5", "outside"]


def stsb_negative_score_dev_tsv(c: Case):
    c.edit_tsv("STS-B/dev.tsv", 2, lambda f: [*f[:-1], "-0.5"])
    return c.argv(tasks="stsb"), ["STS-B/dev.tsv:2", "-0.5"]


def stsb_score_out_of_range_parquet(c: Case):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    hf = c.root / "hf"
    for split, tsv in (("train", "train"), ("validation", "dev")):
        s = load_glue_tsv("stsb", c.glue / "STS-B" / f"{tsv}.tsv")
        labels = list(s.labels[:20])
        if split == "train":
            labels[3] = 5.5
        table = pa.table({"sentence1": s.text_a[:20], "sentence2": s.text_b[:20], "label": labels,
                          "idx": list(range(20))})  # fmt: skip
        (hf / "stsb").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, hf / "stsb" / f"{split}-00000-of-00001.parquet")
    argv = c.argv(tasks="stsb")
    argv[argv.index("--glue_dir") + 1] = str(hf)
    return argv, ["train-00000-of-00001.parquet", "row 3", "5.5"]


def no_files_for_tasks(c: Case):
    return c.argv(tasks="cola,mrpc"), ["cola", "mrpc", "CoLA/train.tsv", "MRPC/dev.tsv"]


def wrong_column_count(c: Case):
    c.edit_tsv("SST-2/train.tsv", 3, lambda f: [*f, "extra"])
    return c.argv(), ["SST-2/train.tsv:3", "3 tab-separated field(s)"]


def bad_label(c: Case):
    c.edit_tsv("SST-2/dev.tsv", 5, lambda f: [*f[:-1], "2"])
    return c.argv(), ["SST-2/dev.tsv:5", "unknown label '2'"]


def empty_file(c: Case):
    (c.glue / "SST-2" / "train.tsv").write_bytes(b"")
    return c.argv(), ["SST-2/train.tsv", "empty"]


def missing_glue_dir(c: Case):
    argv = c.argv()
    argv[argv.index("--glue_dir") + 1] = str(c.root / "nope")
    return argv, [str(c.root / "nope"), "does not exist"]


def unknown_task(c: Case):
    return c.argv(tasks="sst-2,rtee"), ["'rtee'", "did you mean 'rte'"]


def unknown_task_in_per_task(c: Case):
    return c.argv("--per_task.rtee.epochs", "2"), ["'rtee'", "did you mean 'rte'"]


def glue_hub_task_not_cached(c: Case):
    # HF_DATASETS_CACHE/HF_HUB_OFFLINE are read when datasets is imported: the subprocess test
    # in test_glue_hub.py sets them through the environment; here the cache is the empty one
    # that _offline_empty_cache sets up (see the test below).
    argv = c.argv(tasks="rte")
    argv[argv.index("--glue_dir") + 1] = "nyu-mll/glue"
    return argv, ["GLUE task rte", "not in the Hugging Face datasets cache", "offline"]


def zero_seeds(c: Case):
    return c.argv("--seeds", "0"), ["--seeds", "0"]


def unknown_setting_key(c: Case):
    return c.argv("--finetune.lrr", "1e-4"), ["--finetune.lrr", "did you mean '--finetune.lr'"]


def unknown_task_in_set(c: Case):
    return c.argv("--set", "sts.epochs=2"), ["'sts'", "did you mean"]


def bad_setting_value(c: Case):
    return c.argv("--set", "batch_size=many"), ["batch_size", "'many'"]


def infinite_epochs(c: Case):
    return c.argv("--finetune.epochs", "inf"), ["--finetune.epochs", "'inf'"]


def malformed_set_option(c: Case):
    return c.argv("--set", "lr"), ["--set", "'lr'"]


def settings_file_not_json(c: Case):
    path = c.root / "settings.json"
    path.write_text('{"all": {"lr": 1e-4,}}')
    return c.argv("--settings", str(path)), [str(path), "JSON"]


def settings_file_list(c: Case):
    path = c.root / "settings.json"
    path.write_text('["lr", 1e-4]')
    return c.argv("--settings", str(path)), [str(path), "JSON object"]


def settings_file_unknown_key(c: Case):
    path = c.root / "settings.json"
    path.write_text('{"task": {"rte": {"lr": 1e-4}}}')
    return c.argv("--settings", str(path)), [str(path), "'task'", "did you mean 'tasks'"]


def config_file_unknown_key(c: Case):
    path = c.root / "glue.yaml"
    path.write_text("protocol: bert\nfinetuen:\n  lr: 1.0e-4\n")
    return c.argv("--config", str(path)), [str(path), "'finetuen' (did you mean 'finetune'?)"]


def settings_file_all_not_object(c: Case):
    path = c.root / "settings.json"
    path.write_text('{"all": [1, 2]}')
    return c.argv("--settings", str(path)), [str(path), "'all'"]


def bad_device(c: Case):
    argv = c.argv()
    argv[argv.index("--device") + 1] = "gpu0"
    return argv, ["--device", "'gpu0'"]


def out_is_a_file(c: Case):
    c.out.write_text("not a directory\n")
    return c.argv(), [str(c.out), "not a directory"]


ROWS = [
    nan_weights,
    inf_weights,
    swapped_tokenizer,
    swapped_tokenizer_old_checkpoint,
    corrupt_tokenizer,
    weights_changed_after_finished_run,
    settings_changed_after_finished_run,
    tampered_weights,
    missing_config,
    config_not_json,
    missing_tokenizer,
    pretraining_run_dir,
    unfinished_pretraining_run_dir,
    stsb_score_out_of_range_tsv,
    stsb_negative_score_dev_tsv,
    stsb_score_out_of_range_parquet,
    no_files_for_tasks,
    wrong_column_count,
    bad_label,
    empty_file,
    missing_glue_dir,
    unknown_task,
    unknown_task_in_per_task,
    glue_hub_task_not_cached,
    zero_seeds,
    unknown_setting_key,
    unknown_task_in_set,
    bad_setting_value,
    infinite_epochs,
    malformed_set_option,
    settings_file_not_json,
    settings_file_list,
    settings_file_unknown_key,
    settings_file_all_not_object,
    config_file_unknown_key,
    bad_device,
    out_is_a_file,
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def _offline_empty_cache(request, tmp_path_factory, monkeypatch):
    """For the row that loads GLUE by name: datasets offline, with an empty cache of its own."""
    if request.node.callspec.params["row"] is glue_hub_task_not_cached:
        datasets = pytest.importorskip("datasets")
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("row", ROWS, ids=[r.__name__ for r in ROWS])
def test_bad_input_is_one_clear_error_and_changes_nothing(row, base, tmp_path, capsys, _offline_empty_cache):
    case = Case(tmp_path, base)
    argv, expected = row(case)
    before = snapshot(tmp_path)
    capsys.readouterr()  # drop the output of the setup
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, f"exit 0 for {row.__name__}"
    # One error message at the end (Hugging Face datasets may print a progress bar before it),
    # possibly followed by an indented list of every problem (settings).
    lines = err.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("ultracram glue: error: ")), None)
    assert first is not None, err
    assert all(line.startswith("  - ") for line in lines[first + 1 :]), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    after = snapshot(tmp_path)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"files changed or removed: {changed}"


def test_subprocess_exit_code_and_no_traceback(base, tmp_path):
    """The same through ``python -m ultracram`` (one row): exit 1, one message, no traceback."""
    case = Case(tmp_path, base)
    argv, expected = nan_weights(case)
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "ultracram", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert all(text in proc.stderr for text in expected), proc.stderr
    assert snapshot(tmp_path) == before
