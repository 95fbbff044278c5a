"""Choosing the most robust model of a sweep by a masking-aware rule (docs/method.md, section 5).

Default rule: among eligible trials, maximise worst_case_acc at the chosen eps; ties go to clean
accuracy. Eligible (`verdict` says why, in words): FINISHED, evaluated at eps, not collapsed,
clean_acc >= the floor, and either no masking flag, or flagged but audited with a worst case
that passes its own checks. A flag means the cheap attacks may have been fooled; the audit
(Square, AutoAttack, merged per example) answers that, unless the worst case itself is in
doubt: every attack together still leaves points at the unbounded budget, or the worst case
rises with eps.
Everything here reads MLflow runs; nothing needs a model. Only `record_selection` writes, and
only when a command is asked to (`satsweep best --record`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.runs import AUDITED_TAG, STATUS_TAG, trial_runs
from tracking.sweep_run import SweepNotFound, latest_sweep_run

RULE = (
    "among FINISHED, non-collapsed trials with clean_acc >= min_clean_acc, maximise "
    "worst_case_acc at eps; a masking-flagged trial qualifies only once audited and with a "
    "worst case that reaches ~0 at the unbounded eps and does not rise with eps (or with "
    "include_flagged); ties: higher clean_acc"
)


DEFAULT_EPS = 0.1  # the MNIST reference budget (docs/method.md, section 4)
DEFAULT_MIN_CLEAN_ACC = 0.9


class SelectionError(LookupError):
    """No such sweep, no usable trials, or no metrics at the asked eps: phrased for people."""


@dataclass
class Candidate:
    run_id: str
    run_name: str
    status: str
    arch: str
    activation: str
    lam: float
    clean: float
    worst: float | None
    fgsm: float | None
    flags: list[str]
    audited: bool = False
    collapsed: bool = False
    defence: str = "none"
    worst_curve: dict[float, float] = field(default_factory=dict)  # eps -> worst case
    unbounded_eps: float = 1.0
    unbounded_threshold: float = 0.05
    tolerance: float = 0.02

    @property
    def flagged(self) -> bool:
        return names.MASKING_SUSPECTED in self.flags


def load_candidates(client: MlflowClient, sweep: str, eps: float) -> tuple[str, list[Candidate]]:
    """(parent run id, every trial run of the sweep's latest launch) with the figures at eps."""
    try:
        experiment_id, parent = latest_sweep_run(client, sweep)
    except SweepNotFound as err:
        raise SelectionError(str(err)) from None
    runs = trial_runs(client, experiment_id, parent.info.run_id)
    candidates = [_candidate(r, eps) for r in runs]
    if runs and all(c.worst is None for c in candidates):
        available = sorted(
            {
                e
                for r in runs
                for k in r.data.metrics
                if (e := names.parse_worst_case_acc(k)) is not None
            }
        )
        raise SelectionError(
            f"sweep {sweep!r} has no worst_case_acc at eps={eps:g}; "
            f"available eps: {', '.join(f'{e:g}' for e in available) or 'none'}"
        )
    return parent.info.run_id, candidates


def _candidate(run, eps: float) -> Candidate:
    """A trial run as the rule sees it: its figures, its flags and audit from its tags."""
    t = run.data.tags
    return candidate_from_metrics(
        run.info.run_id,
        run.data.metrics,
        run.data.params,
        eps,
        run_name=run.info.run_name or run.info.run_id,
        status=t.get(STATUS_TAG, "") if run.info.status == "FINISHED" else run.info.status,
        flags=names.flags_from_tags(t),
        audited=t.get(AUDITED_TAG) == "true",
    )


def candidate_from_metrics(
    run_id: str,
    metrics: dict[str, float],
    params: dict[str, str],
    eps: float,
    *,
    run_name: str,
    status: str,
    flags: list[str],
    audited: bool,
) -> Candidate:
    """A candidate from a trial's metrics and flat params: the one reading of them that both
    selection (from MLflow) and the sweep's audit loop (from Tune's results) use."""
    m, p = metrics, params
    return Candidate(
        run_id=run_id,
        run_name=run_name,
        status=status,
        arch=p.get("arch.name", "?"),
        activation=p.get("activation", "?"),
        lam=float(p.get("lam", "nan")),
        clean=m.get(names.CLEAN_ACC, 0.0),
        worst=m.get(names.worst_case_acc(eps)),
        fgsm=m.get(names.robust_acc("fgsm", eps)),
        flags=flags,
        audited=audited,
        collapsed=m.get(names.COLLAPSED) == 1.0,
        defence=p.get("defence", "none"),
        worst_curve={
            e: v for k, v in m.items() if (e := names.parse_worst_case_acc(k)) is not None
        },
        unbounded_eps=float(p.get("evaluation.unbounded_eps", 1.0)),
        unbounded_threshold=float(p.get("evaluation.masking.unbounded_threshold", 0.05)),
        tolerance=float(p.get("evaluation.masking.tolerance", 0.02)),
    )


def doubt(c: Candidate) -> str | None:
    """Why the worst case itself cannot be trusted, or None: all the attacks together still
    leave points standing at the unbounded eps (the whole [0, 1] box), or the worst case rises
    with eps (a broken attack at the larger budget)."""
    at_box = c.worst_curve.get(c.unbounded_eps)
    if at_box is not None and at_box > c.unbounded_threshold:
        return f"even at eps={c.unbounded_eps:g} every attack together leaves {at_box:.3f}"
    curve = sorted(c.worst_curve.items())
    for (e1, a1), (e2, a2) in zip(curve, curve[1:], strict=False):
        if a2 > a1 + c.tolerance:
            return f"the worst case rises from {a1:.3f} at eps={e1:g} to {a2:.3f} at eps={e2:g}"
    return None


def verdict(c: Candidate, min_clean_acc: float, include_flagged: bool) -> tuple[bool, str]:
    """(eligible, why) for one trial, in words a person can check against the rule."""
    if c.status != "finished":
        return False, f"out: {c.status or 'not finished'}"
    if c.worst is None:
        return False, "out: not evaluated at this eps"
    if c.collapsed:
        return False, "out: collapsed (predicts one class or sits at chance)"
    if c.clean < min_clean_acc:
        return False, f"out: clean {c.clean:.3f} < floor {min_clean_acc:g}"
    flags = ", ".join(f for f in c.flags if f != names.MASKING_SUSPECTED)
    if not c.flagged:
        return True, "in: no masking flag" + ("; audited" if c.audited else "")
    if include_flagged:
        return True, f"in: flagged ({flags}), included by --include-flagged"
    questioned = doubt(c)
    if questioned:
        return False, f"out: flagged ({flags}) and {questioned}"
    if not c.audited:
        return False, f"out: flagged ({flags}) and not audited: its worst case may be overstated"
    return True, f"in: flagged ({flags}), but its worst case includes the audit"


def eligible(
    candidates: list[Candidate], min_clean_acc: float, include_flagged: bool
) -> list[Candidate]:
    """The trials the rule may choose from (see `verdict`)."""
    return [c for c in candidates if verdict(c, min_clean_acc, include_flagged)[0]]


def select_best(
    candidates: list[Candidate], min_clean_acc: float, include_flagged: bool
) -> Candidate:
    pool = eligible(candidates, min_clean_acc, include_flagged)
    if not pool:
        why = "" if include_flagged else " and passes the masking checks (try --include-flagged)"
        raise SelectionError(
            f"no finished trial has clean_acc >= {min_clean_acc:g}{why}; "
            "lower --min-clean-acc to see more (`satsweep best` lists why each is out)"
        )
    return max(pool, key=lambda c: (c.worst, c.clean))


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Finished, non-collapsed trials no other such trial beats on both clean and worst-case
    accuracy, sorted by clean accuracy."""
    points = [
        c for c in candidates if c.worst is not None and c.status == "finished" and not c.collapsed
    ]
    front = [
        c
        for c in points
        if not any(
            o.clean >= c.clean and o.worst >= c.worst and (o.clean > c.clean or o.worst > c.worst)
            for o in points
        )
    ]
    return sorted(front, key=lambda c: c.clean)


def record_selection(
    client: MlflowClient,
    parent_run_id: str,
    chosen: Candidate,
    eps: float,
    min_clean_acc: float,
    include_flagged: bool,
) -> None:
    """The rule, its inputs and its answer, on the sweep's parent run (tags: re-selectable)."""
    tags = {
        "rule": RULE,
        "eps": f"{eps:g}",
        "min_clean_acc": f"{min_clean_acc:g}",
        "include_flagged": str(include_flagged).lower(),
        "champion_run_id": chosen.run_id,
        "champion_run_name": chosen.run_name,
    }
    for key, value in tags.items():
        client.set_tag(parent_run_id, f"satsweep.selection.{key}", value)


def best_run_id(
    tracking_uri: str,
    sweep: str,
    eps: float = 0.1,
    min_clean_acc: float = 0.9,
    include_flagged: bool = False,
    record: bool = False,
) -> str:
    """The default rule as one call: the run id of the sweep's most robust trial (written to
    the sweep run's tags only when `record`)."""
    client = MlflowClient(tracking_uri)
    parent, candidates = load_candidates(client, sweep, eps)
    chosen = select_best(candidates, min_clean_acc, include_flagged)
    if record:
        record_selection(client, parent, chosen, eps, min_clean_acc, include_flagged)
    return chosen.run_id
