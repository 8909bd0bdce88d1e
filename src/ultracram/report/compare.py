"""Comparisons between systems scored on the same examples (numpy and scipy; no torch).

The study asks of every pair of systems (two models; a model and its no-pretraining control)
whether they differ by more than noise. There are two kinds of noise, and one tool for each:

- Which dev examples: a dev set is a sample of the task. ``compare_systems`` runs the paired
  bootstrap of ``ultracram.report.stats``: every system is scored on the same resamples
  (``stats.resample_scores`` with one seed), so the differences pair up, and
  ``stats.paired_from_scores`` gives the difference's interval and p-value. As ``run_glue`` does
  against the baselines, a system with several seeds is represented by its run nearest the
  median (``ultracram.train.baselines.median_run``).
- Which fine-tuning seed: ``seed_spread`` (the lowest and the highest per-seed score) and, with
  at least two seeds per system, ``across_seeds`` (Welch's t-test on the per-seed scores).

The same paired bootstrap, over validation sequences instead of dev examples, compares MLM
losses (``compare_losses``): the loss of a resample is the summed loss of its masked tokens over
their count, which is how the loss of the full set is defined, so the two agree.

``describe_pair`` turns a test into one plain-English clause. Tests are two-sided at the 5%
level and not corrected for multiple comparisons: among 20 pairs that do not differ at all, one
comes out "distinguishable" by chance on average; the report says so.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ultracram.report.stats import (
    format_p,
    glue_metric,
    paired_from_scores,
    percentile_interval,
    resample_scores,
)
from ultracram.train.baselines import BOOT_SEED, N_BOOT, median_run

ALPHA = 0.05
"""Level of every test here (two-sided, uncorrected)."""


@dataclass(frozen=True)
class DevSet:
    """One dev column (a task on one dev split) and every system's predictions on its examples."""

    column: str
    """Table label, e.g. "SST-2" or "MNLI-m"."""
    task: str
    """GLUE task name, e.g. "sst2"."""
    metric: str
    """The metric compared (the task's main metric)."""
    labels: np.ndarray
    """(N,) gold labels, in the order of the predictions."""
    predictions: dict[str, list[np.ndarray]]
    """System name -> its predictions per seed, each (N,); a baseline has one "seed"."""


@dataclass(frozen=True)
class PairTest:
    """System ``a`` against system ``b`` on one dev column (or on the MLM validation loss)."""

    what: str
    """The column label, or "MLM validation loss"."""
    a: str
    b: str
    diff: float
    """score(a) - score(b) on the full set (fractions, not x100; nats for a loss)."""
    low: float
    high: float
    """The 95% percentile bootstrap interval of ``diff``."""
    p_value: float
    """Two-sided paired bootstrap p-value (``stats.paired_from_scores``)."""
    seeds_a: tuple[float, ...] = ()
    seeds_b: tuple[float, ...] = ()
    """Per-seed scores (empty for losses)."""
    welch_p: float | None = None
    """Welch's t-test across seeds (``across_seeds``); None with fewer than 2 seeds on a side."""

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.p_value)) and self.p_value < ALPHA

    @property
    def significant_across_seeds(self) -> bool:
        return self.welch_p is not None and bool(np.isfinite(self.welch_p)) and self.welch_p < ALPHA


def seed_scores(dev: DevSet, system: str) -> np.ndarray:
    """(S,) the metric of each of ``system``'s seeds on ``dev``."""
    fn = glue_metric(dev.task, dev.metric)
    y = np.asarray(dev.labels)
    return np.array([fn(y, np.asarray(p)) for p in dev.predictions[system]], dtype=float)


def seed_spread(scores: Sequence[float]) -> tuple[float, float]:
    """(lowest, highest) per-seed score."""
    s = np.asarray(scores, dtype=float)
    if not len(s):
        raise ValueError("seed_spread needs at least one score")
    return float(s.min()), float(s.max())


def median_seed(scores: Sequence[float]) -> int:
    """Index of the seed nearest the median score (``baselines.median_run``'s rule)."""
    return median_run([{"metrics": {"dev": {"score": float(s)}}} for s in scores], "dev", "score")


def across_seeds(scores_a: Sequence[float], scores_b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) of two
    systems' per-seed scores; None with fewer than two seeds on either side, NaN when neither
    varies across seeds.

    A weak test with few seeds, read it as a check of stability, not as evidence: with 2-3
    seeds per system the t distribution has 1-4 degrees of freedom and heavy tails (the 5%
    critical value is 4.3 at 2 degrees of freedom), so only differences several times the
    seed spread reach p < 0.05; the per-seed variance itself is estimated from 2-3 numbers;
    scores stuck at a boundary (Matthews correlation 0 for every seed, the majority class) are
    far from the normal distribution the test assumes; and every seed is scored on the same dev
    examples, so it says nothing about the dev-set sampling noise that the paired bootstrap
    measures."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind  # scipy: only when there are seeds to test

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy warns and returns NaN
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def compare_systems(
    dev: DevSet,
    pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> list[PairTest]:
    """The paired bootstrap of each pair (default: every pair of ``dev``'s systems) on the main
    metric, with each system's per-seed scores and Welch's test across seeds. Each system is
    resampled once (its run nearest the median seed), so all pairs share the same resamples."""
    names = list(dev.predictions)
    pairs = list(itertools.combinations(names, 2)) if pairs is None else list(pairs)
    fn = glue_metric(dev.task, dev.metric)
    y = np.asarray(dev.labels)
    per_seed: dict[str, np.ndarray] = {}
    chosen: dict[str, np.ndarray] = {}
    resampled: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        per_seed[name] = seed_scores(dev, name)
        chosen[name] = np.asarray(dev.predictions[name][median_seed(per_seed[name])])
        resampled[name] = resample_scores(fn, y, chosen[name], n_boot, seed)
    tests = []
    for a, b in pairs:
        t = paired_from_scores(fn(y, chosen[a]) - fn(y, chosen[b]), resampled[a], resampled[b], ALPHA)
        tests.append(PairTest(dev.column, a, b, **t, seeds_a=tuple(per_seed[a]), seeds_b=tuple(per_seed[b]),
                              welch_p=across_seeds(per_seed[a], per_seed[b])))  # fmt: skip
    return tests


def average_interval(
    devs: Sequence[DevSet], system: str, n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> tuple[float, float] | None:
    """The 95% interval of ``system``'s mean main metric over ``devs`` (fractions): each dev set
    is resampled on its own (its own seed, ``seed`` + its position: the dev sets are independent
    samples, and two of equal size must not draw the same indices), and the B means of the
    resampled scores give the percentile interval. None when a dev set lacks the system."""
    if not devs or any(system not in d.predictions for d in devs):
        return None
    per_column = []
    for k, d in enumerate(devs):
        scores = seed_scores(d, system)
        preds = np.asarray(d.predictions[system][median_seed(scores)])
        per_column.append(
            resample_scores(glue_metric(d.task, d.metric), np.asarray(d.labels), preds, n_boot, seed + k)
        )
    return percentile_interval(np.mean(per_column, axis=0), ALPHA)


# --------------------------------------------------------------------------------------------
# MLM loss over validation sequences
# --------------------------------------------------------------------------------------------


def pooled_loss(counts: np.ndarray, sums: np.ndarray) -> float:
    """Loss per masked token: summed per-sequence losses over summed masked-token counts (NaN
    when nothing is masked). Arguments in ``metric_fn(y_true, y_pred)`` order for ``stats``."""
    total = float(np.sum(counts))
    return float(np.sum(sums)) / total if total else float("nan")


def loss_interval(
    sums: Sequence[float], counts: Sequence[int], n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval over sequences of ``pooled_loss``."""
    return percentile_interval(resample_scores(pooled_loss, np.asarray(counts), np.asarray(sums, dtype=float),
                                               n_boot, seed), ALPHA)  # fmt: skip


def compare_losses(
    systems: dict[str, tuple[Sequence[float], Sequence[int]]],
    pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> list[PairTest]:
    """Paired bootstrap over the same validation sequences (and masks) of each pair's pooled
    MLM loss: ``systems`` maps a name to its per-sequence (loss sums, masked-token counts), in
    the same sequence order for every system."""
    names = list(systems)
    pairs = list(itertools.combinations(names, 2)) if pairs is None else list(pairs)
    resampled, full = {}, {}
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        sums, counts = np.asarray(systems[name][0], dtype=float), np.asarray(systems[name][1])
        resampled[name] = resample_scores(pooled_loss, counts, sums, n_boot, seed)
        full[name] = pooled_loss(counts, sums)
    return [PairTest("MLM validation loss", a, b, **paired_from_scores(full[a] - full[b], resampled[a], resampled[b],
                                                                       ALPHA))
            for a, b in pairs]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------


def _interval_text(low: float, high: float, scale: float, digits: int) -> str:
    return f"95% CI {scale * low:.{digits}f} to {scale * high:.{digits}f}"


def describe_pair(t: PairTest, *, loss: bool = False) -> str:
    """One clause: "A beats B by 3.1 points (95% CI 1.2 to 5.0, p = 0.002)" or "A and B are not
    distinguishable (A - B: +0.4 points, 95% CI -2.0 to 2.9, p = 0.710)"; for a loss (lower is
    better, in nats) "A's MLM loss is lower than B's by 0.120 (...)". With several seeds, each
    side's seed range and Welch's test across seeds follow."""
    scale, digits, unit = (1.0, 3, "") if loss else (100.0, 1, " points")
    if t.significant:
        a_better = (t.diff < 0) if loss else (t.diff > 0)
        win, lose, d, lo, hi = (
            (t.a, t.b, t.diff, t.low, t.high) if a_better else (t.b, t.a, -t.diff, -t.high, -t.low)
        )
        if loss:  # the interval of (loser - winner) so that all its numbers are positive
            d, lo, hi = -d, -hi, -lo
        head = f"{win}'s MLM loss is lower than {lose}'s" if loss else f"{win} beats {lose}"
        text = (f"{head} by {scale * d:.{digits}f}{unit} ({_interval_text(lo, hi, scale, digits)}, "
                f"{format_p(t.p_value)})")  # fmt: skip
    else:
        text = (f"{t.a} and {t.b} are not distinguishable ({t.a} - {t.b}: {scale * t.diff:+.{digits}f}{unit}, "
                f"{_interval_text(t.low, t.high, scale, digits)}, {format_p(t.p_value)})")  # fmt: skip
    if len(t.seeds_a) > 1 or len(t.seeds_b) > 1:
        ranges = [f"{name} {scale * lo_:.{digits}f}-{scale * hi_:.{digits}f}"
                  for name, s in ((t.a, t.seeds_a), (t.b, t.seeds_b)) if s
                  for lo_, hi_ in [seed_spread(s)]]  # fmt: skip
        text += f"; seed ranges {', '.join(ranges)}"
        if t.welch_p is not None and np.isnan(t.welch_p):
            text += "; no variation across seeds (Welch's t-test undefined)"
        elif t.welch_p is not None:
            text += f"; across seeds (Welch's t-test, {len(t.seeds_a)} vs {len(t.seeds_b)} seeds) {format_p(t.welch_p)}"
            if t.significant_across_seeds != t.significant:  # the two tests disagree: say which says what
                text += (
                    ", significant across seeds"
                    if t.significant_across_seeds
                    else ", not significant across seeds"
                )
    return text


__all__ = [
    "ALPHA",
    "DevSet",
    "PairTest",
    "across_seeds",
    "average_interval",
    "compare_losses",
    "compare_systems",
    "describe_pair",
    "loss_interval",
    "median_seed",
    "pooled_loss",
    "seed_scores",
    "seed_spread",
]
