"""The sweep's parent run, from start to end: created with the spec (params under the spec's
dotted names, the file as an artifact), reopened on resume, and closed after its trial runs are
reconciled, so that no run of the sweep is left RUNNING."""

from __future__ import annotations

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tracking.runs import (
    LAUNCHES_TAG,
    ROLE_TAG,
    TRIAL_ID_TAG,
    code_version,
    find_trial_run,
    finish_run,
    log_params,
    search_all,
    version_tags,
)


class SweepNotFound(LookupError):
    """No sweep of that name, or no parent run for it, in this store: phrased for people."""


def start_sweep_run(
    client: MlflowClient, experiment_id: str, name: str, spec_text: str, params: dict[str, str]
) -> str:
    """The parent run: role tag, the spec's flat params, the spec file as an artifact."""
    tags = {ROLE_TAG: "sweep", LAUNCHES_TAG: "1", "satsweep.git_commit": code_version(),
            **version_tags()}  # fmt: skip
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    log_params(client, run_id, params)
    client.log_text(run_id, spec_text, "spec.yaml")
    return run_id


def sweep_not_found(sweep: str, experiment_names: list[str]) -> SweepNotFound:
    """The error for a sweep this store lacks, naming the sweeps it holds (a typo shows)."""
    names = ", ".join(n for n in experiment_names if n != "Default") or "none"
    return SweepNotFound(f"no sweep named {sweep!r} in this store; sweeps here: {names}")


def latest_sweep_run(client: MlflowClient, sweep: str) -> tuple[str, Run]:
    """(experiment id, latest parent run) of the sweep called `sweep`."""
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        raise sweep_not_found(sweep, [e.name for e in client.search_experiments()])
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.`{ROLE_TAG}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise SweepNotFound(f"sweep {sweep!r} has no sweep run in this store")
    return exp.experiment_id, parents[0]


def reopen_sweep_run(client: MlflowClient, sweep: str) -> tuple[str, str] | None:
    """(experiment id, parent run id) of the sweep's latest launch, marked RUNNING again and
    tagged resumed; None when that launch already finished."""
    experiment_id, parent = latest_sweep_run(client, sweep)
    if parent.info.status == "FINISHED":
        return None
    client.update_run(parent.info.run_id, status="RUNNING")
    client.set_tag(parent.info.run_id, "satsweep.resumed", "true")
    launches = int(parent.data.tags.get(LAUNCHES_TAG, "1")) + 1
    client.set_tag(parent.info.run_id, LAUNCHES_TAG, str(launches))
    return experiment_id, parent.info.run_id


def launch_number(parent: Run) -> int:
    """This launch of the sweep, counted from 0 (a first `--resume` is 1)."""
    return int(parent.data.tags.get(LAUNCHES_TAG, "1")) - 1


def reconcile_trial_runs(
    client: MlflowClient, experiment_id: str, parent_run_id: str, ray_status: dict[str, str]
) -> int:
    """Close trial runs that a stopped or crashed trial left RUNNING; returns how many.

    `ray_status` maps Ray trial id -> 'TERMINATED' (finished or early-stopped) or 'ERROR'.
    """
    runs = search_all(
        client,
        experiment_id,
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        _close_trial(client, run.info.run_id, ray_status.get(run.data.tags.get(TRIAL_ID_TAG, "")))
    return len(runs)


def close_left_running(client: MlflowClient, record, ray_status: dict[str, str]) -> int:
    """Close, from the sweep's record, the trial runs a stopped or crashed trial left RUNNING;
    returns how many. `ray_status`: Ray trial id -> 'TERMINATED' or 'ERROR'."""
    running = [t for t in record.trials.values() if t.status == "RUNNING"]
    for t in running:
        record.mark(t.run_id, _close_trial(client, t.run_id, ray_status.get(t.ray_trial_id)))
    return len(running)


def close_trial_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    trial_id: str,
    ray_status: str,
) -> None:
    """Close one trial's run as soon as Ray Tune ends the trial, if the trial left it RUNNING
    (a scheduler stopped it, or its worker died; a trial that ran to the end finished its run
    itself): trials waiting on it (its lambda > 0 twins, `trainables/twins.py`) then stop
    waiting at once, not at the sweep's end."""
    run_id = find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if run_id is not None and client.get_run(run_id).info.status == "RUNNING":
        _close_trial(client, run_id, ray_status)


def _close_trial(client: MlflowClient, run_id: str, ray_status: str | None) -> str:
    """End a run its trial left RUNNING as Tune ended the trial: a trial Tune ended normally
    was stopped early (FINISHED), any other failed; returns the status note written."""
    note = "stopped_early" if ray_status == "TERMINATED" else "failed"
    finish_run(client, run_id, "FINISHED" if note == "stopped_early" else "FAILED", note=note)
    return note


def close_sweep_run(client: MlflowClient, parent_run_id: str, failed: int | None) -> None:
    """End the parent run: FINISHED (`finished`, or `partial` when `failed` trials failed) once
    the grid ran, FAILED when the driver itself broke (`failed` is None). Reconcile the trial
    runs first, so none outlives it RUNNING."""
    if failed is None:
        finish_run(client, parent_run_id, "FAILED", note="failed")
        return
    client.set_tag(parent_run_id, "satsweep.trials_failed", str(failed))
    finish_run(client, parent_run_id, "FINISHED", note="finished" if not failed else "partial")


def interrupt_sweep_run(client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
    """Ctrl-C or SIGTERM: the parent and every trial run still RUNNING end KILLED, tagged
    `interrupted`, so the store shows an unfinished sweep and `--resume` reopens it."""
    running = search_all(
        client,
        experiment_id,
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in running:
        finish_run(client, run.info.run_id, "KILLED", note="interrupted")
    finish_run(client, parent_run_id, "KILLED", note="interrupted")
