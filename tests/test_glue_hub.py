"""GLUE by name (``--glue_dir nyu-mll/glue``, or ``glue``) through Hugging Face ``datasets``, offline.

There is no network here, so each test writes the datasets cache itself, as
``datasets.load_dataset("nyu-mll/glue", TASK)`` leaves it after a load with the network:
``HF_DATASETS_CACHE/nyu-mll___glue/TASK/0.0.0/HASH/`` with ``glue-SPLIT.arrow`` and
``dataset_info.json``, made by datasets' own parquet builder (the Hub dataset is parquet files,
``TASK/SPLIT-00000-of-00001.parquet``). Offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), datasets
reads that cache and never asks the Hub; these tests check that ultracram goes through it.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ultracram.checkpoint import save_checkpoint
from ultracram.config import get_preset
from ultracram.data.glue import (
    HUB_NAME,
    TASKS,
    GlueDataError,
    HubSplit,
    find_split,
    hub_source,
    load_glue_hf,
    load_glue_tsv,
    load_split,
)
from ultracram.data.sample import sample_glue_dir
from ultracram.data.tokenizer import train_tokenizer
from ultracram.model import build_model

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_hub_cache(
    cache: Path, task: str, splits: dict[str, pa.Table], labels: list[str] | None = None
) -> Path:
    """Write configuration ``task`` of nyu-mll/glue into the datasets cache ``cache`` with the
    given splits (HF split names -> tables with nyu-mll/glue's columns); ``labels``: other
    label names (default: the task's, as on the Hub)."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    t = TASKS[task]
    staging = cache.parent / f"staging-{task}"
    src = staging / "repo" / task
    src.mkdir(parents=True)
    for split, table in splits.items():
        pq.write_table(table, src / f"{split}-00000-of-00001.parquet")
    files = DataFilesDict.from_patterns(
        {s: [f"{s}-00000-of-00001.parquet"] for s in splits}, base_path=str(src)
    )
    label = (
        datasets.Value("float32") if t.is_regression else datasets.ClassLabel(names=labels or list(t.labels))
    )
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in t.hf_text_columns},
            "label": label,
            "idx": datasets.Value("int32"),
        }
    )
    # config_id=task: a Hub load names the directory after the configuration alone (its data
    # files come from the dataset card, not from arguments that would add a suffix).
    builder = Parquet(cache_dir=str(staging / "cache"), dataset_name="glue", config_name=task, config_id=task,
                      hash="0" * 40, data_files=files, features=features)  # fmt: skip
    builder.download_and_prepare()
    # Without a Hub repository the builder writes under glue/; a Hub load writes under
    # nyu-mll___glue/ (namespace___name), where the offline lookup searches.
    target = cache / "nyu-mll___glue" / task
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(staging / "cache" / "glue" / task, target)
    shutil.rmtree(staging)
    return target


def _table(split, n: int | None = None) -> pa.Table:
    """A GlueSplit as a table with nyu-mll/glue's columns (its first ``n`` rows)."""
    t = split.task
    n = len(split) if n is None else n
    cols = {t.hf_text_columns[0]: split.text_a[:n]}
    if split.text_b is not None:
        cols[t.hf_text_columns[1]] = split.text_b[:n]
    return pa.table({**cols, "label": list(split.labels[:n]), "idx": list(range(n))})


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """datasets offline with an empty cache of its own (returned). datasets reads
    HF_DATASETS_CACHE and HF_HUB_OFFLINE when it is imported, so the module's values are set."""
    cache = tmp_path / "hf" / "datasets"
    cache.mkdir(parents=True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


def test_by_name_is_the_parquet_loader_on_the_same_files(shared_data, offline, tmp_path):
    """nyu-mll/glue from the cache gives the GlueSplit that the parquet loader gives for the
    Hub's own parquet file (the shared QNLI validation file, a few rows)."""
    with lzma.open(
        shared_data / "glue" / "extra" / "hf_parquet" / "qnli" / "validation-00000-of-00001.parquet.xz"
    ) as f:
        table = pq.read_table(f)
    train, dev = table.slice(0, 40), table.slice(40, 25)
    write_hub_cache(offline, "qnli", {"train": train, "validation": dev})
    pq.write_table(dev, tmp_path / "dev.parquet")
    direct = load_glue_hf("qnli", "dev", data_files=tmp_path / "dev.parquet")
    found = find_split("qnli", "dev", ["nyu-mll/glue"])
    assert found == HubSplit(HUB_NAME, "qnli", "dev") and str(found) == "nyu-mll/glue/qnli:validation"
    for source in ("nyu-mll/glue", "glue"):
        by_name = load_split("qnli", "dev", [source])
        assert (by_name.text_a, by_name.text_b, by_name.labels) == (
            direct.text_a,
            direct.text_b,
            direct.labels,
        )
        assert by_name.split == "dev" and by_name.source == "nyu-mll/glue/qnli:validation"
    assert load_split("qnli", "train", ["glue"]).labels == train.column("label").to_pylist()
    # Sources are searched in order: a directory without the split passes on to the hub, and
    # one with it comes first.
    assert isinstance(find_split("qnli", "dev", [tmp_path, "glue"]), HubSplit)
    (tmp_path / "qnli").mkdir()
    shutil.copyfile(tmp_path / "dev.parquet", tmp_path / "qnli" / "validation-00000-of-00001.parquet")
    assert find_split("qnli", "dev", [tmp_path, "glue"]) == [
        tmp_path / "qnli" / "validation-00000-of-00001.parquet"
    ]


def test_not_cached_offline_is_one_line_naming_the_task(offline):
    sst2 = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "dev.tsv")
    with pytest.raises(GlueDataError) as e:  # nothing of nyu-mll/glue in the cache
        find_split("sst2", "train", ["glue"])
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("GLUE task sst2 (nyu-mll/glue, configuration sst2) is not in the Hugging Face "
                              f"datasets cache {offline} and offline mode is on")  # fmt: skip
    write_hub_cache(offline, "sst2", {"train": _table(sst2, 20), "validation": _table(sst2, 20)})
    assert len(load_split("sst2", "dev", ["glue"])) == 20
    with pytest.raises(
        GlueDataError, match=r"^GLUE task rte .* is not in the Hugging Face datasets cache"
    ) as e:
        load_split("rte", "train", ["nyu-mll/glue"])  # another configuration is cached, not this one
    assert "\n" not in str(e.value) and "sst2" in str(e.value)  # datasets lists what is cached


def test_label_names_in_another_order_are_refused(offline):
    rte = load_glue_tsv("rte", sample_glue_dir() / "RTE" / "dev.tsv")
    write_hub_cache(offline, "rte", {"train": _table(rte, 8), "validation": _table(rte, 8)},
                    labels=["not_entailment", "entailment"])  # fmt: skip
    with pytest.raises(GlueDataError, match=r"nyu-mll/glue/rte:validation: label names .*in that order"):
        load_split("rte", "dev", ["glue"])


def test_a_local_directory_named_glue_stays_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_source("glue") == hub_source("nyu-mll/glue") == HUB_NAME
    assert hub_source("glue/") is None and hub_source("data/glue") is None
    shutil.copytree(sample_glue_dir() / "RTE", tmp_path / "glue" / "RTE")
    assert hub_source("glue") is None
    assert find_split("rte", "dev", ["glue"]) == Path("glue") / "RTE" / "dev.tsv"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    text = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv").text_a
    tok = train_tokenizer(text, vocab_size=300, min_frequency=1)
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = build_model(get_preset("crammed-bert-tiny", vocab_size=tok.get_vocab_size()), "mlm")
    return save_checkpoint(model, root / "ckpt", tokenizer_path=root / "tokenizer.json")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run([sys.executable, "-m", "ultracram", "glue", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip


def test_cli_fine_tunes_from_the_cache_with_the_offline_variables(checkpoint, tmp_path):
    """``ultracram glue --glue_dir nyu-mll/glue`` end to end in a fresh process: HF_HOME locates
    the cache and HF_DATASETS_OFFLINE (then HF_HUB_OFFLINE) keeps datasets off the network."""
    home = tmp_path / "hf_home"
    train = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "train.tsv")
    dev = load_glue_tsv("sst2", sample_glue_dir() / "SST-2" / "dev.tsv")
    write_hub_cache(home / "datasets", "sst2", {"train": _table(train, 48), "validation": _table(dev, 24)})
    out = tmp_path / "out"
    common = ["--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", "--finetune.epochs", "1",
              "--finetune.batch_size", "8"]  # fmt: skip
    proc = _cli([*common, "--glue_dir", "nyu-mll/glue", "--tasks", "sst2"],
                {"HF_HOME": str(home), "HF_DATASETS_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["glue_dirs"] == ["nyu-mll/glue"]
    sst = results["checkpoints"][0]["tasks"]["sst2"]
    assert sst["train_examples"] == 48 and sst["dev_examples"] == {"dev": 24}
    assert "train step 6/6" in proc.stdout  # progress lines (stdout is a pipe)
    # Another task, not cached, with the other variable: one line naming it, before any training.
    proc = _cli([*common, "--out", str(tmp_path / "out2"), "--glue_dir", "glue", "--tasks", "sst2,rte"],
                {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ultracram glue: error: GLUE task rte (nyu-mll/glue, configuration rte) is not in the "
                           "Hugging Face datasets cache"), proc.stderr  # fmt: skip
    assert not (tmp_path / "out2").exists() and "train step" not in proc.stdout
