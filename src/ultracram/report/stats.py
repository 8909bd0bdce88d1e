"""Bootstrap intervals and paired bootstrap tests over dev examples (numpy and scipy; no torch).

A dev-set score is an estimate from a few hundred or thousand examples: RTE's 277 dev examples
give an accuracy interval about +-6 points wide. ``bootstrap_ci`` gives that interval, and
``paired_bootstrap`` says whether two systems scored on the *same* examples differ by more than
the resampling noise (pairing removes the variance of "which examples are hard", so it detects
far smaller differences than comparing two separate intervals).

Definitions (B resamples, each n indices drawn uniformly with replacement from the n dev
examples by ``numpy.random.default_rng(seed)``; the same (n, B, seed) always gives the same
indices, so every system scored on one dev set sees the same resamples):

- interval: the percentile bootstrap, the ``alpha/2`` and ``1 - alpha/2`` quantiles
  (``numpy.percentile``, linear interpolation) of the B resampled scores; this is what
  ``scipy.stats.bootstrap(method="percentile")`` computes.
- paired test: d_b = metric(A on resample b) - metric(B on resample b); ``diff`` is the
  difference on the full dev set, ``low``/``high`` the percentile interval of the d_b, and the
  two-sided p-value is ``min(1, 2 * min((1 + #{d_b <= 0}) / (B + 1), (1 + #{d_b >= 0}) / (B + 1)))``:
  twice the smaller share of resamples on which the difference vanishes or changes sign, with
  the usual +1 correction of Monte Carlo p-values (Davison & Hinkley 1997, ch. 4) so that it is
  never 0 (the smallest value is 2 / (B + 1), 0.002 for B = 1000). Identical systems get
  diff 0 and p = 1. It agrees with the interval: p < alpha about when the interval excludes 0.

Metrics that are undefined on a resample: the project's metrics (``glue_metric``, i.e.
``ultracram.data.glue.compute_metrics``) never are: a correlation with a constant prediction
or constant labels is reported as 0 (GLUE's convention), Matthews correlation is 0 when the
labels or the predictions of a resample hold one class only (scikit-learn's convention), F1 is
0 when a resample has neither a positive label nor a positive prediction. Those zeros are kept,
as the score of that resample (so a system that is nearly constant gets some resamples at 0).
A ``metric_fn`` of one's own may return NaN instead: such resamples are left out (of both
systems' in the paired test), and when none is left the interval is (nan, nan) and the
p-value nan. On resamples, ``glue_metric`` is computed by numpy formulas equal to
``compute_metrics`` (``GlueMetric.fast``), 20-100x faster than going through scikit-learn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], float]
"""``metric_fn(y_true, y_pred) -> score`` on aligned arrays."""


def _arrays(y_true: Sequence | np.ndarray, *preds: Sequence | np.ndarray) -> list[np.ndarray]:
    y = np.asarray(y_true)
    out = [y]
    for p in preds:
        p = np.asarray(p)
        if p.shape != y.shape or y.ndim != 1 or not len(y):
            raise ValueError(
                f"labels {y.shape} and predictions {p.shape} must be equal-length non-empty vectors"
            )
        out.append(p)
    return out


def resample_indices(n: int, n_boot: int, seed: int):
    """The ``n_boot`` resamples (index arrays of length ``n``) of a dev set of ``n`` examples,
    one at a time: (n, n_boot, seed) determine them, whichever system is scored on them."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, size=n)


def resample_scores(metric_fn: MetricFn, y_true, y_pred, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``metric_fn`` on each of the ``n_boot`` resamples (``resample_indices``); NaN where it is
    undefined. Scores of two systems on the same dev set with the same seed are paired. A
    ``metric_fn`` with a ``fast`` method (``GlueMetric``) is computed through it."""
    y, p = _arrays(y_true, y_pred)
    fn = getattr(metric_fn, "fast", metric_fn)
    return np.array([fn(y[idx], p[idx]) for idx in resample_indices(len(y), n_boot, seed)], dtype=float)


def percentile_interval(scores: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The percentile interval of resampled ``scores`` (NaNs left out; (nan, nan) if all are)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.asarray(scores, dtype=float)
    s = s[np.isfinite(s)]
    if not len(s):
        return (float("nan"), float("nan"))
    low, high = np.percentile(s, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(low), float(high))


def bootstrap_ci(
    metric_fn: MetricFn, y_true, y_pred, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """The (1 - alpha) percentile bootstrap interval of ``metric_fn(y_true, y_pred)`` over the
    examples (see the module docstring for the exact definition)."""
    return percentile_interval(resample_scores(metric_fn, y_true, y_pred, n_boot, seed), alpha)


def paired_from_scores(
    diff: float, scores_a: np.ndarray, scores_b: np.ndarray, alpha: float = 0.05
) -> dict[str, float]:
    """The paired test from two systems' scores on the same resamples (``resample_scores`` with
    the same seed) and their difference ``diff`` on the full set: {diff, low, high, p_value}."""
    d = np.asarray(scores_a, dtype=float) - np.asarray(scores_b, dtype=float)
    d = d[np.isfinite(d)]
    low, high = percentile_interval(d, alpha) if len(d) else (float("nan"), float("nan"))
    if not len(d):
        return {"diff": float(diff), "low": low, "high": high, "p_value": float("nan")}
    below = (1 + np.count_nonzero(d <= 0)) / (len(d) + 1)
    above = (1 + np.count_nonzero(d >= 0)) / (len(d) + 1)
    return {"diff": float(diff), "low": low, "high": high, "p_value": float(min(1.0, 2 * min(below, above)))}


def paired_bootstrap(
    metric_fn: MetricFn, y_true, pred_a, pred_b, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Paired bootstrap test of system A against system B on the same examples: ``diff`` =
    metric(A) - metric(B) on all examples, ``low``/``high`` its (1 - alpha) percentile interval
    and ``p_value`` the two-sided p-value defined in the module docstring."""
    y, a, b = _arrays(y_true, pred_a, pred_b)
    diff = metric_fn(y, a) - metric_fn(y, b)
    sa = resample_scores(metric_fn, y, a, n_boot, seed)
    sb = resample_scores(metric_fn, y, b, n_boot, seed)
    return paired_from_scores(diff, sa, sb, alpha)


class GlueMetric:
    """``metric`` of a GLUE task as ``metric_fn(y_true, y_pred)``. Calling it runs the project's own
    ``compute_metrics`` (narrowed to that one metric), so that a score is the very number of the
    tables. ``fast`` is the same number from numpy formulas (the confusion counts for accuracy,
    F1 and Matthews correlation, the usual closed forms for Pearson and Spearman, with the same
    conventions: 0 for a constant prediction or constant labels, 0 for an undefined F1 or
    Matthews correlation); ``resample_scores`` uses it on the resamples, where a thousand calls
    through scikit-learn's input checks take 1-15 ms each (seconds to a minute per score on QQP).
    tests/test_stats.py checks that both agree to 1e-12 on every resample, degenerate ones included."""

    def __init__(self, task: Any, metric: str):
        from ultracram.data.glue import get_task

        t = get_task(task) if isinstance(task, str) else task
        if metric not in t.metrics:
            raise ValueError(f"{t.display} has no metric {metric!r}; it has {', '.join(t.metrics)}")
        self.task, self.metric = dataclasses.replace(t, metrics=(metric,)), metric

    def __call__(self, y_true, y_pred) -> float:
        from ultracram.data.glue import compute_metrics

        return compute_metrics(self.task, y_pred, y_true)[self.metric]

    def fast(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        y, p = np.asarray(y_true), np.asarray(y_pred)
        if self.metric in ("pearson", "spearman"):
            if np.all(p == p[0]) or np.all(y == y[0]):  # compute_metrics' convention
                return 0.0
            if self.metric == "spearman":
                from scipy.stats import rankdata

                y, p = rankdata(y), rankdata(p)
            ym, pm = y - y.mean(), p - p.mean()
            return float(np.clip(np.dot(ym / np.linalg.norm(ym), pm / np.linalg.norm(pm)), -1.0, 1.0))
        k = self.task.num_labels
        if not (np.issubdtype(y.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)) or (
            min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= k
        ):
            return self(y, p)  # not class ids of this task: the slow path says what is wrong
        c = np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(np.float64)  # rows: true
        n, correct = c.sum(), np.trace(c)
        if self.metric == "accuracy":
            return float(correct / n)
        if self.metric == "f1":  # binary, positive class 1; 0 when undefined (zero_division=0)
            tp, fp, fn = c[1, 1], c[0, 1], c[1, 0]
            return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0
        t_sum, p_sum = c.sum(1), c.sum(0)  # Matthews, as scikit-learn computes it (multiclass form)
        cov_tp = correct * n - np.dot(t_sum, p_sum)
        cov_pp, cov_tt = n * n - np.dot(p_sum, p_sum), n * n - np.dot(t_sum, t_sum)
        return float(cov_tp / np.sqrt(cov_tt * cov_pp)) if cov_tt * cov_pp else 0.0


def glue_metric(task: Any, metric: str) -> GlueMetric:
    """``metric`` of a GLUE task (a ``GlueTask`` or its name) as ``metric_fn(y_true, y_pred)``:
    the project's ``compute_metrics``, with a fast path for resamples (``GlueMetric``)."""
    return GlueMetric(task, metric)


def format_p(p: float) -> str:
    """``p = 0.002``, ``p = 0.410``, ``p < 0.001``; ``p < 0.05`` for a p-value that 3 decimals
    would round up to 0.050 (the shown value must not contradict the 5% test)."""
    if p != p:  # nan
        return "p undefined"
    if p < 0.001:
        return "p < 0.001"
    if p < 0.05 <= round(p, 3):
        return "p < 0.05"
    return f"p = {p:.3f}"


__all__ = [
    "GlueMetric",
    "bootstrap_ci",
    "format_p",
    "glue_metric",
    "paired_bootstrap",
    "paired_from_scores",
    "percentile_interval",
    "resample_indices",
    "resample_scores",
]
