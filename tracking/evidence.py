"""How sure an answer is: intervals, paired comparisons, multiple-comparison correction and power,
from per-example results (one boolean per evaluation point: robust or not). docs/method.md,
section 7, gives the methods, their sources and why.

From `scipy.stats`: the Wilson score interval (`binomtest(...).proportion_ci`), the exact
McNemar test (the two-sided binomial test of one discordant count against both with p = 0.5),
Student's and Welch's t and normal quantiles. Written here, because scipy has no such function,
and tested against hand-checked cases and by simulated coverage: the paired bootstrap over
points, the floors that keep a few agreeing seeds from claiming certainty, Holm's step-down
adjustment, the detectable difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # every interval here
RESAMPLES = 2000  # bootstrap resamples; seeded, so a report is reproducible
BOOTSTRAP_SEED = 0
POWER, ALPHA = 0.80, 0.05  # for the detectable difference
ASSUMED_DISCORDANCE = 0.10  # share of points two compared models disagree on, before any data


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta
    2001 recommend it over the normal approximation)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level,
                                                                method="wilson")  # fmt: skip
    return float(ci.low), float(ci.high)


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """Wilson's interval of an accuracy measured on n points (k = accuracy x n, rounded)."""
    return wilson(round(accuracy * n), n)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (McNemar 1947; Dietterich 1998
    for comparing classifiers on one test set): only points where the two disagree count."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(a_only, discordant, 0.5).pvalue)


def _rng() -> np.random.Generator:
    return np.random.default_rng(BOOTSTRAP_SEED)


def _percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def seeds_and_points_interval(accuracies: list[float], n_points: int) -> tuple[float, float]:
    """The interval of a configuration's accuracy (the mean over its k seeds) that covers both
    sources of noise: Student's t on the seeds' accuracies with k - 1 degrees of freedom. Each
    seed's accuracy is one replicate of the recipe and already carries its points' binomial
    noise, so their spread measures both (the two-stage estimator, Cochran 1977, section 10.2);
    the variance is floored at that binomial noise, p(1 - p) / n, which three seeds that agree
    by chance cannot make smaller. docs/method.md, section 7, gives the coverage measured
    against a two-level bootstrap, which ran narrow with few seeds."""
    p = np.asarray(accuracies, dtype=float)
    k, mean = len(p), float(p.mean())
    variance = max(float(p.var(ddof=1)), mean * (1 - mean) / n_points) / k
    half = float(stats.t.ppf(1 - (1 - LEVEL) / 2, k - 1)) * np.sqrt(variance)
    return max(0.0, mean - half), min(1.0, mean + half)  # an accuracy stays in [0, 1]


def interval(accuracies: list[float], n_points: int) -> tuple[float, float]:
    """The interval to show beside a figure: Wilson's for one seed (the test points are the only
    noise measured), Student's t over the seeds for several."""
    if len(accuracies) == 1:
        return accuracy_interval(accuracies[0], n_points)
    return seeds_and_points_interval(accuracies, n_points)


@dataclass(frozen=True)
class Comparison:
    """A minus B on the same evaluation points: the difference of accuracies, its interval, the
    test, its p-value, and what it rests on."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "mcnemar_exact" (one seed each) or "welch_t" (several on a side)
    n_points: int
    n_seeds: tuple[int, int]
    discordant: tuple[int, int] | None  # (robust in A only, in B only), one seed each

    def as_json(self) -> dict:
        return {
            "diff": self.diff,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "test": self.test,
            "n_points": self.n_points,
            "n_seeds": list(self.n_seeds),
            "discordant": list(self.discordant) if self.discordant else None,
        }


def compare(a: list[np.ndarray], b: list[np.ndarray]) -> Comparison:
    """A against B, each a list of per-seed robust masks over the same evaluation points.
    One seed each: exact McNemar test on the discordant points, paired bootstrap interval over
    the points. Several: Welch's t on the two sides' seed figures (each seed's figure carries its
    points' noise), its variance floored at the points' paired noise (discordant share / n)."""
    n = len(a[0])
    if any(len(m) != n for m in (*a, *b)):
        raise ValueError("the two sides were not evaluated on the same points")
    fa, fb = np.array([m.mean() for m in a]), np.array([m.mean() for m in b])
    diff = float(fa.mean() - fb.mean())
    if len(a) == 1 and len(b) == 1:
        return _one_seed_each(a[0].astype(bool), b[0].astype(bool), diff)
    discordance = float(np.mean([(x != y).mean() for x in a for y in b]))
    low, high, p = welch(fa, fb, discordance / n * (1 / len(a) + 1 / len(b)) / 2)
    return Comparison(diff, low, high, p, "welch_t", n, (len(a), len(b)), None)


def _one_seed_each(x: np.ndarray, y: np.ndarray, diff: float) -> Comparison:
    n = len(x)
    a_only, b_only = int(np.sum(x & ~y)), int(np.sum(~x & y))
    rng = _rng()
    delta = x.astype(float) - y.astype(float)
    boots = np.array([delta[rng.integers(0, n, size=n)].mean() for _ in range(RESAMPLES)])
    low, high = _percentile_interval(boots)
    return Comparison(diff, low, high, mcnemar_exact(a_only, b_only), "mcnemar_exact", n, (1, 1),
                      (a_only, b_only))  # fmt: skip


def welch(fa: np.ndarray, fb: np.ndarray, floor: float) -> tuple[float, float, float]:
    """(low, high, two-sided p) of mean(fa) - mean(fb) by Welch's t (Welch 1947), the variance
    at least `floor`; a side of one seed contributes no spread of its own, only the floor."""
    va = fa.var(ddof=1) / len(fa) if len(fa) > 1 else 0.0
    vb = fb.var(ddof=1) / len(fb) if len(fb) > 1 else 0.0
    if va + vb > floor:
        parts = [(v, len(f) - 1) for v, f in ((va, fa), (vb, fb)) if len(f) > 1]
        df = (va + vb) ** 2 / sum(v**2 / d for v, d in parts)
    else:
        va, vb, df = floor, 0.0, max(1, len(fa) + len(fb) - 2)
    se = float(np.sqrt(va + vb))
    diff = float(fa.mean() - fb.mean())
    t = float(stats.t.ppf(1 - (1 - LEVEL) / 2, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df)) if se > 0 else float(diff == 0)
    return diff - t * se, diff + t * se, min(1.0, p)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): controls the family-wise error over all
    the comparisons a report makes, and is uniformly more powerful than Bonferroni."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def detectable_difference(
    n_points: int,
    n_seeds: int = 1,
    discordance: float = ASSUMED_DISCORDANCE,
    seed_sd: float = 0.0,
) -> float:
    """The smallest difference of two configurations' accuracies a paired comparison detects
    with POWER at level ALPHA (two-sided): (z_{1-ALPHA/2} + z_{POWER}) x its standard error.
    Over points, the paired difference of one seed each has variance about discordance / n
    (only discordant points carry information); averaging k seeds per side divides it by k and
    adds twice the between-seed variance over k. 2.8 sqrt(d / n) at one seed, as in
    docs/method.md, section 7."""
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
    variance = discordance / n_points / n_seeds + 2 * seed_sd**2 / n_seeds
    return float(z * np.sqrt(variance))


def shown(value: float | None, ci: tuple[float, float] | None, digits: int = 3) -> str:
    """`0.360 [0.316, 0.406]`: a figure with its interval, as every table and line prints it."""
    if value is None:
        return "–"
    if ci is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
