"""Paired comparisons of a sweep's trials and configurations, on the same evaluation points: what
`satsweep compare` prints and the report's comparison table holds (docs/method.md, section 7).

A side is a trial (by run name or run id) or a configuration (a filter such as
`defence=pgd,lam=0`, matching the seeds of one configuration). Both sides' per-example worst cases
at the rule's eps (and their clean correctness) are compared point by point: one seed each with
an exact McNemar test and a paired bootstrap interval, several with Welch's t over the seeds.
The report compares every arm with a baseline (`Baselines`, the spec's `comparisons`), adjusts
the p-values for the number of comparisons (Holm), and says what difference it could detect.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from tracking.evidence import Comparison, compare, detectable_difference, holm
from tracking.per_example import PerExampleMissing, load_per_example
from tracking.record import Configuration, SweepRecord, TrialRecord, configurations
from tracking.rules import Baselines

SHORT_KEYS = {"arch": "arch.name"}  # a filter's key -> the param it means
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class CompareError(LookupError):
    """A side names nothing, or more than one configuration: phrased for people."""


def _matches(t: TrialRecord, key: str, wanted: str) -> bool:
    value = t.params.get(SHORT_KEYS.get(key, key))
    if value is None:
        return False
    try:
        return float(value) == float(wanted)
    except ValueError:
        return value == wanted


def resolve(record: SweepRecord, side: str) -> Configuration:
    """A trial name or run id (that trial alone), or `key=value,...` (every trial matching, which
    must be the seeds of one configuration)."""
    trials = list(record.trials.values())
    if _RUN_ID.match(side) or "=" not in side:
        found = [t for t in trials if side in (t.run_id, t.name)]
        if not found:
            raise CompareError(f"no trial named {side!r} in sweep {record.name!r}")
        return Configuration(found)
    pairs = [part.split("=", 1) for part in side.split(",")]
    found = [t for t in trials if all(_matches(t, k.strip(), v.strip()) for k, v in pairs)]
    groups = configurations(found)
    if not groups:
        raise CompareError(f"no trial of sweep {record.name!r} has {side}")
    if len(groups) > 1:
        names = ", ".join(c.name for c in groups[:5])
        raise CompareError(f"{side} matches {len(groups)} configurations ({names}); add keys "
                           "to pick one (e.g. activation=relu)")  # fmt: skip
    return groups[0]


@dataclass(frozen=True)
class Paired:
    """A against B at eps: the worst case's comparison and the clean accuracy's."""

    a: Configuration
    b: Configuration
    eps: float
    worst: Comparison
    clean: Comparison | None  # None when a side's runs stored no clean correctness
    discordance: float  # share of points where a model of A and one of B disagree (mean)

    def sentence(self, label: str | None = None, adjusted_p: float | None = None) -> str:
        """`λ=1 vs λ=0: +0.4 points [-1.1, +1.9], no detectable difference, p = 0.62`."""
        w = self.worst
        p = adjusted_p if adjusted_p is not None else w.p_value
        verdict = ("no detectable difference" if p >= 0.05 else
                   f"{self.a.name if w.diff > 0 else self.b.name} is more robust")  # fmt: skip
        which = "Holm-adjusted p" if adjusted_p is not None else "p"
        return (f"{label or f'{self.a.name} vs {self.b.name}'}: worst case at eps {self.eps:g} "
                f"{100 * w.diff:+.1f} points [{100 * w.ci_low:+.1f}, {100 * w.ci_high:+.1f}], "
                f"{verdict}, {which} = {p:.2g} ({w.test}, {w.n_points} points, seeds "
                f"{w.n_seeds[0]} and {w.n_seeds[1]})")  # fmt: skip


def paired(client: MlflowClient, a: Configuration, b: Configuration, eps: float, cache=None):
    """Compare A with B on their shared evaluation points (their runs' per-example records)."""
    cache = {} if cache is None else cache

    def records(c: Configuration):
        for t in c.trials:
            if t.run_id not in cache:
                cache[t.run_id] = load_per_example(client, t.run_id, t.artifact_uri)
        return [cache[t.run_id] for t in c.trials]

    ra, rb = records(a), records(b)
    if any(not (r.eval_indices == ra[0].eval_indices).all() for r in (*ra, *rb)):
        raise CompareError(f"{a.name} and {b.name} were not evaluated on the same points")
    wa, wb = [r.worst(eps) for r in ra], [r.worst(eps) for r in rb]
    worst = compare(wa, wb)
    has_clean = all(r.clean is not None for r in (*ra, *rb))
    clean = compare([r.clean for r in ra], [r.clean for r in rb]) if has_clean else None
    disagree = statistics.mean(float((x != y).mean()) for x in wa for y in wb)
    return Paired(a, b, eps, worst, clean, disagree)


def baseline_pairs(
    record: SweepRecord, baselines: Baselines
) -> list[tuple[str, Configuration, Configuration]]:
    """(label, arm, baseline) for every comparison the report makes: each λ against the
    baseline λ of the same architecture, activation and defence; each defence against the
    baseline defence of the same architecture, activation and λ. Evaluated, uncollapsed arms."""
    usable = [c for c in record.configurations() if c.trials[0].evaluated and not c.collapsed]

    def key(c: Configuration, leave_out: str) -> tuple:
        return tuple(kv for kv in c.trials[0].configuration_key
                     if not kv[0].startswith(leave_out))  # fmt: skip

    pairs = []
    families = (("lam", baselines.lam, lambda c: c.trials[0].lam, "λ={:g}"),
                ("defence", baselines.defence, lambda c: _defence_label(c), "{}"))  # fmt: skip
    for axis, base, value_of, shown in families:
        if base is None:
            continue
        for c in usable:
            if _same(value_of(c), base):
                continue
            for b in usable:
                if _same(value_of(b), base) and key(b, axis) == key(c, axis):
                    label = (
                        f"{shown.format(value_of(c))} vs {shown.format(base)} ({_rest(c, axis)})"
                    )
                    pairs.append((label, c, b))
    return pairs


def _same(value, base) -> bool:
    return float(value) == float(base) if isinstance(value, float) else value == base


def _defence_label(c: Configuration) -> str:
    """A defence as the spec names it in `comparisons.defence`: its kind (`none`, `pgd`, ...)."""
    return c.trials[0].defence


def _rest(c: Configuration, axis: str) -> str:
    t = c.trials[0]
    parts = [t.arch, t.activation]
    parts.append(f"λ={t.lam:g}" if axis == "defence" else t.defence)
    return ", ".join(parts)


@dataclass(frozen=True)
class ReportComparisons:
    rows: list[tuple[str, Paired, float]]  # (label, comparison, Holm-adjusted p)
    detectable_points: float  # the smallest difference this sweep could detect, in points
    left_out: int = 0  # comparisons whose runs have no per-example results to pair


def baseline_comparisons(
    client: MlflowClient, record: SweepRecord, eps: float, baselines: Baselines
) -> ReportComparisons | None:
    pairs = baseline_pairs(record, baselines)
    if not pairs:
        return None
    cache: dict = {}
    done = []
    for label, a, b in pairs:
        try:
            done.append((label, paired(client, a, b, eps, cache)))
        except PerExampleMissing:  # an old run, or a failed upload: nothing to pair
            continue
    left_out = len(pairs) - len(done)
    if not done:
        return ReportComparisons([], float("nan"), left_out)
    adjusted = holm([p.worst.p_value for _, p in done])
    rows = [(label, p, q) for (label, p), q in zip(done, adjusted, strict=True)]
    return ReportComparisons(rows, 100 * sweep_detectable(record, done), left_out)


def sweep_detectable(record: SweepRecord, done: list[tuple[str, Paired]]) -> float:
    """The smallest difference the sweep's comparisons could detect (80 % power, 5 % level):
    its points and seeds, the median share of points two compared models disagree on, and the
    spread between seeds where there are several."""
    first = next(iter(record.trials.values()))
    if first.eval_points is None:  # a run from before the count was logged
        return float("nan")
    seeds = min(len(p.a.trials) for _, p in done)
    discordance = statistics.median(p.discordance for _, p in done)
    spreads = [s[0] for _, p in done if (s := p.a.spread(p.eps))]
    return detectable_difference(first.eval_points, seeds, discordance,
                                 statistics.median(spreads) if spreads else 0.0)  # fmt: skip
