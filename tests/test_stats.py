"""Bootstrap intervals and paired tests (ultracram.report.stats) against scipy and known answers."""

import math

import numpy as np
import pytest
from scipy.stats import bootstrap

from ultracram.data.glue import compute_metrics
from ultracram.report.stats import (
    bootstrap_ci,
    format_p,
    glue_metric,
    paired_bootstrap,
    percentile_interval,
    resample_scores,
)


def accuracy(y, p):
    return float(np.mean(y == p))


def _classifier(n: int, error_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the predictions of a classifier that errs on each example with ``error_rate``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    wrong = rng.random(n) < error_rate
    return y, np.where(wrong, 1 - y, y)


def test_interval_of_a_known_error_rate_matches_scipy_and_the_normal_approximation():
    y, p = _classifier(2000, 0.1, seed=1)
    low, high = bootstrap_ci(glue_metric("sst2", "accuracy"), y, p, n_boot=2000, seed=0)
    assert low < 0.9 < high  # the true rate
    normal = 2 * 1.96 * math.sqrt(0.9 * 0.1 / 2000)  # 0.0263
    assert (high - low) == pytest.approx(normal, rel=0.1)
    # scipy's percentile bootstrap of the mean of the per-example correctness: the same interval
    # up to Monte Carlo noise (about 0.0006 per endpoint here).
    ref = bootstrap(((y == p).astype(float),), np.mean, n_resamples=9999, method="percentile",
                    confidence_level=0.95, rng=np.random.default_rng(1)).confidence_interval  # fmt: skip
    assert low == pytest.approx(ref.low, abs=0.002) and high == pytest.approx(ref.high, abs=0.002)


def test_intervals_cover_the_true_rate_about_95_percent_of_the_time():
    hits = 0
    for k in range(200):
        y, p = _classifier(300, 0.3, seed=100 + k)
        low, high = bootstrap_ci(accuracy, y, p, n_boot=400, seed=k)
        hits += low <= 0.7 <= high
    assert 0.89 <= hits / 200 <= 0.99, hits


def test_paired_interval_matches_scipy_paired():
    y, b = _classifier(2000, 0.2, seed=2)
    _, a = _classifier(2000, 0.15, seed=3)
    a = np.where(np.random.default_rng(4).random(2000) < 0.5, a, b)  # correlated with b, as real systems are
    got = paired_bootstrap(accuracy, y, a, b, n_boot=2000, seed=0)
    assert got["diff"] == pytest.approx(accuracy(y, a) - accuracy(y, b))
    ref = bootstrap(((y == a).astype(float), (y == b).astype(float)), lambda u, v: np.mean(u) - np.mean(v),
                    paired=True, n_resamples=9999, method="percentile",
                    rng=np.random.default_rng(5)).confidence_interval  # fmt: skip
    assert got["low"] == pytest.approx(ref.low, abs=0.002) and got["high"] == pytest.approx(
        ref.high, abs=0.002
    )


def test_fixing_five_percent_of_the_errors_is_significant_and_identical_systems_are_not():
    y, b = _classifier(2000, 0.2, seed=6)
    errors = np.flatnonzero(y != b)
    fixed = np.random.default_rng(7).choice(errors, size=len(errors) // 20, replace=False)
    a = b.copy()
    a[fixed] = y[fixed]
    metric = glue_metric("sst2", "accuracy")
    test = paired_bootstrap(metric, y, a, b)
    assert test["diff"] == pytest.approx(len(fixed) / 2000) and test["p_value"] < 0.01
    assert test["p_value"] == pytest.approx(2 / 1001)  # no resample reverses it: the smallest p-value
    assert 0 < test["low"] <= test["diff"] <= test["high"]
    same = paired_bootstrap(metric, y, b, b.copy())
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}
    # Unpaired intervals of a and b overlap: pairing is what makes the difference visible.
    assert bootstrap_ci(metric, y, a)[0] < bootstrap_ci(metric, y, b)[1]


def test_seeds_make_results_repeatable():
    y, p = _classifier(500, 0.25, seed=8)
    assert bootstrap_ci(accuracy, y, p, seed=3) == bootstrap_ci(accuracy, y, p, seed=3)
    assert bootstrap_ci(accuracy, y, p, seed=3) != bootstrap_ci(accuracy, y, p, seed=4)
    _, q = _classifier(500, 0.3, seed=9)
    assert paired_bootstrap(accuracy, y, p, q, seed=3) == paired_bootstrap(accuracy, y, p, q, seed=3)
    # The same seed gives the same resamples to every system: the paired test is built from
    # the per-system resampled scores that the intervals use.
    sp, sq = resample_scores(accuracy, y, p, seed=3), resample_scores(accuracy, y, q, seed=3)
    assert percentile_interval(sp) == bootstrap_ci(accuracy, y, p, seed=3)
    assert paired_bootstrap(accuracy, y, p, q, seed=3)["low"] == percentile_interval(sp - sq)[0]


def test_metrics_undefined_on_a_resample():
    rng = np.random.default_rng(10)
    # The project's metrics: a constant prediction has Matthews/Pearson/Spearman correlation 0
    # (on the full set and on every resample), so the interval is exactly (0, 0).
    y = rng.integers(0, 2, 200)
    assert bootstrap_ci(glue_metric("cola", "matthews"), y, np.ones(200, int), n_boot=200) == (0.0, 0.0)
    scores = rng.uniform(0, 5, 150)
    assert bootstrap_ci(glue_metric("stsb", "pearson"), scores, np.full(150, 2.5), n_boot=200) == (0.0, 0.0)
    # A metric of one's own that is undefined (NaN) on some resamples: those are left out ...
    y_small, p_small = np.array([0, 1, 1]), np.array([0, 1, 0])

    def picky(t, p):
        return float("nan") if len(set(t.tolist())) < 2 else accuracy(t, p)

    low, high = bootstrap_ci(picky, y_small, p_small, n_boot=300)
    assert 0 <= low <= high <= 1
    # ... and when it is undefined on every resample, the interval and the p-value are NaN.
    nan = lambda t, p: float("nan")  # noqa: E731
    assert all(math.isnan(v) for v in bootstrap_ci(nan, y_small, p_small, n_boot=50))
    assert math.isnan(paired_bootstrap(nan, y_small, p_small, y_small, n_boot=50)["p_value"])


def test_glue_metric_is_the_projects_metric():
    rng = np.random.default_rng(11)
    y, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    for metric in ("f1", "accuracy"):
        assert glue_metric("mrpc", metric)(y, p) == compute_metrics("mrpc", p, y)[metric]
    s, t = rng.uniform(0, 5, 100), rng.uniform(0, 5, 100)
    assert glue_metric("stsb", "spearman")(s, t) == compute_metrics("stsb", t, s)["spearman"]
    with pytest.raises(ValueError, match="SST-2 has no metric 'f1'"):
        glue_metric("sst2", "f1")
    with pytest.raises(ValueError, match="equal-length"):
        bootstrap_ci(accuracy, y, p[:10])


def test_format_p():
    assert [format_p(p) for p in (0.0004, 2 / 1001, 0.0499, 0.41, 1.0)] == [
        "p < 0.001", "p = 0.002", "p < 0.05", "p = 0.410", "p = 1.000"]  # fmt: skip


@pytest.mark.parametrize(
    "task,metric,kind",
    [("sst2", "accuracy", 2), ("mnli", "accuracy", 3), ("mrpc", "f1", 2), ("qqp", "f1", 2), ("cola", "matthews", 2),
     ("stsb", "pearson", 0), ("stsb", "spearman", 0)],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn on a one-class resample
def test_the_fast_path_on_resamples_equals_compute_metrics(task, metric, kind):
    """``GlueMetric.fast`` (what the resamples use) gives compute_metrics' number on every resample
    of ordinary, skewed and constant predictions and labels, where conventions decide (0 for an
    undefined correlation, F1 or Matthews correlation)."""
    rng = np.random.default_rng(12)
    fn = glue_metric(task, metric)
    n = 40
    if kind:
        y = rng.integers(0, kind, n)
        cases = [rng.integers(0, kind, n), np.where(rng.random(n) < 0.8, y, 0), np.zeros(n, int),
                 np.full(n, kind - 1)]  # fmt: skip
        labels = [y, y, y, np.zeros(n, int)]
    else:
        y = np.round(rng.uniform(0, 5, n), 1)
        cases = [
            rng.uniform(0, 5, n),
            y + rng.normal(0, 1, n),
            np.full(n, 2.5),
            np.round(rng.uniform(0, 5, n)),
        ]
        labels = [y, y, y, np.full(n, 3.0)]
    for t, p in zip(labels, cases):
        for idx in [np.arange(n), *[rng.integers(0, n, n) for _ in range(50)], np.zeros(n, int)]:
            assert fn.fast(t[idx], p[idx]) == pytest.approx(fn(t[idx], p[idx]), abs=1e-12, rel=0)
