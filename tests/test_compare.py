"""report/compare.py against numpy/scipy references on synthetic data with known answers."""

import dataclasses

import numpy as np
import pytest
from scipy.stats import ttest_ind

from ultracram.report.compare import (
    DevSet,
    PairTest,
    across_seeds,
    average_interval,
    compare_losses,
    compare_systems,
    describe_pair,
    loss_interval,
    median_seed,
    seed_spread,
)

RNG = np.random.default_rng(7)
LABELS = RNG.integers(0, 2, size=200)


def _wrong_on(share: float, seed: int = 1) -> np.ndarray:
    """LABELS with a random ``share`` of them flipped."""
    preds = LABELS.copy()
    flip = np.random.default_rng(seed).choice(len(preds), size=round(share * len(preds)), replace=False)
    preds[flip] = 1 - preds[flip]
    return preds


def _resample_reference(n: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """The resamples as stats.resample_indices defines them, written out directly."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=n) for _ in range(n_boot)]


def test_identical_systems_are_not_distinguishable():
    preds = _wrong_on(0.2)
    dev = DevSet("SST-2", "sst2", "accuracy", LABELS, {"a": [preds], "b": [preds.copy()]})
    [t] = compare_systems(dev)
    assert (t.a, t.b, t.diff, t.low, t.high, t.p_value) == ("a", "b", 0.0, 0.0, 0.0, 1.0)
    assert not t.significant
    assert "a and b are not distinguishable (a - b: +0.0 points" in describe_pair(t)


def test_always_right_beats_wrong_on_30_percent_with_a_tiny_p_value():
    dev = DevSet("SST-2", "sst2", "accuracy", LABELS, {"right": [LABELS.copy()], "wrong": [_wrong_on(0.3)]})
    [t] = compare_systems(dev)
    assert t.diff == pytest.approx(0.3)
    assert t.p_value == pytest.approx(2 / 1001)  # no resample has the difference at or below 0
    # The interval is the percentile interval of the paired resampled differences, computed directly.
    diffs = [np.mean(LABELS[i] == LABELS[i]) - np.mean(_wrong_on(0.3)[i] == LABELS[i])
             for i in _resample_reference(len(LABELS), 1000, 0)]  # fmt: skip
    assert (t.low, t.high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert describe_pair(t).startswith("right beats wrong by 30.0 points (95% CI ")
    # Order does not matter to the words: the winner is named first.
    [flipped] = compare_systems(dev, [("wrong", "right")])
    assert flipped.diff == pytest.approx(-0.3)
    assert describe_pair(flipped).startswith("right beats wrong by 30.0 points")


def test_seeds_median_run_spread_and_welch_equal_scipys():
    a = [_wrong_on(0.5, 1), _wrong_on(0.1, 2), _wrong_on(0.3, 3)]  # accuracies 0.5, 0.9, 0.7
    b = [_wrong_on(0.4, 4), _wrong_on(0.35, 5)]
    dev = DevSet("RTE", "rte", "accuracy", LABELS, {"a": a, "b": b})
    [t] = compare_systems(dev)
    assert t.seeds_a == pytest.approx((0.5, 0.9, 0.7)) and t.seeds_b == pytest.approx((0.6, 0.65))
    assert median_seed(t.seeds_a) == 2 and median_seed(t.seeds_b) == 0  # lower of two on a tie
    assert t.diff == pytest.approx(0.7 - 0.6)  # the runs nearest the median
    assert seed_spread(t.seeds_a) == pytest.approx((0.5, 0.9))
    assert t.welch_p == pytest.approx(
        ttest_ind([0.5, 0.9, 0.7], [0.6, 0.65], equal_var=False).pvalue, rel=1e-12
    )
    assert (
        "seed ranges a 50.0-90.0, b 60.0-65.0; across seeds (Welch's t-test, 3 vs 2 seeds) p = "
        in describe_pair(t)
    )
    # When the two tests disagree, the clause says which says what.
    assert t.significant and not t.significant_across_seeds  # dev examples: yes; these seeds: no
    assert describe_pair(t).startswith("a beats b") and describe_pair(t).endswith(
        ", not significant across seeds"
    )
    a3, b2 = (0.70, 0.71, 0.72), (0.60, 0.61)
    steady = dataclasses.replace(t, seeds_a=a3, seeds_b=b2, welch_p=across_seeds(a3, b2))
    assert steady.significant_across_seeds and "significant across" not in describe_pair(steady)  # agree
    unpaired = dataclasses.replace(steady, p_value=0.3)
    assert describe_pair(unpaired).endswith(", significant across seeds")


def test_welch_needs_two_seeds_each_and_is_undefined_without_variance():
    assert across_seeds([0.5], [0.6, 0.7]) is None
    assert np.isnan(across_seeds([0.5, 0.5], [0.5, 0.5]))
    flat = PairTest(
        "x", "a", "b", 0.0, 0.0, 0.0, 1.0, (0.5, 0.5), (0.5, 0.5), across_seeds([0.5, 0.5], [0.5, 0.5])
    )
    assert describe_pair(flat).endswith("seed ranges a 50.0-50.0, b 50.0-50.0; no variation across seeds "
                                        "(Welch's t-test undefined)")  # fmt: skip
    x, y = [0.61, 0.64, 0.58, 0.66], [0.52, 0.55, 0.57]
    assert across_seeds(x, y) == pytest.approx(ttest_ind(x, y, equal_var=False).pvalue, rel=1e-12)


def test_loss_interval_and_paired_loss_test():
    counts = RNG.integers(20, 40, size=100)
    per_token = RNG.normal(5.0, 0.5, size=100)
    sums = per_token * counts
    lo, hi = loss_interval(sums, counts)
    ref = [sums[i].sum() / counts[i].sum() for i in _resample_reference(100, 1000, 0)]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))
    assert lo < sums.sum() / counts.sum() < hi
    better = sums - 0.2 * counts  # 0.2 nats lower on every token
    same, lower = compare_losses({"a": (sums, counts), "b": (sums.copy(), counts), "c": (better, counts)},
                                 [("a", "b"), ("a", "c")])  # fmt: skip
    assert (same.diff, same.p_value) == (0.0, 1.0)
    assert lower.diff == pytest.approx(0.2) and lower.low == pytest.approx(0.2) and lower.p_value < 0.01
    assert describe_pair(lower, loss=True).startswith(
        "c's MLM loss is lower than a's by 0.200 (95% CI 0.200 to 0.200"
    )
    assert "a and b are not distinguishable (a - b: +0.000" in describe_pair(same, loss=True)


def test_average_interval_resamples_each_dev_set_on_its_own():
    other = RNG.integers(0, 2, size=200)  # a second dev set of the same size
    p1, p2 = _wrong_on(0.2), np.where(RNG.random(200) < 0.4, 1 - other, other)
    devs = [DevSet("SST-2", "sst2", "accuracy", LABELS, {"m": [p1]}),
            DevSet("RTE", "rte", "accuracy", other, {"m": [p2]})]  # fmt: skip
    lo, hi = average_interval(devs, "m")
    first, second = _resample_reference(200, 1000, 0), _resample_reference(200, 1000, 1)
    means = [(np.mean(p1[i] == LABELS[i]) + np.mean(p2[j] == other[j])) / 2 for i, j in zip(first, second)]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert average_interval(devs, "absent") is None


def test_significance_is_at_five_percent_and_nan_is_never_significant():
    base = PairTest("x", "a", "b", 0.1, 0.01, 0.2, 0.049)
    assert base.significant
    assert not PairTest("x", "a", "b", 0.1, -0.01, 0.2, 0.05).significant
    assert not PairTest("x", "a", "b", 0.1, float("nan"), float("nan"), float("nan")).significant
