"""GLUE task table, loaders (glue_data TSV and Hugging Face files) and metrics."""

import lzma
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ultracram.data.glue import (
    TASKS,
    GlueDataError,
    check_glue_dir,
    compute_metrics,
    eval_columns,
    find_split,
    get_task,
    load_glue_hf,
    load_glue_tsv,
    load_split,
    parse_tasks,
)

OFFICIAL = {  # (task, split): rows, from the GLUE paper / HF dataset cards
    ("cola", "train"): 8551, ("cola", "dev"): 1043, ("sst2", "train"): 67349, ("sst2", "dev"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
    ("rte", "train"): 2490, ("rte", "dev"): 277, ("wnli", "train"): 635, ("wnli", "dev"): 71,
    ("qnli", "dev"): 5463, ("mnli", "dev_matched"): 9815, ("mnli", "dev_mismatched"): 9832,
    ("qqp", "dev"): 40430,
}  # fmt: skip


@pytest.fixture(scope="session")
def glue_dirs(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """(glue_data, extra) unpacked once per session from ../shared/data/glue."""
    root = tmp_path_factory.mktemp("glue")
    with tarfile.open(shared_data / "glue" / "glue_data.tar.xz") as tar:
        tar.extractall(root, filter="data")
    extra = root / "extra"
    for xz in (shared_data / "glue" / "extra").rglob("*.xz"):
        out = extra / xz.relative_to(shared_data / "glue" / "extra").with_suffix("")
        out.parent.mkdir(parents=True, exist_ok=True)
        with lzma.open(xz) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root / "glue_data", extra


@pytest.mark.parametrize("task,split", list(OFFICIAL))
def test_official_counts(glue_dirs, task, split):
    data = load_split(task, split, glue_dirs)
    assert len(data) == OFFICIAL[task, split]
    t = get_task(task)
    assert (data.text_b is None) == (len(t.text_columns) == 1)
    assert len(data.text_a) == len(data)
    if t.is_regression:
        assert all(0.0 <= y <= 5.0 for y in data.labels)
    else:
        assert set(data.labels) == set(range(t.num_labels))  # every class occurs in these splits


def test_tsv_quirks(glue_dirs):
    glue, _ = glue_dirs
    cola = load_glue_tsv("cola", glue / "CoLA" / "dev.tsv")
    assert cola.text_a[0] == "The sailors rode the breeze clear of the rocks."  # headerless: row 1 is data
    mrpc = load_glue_tsv("mrpc", glue / "MRPC" / "dev.tsv")  # header starts with a BOM
    assert mrpc.text_b[0].startswith('"The foodservice')  # QUOTE_NONE keeps the quote as text
    sst = load_glue_tsv("sst2", glue / "SST-2" / "dev.tsv")
    assert sst.text_a[0].endswith(" ")  # kept byte for byte, as HF does
    rte = load_glue_tsv("rte", glue / "RTE" / "dev.tsv")
    assert rte.labels[0] == TASKS["rte"].labels.index("not_entailment")


@pytest.mark.parametrize(
    "task,split,parquet",
    [("mnli", "dev_matched", "mnli/validation_matched"), ("mnli", "dev_mismatched", "mnli/validation_mismatched"),
     ("qqp", "dev", "qqp/validation"), ("qnli", "dev", "qnli/validation")],
)  # fmt: skip
def test_parquet_matches_tsv(glue_dirs, task, split, parquet):
    """The HF parquet files load with the official counts and agree with the TSVs made from
    them, which checks the label-name -> id mapping of both loaders."""
    _, extra = glue_dirs
    hf = load_glue_hf(task, split, data_files=extra / "hf_parquet" / f"{parquet}-00000-of-00001.parquet")
    tsv = load_split(task, split, [extra])
    assert len(hf) == len(tsv) == OFFICIAL[task, split]
    assert hf.labels == tsv.labels
    assert hf.text_a == tsv.text_a and hf.text_b == tsv.text_b


def test_find_split_prefers_order_and_layouts(glue_dirs):
    glue, extra = glue_dirs
    assert find_split("qnli", "dev", [extra, glue]) == extra / "QNLI" / "dev.tsv"
    assert find_split("qnli", "dev", [glue, extra]) == glue / "QNLI" / "dev.tsv"
    assert find_split("qnli", "train", [glue, extra]) is None
    found = check_glue_dir([glue, extra])
    assert found["mnli"]["train"] is None and found["mnli"]["dev_matched"] is not None
    assert found["cola"]["train"] == glue / "CoLA" / "train.tsv"


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_train_loaders_on_small_files(tmp_path):
    """MNLI/QQP/QNLI train splits are not in shared data: check their readers on small files
    in both layouts (full glue_data header, HF parquet)."""
    import pandas as pd

    mnli_header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")  # fmt: skip
    rows = [f"{i}\t1\t1e\tfiction\t(x)\t(y)\t(X)\t(Y)\tpremise {i}\thyp \"{i}\tneutral\t{lab}"
            for i, lab in enumerate(["entailment", "neutral", "contradiction"])]  # fmt: skip
    _write(tmp_path / "MNLI" / "train.tsv", "\n".join([mnli_header, *rows]) + "\n")
    _write(tmp_path / "QQP" / "train.tsv",
           "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tA?\tB?\t1\n4\t5\t6\tC?\tD?\t0\n")  # fmt: skip
    pd.DataFrame(
        {"question": ["q1", "q2"], "sentence": ["s1", "s2"], "label": [1, 0], "idx": [0, 1]}
    ).to_parquet(_write(tmp_path / "qnli" / "train-00000-of-00001.parquet", b""))
    mnli = load_split("mnli", "train", [tmp_path])
    assert mnli.labels == [0, 1, 2] and mnli.text_b[0] == 'hyp "0'
    qqp = load_split("qqp", "train", [tmp_path])
    assert qqp.labels == [1, 0] and qqp.text_a == ["A?", "C?"]
    qnli = load_split("qnli", "train", [tmp_path])
    assert qnli.labels == [1, 0] and qnli.text_b == ["s1", "s2"]
    pd.DataFrame({"premise": ["p"], "hypothesis": ["h"], "label": [2]}).to_json(
        tmp_path / "m.jsonl", orient="records", lines=True
    )
    assert load_glue_hf("mnli", "train", data_files=tmp_path / "m.jsonl").labels == [2]


@pytest.mark.parametrize(
    "task,content,message",
    [
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", r"RTE/dev.tsv:2: unknown label 'maybe'"),
        ("rte", "index\tsentence1\tlabel\n0\ta\tentailment\n", r"RTE/dev.tsv:1: missing column\(s\) 'sentence2'"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tentailment\n", r"RTE/dev.tsv:2: 3 tab-separated"),
        ("rte", "", r"RTE/dev.tsv: the file is empty"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n", r"RTE/dev.tsv: no data rows"),
        ("rte", b"index\tsentence1\tsentence2\tlabel\n0\ta\t\xff\tentailment\n", r"RTE/dev.tsv:2: byte 4 is not valid UTF-8"),
        ("cola", "index\tsentence\n0\tHello.\n", r"CoLA/dev.tsv:1: found a header"),
        ("cola", "gj04\t2\t\tHello.\n", r"CoLA/dev.tsv:1: unknown label '2'"),
        ("stsb", "sentence1\tsentence2\tscore\na\tb\tfive\n", r"STS-B/dev.tsv:2: label 'five' is not a number"),
        ("stsb", "sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\t5.2\n", r"STS-B/dev.tsv:3: STS-B score 5.2 is outside"),
        ("stsb", "sentence1\tsentence2\tscore\na\tb\t-1\n", r"STS-B/dev.tsv:2: STS-B score -1 is outside"),
    ],
)  # fmt: skip
def test_malformed_tsv(tmp_path, task, content, message):
    t = get_task(task)
    path = _write(tmp_path / t.display / "dev.tsv", content)
    with pytest.raises(GlueDataError, match=message):
        load_glue_tsv(task, path)


def test_malformed_hf_and_directories(tmp_path):
    import pandas as pd

    bad = tmp_path / "qnli" / "validation-00000-of-00001.parquet"
    bad.parent.mkdir()
    pd.DataFrame({"question": ["q"], "sentence": ["s"], "label": [-1]}).to_parquet(bad)
    with pytest.raises(GlueDataError, match=r"validation-00000-of-00001.parquet: row 0: unknown label -1"):
        load_split("qnli", "dev", [tmp_path])
    pd.DataFrame({"question": ["q"], "label": [0]}).to_parquet(bad)
    with pytest.raises(GlueDataError, match=r"missing column\(s\) 'sentence'"):
        load_split("qnli", "dev", [tmp_path])
    _write(tmp_path / "e.parquet", b"")
    with pytest.raises(GlueDataError, match=r"e.parquet: the file is empty"):
        load_glue_hf("qnli", "dev", data_files=tmp_path / "e.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GlueDataError, match=r"no GLUE files in .*empty"):
        check_glue_dir([empty])
    with pytest.raises(GlueDataError, match=r"no RTE dev split in .*RTE/dev.tsv"):
        load_split("rte", "dev", [empty])
    with pytest.raises(GlueDataError, match=r"does not exist"):
        find_split("rte", "dev", [tmp_path / "nope"])
    with pytest.raises(GlueDataError, match=r"unknown GLUE task\(s\) 'sst3'"):
        parse_tasks("cola,sst3")
    with pytest.raises(GlueDataError, match=r"'sst3' \(did you mean 'sst2'\?\)"):
        parse_tasks("cola,sst3")
    with pytest.raises(GlueDataError, match=r"did you mean 'mrpc'"):
        get_task("mrcp")
    stsb = tmp_path / "stsb" / "train-00000-of-00001.parquet"
    stsb.parent.mkdir()
    pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1.0, 6.0]}).to_parquet(stsb)
    with pytest.raises(GlueDataError, match=r"train-00000-of-00001.parquet: row 1: STS-B score 6 is outside"):
        load_split("stsb", "train", [tmp_path])


def test_task_table():
    assert [t.name for t in parse_tasks("all")] == list(TASKS)
    assert [t.name for t in parse_tasks("RTE,sst-2")] == ["sst2", "rte"]
    assert {t.name for t in TASKS.values()} == {
        "cola",
        "sst2",
        "mrpc",
        "stsb",
        "qqp",
        "mnli",
        "qnli",
        "rte",
        "wnli",
    }
    assert TASKS["stsb"].num_labels == 1 and TASKS["mnli"].num_labels == 3
    assert [c.label for c in eval_columns()][:2] == ["MNLI-m", "MNLI-mm"] and len(eval_columns()) == 10


@pytest.mark.parametrize("task", list(TASKS))
def test_metrics_match_sklearn_scipy(task):
    t = TASKS[task]
    rng = np.random.default_rng(len(task))
    if t.is_regression:
        y = rng.uniform(0, 5, 300)
        p = y + rng.normal(0, 1.5, 300)
        want = {"pearson": pearsonr(p, y).statistic, "spearman": spearmanr(p, y).statistic}
    else:
        y = rng.integers(0, t.num_labels, 300)
        p = np.where(rng.random(300) < 0.6, y, rng.integers(0, t.num_labels, 300))
        want = {"accuracy": lambda: accuracy_score(y, p), "f1": lambda: f1_score(y, p),
                "matthews": lambda: matthews_corrcoef(y, p)}  # fmt: skip
        want = {k: want[k]() for k in t.metrics}
    got = compute_metrics(task, p.tolist(), y.tolist())
    assert set(got) == set(t.metrics) and t.main_metric in got
    for name, value in got.items():
        assert value == pytest.approx(want[name], abs=1e-12)
    assert got[t.main_metric] > 0.1  # the predictions are informative by construction


def test_metrics_constant_predictions():
    assert compute_metrics("stsb", [1.0] * 5, [0.0, 1, 2, 3, 4])["spearman"] == 0.0
    assert compute_metrics("cola", [1] * 4, [0, 1, 1, 0])["matthews"] == 0.0
