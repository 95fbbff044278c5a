"""The orchestration of one sweep, in order: connect Ray, open the parent run, run the grid with
Ray Tune, audit, report, close the parent run. Each step's work lives in its own room:
`preflight.py`, `grid.py`, `audit.py`, `tracking/sweep_run.py`, `tracking/report.py`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sweeps.audit import rank_eps, run_audit
from sweeps.grid import param_space, trial_name
from sweeps.preflight import PreflightError, check_shared_storage, storage_uri
from sweeps.spec import SweepSpec
from tracking import metric_names as names
from tracking.report import write_report
from tracking.runs import code_version, ensure_experiment, redact_uri, ui_command
from tracking.sweep_run import (
    SweepNotFound,
    close_sweep_run,
    reconcile_trial_runs,
    reopen_sweep_run,
    start_sweep_run,
)
from trainables.settings import flatten
from trainables.trainable import SweepContext, run_trial


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    finished: int
    failed: int


def connect_ray(address: str | None) -> None:
    """Connect to a cluster (`auto`, `ray://host:port`, or RAY_ADDRESS), else start a local
    instance without its dashboard (faster on small machines; nothing listens beyond Ray's own
    ports)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)


def experiment_path(spec: SweepSpec, storage_path: str) -> str:
    """Where Ray keeps this sweep's experiment state (what `Tuner.restore` reads)."""
    root = storage_uri(storage_path)
    return f"{root.rstrip('/')}/{spec.name}" if "://" in root else str(Path(root) / spec.name)


def open_sweep_run(
    spec: SweepSpec, spec_text: str, client: MlflowClient, tracking_uri: str, resume: bool
) -> tuple[str, str] | None:
    """(experiment id, parent run id): a new parent run, or on resume the sweep's latest one,
    reopened; None when resuming a sweep that already finished."""
    if resume:
        try:
            return reopen_sweep_run(client, spec.name)
        except SweepNotFound as err:
            raise PreflightError(f"cannot resume: {err}") from err
    experiment_id = ensure_experiment(client, spec.name, tracking_uri)
    params = flatten(spec.model_dump(mode="json"))
    params["tracking_uri"] = redact_uri(spec.tracking_uri or "")
    return experiment_id, start_sweep_run(client, experiment_id, spec.name, spec_text, params)


def report_sweep(spec: SweepSpec, tracking_uri: str) -> None:
    """The sweep report on the parent run; a failed report is printed, never fatal."""
    try:
        paths = write_report(tracking_uri, spec.name, eps=rank_eps(spec))
        print(f"satsweep: report ({', '.join(paths)}) logged to the sweep run")
    except Exception as err:  # the trials' results are safe; the report can be redone
        print(f"satsweep: report failed ({err}); redo it with `satsweep report {spec.name}`")


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    tracking_uri: str,
    storage_path: str,
    resume: bool = False,
    address: str | None = None,
) -> SweepOutcome | None:
    """Run the whole grid (or, with `resume`, what a crash left of it); every MLflow run this
    creates ends FINISHED or FAILED. Returns None when asked to resume a finished sweep."""
    connect_ray(address)
    check_shared_storage(storage_path)
    path = experiment_path(spec, storage_path)
    if resume and not tune.Tuner.can_restore(path):
        raise PreflightError(
            f"no sweep {spec.name!r} to resume under {path}; start it with "
            "`satsweep run SPEC` (or give the --storage-path it used)"
        )
    print(f"satsweep: MLflow store {redact_uri(tracking_uri)}")
    print(f"satsweep: browse it with  {ui_command(tracking_uri)}")
    client = MlflowClient(tracking_uri)
    opened = open_sweep_run(spec, spec_text, client, tracking_uri, resume)
    if opened is None:
        print(f"satsweep: sweep {spec.name!r} already finished; nothing to resume")
        return None
    experiment_id, parent = opened
    context = SweepContext(
        shared=spec.shared(),
        architectures=spec.architectures,
        defences=spec.defences,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        git_commit=code_version(),
        cpus_per_trial=spec.resources.cpus_per_trial,
    )
    ray_status: dict[str, str] = {}
    try:
        results = fit(spec, context, storage_path, resume)
        for result in results:
            if names.TRIAL_ID in result.metrics:
                trial_id = result.metrics[names.TRIAL_ID]
                ray_status[trial_id] = "ERROR" if result.error else "TERMINATED"
        failed = len(results.errors)
        if spec.audit.enabled:
            run_audit(spec, results, context, client)
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        report_sweep(spec, tracking_uri)
        close_sweep_run(client, parent, failed)
    except BaseException:
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        close_sweep_run(client, parent, failed=None)
        raise
    return SweepOutcome(parent, experiment_id, len(results) - failed, failed)


def fit(spec: SweepSpec, context: SweepContext, storage_path: str, resume: bool):
    """Ray Tune over the grid: a new Tuner, or the sweep's restored one on resume."""
    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    if resume:
        path = experiment_path(spec, storage_path)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    return new_tuner(spec, trainable, storage_path).fit()


def _scheduler(spec: SweepSpec):
    if spec.scheduler.name == "asha":
        return ASHAScheduler(max_t=spec.training.epochs, grace_period=spec.scheduler.grace_period)
    return FIFOScheduler()


def new_tuner(spec: SweepSpec, trainable, storage_path: str) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=names.CLEAN_ACC,  # Tune prints the current best trial by it; ASHA ranks by it
            mode="max",
            scheduler=_scheduler(spec),
            max_concurrent_trials=spec.resources.max_concurrent_trials,
            trial_name_creator=lambda t: trial_name(t.config),
            trial_dirname_creator=lambda t: f"{trial_name(t.config)}_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage_uri(storage_path),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=1,
        ),
    )
