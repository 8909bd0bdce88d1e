"""GLUE (Wang et al. 2019): the task table, loaders and metrics.

One row of ``TASKS`` per task says which columns hold the text, which strings are labels
(and their ids), which metrics the papers report and which one counts in the GLUE average.
Two loaders read the same tasks:

- ``load_glue_tsv``: the original ``glue_data/`` layout made by ``download_glue_data.py``,
  with its quirks (CoLA has no header; MRPC's header starts with a byte-order mark; SST-2
  sentences end with a space; QNLI/RTE labels are strings). Files are read like GLUE's own
  readers, tab-separated with ``csv.QUOTE_NONE`` (a ``"`` is text, never a quote). The
  reduced MNLI/QQP dev TSVs of ../shared/data/glue/extra (``*.reduced.tsv``) are read too.
- ``load_glue_hf``: Hugging Face ``datasets`` (``nyu-mll/glue`` layout), from local
  parquet/json/csv files or by hub name (``datasets.load_dataset("nyu-mll/glue", task)``,
  which reads the datasets cache when offline or when the Hub cannot be reached).

``find_split`` looks for a split in one or more sources, searched in order: directories in both
layouts, or the hub dataset named ``nyu-mll/glue`` (``glue`` for short). Every problem with the
input is a ``GlueDataError`` naming the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ultracram.errors import UltracramError, optional_import
from ultracram.settings import suggest

Metric = Literal["accuracy", "f1", "matthews", "pearson", "spearman"]


class GlueDataError(UltracramError, ValueError):
    """A GLUE file or directory is not what the loader expects; the message says where and why."""


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its data is, how to read it and how to score it."""

    name: str
    """Short name used on the command line (``cola``, ``sst2``, ...; the HF config name)."""
    display: str
    """Name in tables and in the glue_data directory (``CoLA``, ``SST-2``, ...)."""
    text_columns: tuple[str, ...]
    """Header names of the one or two text columns in the glue_data TSV files."""
    label_column: str
    """Header name of the label column in the glue_data TSV files."""
    hf_text_columns: tuple[str, ...]
    """The same text columns in the Hugging Face ``nyu-mll/glue`` layout."""
    labels: tuple[str, ...]
    """Label names in id order (HF order); empty for regression (STS-B)."""
    tsv_labels: tuple[str, ...]
    """The label strings of the TSV files in id order (``0``/``1`` or the label names)."""
    metrics: tuple[Metric, ...]
    """Metrics reported for the task (the papers' choice)."""
    main_metric: Metric
    """The metric that counts in the GLUE average (BERT paper: F1 for MRPC/QQP, Spearman for
    STS-B, Matthews correlation for CoLA, accuracy otherwise)."""
    dev_splits: tuple[str, ...] = ("dev",)
    """Evaluation splits (MNLI has matched and mismatched)."""
    headerless_columns: tuple[str, ...] = ()
    """Column names of a TSV without a header line (CoLA); empty when files have a header."""

    @property
    def num_labels(self) -> int:
        """Outputs of the classification head: 1 for regression."""
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels


_ENTAIL = ("entailment", "not_entailment")
_ACC = ("accuracy",)

TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", ("sentence",), "label", ("sentence",), ("unacceptable", "acceptable"),
                 ("0", "1"), ("matthews",), "matthews",
                 headerless_columns=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("sentence",), ("negative", "positive"),
                 ("0", "1"), _ACC, "accuracy"),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
                 ("not_equivalent", "equivalent"), ("0", "1"), ("f1", "accuracy"), "f1"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"),
                 (), (), ("pearson", "spearman"), "spearman"),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
                 ("not_duplicate", "duplicate"), ("0", "1"), ("f1", "accuracy"), "f1"),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
                 ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
                 _ACC, "accuracy", dev_splits=("dev_matched", "dev_mismatched")),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("question", "sentence"),
                 _ENTAIL, _ENTAIL, _ACC, "accuracy"),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
                 _ENTAIL, _ENTAIL, _ACC, "accuracy"),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
                 ("not_entailment", "entailment"), ("0", "1"), _ACC, "accuracy"),
    ]
}  # fmt: skip

# How the split names of the glue_data layout map to the Hugging Face ones.
HF_SPLITS = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
             "dev_mismatched": "validation_mismatched", "test": "test"}  # fmt: skip


def get_task(name: str) -> GlueTask:
    """The task called ``name`` (case-insensitive; ``SST-2`` and ``sst2`` both work)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise GlueDataError(f"unknown GLUE task {name!r}{suggest(key, TASKS)}; known: {', '.join(TASKS)}")
    return TASKS[key]


def parse_tasks(spec: str | Sequence[str]) -> list[GlueTask]:
    """``"all"`` or a comma-separated list (or a list) of task names -> tasks, in table order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(TASKS.values())
    problems = [n for n in names if n.lower().replace("-", "") not in TASKS]
    if problems or not names:
        hints = "".join(suggest(n.lower().replace("-", ""), TASKS) for n in problems)
        raise GlueDataError(f"unknown GLUE task(s) {', '.join(map(repr, problems)) or '(none given)'}{hints}; "
                            f"expected 'all' or a comma-separated list of: {', '.join(TASKS)}")  # fmt: skip
    chosen = {get_task(n).name for n in names}
    return [t for t in TASKS.values() if t.name in chosen]


@dataclass
class GlueSplit:
    """One split of a task: texts (B of them: ``text_b`` is None for single-sentence tasks)
    and labels (class ids, or floats for STS-B)."""

    task: GlueTask
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int] | list[float]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> GlueSplit:
        b = [self.text_b[i] for i in indices] if self.text_b is not None else None
        return GlueSplit(self.task, self.split, [self.text_a[i] for i in indices], b,
                         [self.labels[i] for i in indices], self.source)  # type: ignore[misc]  # fmt: skip


# --------------------------------------------------------------------------------------------
# glue_data TSV layout
# --------------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as strict UTF-8 (a BOM on the first line is dropped)."""
    if not path.is_file():
        raise GlueDataError(f"{path}: no such file")
    raw = path.read_bytes()
    if not raw.strip():
        raise GlueDataError(f"{path}: the file is empty; expected a GLUE TSV file")
    lines = raw.split(b"\n")
    if lines[-1] == b"":  # the newline at the end of the file
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GlueDataError(
                f"{path}:{number}: byte {e.start} is not valid UTF-8 ({line[e.start : e.start + 1]!r}); "
                "expected a UTF-8 text file"
            ) from e
        if number == 1:
            text = text.removeprefix("\ufeff")
        out.append(text.removesuffix("\r"))
    return out


def _label_id(task: GlueTask, value: str, where: str) -> int | float:
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise GlueDataError(f"{where}: label {value!r} is not a number; expected a similarity score")
        _check_score(task, score, where)
        return score
    try:
        return task.tsv_labels.index(value)
    except ValueError:
        raise GlueDataError(
            f"{where}: unknown label {value!r} for {task.display}; expected one of "
            f"{', '.join(repr(v) for v in task.tsv_labels)}"
        ) from None


STSB_RANGE = (0.0, 5.0)
"""STS-B similarity scores lie in [0, 5] (Cer et al. 2017)."""


def _check_score(task: GlueTask, score: float, where: str) -> None:
    low, high = STSB_RANGE
    if not low <= score <= high:
        raise GlueDataError(f"{where}: {task.display} score {score:g} is outside [{low:g}, {high:g}]; "
                            "expected a similarity score from 0 to 5")  # fmt: skip


def load_glue_tsv(task: GlueTask | str, path: str | Path, split: str | None = None) -> GlueSplit:
    """Read one labelled split (train/dev) of ``task`` from a glue_data TSV file.

    Columns are found by header name, so the full MNLI/QQP files and the reduced dev files of
    glue/extra both load. CoLA has no header: its four columns are positional. Every line must
    have as many tab-separated fields as the header (``csv.QUOTE_NONE``: quotes are text).
    """
    task = get_task(task) if isinstance(task, str) else task
    path = Path(path)
    lines = _read_lines(path)
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.headerless_columns:
        header, first_line = list(task.headerless_columns), 1
        if rows and rows[0] and rows[0][0] == "index":
            raise GlueDataError(f"{path}:1: found a header {rows[0]}; {task.display} train/dev files have "
                                "no header (is this the unlabelled test.tsv?)")  # fmt: skip
    else:
        header, rows, first_line = rows[0], rows[1:], 2
        wanted = [*task.text_columns, task.label_column]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise GlueDataError(
                f"{path}:1: missing column(s) {', '.join(map(repr, missing))} in the header {header}; "
                f"{task.display} files need {', '.join(map(repr, wanted))}"
            )
    if not rows:
        raise GlueDataError(f"{path}: no data rows after the header; expected {task.display} examples")
    cols = [header.index(c) for c in task.text_columns]
    label_col = header.index(task.label_column)
    texts: list[list[str]] = [[] for _ in cols]
    labels = []
    for number, row in enumerate(rows, start=first_line):
        where = f"{path}:{number}"
        if len(row) != len(header):
            raise GlueDataError(f"{where}: {len(row)} tab-separated field(s); expected {len(header)} "
                                f"({', '.join(header)})")  # fmt: skip
        for out, c in zip(texts, cols, strict=True):
            out.append(row[c])
        labels.append(_label_id(task, row[label_col], where))
    return GlueSplit(task, split or path.name.split(".")[0], texts[0], texts[1] if len(texts) > 1 else None,
                     labels, str(path))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Hugging Face datasets layout (parquet / json / csv files, or the hub)
# --------------------------------------------------------------------------------------------

_HF_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}

HUB_NAME = "nyu-mll/glue"
"""The GLUE dataset on the Hugging Face Hub; its parquet files are the layout ``split_candidates``
finds on disk (``TASK/SPLIT-*.parquet``), so both go through the same column/label mapping."""
HUB_ALIASES = ("nyu-mll/glue", "glue")
"""What ``--glue_dir`` accepts as the hub dataset (when no directory of that name exists)."""


def hub_source(source: str | Path) -> str | None:
    """The hub dataset that a GLUE source names (``nyu-mll/glue``, or ``glue`` for short), or
    None when it is a directory. An existing directory of that name stays a directory: a local
    ``glue/`` folder must not silently turn into a download."""
    text = str(source)
    if text in HUB_ALIASES and not Path(text).is_dir():
        return HUB_NAME
    return None


@dataclass(frozen=True)
class HubSplit:
    """A split that ``find_split`` found in a hub dataset (``load_split`` loads it)."""

    name: str
    task: str
    split: str

    def __str__(self) -> str:
        return f"{self.name}/{self.task}:{HF_SPLITS.get(self.split, self.split)}"


# One load per (dataset, task, cache, offline) and process: run_glue asks for a task's train and
# dev splits separately, and each load_dataset call would ask the Hub again (or print the
# "using the cached version" warning again when offline).
_HUB_LOADED: dict[tuple[str, str, str, bool], Any] = {}


def _hub_dataset(name: str, task: GlueTask):
    """All splits of configuration ``task.name`` of hub dataset ``name`` (a ``DatasetDict``),
    through ``datasets.load_dataset``: from the Hub, or from the datasets cache when offline
    (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) or when the Hub cannot be reached."""
    datasets = optional_import("datasets", f"loading GLUE by name (--glue_dir {name})")
    cache = str(datasets.config.HF_DATASETS_CACHE)
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    key = (name, task.name, cache, offline)
    if key not in _HUB_LOADED:
        try:
            _HUB_LOADED[key] = datasets.load_dataset(name, task.name)
        except Exception as e:  # connection, cache and config errors come in many types
            raise GlueDataError(_hub_error(name, task, e, cache, offline)) from e
    return _HUB_LOADED[key]


def _hub_error(name: str, task: GlueTask, error: Exception, cache: str, offline: bool) -> str:
    """One line saying why ``task`` of hub dataset ``name`` did not load."""
    why = " ".join(str(error).split()) or type(error).__name__  # datasets' messages span lines
    # What datasets raises for "not cached": offline, ConnectionError (nothing of the dataset in
    # the cache) or ValueError "Couldn't find cache ..." (other configurations only); without
    # the network, the Hub's ConnectionError once the cache fallback failed too.
    not_cached = isinstance(error, ConnectionError | FileNotFoundError) or "find cache" in why
    if not_cached and offline:
        return (f"GLUE task {task.name} ({name}, configuration {task.name}) is not in the Hugging Face "
                f"datasets cache {cache} and offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE); "
                f"load it once with the network, or pass --glue_dir DIR with glue_data or parquet files "
                f"({why})")  # fmt: skip
    if not_cached:
        return (f"GLUE task {task.name} ({name}, configuration {task.name}) is not in the Hugging Face "
                f"datasets cache {cache} and the Hub cannot be reached: {why}; connect, or pass --glue_dir "
                "DIR with glue_data or parquet files")  # fmt: skip
    return f"cannot load GLUE task {task.name} from {name} (configuration {task.name}): {why}"


def load_glue_hf(
    task: GlueTask | str,
    split: str = "dev",
    *,
    data_files: str | Path | Sequence[str | Path] | None = None,
    hub_name: str = HUB_NAME,
) -> GlueSplit:
    """Read a split with Hugging Face ``datasets``.

    With ``data_files`` (parquet, json/jsonl or csv files with the ``nyu-mll/glue`` columns),
    the files are read locally; without, ``hub_name`` (configuration ``task.name``) is loaded
    with ``datasets.load_dataset``: from the Hub, or from the datasets cache when offline
    (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) or when the Hub cannot be reached. ``split`` uses
    glue_data names (``dev``, ``dev_matched``, ...); HF's names (``validation``, ...) work too.
    Both give the same ``GlueSplit`` (``_glue_split`` maps the columns and labels).
    """
    datasets = optional_import("datasets", "loading GLUE through Hugging Face datasets")
    task = get_task(task) if isinstance(task, str) else task
    hf_split = HF_SPLITS.get(split, split)
    if data_files is None:
        loaded = _hub_dataset(hub_name, task)
        if hf_split not in loaded:
            raise GlueDataError(f"{hub_name} configuration {task.name} has no split {hf_split!r} (has "
                                f"{', '.join(loaded)})")  # fmt: skip
        ds = loaded[hf_split]
        source = f"{hub_name}/{task.name}:{hf_split}"
    else:
        files = [Path(data_files)] if isinstance(data_files, str | Path) else [Path(f) for f in data_files]
        for f in files:
            if not f.is_file():
                raise GlueDataError(f"{f}: no such file")
            if f.stat().st_size == 0:
                raise GlueDataError(f"{f}: the file is empty; expected a {task.display} {f.suffix} file")
        builders = {_HF_BUILDERS.get(f.suffix.lower()) for f in files}
        if None in builders or len(builders) != 1:
            raise GlueDataError(f"{', '.join(map(str, files))}: expected files of one type among "
                                f"{', '.join(_HF_BUILDERS)}")  # fmt: skip
        source = ", ".join(map(str, files))
        try:
            ds = datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
        except Exception as e:  # pyarrow/json errors come in many types; name the file
            raise GlueDataError(f"{source}: cannot be read as {task.display} data: {e}") from e
    return _glue_split(task, split, ds, source)


def _glue_split(task: GlueTask, split: str, ds, source: str) -> GlueSplit:
    """A ``datasets.Dataset`` with the ``nyu-mll/glue`` columns as a ``GlueSplit``, checked."""
    wanted = [*task.hf_text_columns, "label"]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise GlueDataError(f"{source}: missing column(s) {', '.join(map(repr, missing))} (has "
                            f"{ds.column_names}); {task.display} needs {', '.join(map(repr, wanted))}")  # fmt: skip
    names = getattr(ds.features["label"], "names", None)  # a ClassLabel (nyu-mll/glue's files have one)
    if names is not None and not task.is_regression and list(names) != list(task.labels):
        # Ids are mapped by position: another order would silently swap the classes.
        raise GlueDataError(f"{source}: label names {list(names)}; {task.display} expects "
                            f"{list(task.labels)} in that order")  # fmt: skip
    raw_labels = ds["label"]
    labels: list = []
    for row, value in enumerate(raw_labels):
        where = f"{source}: row {row}"
        if task.is_regression:
            try:
                score = float(value)
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score):
                raise GlueDataError(f"{where}: label {value!r} is not a number; expected a similarity score")
            _check_score(task, score, where)
            labels.append(score)
        elif isinstance(value, int | np.integer) and 0 <= value < task.num_labels:
            labels.append(int(value))
        else:
            hint = " (-1 marks the unlabelled test split)" if value == -1 else ""
            raise GlueDataError(f"{where}: unknown label {value!r}{hint}; expected an id in "
                                f"0..{task.num_labels - 1} ({', '.join(task.labels)})")  # fmt: skip
    texts = [list(ds[c]) for c in task.hf_text_columns]
    return GlueSplit(task, split, texts[0], texts[1] if len(texts) > 1 else None, labels, source)


# --------------------------------------------------------------------------------------------
# Finding a split on disk
# --------------------------------------------------------------------------------------------


def split_candidates(task: GlueTask, split: str, directory: Path) -> list[Path | list[Path]]:
    """Where ``split`` of ``task`` may be under ``directory``, in order of preference."""
    hf_split = HF_SPLITS.get(split, split)
    out: list[Path | list[Path]] = [
        directory / task.display / f"{split}.tsv",
        directory / task.display / f"{split}.reduced.tsv",
    ]
    for base in (directory / task.name, directory / "hf_parquet" / task.name):
        for ext in ("parquet", "jsonl", "json", "csv"):
            files = sorted(base.glob(f"{hf_split}-*.{ext}")) + sorted(base.glob(f"{hf_split}.{ext}"))
            if files:
                out.append(files)
    return out


def find_split(
    task: GlueTask | str, split: str, directories: Sequence[str | Path]
) -> Path | list[Path] | HubSplit | None:
    """The first file (or list of HF shard files, or ``HubSplit`` of the hub dataset) holding
    ``split`` of ``task`` in ``directories`` (searched in order), or None when there is none.
    A hub source (``nyu-mll/glue`` or ``glue``) is loaded here, so a task that is not in the
    cache offline fails now, before any training."""
    task = get_task(task) if isinstance(task, str) else task
    for d in directories:
        hub = hub_source(d)
        if hub is not None:
            if HF_SPLITS.get(split, split) in _hub_dataset(hub, task):
                return HubSplit(hub, task.name, split)
            continue
        d = Path(d)
        if not d.is_dir():
            raise GlueDataError(f"GLUE directory {d} does not exist or is not a directory (to load GLUE "
                                f"through Hugging Face datasets, pass {HUB_NAME})")  # fmt: skip
        for c in split_candidates(task, split, d):
            if isinstance(c, list) or c.is_file():
                return c
    return None


def load_split(task: GlueTask | str, split: str, directories: Sequence[str | Path]) -> GlueSplit:
    """Load ``split`` of ``task`` from whichever layout ``find_split`` finds first."""
    task = get_task(task) if isinstance(task, str) else task
    found = find_split(task, split, directories)
    if found is None:
        looked = []
        for d in directories:
            if hub_source(d) is not None:
                looked.append(f"{d} (no {HF_SPLITS.get(split, split)} split)")
            else:
                looked += [str(c) for c in split_candidates(task, split, Path(d))]
        raise GlueDataError(
            f"no {task.display} {split} split in {', '.join(map(str, directories))}; expected "
            f"{task.display}/{split}.tsv (glue_data layout) or {task.name}/{HF_SPLITS.get(split, split)}-*.parquet "
            f"(Hugging Face layout); looked for: {', '.join(looked)}"
        )
    if isinstance(found, HubSplit):
        return load_glue_hf(task, split, hub_name=found.name)
    if isinstance(found, list):
        return load_glue_hf(task, split, data_files=found)
    return load_glue_tsv(task, found, split)


def check_glue_dir(directories: Sequence[str | Path], tasks: Sequence[GlueTask] | None = None) -> dict:
    """Which splits of which tasks are present: {task: {split: path or None}}. Raises when no
    task has any split at all (a directory without GLUE files)."""
    tasks = list(tasks or TASKS.values())
    found = {t.name: {s: find_split(t, s, directories) for s in ("train", *t.dev_splits)} for t in tasks}
    if not any(p for splits in found.values() for p in splits.values()):
        raise GlueDataError(
            f"no GLUE files in {', '.join(map(str, directories))}; expected the glue_data layout "
            "(CoLA/train.tsv, SST-2/dev.tsv, ...) or Hugging Face files (cola/train-*.parquet, ...)"
        )
    return found


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def compute_metrics(task: GlueTask | str, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The task's metrics (fractions in [0, 1] or correlations in [-1, 1]), from scikit-learn
    and scipy. ``predictions`` are class ids, or scores for STS-B."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    task = get_task(task) if isinstance(task, str) else task
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1 or not len(p):
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be equal-length non-empty vectors")

    def corr(fn) -> float:  # a constant prediction has no correlation; report 0 as GLUE does
        if np.all(p == p[0]) or np.all(y == y[0]):
            return 0.0
        return float(fn(p, y)[0])

    table = {
        "accuracy": lambda: float(accuracy_score(y, p)),
        "f1": lambda: float(f1_score(y, p, zero_division=0.0)),
        "matthews": lambda: float(matthews_corrcoef(y, p)),
        "pearson": lambda: corr(pearsonr),
        "spearman": lambda: corr(spearmanr),
    }
    return {m: table[m]() for m in task.metrics}


@dataclass(frozen=True)
class EvalColumn:
    """One column of a GLUE results table: a task evaluated on one dev split."""

    label: str
    task: str
    split: str


def eval_columns(tasks: Sequence[GlueTask] | None = None) -> list[EvalColumn]:
    """Table columns in the cramming paper's order (MNLI-m, MNLI-mm, SST-2, STS-B, RTE, QNLI,
    QQP, MRPC, CoLA, then WNLI), MNLI's two dev sets as separate columns."""
    order = ["mnli", "sst2", "stsb", "rte", "qnli", "qqp", "mrpc", "cola", "wnli"]
    names = {t.name for t in (tasks or TASKS.values())}
    cols = []
    for name in order:
        if name not in names:
            continue
        t = TASKS[name]
        if name == "mnli":
            cols += [EvalColumn("MNLI-m", name, "dev_matched"), EvalColumn("MNLI-mm", name, "dev_mismatched")]
        else:
            cols.append(EvalColumn(t.display, name, "dev"))
    return cols


__all__ = [
    "HUB_NAME",
    "TASKS",
    "EvalColumn",
    "GlueDataError",
    "GlueSplit",
    "GlueTask",
    "HubSplit",
    "check_glue_dir",
    "compute_metrics",
    "eval_columns",
    "find_split",
    "get_task",
    "hub_source",
    "load_glue_hf",
    "load_glue_tsv",
    "load_split",
    "parse_tasks",
]
