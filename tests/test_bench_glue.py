"""``ultracram bench glue``: the extrapolated cost of a full task counts what each protocol runs.

The fitted protocol runs its learning-rate grid before the full run; the bench must count those
runs' examples (each on the training part less the held-out part, at most SELECT_MAX_TRAIN, and
its held-out part scored), computed here by hand from the protocol's constants.
"""

import json

import pytest

from ultracram.bench.finetune import bench_finetune
from ultracram.bench.glue import bench_glue
from ultracram.data.glue import TASKS, load_split
from ultracram.data.sample import sample_glue_dir
from ultracram.train.finetune_settings import PROTOCOLS, SELECT_MAX_TRAIN, holdout_size, lr_grid


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-glue")
    glue = [str(sample_glue_dir())]
    kw = dict(presets="crammed-bert-tiny", tasks="rte", max_train_examples=16, max_eval_examples=16)
    return {p: bench_glue(glue, protocol=p, out=str(tmp / f"{p}.json"), **kw) for p in ("sane", "fit")}


def test_fixed_protocol_counts_the_train_set_times_epochs(runs):
    n = len(load_split(TASKS["rte"], "train", [str(sample_glue_dir())]))
    dev = len(load_split(TASKS["rte"], "dev", [str(sample_glue_dir())]))
    (row,) = runs["sane"]["rows"]
    epochs = PROTOCOLS["sane"].epochs
    assert (row["full_task_trained_examples"], row["full_task_eval_examples"]) == (n * epochs, dev)
    expected = row["train_ms_per_example"] * n * epochs + row["eval_ms_per_example"] * dev
    assert row["full_task_seconds"] == pytest.approx(expected / 1e3)


def test_fit_counts_its_learning_rate_grid(runs):
    n = len(load_split(TASKS["rte"], "train", [str(sample_glue_dir())]))
    dev = len(load_split(TASKS["rte"], "dev", [str(sample_glue_dir())]))
    held = holdout_size(n)
    grid = len(lr_grid(64))  # crammed-bert-tiny's width
    (row,) = runs["fit"]["rows"]
    epochs = PROTOCOLS["fit"].epochs  # the final run's too: the grid's runs trained on all but the held-out
    assert n - held <= SELECT_MAX_TRAIN
    assert row["full_task_trained_examples"] == (n + grid * (n - held)) * epochs
    assert row["full_task_eval_examples"] == dev + grid * held
    expected = (
        row["train_ms_per_example"] * row["full_task_trained_examples"]
        + row["eval_ms_per_example"] * row["full_task_eval_examples"]
    )
    assert row["full_task_seconds"] == pytest.approx(expected / 1e3)
    assert runs["fit"]["protocol"] == "fit"


def test_bench_finetune_times_fit_at_the_grids_scaled_step(tmp_path):
    out = tmp_path / "f.json"
    r = bench_finetune("crammed-bert-tiny", paths="masked", batch_size=2, seq_len=16, rounds=1,
                       protocol="fit", out=str(out))  # fmt: skip
    assert r["protocol"] == "fit"
    assert json.loads(out.read_text())["protocol"] == "fit"
