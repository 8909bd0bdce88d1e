"""The fitted fine-tuning protocol: a learning-rate grid scaled to the model's width, chosen on
held-out training examples, never on the dev set whose score is reported."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ultracram.checkpoint import save_checkpoint
from ultracram.config import get_preset
from ultracram.data.glue import load_glue_tsv
from ultracram.data.sample import sample_glue_dir
from ultracram.data.tokenizer import train_tokenizer
from ultracram.model import build_model
from ultracram.train import finetune
from ultracram.train.finetune import HOLDOUT, choose_lr, final_epochs, holdout_split, run_glue, select_lr
from ultracram.train.finetune_settings import (
    PROTOCOLS,
    SELECT_MAX_TRAIN,
    holdout_size,
    lr_beyond,
    lr_grid,
    resolve_settings,
)


def test_lr_grid_is_scaled_to_the_width():
    assert lr_grid(64) == (1e-3, 2e-3, 5e-3, 1e-2)  # the tiny presets
    assert lr_grid(256) == (1e-4, 2e-4, 5e-4, 1e-3)  # the mini presets
    assert lr_grid(768) == (2e-5, 5e-5, 1e-4, 2e-4)  # BERT-base: from GLUE-sane's 4e-5
    widths = [16, 32, 64, 128, 256, 512, 768, 1024, 4096]
    centres = [lr_grid(w)[1] for w in widths]  # the width-scaled guess
    assert centres == sorted(centres, reverse=True) and len(set(centres)) > 5
    with pytest.raises(ValueError, match="hidden_size"):
        lr_grid(0)


def test_fit_protocol_leaves_only_the_lr_open():
    fit = resolve_settings([get_task("sst2")], "fit")["sst2"]
    assert fit.lr is None and fit.epochs == 5 and fit.pooler_size == 0
    assert (
        resolve_settings([get_task("sst2")], "fit", {"lr": 3e-4})["sst2"].lr == 3e-4
    )  # a given lr: no selection
    assert all(p.lr is not None for name, p in PROTOCOLS.items() if name != "fit")


def get_task(name):
    from ultracram.data.glue import TASKS

    return TASKS[name]


def test_holdout_is_a_fixed_disjoint_part_of_the_training_set():
    train = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv")
    rest, held = holdout_split(train)
    assert len(held) == holdout_size(len(train)) == 200 and len(rest) + len(held) == len(train)
    assert held.split == HOLDOUT and rest.split == "train"
    pairs = {(t, y) for t, y in zip(train.text_a, train.labels, strict=True)}
    assert {(t, y) for t, y in zip(held.text_a, held.labels, strict=True)} <= pairs
    assert sorted(rest.text_a + held.text_a) == sorted(train.text_a)
    assert holdout_split(train)[1].text_a == held.text_a  # the same on every rerun
    assert [holdout_size(n) for n in (32, 400, 2000, 100_000)] == [8, 100, 200, 2000]


def test_choice_is_the_lowest_lr_within_one_standard_error_of_the_best_and_never_a_diverged_run():
    grid = [{"lr": 2e-4, "score": 0.5}, {"lr": 5e-4, "score": 0.5}, {"lr": 1e-3, "score": 0.5}]
    assert choose_lr(grid)["lr"] == 2e-4  # an exact tie goes to the lowest lr
    grid[2]["score"] = 0.6
    assert choose_lr(grid)["lr"] == 1e-3  # no standard error given: the best
    grid[2]["se"] = 0.1  # 0.5 is within one standard error of 0.6: the lowest of those
    assert choose_lr(grid)["lr"] == 2e-4
    grid[2]["se"] = 0.09
    assert choose_lr(grid)["lr"] == 1e-3
    grid[2]["score"] = None  # diverged
    grid[0]["score"] = -0.2  # a negative correlation still beats a diverged run
    assert choose_lr(grid)["lr"] == 5e-4
    assert choose_lr([{"lr": 1e-3, "score": None}, {"lr": 1e-4, "score": -0.1}])["lr"] == 1e-4
    assert choose_lr([{"lr": 1e-3, "score": None}, {"lr": 1e-4, "score": None}])["lr"] == 1e-4


def test_the_grid_is_extended_past_an_end_that_wins():
    grid = lr_grid(64)  # 1e-3 .. 1e-2
    assert lr_beyond(grid, 2e-3, grid) is None  # inside: nothing more
    assert lr_beyond(grid, 1e-3, grid) == 5e-4 and lr_beyond(grid, 1e-2, grid) == 2e-2
    assert lr_beyond([5e-4, *grid], 5e-4, grid) == 2e-4  # still the lowest: one more step
    assert lr_beyond([2e-4, 5e-4, *grid], 2e-4, grid) is None  # at most two steps past the grid
    assert lr_beyond([5e-4, *grid], 1e-3, grid) is None  # the extension lost: the choice is inside
    assert lr_beyond((1e-6, 2e-6), 1e-6, (1e-6, 2e-6)) is None  # the ladder's end


@pytest.mark.parametrize(
    "scores, tried, chosen",
    [
        ({}, [2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2], 2e-4),  # flat everywhere: two steps down, the lowest
        ({5e-4: 0.6}, [2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2], 5e-4),  # flat grid, a lower lr learns
        (
            {1e-3: 0.6, 2e-3: 0.6},
            [5e-4, 1e-3, 2e-3, 5e-3, 1e-2],
            1e-3,
        ),  # the tie's lowest; the step below loses
    ],
)
def test_a_grid_flat_at_its_low_end_is_extended_down(tiny_checkpoint, tmp_path, monkeypatch, scores, tried,
                                                          chosen):  # fmt: skip
    """Every lr at the majority class (0.5) but those in ``scores``: the selection looks below the grid."""
    monkeypatch.setattr(
        finetune,
        "finetune_run",
        lambda c, t, d, s, *a, **kw: {"metrics": {HOLDOUT: {"accuracy": scores.get(s.lr, 0.5)}}},
    )
    train = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv")
    settings = resolve_settings([get_task("sst2")], "fit")["sst2"]
    sel = select_lr(tiny_checkpoint, train, settings, tmp_path, fabric=None, log=lambda _: None)
    assert [g["lr"] for g in sel["grid"]] == tried and sel["chosen"]["lr"] == chosen


def test_selection_takes_the_lowest_lr_the_held_out_part_cannot_tell_from_the_best(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    """Held-out predictions right on 80% (1e-3), 82% (2e-3, the best) and less above: with 200
    held-out examples the standard error is about 2.7 points, so 1e-3 is chosen; the step below
    (70%) is tried and loses. The recorded standard error, bootstrapped over the held-out
    examples, agrees with the binomial one."""
    right = {5e-4: 0.70, 1e-3: 0.80, 2e-3: 0.82, 5e-3: 0.60, 1e-2: 0.55}

    def fake_run(checkpoint, train, devs, s, seed, run_dir, **kw):
        (held,) = devs
        y = np.asarray(held.labels)
        wrong = np.arange(len(y)) >= round(right[s.lr] * len(y))
        preds = np.where(wrong, 1 - y, y)
        return {"metrics": {HOLDOUT: {"accuracy": float((preds == y).mean())}},
                "predictions": {HOLDOUT: preds.tolist()}}  # fmt: skip

    monkeypatch.setattr(finetune, "finetune_run", fake_run)
    train = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv")
    settings = resolve_settings([get_task("sst2")], "fit")["sst2"]
    sel = select_lr(tiny_checkpoint, train, settings, tmp_path, fabric=None, log=lambda _: None)
    assert sel["holdout_examples"] == 200
    assert [g["lr"] for g in sel["grid"]] == [5e-4, 1e-3, 2e-3, 5e-3, 1e-2] and sel["chosen"]["lr"] == 1e-3
    best = next(g for g in sel["grid"] if g["lr"] == 2e-3)
    assert abs(best["se"] - np.sqrt(0.82 * 0.18 / 200)) < 0.005  # the binomial standard error


@pytest.mark.parametrize(
    "peak, tried, chosen",
    [
        (2e-3, [1e-3, 2e-3, 5e-3, 1e-2], 2e-3),  # inside the grid: the four runs only
        (5e-4, [2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2], 5e-4),  # below: two steps down, the first wins
        (1e-4, [2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2], 2e-4),  # far below: stops after two, at the end
        (2e-2, [1e-3, 2e-3, 5e-3, 1e-2, 2e-2], 2e-2),  # above: 2e-2 wins, the ladder ends there
    ],
)
def test_selection_tries_past_the_grid_until_the_best_is_inside(tiny_checkpoint, tmp_path, monkeypatch, peak,
                                                                 tried, chosen):  # fmt: skip
    """select_lr's loop with the runs replaced by a held-out score peaked (in log lr) at ``peak``."""
    runs = []

    def fake_run(checkpoint, train, devs, s, seed, run_dir, **kw):
        runs.append(s.lr)
        assert run_dir.name == f"lr-{s.lr:g}" and [d.split for d in devs] == [HOLDOUT]
        return {"metrics": {HOLDOUT: {"accuracy": 0.9 - 0.1 * abs(np.log(s.lr / peak))}}}

    monkeypatch.setattr(finetune, "finetune_run", fake_run)
    train = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv")
    settings = resolve_settings([get_task("sst2")], "fit")["sst2"]
    sel = select_lr(tiny_checkpoint, train, settings, tmp_path, fabric=None, log=lambda _: None)
    assert sorted(runs) == tried and runs[:4] == list(lr_grid(64))  # the grid first, then outwards
    assert [g["lr"] for g in sel["grid"]] == tried and sel["extended"] == len(tried) - 4
    assert sel["chosen"]["lr"] == chosen


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init crammed-bert-tiny (hidden 64) with a tokenizer trained on the sample SST-2."""
    root = tmp_path_factory.mktemp("fit-ckpt")
    train = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv")
    tok = train_tokenizer(train.text_a, vocab_size=1000)
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = build_model(get_preset("crammed-bert-tiny", vocab_size=tok.get_vocab_size()), "mlm")
    return save_checkpoint(model, root / "tiny", tokenizer_path=root / "tokenizer.json")


def _glue_with_shuffled_dev_labels(root: Path) -> Path:
    """A copy of the sample SST-2 whose dev labels are permuted (the dev texts stay)."""
    shutil.copytree(sample_glue_dir() / "SST-2", root / "SST-2")
    dev = root / "SST-2" / "dev.tsv"
    header, *rows = dev.read_text().splitlines()
    labels = [r.rsplit("\t", 1)[1] for r in rows]
    perm = np.random.default_rng(0).permutation(len(labels))
    dev.write_text(
        "\n".join([header, *(r.rsplit("\t", 1)[0] + "\t" + labels[i] for r, i in zip(rows, perm))]) + "\n"
    )
    return root


def test_selection_never_reads_the_dev_labels(tiny_checkpoint, tmp_path):
    """The same data with the dev labels shuffled gives exactly the same selection (grid scores
    and choice); only the reported dev score changes. The selection runs hold no dev split."""
    common = dict(tasks="sst2", protocol="fit", overrides={"epochs": 1, "max_train_examples": 160, "pooler": "mean"},
                  log=lambda _: None, progress=False)  # fmt: skip
    real = run_glue([f"m={tiny_checkpoint}"], [sample_glue_dir()], tmp_path / "real", **common)
    shuffled_dir = _glue_with_shuffled_dev_labels(tmp_path / "shuffled-glue")
    dev_labels = [
        load_glue_tsv("sst2", d / "SST-2" / "dev.tsv").labels for d in (sample_glue_dir(), shuffled_dir)
    ]
    assert dev_labels[0] != dev_labels[1] and sorted(dev_labels[0]) == sorted(dev_labels[1])
    shuffled = run_glue([f"m={tiny_checkpoint}"], [shuffled_dir], tmp_path / "shuffled", **common)
    a, b = (r["checkpoints"][0]["tasks"]["sst2"] for r in (real, shuffled))
    assert a["selection"] == b["selection"]
    assert set(lr_grid(64)) <= {g["lr"] for g in a["selection"]["grid"]}  # and any steps past it
    assert a["selection"]["holdout_examples"] == 40 and a["selection"]["select_train_examples"] == 120
    assert all(0 <= g["score"] <= 1 for g in a["selection"]["grid"])
    chosen = a["selection"]["chosen"]["lr"]
    final, final_shuffled = (json.loads((tmp_path / d / "runs" / "m" / "sst2" / "seed-0" / "result.json").read_text())
                             for d in ("real", "shuffled"))  # fmt: skip
    assert final["weights_sha256"] == final_shuffled["weights_sha256"]  # training never saw the dev labels
    assert final["settings"]["lr"] == chosen and final["train_examples"] == 160
    for lr in lr_grid(64):
        run = json.loads(
            (tmp_path / "real" / "runs" / "m" / "sst2" / "select" / f"lr-{lr:g}" / "run.json").read_text()
        )
        assert run["dev_examples"] == {HOLDOUT: 40} and run["train_examples"] == 120
    table = (tmp_path / "real" / "results.md").read_text()
    assert "chosen on held-out training examples" in table and f"SST-2 {chosen:g}" in table
    assert real["protocol"] == "fit"
    # A rerun reuses every run, the selection's included.
    again = run_glue([f"m={tiny_checkpoint}"], [sample_glue_dir()], tmp_path / "real", **common)
    assert again["checkpoints"] == real["checkpoints"]


def test_final_run_takes_the_selection_runs_steps_when_they_trained_on_a_subset():
    """SST-2 (67,349 examples, 2,000 held out, the grid on 8,000): the final run on all of them
    takes 5 x 8,000 / 67,349 epochs, as many examples (so steps) as a selection run; a task whose
    selection runs trained on everything not held out keeps the protocol's epochs."""
    n, held = 67349, holdout_size(67349)
    assert held == 2000
    epochs = final_epochs(5.0, n, SELECT_MAX_TRAIN, held)
    assert epochs * n == pytest.approx(5.0 * SELECT_MAX_TRAIN)
    assert final_epochs(5.0, 2000, 2000 - holdout_size(2000), holdout_size(2000)) == 5.0


def test_run_glue_final_run_is_as_long_as_a_selection_run(tiny_checkpoint, tmp_path, monkeypatch):
    """With the grid's runs on a subset (SELECT_MAX_TRAIN lowered to 60 of the 120 not held out),
    the final run trains on all 160 examples for as many steps as each selection run took."""
    monkeypatch.setattr(finetune, "SELECT_MAX_TRAIN", 60)
    r = run_glue([f"m={tiny_checkpoint}"], [sample_glue_dir()], tmp_path, tasks="sst2", protocol="fit",
                 overrides={"epochs": 2, "max_train_examples": 160, "pooler": "mean"}, log=lambda _: None,
                 progress=False)  # fmt: skip
    selection = r["checkpoints"][0]["tasks"]["sst2"]["selection"]
    assert selection["select_train_examples"] == 60
    assert selection["final_epochs"] == pytest.approx(2 * 60 / 160)
    runs = tmp_path / "runs" / "m" / "sst2"
    final = json.loads((runs / "seed-0" / "result.json").read_text())
    chosen = json.loads((runs / "select" / f"lr-{selection['chosen']['lr']:g}" / "result.json").read_text())
    assert final["train_examples"] == 160 and final["settings"]["epochs"] == pytest.approx(0.75)
    assert final["steps"] == chosen["steps"] == 8  # ceil(60 / 16) = 4 steps per epoch, 2 epochs
