"""GLUE fine-tuning: it learns, it does not flatter, it resumes exactly, settings and tables."""

import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch

from ultracram.checkpoint import save_checkpoint
from ultracram.config import get_preset
from ultracram.data.glue import TASKS, GlueSplit, compute_metrics, load_glue_tsv
from ultracram.data.tokenizer import train_tokenizer
from ultracram.model import build_model
from ultracram.train.finetune import (
    _Interrupted,
    batch_order,
    collate,
    encode_split,
    finetune_run,
    glue_average,
    lr_factor,
    run_glue,
    subsample,
)
from ultracram.train.finetune_settings import PROTOCOLS, FinetuneError, FinetuneSettings, resolve_settings
from ultracram.train.glue_table import glue_markdown

SST2 = TASKS["sst2"]


@pytest.fixture(scope="module")
def sst2(shared_data, tmp_path_factory) -> tuple[GlueSplit, GlueSplit]:
    """SST-2 train and dev, unpacked from ../shared/data/glue."""
    root = tmp_path_factory.mktemp("sst2")
    with tarfile.open(shared_data / "glue" / "glue_data.tar.xz") as tar:
        members = [
            m for m in tar.getmembers() if m.name.startswith("glue_data/SST-2/") and "test" not in m.name
        ]
        tar.extractall(root, members=members, filter="data")
    d = root / "glue_data" / "SST-2"
    return load_glue_tsv("sst2", d / "train.tsv"), load_glue_tsv("sst2", d / "dev.tsv")


@pytest.fixture(scope="module")
def tiny_checkpoint(sst2, tmp_path_factory) -> Path:
    """A random-init crammed-bert-tiny with a WordPiece tokenizer trained on SST-2 text."""
    root = tmp_path_factory.mktemp("ckpt")
    tok = train_tokenizer(subsample(sst2[0], 5000).text_a, vocab_size=2000)
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = build_model(get_preset("crammed-bert-tiny", vocab_size=tok.get_vocab_size()), "mlm")
    return save_checkpoint(model, root / "tiny", tokenizer_path=root / "tokenizer.json")


# From random weights a [CLS] pooler needs many steps to find a signal; mean pooling sees the
# bag of words at once, so a few hundred steps suffice. lr is raised for random init.
FAST = {"epochs": 3, "lr": 1e-3, "pooler": "mean", "batch_size": 16}


def _fast(**extra):
    return resolve_settings([SST2], "sane", {**FAST, **extra})["sst2"]


def test_learns_and_shuffled_labels_give_chance(sst2, tiny_checkpoint, tmp_path):
    train, dev = subsample(sst2[0], 1200), sst2[1]
    majority = max(dev.labels.count(0), dev.labels.count(1)) / len(dev)
    learned = finetune_run(tiny_checkpoint, train, [dev], _fast(), 0, tmp_path / "real")
    acc = learned["metrics"]["dev"]["accuracy"]
    assert acc > majority + 0.07, (acc, majority)
    # Same run with the training labels permuted: nothing generalisable is left to learn.
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = GlueSplit(train.task, "train", train.text_a, None, [train.labels[i] for i in perm], "shuffled")
    chance = finetune_run(tiny_checkpoint, shuffled, [dev], _fast(), 0, tmp_path / "shuffled")
    assert abs(chance["metrics"]["dev"]["accuracy"] - 0.5) < 0.06, chance["metrics"]
    assert acc - chance["metrics"]["dev"]["accuracy"] > 0.07


def test_killed_and_resumed_run_ends_like_uninterrupted(sst2, tiny_checkpoint, tmp_path):
    train, dev = subsample(sst2[0], 160), subsample(sst2[1], 100)
    s = _fast(epochs=2, checkpoint_every=4)  # 20 steps, a state every 4; dropout is on
    whole = finetune_run(tiny_checkpoint, train, [dev], s, 3, tmp_path / "whole")
    with pytest.raises(_Interrupted):  # killed after step 11: steps 9..11 are lost
        finetune_run(tiny_checkpoint, train, [dev], s, 3, tmp_path / "cut", stop_after_steps=11)
    assert not (tmp_path / "cut" / "result.json").exists()
    with pytest.raises(_Interrupted):  # killed again, inside the second epoch
        finetune_run(tiny_checkpoint, train, [dev], s, 3, tmp_path / "cut", stop_after_steps=8)
    resumed = finetune_run(tiny_checkpoint, train, [dev], s, 3, tmp_path / "cut")
    assert resumed["resumed_from_step"] == 16 and whole["resumed_from_step"] == 0
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    assert resumed["metrics"] == whole["metrics"]
    other_seed = finetune_run(tiny_checkpoint, train, [dev], s, 4, tmp_path / "seed4")
    assert other_seed["weights_sha256"] != whole["weights_sha256"]  # the digest does discriminate
    # A finished run is not retrained; a changed setting in the same directory is an error.
    assert finetune_run(tiny_checkpoint, train, [dev], s, 3, tmp_path / "cut") == resumed
    with pytest.raises(FinetuneError, match=r"settings.lr"):
        finetune_run(
            tiny_checkpoint, train, [dev], _fast(epochs=2, checkpoint_every=4, lr=1e-4), 3, tmp_path / "cut"
        )


def test_batches_are_grouped_deterministic_and_complete(sst2, tiny_checkpoint):
    from ultracram.data.tokenizer import load_tokenizer

    data = encode_split(subsample(sst2[0], 500), load_tokenizer(tiny_checkpoint), 128)
    lengths = [len(x) for x in data.ids]
    a = batch_order(lengths, 16, seed=0, epoch=1)
    assert a == batch_order(lengths, 16, seed=0, epoch=1) and a != batch_order(lengths, 16, seed=0, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(500))
    padded = sum(16 * max(lengths[i] for i in b) for b in a)
    ungrouped = sum(16 * max(lengths[i] for i in b) for b in batch_order(lengths, 16, 0, 1, group=False))
    assert padded < 0.8 * ungrouped  # dynamic padding + grouping saves real work
    batch = collate(data, a[0], pad_id=0)
    n = [lengths[i] for i in a[0]]
    assert batch["input_ids"].shape == (len(a[0]), max(n))
    assert batch["attention_mask"].sum(1).tolist() == n
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


def test_settings_protocols_and_overrides():
    tasks = [TASKS["rte"], TASKS["sst2"]]
    s = resolve_settings(tasks, "sane", {"lr": "2e-5"}, {"RTE": {"epochs": "10", "grad_clip": "none"}})
    assert s["rte"].epochs == 10.0 and s["rte"].lr == 2e-5 and s["sst2"].epochs == 5.0
    sane = PROTOCOLS["sane"]
    assert (sane.batch_size, sane.lr, sane.beta2, sane.eps, sane.weight_decay, sane.schedule, sane.pooler_size) == (
        16, 4e-5, 0.98, 1e-6, 0.0, "cosine", 1024)  # fmt: skip
    assert resolve_settings(tasks, "bert")["rte"].schedule == "linear"
    with pytest.raises(FinetuneError) as e:
        resolve_settings(tasks, "sane", {"lrr": 1, "batch_size": "many", "dropout": 1.5}, {"rtee": {}})
    msg = str(e.value)
    assert all(p in msg for p in ("'lrr'", "batch_size: expected an integer (or null), got 'many'",
                                  "dropout: must be in [0, 1)", "'rtee'"))  # fmt: skip
    with pytest.raises(FinetuneError, match="unknown protocol 'roberta'"):
        resolve_settings(tasks, "roberta")
    # Settings for every task as the CLI gives them: null fields are the protocol's.
    s = resolve_settings(
        tasks, "bert", FinetuneSettings(lr=1e-4, max_train_examples=8), {"rte": {"epochs": 1}}
    )
    assert (s["sst2"].lr, s["sst2"].epochs, s["sst2"].batch_size, s["sst2"].grad_clip) == (1e-4, 3.0, 32, 1.0)
    assert (s["rte"].epochs, s["rte"].max_train_examples, s["rte"].pooler_size) == (1.0, 8, 0)


def test_schedule():
    s = PROTOCOLS["sane"]
    factors = [lr_factor(k, 100, s) for k in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def _write_task(root: Path, display: str, header: str, rows: list[str], splits=("train", "dev")):
    (root / display).mkdir(parents=True, exist_ok=True)
    for split in splits:
        (root / display / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n")


def test_run_glue_table_average_and_rerun(tiny_checkpoint, tmp_path):
    glue = tmp_path / "glue"
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    _write_task(
        glue, "SST-2", "sentence\tlabel", [f"{w} movie \t{int(i % 6 < 3)}" for i, w in enumerate(words * 8)]
    )
    _write_task(glue, "STS-B", "index\tsentence1\tsentence2\tscore",
                [f"{i}\ta {w}\tthe {w}\t{i % 5}.0" for i, w in enumerate(words * 4)])  # fmt: skip
    _write_task(glue, "QNLI", "index\tquestion\tsentence\tlabel", ["0\tq?\ts.\tentailment"], splits=("dev",))
    lines: list[str] = []
    common = dict(tasks="sst2,stsb,qnli", seeds=2, overrides={"epochs": 1, "lr": 1e-3}, log=lines.append)
    res = run_glue([f"a={tiny_checkpoint}", f"b={tiny_checkpoint}"], [glue], tmp_path / "out", **common)
    assert any("QNLI skipped: no train split" in n for n in res["notes"])
    a = res["checkpoints"][0]
    assert list(a["tasks"]) == ["sst2", "stsb"] and a["tasks"]["sst2"]["summary"]["dev"]["accuracy"]["values"]
    want = (100 * a["tasks"]["sst2"]["summary"]["dev"]["accuracy"]["median"]
            + 100 * a["tasks"]["stsb"]["summary"]["dev"]["spearman"]["median"]) / 2  # fmt: skip
    assert a["average"]["value"] == pytest.approx(want) and a["average"]["covers"] == ["SST-2", "STS-B"]
    assert not a["average"]["complete"] and "QNLI" in a["average"]["missing"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.splitlines()[0] == "| checkpoint | SST-2 | STS-B | Avg (partial) |"
    assert [line.split(" | ")[0] for line in table.splitlines()[2:4]] == ["| a", "| b"]
    # The reference rows follow the checkpoints, and every score has its interval.
    assert [line.split(" | ")[0] for line in table.splitlines()[4:6]] == ["| majority",
                                                                         "| bag-of-words (TF-IDF + logreg)"]  # fmt: skip
    assert all(" [" in cell for line in table.splitlines()[2:6] for cell in line.split(" | ")[1:3])
    assert "average over 2 column(s) only (SST-2, STS-B)" in table and "QNLI skipped" in table
    assert json.loads((tmp_path / "out" / "results.json").read_text())["checkpoints"][1]["label"] == "b"
    # Every pair of checkpoints is tested on every column: the same weights give the same
    # predictions, so a and b cannot be told apart (difference 0, p = 1, the same seeds).
    assert [(t["what"], t["a"], t["b"]) for t in res["pairwise"]] == [
        ("SST-2", "a", "b"),
        ("STS-B", "a", "b"),
    ]
    assert all(t["diff"] == 0 and t["p_value"] == 1 and t["seeds_a"] == t["seeds_b"] for t in res["pairwise"])
    assert (
        "Between checkpoints" in table
        and "- SST-2: a and b are not distinguishable (a - b: +0.0 points" in table
    )
    # Rerun: every run is finished, so the results come back unchanged and nothing trains.
    again = run_glue([f"a={tiny_checkpoint}", f"b={tiny_checkpoint}"], [glue], tmp_path / "out", **common)
    assert again["checkpoints"] == res["checkpoints"]


def test_glue_average_full_and_wnli():
    def entry(t, score):
        return {"summary": {s: {m: {"median": score} for m in TASKS[t].metrics} for s in TASKS[t].dev_splits}}

    tasks = {t: entry(t, 0.5) for t in TASKS}
    tasks["wnli"] = entry("wnli", 0.1)
    avg = glue_average(tasks)
    assert avg["complete"] and avg["value"] == pytest.approx(50.0) and len(avg["covers"]) == 9
    assert glue_average(tasks, include_wnli=True)["value"] == pytest.approx((9 * 50 + 10) / 10)
    md = glue_markdown({"checkpoints": [{"label": "m", "tasks": tasks, "average": avg}], "seeds": [0],
                        "protocol": "sane", "settings": {}, "notes": []})  # fmt: skip
    assert md.splitlines()[0].endswith("| WNLI | GLUE avg |") and "MNLI-m | MNLI-mm" in md.splitlines()[0]


def test_rerun_identity_is_the_weights_not_the_path(tiny_checkpoint, tmp_path):
    import shutil

    from ultracram.data.glue import GlueDataError

    glue = tmp_path / "glue"
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    _write_task(
        glue, "SST-2", "sentence\tlabel", [f"{w} film \t{int(i % 6 < 3)}" for i, w in enumerate(words * 4)]
    )
    common = dict(tasks="sst2", overrides={"epochs": 1, "lr": 1e-3}, log=lambda _: None)
    first = tmp_path / "first"
    shutil.copytree(tiny_checkpoint, first)
    res = run_glue([f"m={first}"], [glue], tmp_path / "out", **common)
    # The same weights at another path: the finished run is reused, nothing trains.
    moved = tmp_path / "moved"
    first.rename(moved)
    again = run_glue([f"m={moved}"], [glue], tmp_path / "out", **common)
    assert again["checkpoints"][0]["tasks"] == res["checkpoints"][0]["tasks"]
    # Other weights at the same path: refused before any training, the run directory untouched.
    run_dir = tmp_path / "out" / "runs" / "m" / "sst2" / "seed-0"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    vocab = json.loads((moved / "config.json").read_text())["model"]["vocab_size"]
    torch.manual_seed(1)
    shutil.copyfile(moved / "tokenizer.json", tmp_path / "tok.json")
    save_checkpoint(build_model(get_preset("crammed-bert-tiny", vocab_size=vocab), "mlm"), moved,
                    tokenizer_path=tmp_path / "tok.json")  # fmt: skip
    with pytest.raises(FinetuneError, match=r"seed-0 holds a finished run of other weights: the checkpoint's weights "
                       r"changed"):  # fmt: skip
        run_glue([f"m={moved}"], [glue], tmp_path / "out", **common)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    # No file for any asked task: an error naming the tasks and the expected files, not an empty table.
    with pytest.raises(
        GlueDataError, match=r"no GLUE data for the asked task\(s\) cola, rte .*CoLA/train.tsv"
    ):
        run_glue([f"m={moved}"], [glue], tmp_path / "out2", **{**common, "tasks": "cola,rte"})
    assert not (tmp_path / "out2").exists()
    with pytest.raises(FinetuneError, match=r"--seeds must be an integer >= 1, got 0"):
        run_glue([f"m={moved}"], [glue], tmp_path / "out2", **{**common, "seeds": 0})


def test_settings_suggest_close_names():
    with pytest.raises(FinetuneError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        resolve_settings([SST2], "sane", {"epoch": 2})
    with pytest.raises(
        FinetuneError, match=r"unknown task 'sst' in per-task settings \(did you mean 'sst2'\?\)"
    ):
        resolve_settings([SST2], "sane", {}, {"sst": {"lr": 1e-4}})
    with pytest.raises(FinetuneError, match=r"epochs: must be a finite number"):
        resolve_settings([SST2], "sane", {"epochs": "inf"})
    with pytest.raises(FinetuneError, match=r"rte: expected an object of KEY: VALUE"):
        resolve_settings([SST2], "sane", {}, {"rte": 3})


def test_progress_in_a_log_names_the_run_and_counts_steps(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Output that is not a terminal (capsys; a CI log) gets whole plain lines: the first at
    once, then at most one every 30 s, and the last with every step."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # these make rich draw a bar anyway
        monkeypatch.delenv(name, raising=False)
    glue = tmp_path / "glue"
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    _write_task(
        glue, "SST-2", "sentence\tlabel", [f"{w} show \t{int(i % 6 < 3)}" for i, w in enumerate(words * 8)]
    )
    common = dict(tasks="sst2", overrides={"epochs": 2, "lr": 1e-3, "batch_size": 8}, log=lambda _: None)
    capsys.readouterr()
    run_glue([f"m={tiny_checkpoint}"], [glue], tmp_path / "out", **common)
    lines = capsys.readouterr().out.splitlines()
    train = [line for line in lines if " train step " in line]
    evals = [line for line in lines if " eval dev " in line]
    assert train and evals and len(train) + len(evals) == len(lines), lines
    assert all(line.startswith("GLUE 1/1 m SST-2 seed 0: ") for line in lines), lines
    assert (
        "train step 1/12 epoch 1/2 loss " in train[0] and " left" in train[0]
    )  # 48 examples, batch 8, 2 epochs
    assert " 100.0% " in train[-1] and "train step 12/12 epoch 2/2 " in train[-1] and " ex/s " in train[-1]
    assert " 100.0% " in evals[-1] and "eval dev 48/48 examples" in evals[-1]
    assert len(set(lines)) == len(lines)  # the final line is not repeated by close()
    # A rerun trains nothing, so it shows no progress.
    run_glue([f"m={tiny_checkpoint}"], [glue], tmp_path / "out", **common)
    assert capsys.readouterr().out == ""
    # progress=False (library use) prints nothing either.
    run_glue([f"m={tiny_checkpoint}"], [glue], tmp_path / "out2", **common, progress=False)
    assert capsys.readouterr().out == ""


def test_per_task_key_from_the_cli_with_underscore_is_the_task(tiny_checkpoint, tmp_path):
    """The generated CLI turns --per_task.sst-2.epochs into the key "sst_2": it is SST-2, not an
    unknown task (a bad value shows that the key reached the task's settings)."""
    with pytest.raises(FinetuneError, match=r"sst2") as e:
        run_glue([str(tiny_checkpoint)], [tmp_path], tmp_path / "out", tasks="sst2",
                 task_overrides={"sst_2": {"epochs": "many"}}, log=lambda _: None)  # fmt: skip
    assert "unknown task" not in str(e.value) and "epochs" in str(e.value)


def test_run_glue_baselines_intervals_and_sentences(tiny_checkpoint, tmp_path, monkeypatch):
    """On the embedded sample slices: the two baseline rows, trained on the encoders' own
    subsample; an interval in every cell; one sentence per column against the bag of words; a
    rerun reuses the cached baselines; a run from before predictions were kept gets no interval."""
    from ultracram.data.sample import sample_glue_dir
    from ultracram.train import baselines

    out = tmp_path / "out"
    common = dict(tasks="sst2,stsb", overrides={**FAST, "epochs": 1, "max_train_examples": 200,
                                                "max_eval_examples": 100}, log=lambda _: None, progress=False)  # fmt: skip
    res = run_glue([f"m={tiny_checkpoint}"], [sample_glue_dir()], out, **common)
    assert [b["label"] for b in res["baselines"]] == ["majority", "bag-of-words (TF-IDF + logreg)"]
    m = res["checkpoints"][0]
    for name in ("sst2", "stsb"):
        for b in res["baselines"]:
            assert b["tasks"][name]["train_examples"] == m["tasks"][name]["train_examples"] == 200
            assert b["tasks"][name]["dev_examples"] == m["tasks"][name]["dev_examples"] == {"dev": 100}
    # Exactly the encoders' training examples (fine-tuning's subsample), and per-example dev
    # predictions kept in result.json, in the dev split's order.
    sst = sample_glue_dir() / "SST-2"
    train, dev = (
        subsample(load_glue_tsv("sst2", sst / "train.tsv"), 200),
        subsample(load_glue_tsv("sst2", sst / "dev.tsv"), 100),
    )
    cache = json.loads((out / "baselines" / "sst2.json").read_text())
    assert cache["identity"]["train_sha256"] == baselines.split_digest(train)
    assert cache["identity"]["dev"]["dev"]["sha256"] == baselines.split_digest(dev)
    run_path = out / "runs" / "m" / "sst2" / "seed-0" / "result.json"
    run = json.loads(run_path.read_text())
    assert len(run["predictions"]["dev"]) == 100
    assert compute_metrics("sst2", run["predictions"]["dev"], dev.labels) == run["metrics"]["dev"]
    cell = m["tasks"]["sst2"]["summary"]["dev"]["accuracy"]
    assert cell["ci"][0] <= cell["median"] <= cell["ci"][1] and cell["ci_seed"] == 0
    assert set(m["tasks"]["sst2"]["vs_baselines"]["dev"]["vs"]) == set(baselines.BASELINES)
    assert res["bootstrap"]["resamples"] == 1000
    table = (out / "results.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:5]] == [
        "| m",
        "| majority",
        "| bag-of-words (TF-IDF + logreg)",
    ]
    assert all(cell.count(" [") == 1 for line in table[2:5] for cell in line.split(" | ")[1:3]), table[2:5]
    assert any(line.startswith("- SST-2: m ") and "bag-of-words" in line for line in table), table
    assert any(line.startswith("- STS-B: m ") and "bag-of-words" in line for line in table), table
    # A rerun trains nothing and computes no baseline: both come back unchanged.
    monkeypatch.setattr(baselines, "compute_task_baselines", lambda *a: pytest.fail("baselines recomputed"))
    again = run_glue([f"m={tiny_checkpoint}"], [sample_glue_dir()], out, **common)
    assert again["baselines"] == res["baselines"] and again["checkpoints"] == res["checkpoints"]
    # A result.json from before predictions were kept still reads: no interval, no test.
    old = json.loads(run_path.read_text())
    del old["predictions"]
    run_path.write_text(json.dumps(old))
    older = run_glue([f"m={tiny_checkpoint}"], [sample_glue_dir()], out, **common)
    assert older["checkpoints"][0]["tasks"]["sst2"]["summary"]["dev"]["accuracy"]["ci"] is None
    assert older["checkpoints"][0]["tasks"]["sst2"]["vs_baselines"] == {"dev": None}
    assert "- SST-2: m not tested (no per-example predictions" in (out / "results.md").read_text()
