"""Choosing the most robust model of a sweep by a masking-aware rule (docs/method.md, section 5).

The rule is declared once, as `SelectionRule`: the spec's `selection` section, logged on the
sweep run as `selection.*` params. The sweep audits and crowns by it, and `best`, `export`,
`report` and the run's closing lines read the sweep's own rule back from its run (command-line
flags override it and say so).

Among eligible trials, maximise worst_case_acc at `eps`; ties go to clean accuracy. Eligible
(`verdict` says why, in words): finished, evaluated, not collapsed, clean_acc >= the floor, and
either no masking flag, or flagged but audited with a worst case that passes its own checks. A
flag means the cheap attacks may have been fooled; the audit (Square, AutoAttack, merged per
example) answers that, unless the worst case itself is in doubt: every attack together still
leaves points at the unbounded budget, or the worst case rises with eps.
Only `record_selection` writes, and only when a command is asked to (`satsweep best --record`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from tracking.record import Configuration, SweepRecord, TrialRecord, configurations
from tracking.rules import SelectionRule
from tracking.sweep_run import SweepNotFound

RULE = (
    "among configurations (trials that differ only in their seed) whose every seed is finished, "
    "non-collapsed and has clean_acc >= min_clean_acc, maximise the mean over seeds of the "
    "worst_case_acc at eps on the selection points; a masking-flagged trial qualifies only once "
    "audited and with a worst case that reaches ~0 at the unbounded eps and does not rise with "
    "eps (or with include_flagged); ties: higher clean_acc; the champion is reported on the "
    "report points"
)


class SelectionError(LookupError):
    """No such sweep, no usable trials, or no metrics at the asked eps: phrased for people."""


def load_sweep(client: MlflowClient, sweep: str) -> SweepRecord:
    """The sweep's record, or a SelectionError for people."""
    try:
        return SweepRecord.load(client, sweep)
    except SweepNotFound as err:
        raise SelectionError(str(err)) from None


def sweep_rule(record: SweepRecord) -> SelectionRule:
    return SelectionRule.of_sweep(record.parent.data.params, record.evaluated_eps())


def check_evaluated_at(record: SweepRecord, eps: float) -> None:
    """A rule at a budget no trial was evaluated at is a mistake, not an empty ranking."""
    if record.trials and all(t.worst(eps) is None for t in record.trials.values()):
        available = ", ".join(f"{e:g}" for e in record.evaluated_eps()) or "none"
        raise SelectionError(
            f"sweep {record.name!r} has no worst_case_acc at eps={eps:g}; available eps: "
            f"{available}"
        )


def doubt(t: TrialRecord) -> str | None:
    """Why the worst case itself cannot be trusted, or None: all the attacks together still
    leave points standing at the unbounded eps (the whole [0, 1] box), or the worst case rises
    with eps (a broken attack at the larger budget), each judged by the trial's own logged
    thresholds (a run that logged none is not doubted on that ground)."""
    curve = t.worst_curve
    at_box = curve.get(t.unbounded_eps) if t.unbounded_eps is not None else None
    if at_box is not None and t.unbounded_threshold is not None and at_box > t.unbounded_threshold:
        return f"even at eps={t.unbounded_eps:g} every attack together leaves {at_box:.3f}"
    points = sorted(curve.items())
    for (e1, a1), (e2, a2) in zip(points, points[1:], strict=False):
        if t.tolerance is not None and a2 > a1 + t.tolerance:
            return f"the worst case rises from {a1:.3f} at eps={e1:g} to {a2:.3f} at eps={e2:g}"
    return None


def verdict(t: TrialRecord, rule: SelectionRule) -> tuple[bool, str]:
    """(eligible, why) for one trial, in words a person can check against the rule, and how its
    defence failed where it did (that alone does not rule it out: its worst case shows it)."""
    eligible, why = _verdict(t, rule)
    return eligible, f"{why}; defence {t.defence_failure}" if t.defence_failure else why


def _verdict(t: TrialRecord, rule: SelectionRule) -> tuple[bool, str]:
    if t.status != "finished":
        return False, f"out: {t.status or 'not finished'}"
    if t.worst(rule.eps) is None:
        return False, "out: not evaluated at this eps"
    if t.collapsed:
        return False, "out: collapsed (predicts one class or sits at chance)"
    if t.clean < rule.min_clean_acc:
        return False, f"out: clean {t.clean:.3f} < floor {rule.min_clean_acc:g}"
    flags = ", ".join(t.flag_reasons())
    if not t.flagged:
        return True, "in: no masking flag" + ("; audited" if t.audited else "")
    if rule.include_flagged:
        return True, f"in: flagged ({flags}), included by include_flagged"
    questioned = doubt(t)
    if questioned:
        return False, f"out: flagged ({flags}) and {questioned}"
    if not t.audited:
        return False, f"out: flagged ({flags}) and not audited: its worst case may be overstated"
    return True, f"in: flagged ({flags}), but its worst case includes the audit"


@dataclass(frozen=True)
class Champion:
    """The winning configuration, and the one of its trials that is exported: the seed whose
    figure lies closest to the configuration's mean (a typical model of the recipe, not its
    luckiest seed, whose own figure would overstate the recipe)."""

    configuration: Configuration
    model: TrialRecord


def configuration_verdict(c: Configuration, rule: SelectionRule) -> tuple[bool, str]:
    """(eligible, why) for a configuration: in only when every one of its seeds is in (a recipe
    that sometimes collapses or stays unconfirmed is not a safe choice)."""
    verdicts = [(t, verdict(t, rule)) for t in c.trials]
    if len(verdicts) == 1:
        return verdicts[0][1]
    out = [(t, why) for t, (ok, why) in verdicts if not ok]
    if not out:
        failed = "; ".join(c.defence_failures)
        return True, f"in: all {len(verdicts)} seeds in" + (f"; defence {failed}" if failed else "")
    t, why = out[0]
    more = f" (and {len(out) - 1} more seeds)" if len(out) > 1 else ""
    return False, f"out: seed {t.seed} {why.removeprefix('out: ')}{more}"


def select_champion(trials, rule: SelectionRule) -> Champion:
    """The rule over configurations: the eligible one with the highest mean worst case on the
    selection points (ties: clean accuracy), so that a lucky seed cannot win alone."""
    pool = [c for c in configurations(trials) if configuration_verdict(c, rule)[0]]
    if not pool:
        flagged = (
            "" if rule.include_flagged else " and passes the masking checks (--include-flagged)"
        )
        raise SelectionError(
            f"no finished trial has clean_acc >= {rule.min_clean_acc:g}{flagged}; lower "
            "--min-clean-acc to see more (`satsweep best` lists why each is out)"
        )
    best = max(pool, key=lambda c: (c.choosing_worst(rule.eps), c.clean))
    return Champion(best, representative(best, rule.eps))


def representative(c: Configuration, eps: float) -> TrialRecord:
    """The seed closest to the configuration's mean worst case on the selection points."""
    mean = c.choosing_worst(eps)
    return min(c.trials, key=lambda t: (abs(t.choosing_worst(eps) - mean), t.seed))


def champion_or_none(trials, rule: SelectionRule) -> Champion | None:
    try:
        return select_champion(trials, rule)
    except SelectionError:
        return None


def on_front_axes(c: Configuration, eps: float) -> bool:
    """A configuration the front may hold: finished in every seed, evaluated, not collapsed."""
    done = all(t.status == "finished" for t in c.trials)
    return done and c.worst(eps) is not None and not c.collapsed


def pareto_front(trials, eps: float) -> list[Configuration]:
    """Configurations (seed means) no other beats on both clean and worst-case accuracy at eps,
    sorted by clean accuracy; finished, non-collapsed ones only."""
    points = [c for c in configurations(trials) if on_front_axes(c, eps)]

    def beaten(c: Configuration) -> bool:
        return any(
            o.clean >= c.clean
            and o.worst(eps) >= c.worst(eps)
            and (o.clean > c.clean or o.worst(eps) > c.worst(eps))
            for o in points
        )

    return sorted((c for c in points if not beaten(c)), key=lambda c: c.clean)


def record_selection(
    client: MlflowClient, parent_run_id: str, champion: Champion, rule: SelectionRule
) -> None:
    """The rule, its inputs and its answer, on the sweep's parent run (tags: re-selectable)."""
    tags = {
        "rule": RULE,
        "eps": f"{rule.eps:g}",
        "min_clean_acc": f"{rule.min_clean_acc:g}",
        "include_flagged": str(rule.include_flagged).lower(),
        "champion_configuration": champion.configuration.name,
        "champion_run_id": champion.model.run_id,
        "champion_run_name": champion.model.name,
    }
    for key, value in tags.items():
        client.set_tag(parent_run_id, f"satsweep.selection.{key}", value)


def best_run_id(
    tracking_uri: str,
    sweep: str,
    eps: float | None = None,
    min_clean_acc: float | None = None,
    include_flagged: bool | None = None,
    record: bool = False,
) -> str:
    """The rule as one call: the run id of the model exported from the sweep's winning
    configuration by its own rule (arguments override it); written to the sweep run's tags only
    when `record`."""
    client = MlflowClient(tracking_uri)
    sweep_record = load_sweep(client, sweep)
    rule, _ = sweep_rule(sweep_record).overridden(
        eps=eps, min_clean_acc=min_clean_acc, include_flagged=include_flagged
    )
    check_evaluated_at(sweep_record, rule.eps)
    champion = select_champion(sweep_record.trials.values(), rule)
    if record:
        record_selection(client, sweep_record.parent_run_id, champion, rule)
    return champion.model.run_id
