"""Reference rows of every GLUE table: the majority class and a bag of words.

An encoder's GLUE score means little alone: MRPC F1 81 is what "always equivalent" scores, and
SST-2 accuracy 80 is what word counts alone reach. ``run_glue`` therefore trains two baselines on
exactly the training examples the encoders saw (the same ``GlueSplit``, after the same
``finetune.subsample`` with ``--finetune.max_train_examples``) and scores them on the same dev
examples with the same metric code (``ultracram.data.glue.compute_metrics``):

- ``majority``: the most frequent training label (the smallest label id on a tie); for STS-B
  regression, the mean training score. A constant prediction has correlation 0 and Matthews
  correlation 0 by the metrics' convention, and F1 0 or the F1 of "always positive".
- ``bag-of-words (TF-IDF + logreg)``: scikit-learn ``TfidfVectorizer`` on lowercased word 1- and
  2-grams (one-letter words kept: ``token_pattern`` ``\\b\\w+\\b``; sublinear tf; at most the 100,000
  most frequent n-grams, which bounds memory on QQP/MNLI), fitted on the training texts of both
  sentences. A single sentence is its tf-idf vector a; a pair (a, b) is [a, b, a * b, cos(a, b)]:
  the elementwise product marks the n-grams the two share, and the cosine (the rows are
  L2-normalised, so it is the sum of a * b) says how much they share in one number, which a
  regularised linear model cannot rebuild from thousands of per-n-gram weights (without it
  STS-B's ridge reaches Spearman 21 on the full dev set, with it 67; RTE 50 -> 57). Then
  ``LogisticRegression(C=1.0, max_iter=1000)`` (lbfgs, multinomial for MNLI), or
  ``Ridge(alpha=1.0)`` for STS-B (scores not clipped). With a single class in the training data
  the model predicts that class. Fixed hyperparameters, not tuned on dev (the one design choice
  made after looking at dev scores is the cosine column): the baseline is a recipe, not a
  competitor tuned to win. Fitting and predicting run on one thread (see ``bow_predictions``).

Everything is deterministic (lbfgs and the ridge solvers draw no random numbers; the
``random_state`` is fixed anyway). ``cached_task_baselines`` keeps each task's predictions in
``OUT/baselines/TASK.json``, keyed by a digest of the exact training and dev examples and of
the recipe above, so reruns reuse them and a changed subsample recomputes them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ultracram.data.glue import GlueSplit, GlueTask, compute_metrics
from ultracram.report.stats import glue_metric, paired_from_scores, percentile_interval, resample_scores

MAJORITY = "majority"
BOW = "bag-of-words (TF-IDF + logreg)"
BASELINES = (MAJORITY, BOW)
"""Row labels of the baselines, in table order."""

TFIDF_ARGS: dict[str, Any] = {"ngram_range": (1, 2), "lowercase": True, "token_pattern": r"(?u)\b\w+\b",
                              "sublinear_tf": True, "max_features": 100_000}  # fmt: skip
LOGREG_ARGS: dict[str, Any] = {"C": 1.0, "max_iter": 1000, "random_state": 0}
RIDGE_ARGS: dict[str, Any] = {"alpha": 1.0, "random_state": 0}
RECIPE = {"version": 2, "tfidf": TFIDF_ARGS, "logreg": LOGREG_ARGS,
          "ridge": RIDGE_ARGS, "pair": "[a, b, a*b, cos(a, b)]", "majority": "most frequent label; STS-B: train mean"}  # fmt: skip
"""What the baselines are; part of the cache key, so a changed recipe recomputes them."""

CACHE_DIR = "baselines"


def majority_prediction(train: GlueSplit) -> int | float:
    """The most frequent training label (smallest id on a tie), or the mean score for regression."""
    if train.task.is_regression:
        return float(np.mean(np.asarray(train.labels, dtype=float)))
    return int(np.bincount(np.asarray(train.labels, dtype=int), minlength=train.task.num_labels).argmax())


def fit_vectorizer(train: GlueSplit):
    """The TF-IDF vectorizer fitted on the training texts (both sentences of a pair)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = list(train.text_a) + (list(train.text_b) if train.text_b is not None else [])
    return TfidfVectorizer(**TFIDF_ARGS).fit(texts)


def features(vectorizer, split: GlueSplit):
    """The sparse feature matrix of ``split``: tfidf(a), or [a, b, a * b, cos(a, b)] for a pair."""
    from scipy.sparse import csr_matrix, hstack

    a = vectorizer.transform(split.text_a)
    if split.text_b is None:
        return csr_matrix(a)
    b = vectorizer.transform(split.text_b)
    shared = a.multiply(b)
    cosine = csr_matrix(np.asarray(shared.sum(axis=1)))  # rows are L2-normalised: the sum is the cosine
    return csr_matrix(hstack([a, b, shared, cosine]))


def make_model(task: GlueTask):
    """``Ridge`` for regression, ``LogisticRegression`` otherwise, with the fixed settings above."""
    from sklearn.linear_model import LogisticRegression, Ridge

    return Ridge(**RIDGE_ARGS) if task.is_regression else LogisticRegression(**LOGREG_ARGS)


def bow_predictions(train: GlueSplit, devs: Sequence[GlueSplit]) -> dict[str, list]:
    """The bag-of-words baseline's predictions on each dev split ({split: predictions})."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    task = train.task
    if not task.is_regression and len(set(train.labels)) < 2:  # logreg needs two classes
        only = int(train.labels[0])
        return {d.split: [only] * len(d) for d in devs}
    vectorizer = fit_vectorizer(train)
    model = make_model(task)
    # One thread: the loss's OpenMP loops gain nothing on sparse features and, on a busy machine,
    # spin against each other (2 s instead of 0.04 s for the SST-2 sample on 2 busy cores); one
    # thread also makes the sums, hence the predictions, independent of the number of cores.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # A fixed iteration budget is part of the recipe; lbfgs stopping short of full
        # convergence on a large task still gives a valid (if slightly weaker) baseline.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features(vectorizer, train), np.asarray(train.labels))
        out = {}
        for d in devs:
            p = model.predict(features(vectorizer, d))
            out[d.split] = [float(x) for x in p] if task.is_regression else [int(x) for x in p]
    return out


def compute_task_baselines(
    train: GlueSplit, devs: Sequence[GlueSplit]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Both baselines of one task: {label: {split: {"metrics": {...}, "predictions": [...]}}}."""
    constant = majority_prediction(train)
    preds = {MAJORITY: {d.split: [constant] * len(d) for d in devs}, BOW: bow_predictions(train, devs)}
    return {
        label: {d.split: {"metrics": compute_metrics(train.task, by_split[d.split], d.labels),
                          "predictions": by_split[d.split]} for d in devs}
        for label, by_split in preds.items()
    }  # fmt: skip


def split_digest(split: GlueSplit) -> str:
    """sha256 of a split's examples (texts and labels, in order): equal digests, same data."""
    from ultracram.fileio import sha256_bytes  # torch: only here, so that tables can import this module

    payload = json.dumps([split.text_a, split.text_b, list(split.labels)], ensure_ascii=False)
    return sha256_bytes(payload.encode("utf-8"))


def baseline_identity(train: GlueSplit, devs: Sequence[GlueSplit]) -> dict[str, Any]:
    """What the cached baselines of a task depend on: the recipe and the exact examples."""
    ident = {"task": train.task.name, "recipe": RECIPE, "train_examples": len(train),
             "train_sha256": split_digest(train),
             "dev": {d.split: {"examples": len(d), "sha256": split_digest(d)} for d in devs}}  # fmt: skip
    return json.loads(json.dumps(ident))  # tuples as lists, as they come back from the file


def cached_task_baselines(
    out_dir: str | Path, train: GlueSplit, devs: Sequence[GlueSplit]
) -> tuple[dict[str, dict[str, dict[str, Any]]], bool]:
    """The baselines of ``train.task`` from ``out_dir/baselines/TASK.json`` when that file was made
    from the same examples and recipe, else computed and written there; and whether they were
    reused. A file for other data (another ``max_train_examples``) or an unreadable one is
    replaced: baselines are cheap and derived, unlike fine-tuning runs, so nothing is refused."""
    path = Path(out_dir) / CACHE_DIR / f"{train.task.name}.json"
    ident = baseline_identity(train, devs)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("identity") == ident and set(stored.get("baselines", {})) == set(BASELINES):
            return stored["baselines"], True
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        pass  # missing or unreadable: recompute
    import sklearn

    from ultracram.fileio import atomic_write_json  # torch: only here, so that tables can import this module

    baselines = compute_task_baselines(train, devs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path, {"identity": ident, "sklearn": sklearn.__version__, "baselines": baselines}, indent=None
    )
    return baselines, False


# --------------------------------------------------------------------------------------------
# Intervals and paired tests for the results table (run_glue)
# --------------------------------------------------------------------------------------------

N_BOOT, BOOT_SEED, ALPHA = 1000, 0, 0.05
BOOTSTRAP = {"resamples": N_BOOT, "seed": BOOT_SEED, "level": 1 - ALPHA, "method": "percentile bootstrap over dev examples",
             "run": "the seed whose main-metric score is nearest the median (the lower seed on a tie)",
             "test": "paired bootstrap of the main metric on the same resamples, two-sided, "
                     "not corrected for multiple comparisons"}  # fmt: skip
"""How run_glue's intervals and tests are made (recorded in results.json)."""


class Resamples:
    """Resampled scores (``stats.resample_scores``, ``BOOTSTRAP``'s resamples and seed) of
    systems on dev splits. Every system on one dev split sees the same resamples, so any two
    are paired; a baseline's scores are kept and reused for every checkpoint's test."""

    def __init__(self, n_boot: int = N_BOOT, seed: int = BOOT_SEED):
        self.n_boot, self.seed = n_boot, seed
        self._kept: dict[tuple[str, str, str, str], np.ndarray] = {}

    def scores(self, dev: GlueSplit, preds: Sequence, metric: str, keep_as: str | None = None) -> np.ndarray:
        """``metric`` of ``preds`` on each resample of ``dev``; kept under ``keep_as`` (a system name)."""
        key = (keep_as or "", dev.task.name, dev.split, metric)
        if keep_as is not None and key in self._kept:
            return self._kept[key]
        s = resample_scores(glue_metric(dev.task, metric), np.asarray(dev.labels), np.asarray(preds),
                            self.n_boot, self.seed)  # fmt: skip
        if keep_as is not None:
            self._kept[key] = s
        return s


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined number is null."""
    return float(x) if np.isfinite(x) else None


def _interval(scores: np.ndarray) -> list[float | None]:
    return [_finite(v) for v in percentile_interval(scores, ALPHA)]


def baseline_entries(
    computed: dict[str, dict[str, dict[str, dict[str, Any]]]],
    data: dict[str, tuple[GlueSplit, list[GlueSplit]]],
    resamples: Resamples,
) -> list[dict[str, Any]]:
    """The baselines as rows of results.json (``computed``: {task: ``compute_task_baselines``}),
    laid out like a checkpoint's (one "run": ``values`` has one entry), with an interval per score."""
    entries = []
    for label in BASELINES:
        tasks = {}
        for name, (train, devs) in data.items():
            summary = {}
            for d in devs:
                got = computed[name][label][d.split]
                summary[d.split] = {
                    metric: {"median": v, "values": [v],
                             "ci": _interval(resamples.scores(d, got["predictions"], metric, keep_as=label))}
                    for metric, v in got["metrics"].items()
                }  # fmt: skip
            tasks[name] = {"train_examples": len(train), "dev_examples": {d.split: len(d) for d in devs},
                           "summary": summary}  # fmt: skip
        entries.append({"label": label, "baseline": True, "tasks": tasks})
    return entries


def median_run(per_seed: Sequence[dict[str, Any]], split: str, metric: str) -> int:
    """The index of the run whose ``metric`` on ``split`` is nearest the median over runs (the
    median run itself for an odd number; the lower of the two middle ones, on a tie, for an even)."""
    values = [r["metrics"][split][metric] for r in per_seed]
    middle = float(np.median(values))
    return min(range(len(values)), key=lambda i: (abs(values[i] - middle), i))


def add_statistics(
    task_entry: dict[str, Any],
    per_seed: Sequence[dict[str, Any]],
    devs: Sequence[GlueSplit],
    computed: dict[str, dict[str, dict[str, Any]]],
    resamples: Resamples,
) -> None:
    """Add to a checkpoint's task entry (``summary`` already there) an interval per score (``ci``,
    of the median run ``ci_seed``) and ``vs_baselines``: {split: {"seed", "metric", "vs": {baseline:
    {diff, low, high, p_value}}}}, the paired test of the main metric against each baseline.
    Runs written before predictions were kept (no ``predictions`` in result.json) get ``ci``
    and ``vs_baselines[split]`` null: no interval, no test."""
    compared: dict[str, Any] = {}
    for d in devs:
        main = d.task.main_metric
        k = median_run(per_seed, d.split, main)
        preds = (per_seed[k].get("predictions") or {}).get(d.split)
        cells = task_entry["summary"][d.split]
        if preds is None or len(preds) != len(d):
            for cell in cells.values():
                cell["ci"], cell["ci_seed"] = None, None
            compared[d.split] = None
            continue
        seed = per_seed[k].get("seed", k)
        own = {}
        for metric, cell in cells.items():
            own[metric] = resamples.scores(d, preds, metric)
            cell["ci"], cell["ci_seed"] = _interval(own[metric]), seed
        fn, y = glue_metric(d.task, main), np.asarray(d.labels)
        vs = {}
        for label in BASELINES:
            theirs = computed[label][d.split]["predictions"]
            test = paired_from_scores(fn(y, np.asarray(preds)) - fn(y, np.asarray(theirs)), own[main],
                                      resamples.scores(d, theirs, main, keep_as=label),
                                      ALPHA)  # fmt: skip
            vs[label] = {k2: _finite(v) for k2, v in test.items()}
        compared[d.split] = {"seed": seed, "metric": main, "vs": vs}
    task_entry["vs_baselines"] = compared


__all__ = [
    "BASELINES",
    "BOOTSTRAP",
    "BOW",
    "MAJORITY",
    "RECIPE",
    "Resamples",
    "add_statistics",
    "baseline_entries",
    "baseline_identity",
    "bow_predictions",
    "cached_task_baselines",
    "compute_task_baselines",
    "features",
    "fit_vectorizer",
    "majority_prediction",
    "make_model",
    "median_run",
    "split_digest",
]
