"""Choosing the most robust model of a sweep by a masking-aware rule (shared/method.md section 5).

Default rule: among FINISHED trials with clean_acc >= the floor, maximise worst_case_acc at the
chosen eps, excluding trials with masking suspected unless asked; ties go to clean accuracy.
Everything here reads MLflow runs; nothing needs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tracking.runs import ROLE_TAG, STATUS_TAG

RULE = (
    "among FINISHED trials with clean_acc >= min_clean_acc, maximise worst_case_acc at eps, "
    "excluding masking_suspected trials unless include_flagged; ties: higher clean_acc"
)


DEFAULT_EPS = 0.1  # the MNIST reference budget of shared/method.md section 4
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

    @property
    def flagged(self) -> bool:
        return "masking_suspected" in self.flags


def sweep_parent_run(client: MlflowClient, sweep: str):
    """The experiment and the latest parent run of the sweep called `sweep`."""
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SelectionError(
            f"no sweep named {sweep!r} in this store; sweeps here: "
            f"{', '.join(n for n in names if n != 'Default') or 'none'}"
        )
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.`{ROLE_TAG}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise SelectionError(f"sweep {sweep!r} has no sweep run in this store")
    return exp, parents[0]


def load_candidates(client: MlflowClient, sweep: str, eps: float) -> tuple[str, list[Candidate]]:
    """(parent run id, every trial run of the sweep's latest launch) with the figures at eps."""
    exp, parent = sweep_parent_run(client, sweep)
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`{ROLE_TAG}` = 'trial' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'",
    )
    key = f"eps_{eps:g}"
    candidates = []
    for r in runs:
        m, p, t = r.data.metrics, r.data.params, r.data.tags
        candidates.append(Candidate(
            run_id=r.info.run_id, run_name=r.info.run_name or r.info.run_id,
            status=t.get(STATUS_TAG, "") if r.info.status == "FINISHED" else r.info.status,
            arch=p.get("arch.name", "?"), activation=p.get("activation", "?"),
            lam=float(p.get("lam", "nan")), clean=m.get("clean_acc", 0.0),
            worst=m.get(f"worst_case_acc/{key}"), fgsm=m.get(f"robust_acc/fgsm/{key}"),
            flags=sorted(k.removeprefix("masking.") for k, v in t.items()
                         if k.startswith("masking.") and v == "true"),
        ))  # fmt: skip
    if runs and all(c.worst is None for c in candidates):
        available = sorted(
            {
                k.split("/")[1]
                for r in runs
                for k in r.data.metrics
                if k.startswith("worst_case_acc/")
            }
        )
        raise SelectionError(
            f"sweep {sweep!r} has no worst_case_acc at eps={eps:g}; "
            f"available: {', '.join(available) or 'none'}"
        )
    return parent.info.run_id, candidates


def eligible(
    candidates: list[Candidate], min_clean_acc: float, include_flagged: bool
) -> list[Candidate]:
    """FINISHED (not diverged or early-stopped), above the floor, flagged only if asked."""
    return [
        c
        for c in candidates
        if c.status == "finished"
        and c.worst is not None
        and c.clean >= min_clean_acc
        and (include_flagged or not c.flagged)
    ]


def select_best(
    candidates: list[Candidate], min_clean_acc: float, include_flagged: bool
) -> Candidate:
    pool = eligible(candidates, min_clean_acc, include_flagged)
    if not pool:
        why = "" if include_flagged else " or not flagged (try --include-flagged)"
        raise SelectionError(
            f"no finished trial has clean_acc >= {min_clean_acc:g}{why}; "
            "lower --min-clean-acc to see more"
        )
    return max(pool, key=lambda c: (c.worst, c.clean))


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Finished trials no other finished trial beats on both clean and worst-case accuracy,
    sorted by clean accuracy."""
    points = [c for c in candidates if c.worst is not None and c.status == "finished"]
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
    record: bool = True,
) -> str:
    """The default rule as one call: the run id of the sweep's most robust trial."""
    client = MlflowClient(tracking_uri)
    parent, candidates = load_candidates(client, sweep, eps)
    chosen = select_best(candidates, min_clean_acc, include_flagged)
    if record:
        record_selection(client, parent, chosen, eps, min_clean_acc, include_flagged)
    return chosen.run_id
