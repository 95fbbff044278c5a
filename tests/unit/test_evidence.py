"""The statistics behind every interval and comparison, against scipy.stats and hand-checked
cases: Wilson intervals, the exact McNemar test, Holm's adjustment, the detectable difference,
and the seed-level interval and comparison (which must cover the truth at least as often as
they say, checked by simulation)."""

import numpy as np
import pytest
from scipy import stats

from tracking.evidence import (
    accuracy_interval,
    compare,
    detectable_difference,
    holm,
    interval,
    mcnemar_exact,
    seeds_and_points_interval,
    wilson,
)


@pytest.mark.parametrize("k, n", [(400, 500), (250, 500), (1600, 2000), (0, 50), (50, 50)])
def test_wilson_is_scipys(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high))


def test_the_half_widths_method_md_quotes():
    """±3.5 points at 500 points and 0.8; ±2.2 at 2,000 and 0.5 (docs/method.md, section 7)."""
    low, high = accuracy_interval(0.8, 500)
    assert (high - low) / 2 == pytest.approx(0.035, abs=0.001)
    low, high = accuracy_interval(0.5, 2000)
    assert (high - low) / 2 == pytest.approx(0.022, abs=0.001)


@pytest.mark.parametrize("a_only, b_only", [(30, 14), (10, 10), (0, 7), (3, 0)])
def test_mcnemar_is_the_binomial_test_of_the_discordant_points(a_only, b_only):
    expected = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expected)


def test_holm_by_hand():
    # sorted 0.01 < 0.02 < 0.04 < 0.30: x4, x3, x2, x1, made monotone, capped at 1
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_the_detectable_difference_method_md_quotes():
    """2.8 sqrt(d / n): about 2.0 points at 2,000 points and d = 0.1, 4.0 at 500."""
    assert 100 * detectable_difference(2000, 1, 0.1) == pytest.approx(1.98, abs=0.02)
    assert 100 * detectable_difference(500, 1, 0.1) == pytest.approx(3.96, abs=0.03)
    assert detectable_difference(500, 4, 0.1) == pytest.approx(detectable_difference(2000, 1, 0.1))
    assert detectable_difference(500, 2, 0.1, seed_sd=0.02) > detectable_difference(500, 2, 0.1)


def test_one_seed_shows_wilson_and_several_cover_the_seeds_too():
    assert interval([0.8], 500) == accuracy_interval(0.8, 500)
    agreeing = seeds_and_points_interval([0.80, 0.80, 0.80], 500)
    spread = seeds_and_points_interval([0.70, 0.80, 0.90], 500)
    assert spread[1] - spread[0] > agreeing[1] - agreeing[0]  # seed noise widens it
    assert agreeing[0] < 0.8 < agreeing[1]


@pytest.mark.parametrize("seeds, seed_sd", [(3, 0.0), (3, 0.03), (5, 0.03)])
def test_the_seed_interval_covers_the_truth_at_least_95_percent_of_the_time(seeds, seed_sd):
    """A recipe whose seeds scatter around 0.7 (sd 0, or 3 points: seed noise dominating the
    2,000 points' own), k seeds: the interval must hold the recipe's accuracy at least as often
    as it claims (a two-level bootstrap held it 80 % of the time at 3 seeds)."""
    rng = np.random.default_rng(1)
    trials, covered = 300, 0
    for _ in range(trials):
        accs = [rng.binomial(2000, p) / 2000 for p in rng.normal(0.7, seed_sd, size=seeds)]
        low, high = seeds_and_points_interval(accs, 2000)
        covered += low <= 0.7 <= high
    assert covered / trials >= 0.93


def test_three_agreeing_seeds_are_not_more_certain_than_their_points_allow():
    low, high = seeds_and_points_interval([0.8, 0.8, 0.8], 500)
    wilson_low, wilson_high = accuracy_interval(0.8, 500)
    assert high - low > (wilson_high - wilson_low) / np.sqrt(3)


def test_compare_one_seed_each_counts_the_discordant_points():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 0] * 50, dtype=bool)
    b = np.array([1, 0, 1, 0, 1, 0, 1, 0] * 50, dtype=bool)
    result = compare([a], [b])
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert result.discordant == (a_only, b_only) == (100, 50)
    assert result.diff == pytest.approx(a.mean() - b.mean())
    assert result.p_value == pytest.approx(stats.binomtest(a_only, a_only + b_only).pvalue)
    assert result.ci_low < result.diff < result.ci_high and result.test == "mcnemar_exact"


def test_compare_several_seeds_by_welch_over_their_figures():
    rng = np.random.default_rng(2)
    a = [rng.random(400) < 0.60 for _ in range(3)]
    b = [rng.random(400) < 0.50 for _ in range(3)]
    result = compare(a, b)
    assert result.test == "welch_t" and result.n_seeds == (3, 3)
    assert result.ci_low > 0 and result.p_value < 0.05  # ten points apart: detected
    same = compare(a, a)
    assert same.diff == 0 and same.p_value > 0.5


def test_compare_refuses_sides_on_different_points():
    with pytest.raises(ValueError, match="same points"):
        compare([np.ones(10, bool)], [np.ones(11, bool)])


def test_welch_over_seeds_covers_a_recipes_difference():
    """Two recipes whose models share their points (a point's difficulty is common to all),
    5 seeds each: the interval on the difference holds the true difference >= 93 % of the time."""
    rng = np.random.default_rng(3)

    def seeds(threshold, k, difficulty):
        return [difficulty + rng.normal(0, 0.6, len(difficulty)) < threshold + rng.normal(0, 0.05)
                for _ in range(k)]  # fmt: skip

    def accuracy(threshold, many=300):
        return np.mean([m.mean() for m in seeds(threshold, many, rng.normal(0, 1, 2000))])

    truth = accuracy(0.8) - accuracy(0.75)
    covered = 0
    for _ in range(150):
        difficulty = rng.normal(0, 1, 2000)
        result = compare(seeds(0.8, 5, difficulty), seeds(0.75, 5, difficulty))
        covered += result.ci_low <= truth <= result.ci_high
    assert covered / 150 >= 0.93
