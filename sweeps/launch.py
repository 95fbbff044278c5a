"""The orchestration of one sweep, in order: connect Ray, open the parent run, run the grid with
Ray Tune, audit, report, close the parent run. Each step's work lives in its own room:
`preflight.py`, `grid.py`, `audit.py`, `tracking/sweep_run.py`, `tracking/report.py`."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sweeps.audit import EarlyAudits, rank_eps, run_audit
from sweeps.console import command, duration, quiet_libraries, say
from sweeps.grid import grid_points, param_space, trial_name
from sweeps.preflight import (
    PreflightError,
    check_cluster_fits,
    check_shared_storage,
    check_tracking_from_every_host,
    ray_memory_reservation,
    storage_uri,
    sweep_lock,
)
from sweeps.progress import TrialLines
from sweeps.spec import SweepSpec
from sweeps.worker_deaths import survive_killed_workers
from tracking import metric_names as names
from tracking.report import write_report
from tracking.runs import (
    code_version,
    ensure_experiment,
    log_epoch,
    redact_uri,
    resolve_tracking_uri,
    trial_runs,
)
from tracking.select import DEFAULT_MIN_CLEAN_ACC, SelectionError, load_candidates, select_best
from tracking.store import store_lock
from tracking.sweep_run import (
    SweepNotFound,
    close_sweep_run,
    close_trial_run,
    interrupt_sweep_run,
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


def connect_ray(address: str | None, verbose: bool = False) -> None:
    """Connect to a cluster (`auto`, `ray://host:port`, or RAY_ADDRESS), else start a new local
    instance without its dashboard (faster on small machines; nothing listens beyond Ray's own
    ports): `address="local"`, because with no address Ray joins whatever cluster `ray start`
    last left on this machine. Workers' own output reaches the console only when `verbose`."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR"}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", include_dashboard=False, **quiet)


def experiment_path(spec: SweepSpec, storage_path: str) -> str:
    """Where Ray keeps this sweep's experiment state (what `Tuner.restore` reads); a URI's query
    (an S3 endpoint, say) stays at the end."""
    root = storage_uri(storage_path)
    if "://" not in root:
        return str(Path(root) / spec.name)
    base, mark, query = root.partition("?")
    return f"{base.rstrip('/')}/{spec.name}{mark}{query}"


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
        say(f"report logged to the sweep run ({len(paths)} files under report/)")
    except Exception as err:  # the trials' results are safe; the report can be redone
        say(f"report failed ({err}); redo it with `{command()} report {spec.name}`")


def sweep_usage(
    client: MlflowClient, experiment_id: str, parent: str, spec: SweepSpec, audit_seconds: float
) -> dict[str, float]:
    """What the sweep cost: busy seconds of its work (trial runs, audit tasks) over slots x
    wall time, the wall time running from the parent run's start to now; and the epochs
    trained (each trial's own, retrained ones included, plus any lambda = 0 twin a trial had
    to train) over the grid's own epochs (trials x epochs): 1.00 when no model is trained twice,
    below 1 when ASHA stops trials early."""
    slots = spec.resources.max_concurrent_trials
    wall = time.time() - client.get_run(parent).info.start_time / 1000
    runs = trial_runs(client, experiment_id, parent)
    busy = audit_seconds + sum(
        (r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time
    )
    epochs_run = sum(
        r.data.metrics.get(names.EPOCHS_RUN, 0.0)
        + r.data.metrics.get(names.TWIN_EPOCHS_TRAINED, 0.0)
        for r in runs
    )
    grid_epochs = spec.num_trials * spec.training.epochs
    return {
        "sweep/slot_utilisation": busy / (slots * wall) if wall > 0 else 0.0,
        "sweep/busy_seconds": busy,
        "sweep/wall_seconds": wall,
        "sweep/slots": float(slots),
        "sweep/training_epochs_run": epochs_run,
        "sweep/grid_epochs": float(grid_epochs),
        "sweep/training_epochs_ratio": epochs_run / grid_epochs,
    }


def closing_lines(spec: SweepSpec, tracking_uri: str, usage: dict, failed: int) -> None:
    """Wall time, utilisation, the champion and what to type next."""
    finished = spec.num_trials - failed
    say(
        f"done in {duration(usage['sweep/wall_seconds'])}: {finished} trials finished, "
        f"{failed} failed; slot utilisation {usage['sweep/slot_utilisation']:.2f} "
        f"({usage['sweep/busy_seconds']:.0f} busy seconds on {int(usage['sweep/slots'])} slots); "
        f"epochs trained {usage['sweep/training_epochs_run']:.0f} of the grid's "
        f"{usage['sweep/grid_epochs']:.0f} ({usage['sweep/training_epochs_ratio']:.2f})"
    )
    eps = rank_eps(spec)
    try:
        _, candidates = load_candidates(MlflowClient(tracking_uri), spec.name, eps)
        c = select_best(candidates, DEFAULT_MIN_CLEAN_ACC, include_flagged=False)
        say(f"champion {c.run_name}: worst case {c.worst:.3f} at eps {eps:g}, clean {c.clean:.3f}")
    except SelectionError as err:
        say(f"no champion yet: {err}")
    me, store = command(), _store_flag(tracking_uri)
    say(f"next:  {me} best {spec.name}{store}   (why each trial is in or out)")
    say(f"       {me} ui{store}   (browse every run in MLflow)")
    say(f"       {me} export {spec.name} --out champion{store}")


def _store_flag(tracking_uri: str) -> str:
    default = resolve_tracking_uri()
    return "" if tracking_uri == default else f" --tracking-uri {redact_uri(tracking_uri)}"


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the sweep; its runs are KILLED and `--resume` continues it."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM takes the same path as Ctrl-C


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    tracking_uri: str,
    storage_path: str,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = False,
) -> SweepOutcome | None:
    """Run the whole grid (or, with `resume`, what a crash or an interruption left of it).
    Every MLflow run this creates ends FINISHED, FAILED or (interrupted) KILLED. Returns None
    when asked to resume a finished sweep; raises SweepInterrupted on Ctrl-C or SIGTERM."""
    quiet_libraries(verbose)
    survive_killed_workers()  # a worker killed for memory fails its trial, not the sweep
    # Tune's own Ctrl-C handler ends fit() as if the sweep had finished: take the signal here
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    with sweep_lock(storage_path, spec.name):
        connect_ray(address, verbose)
        signal.signal(signal.SIGTERM, _interrupt)
        check_shared_storage(storage_path)
        check_tracking_from_every_host(tracking_uri)
        check_cluster_fits(spec)
        if resume and not tune.Tuner.can_restore(experiment_path(spec, storage_path)):
            raise PreflightError(
                f"no sweep {spec.name!r} to resume under {experiment_path(spec, storage_path)}; "
                "start it with `satsweep run SPEC` (or give the --storage-path it used)"
            )
        header(spec, tracking_uri)
        with store_lock(tracking_uri):  # two new sweeps must not both create the schema
            client = MlflowClient(tracking_uri)  # MLflow opens (and may create) the store here
            opened = open_sweep_run(spec, spec_text, client, tracking_uri, resume)
        if opened is None:
            say(f"sweep {spec.name!r} already finished; nothing to resume")
            return None
        context = SweepContext(
            shared=spec.shared(),
            architectures=spec.architectures,
            defences=spec.defences,
            tracking_uri=tracking_uri,
            experiment_id=opened[0],
            parent_run_id=opened[1],
            git_commit=code_version(),
            cpus_per_trial=spec.resources.cpus_per_trial,
            robust_check=tune_metric(spec) == names.ROBUST_CHECK,
        )
        return execute(spec, context, client, storage_path, resume, verbose)


def header(spec: SweepSpec, tracking_uri: str) -> None:
    r = spec.resources
    say(
        f"sweep {spec.name!r}: {spec.num_trials} trials, {r.max_concurrent_trials} at a time "
        f"({r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU each), "
        f"{spec.training.epochs} epochs, dataset {spec.dataset.name}"
    )
    say(f"MLflow store {redact_uri(tracking_uri)}; browse it with `{command()} ui"
        f"{_store_flag(tracking_uri)}`")  # fmt: skip


def execute(
    spec: SweepSpec,
    context: SweepContext,
    client: MlflowClient,
    storage_path: str,
    resume: bool,
    verbose: bool,
) -> SweepOutcome:
    """The grid, the audit, the report, then the parent run closed; on an interruption or a
    crash, no run is left RUNNING."""
    experiment_id, parent = context.experiment_id, context.parent_run_id
    ray_status: dict[str, str] = {}
    early = EarlyAudits(spec, context, client)
    try:
        results = fit(
            spec,
            context,
            storage_path,
            resume,
            verbose,
            [CloseRuns(context), early],
        )
        for result in results:
            if names.TRIAL_ID in result.metrics:
                trial_id = result.metrics[names.TRIAL_ID]
                ray_status[trial_id] = "ERROR" if result.error else "TERMINATED"
        failed = len(results.errors)
        audit_seconds = (
            run_audit(spec, results, context, client, early.pending) if spec.audit.enabled else 0.0
        )
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        report_sweep(spec, context.tracking_uri)
        usage = sweep_usage(client, experiment_id, parent, spec, audit_seconds)
        log_epoch(client, parent, usage, step=0)
        close_sweep_run(client, parent, failed)
        closing_lines(spec, context.tracking_uri, usage, failed)
    except KeyboardInterrupt:
        interrupt_sweep_run(client, experiment_id, parent)
        raise SweepInterrupted(spec.name) from None
    except BaseException:
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        close_sweep_run(client, parent, failed=None)
        raise
    return SweepOutcome(parent, experiment_id, len(results) - failed, failed)


class CloseRuns(Callback):
    """Ends a trial's MLflow run the moment Tune ends the trial, if the trial could not (ASHA
    stopped it between reports, its worker died): no run waits for the sweep's end RUNNING,
    and no trial waits on it for its transfer source. Holds only names, so it survives the
    pickling Tune does for `--resume`."""

    def __init__(self, context: SweepContext):
        self.uri, self.experiment_id = context.tracking_uri, context.experiment_id
        self.parent = context.parent_run_id

    def _close(self, trial, ray_status: str) -> None:
        with store_lock(self.uri):
            client = MlflowClient(self.uri)
        close_trial_run(client, self.experiment_id, self.parent, trial.trial_id, ray_status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "ERROR")


def fit(
    spec: SweepSpec,
    context: SweepContext,
    storage_path: str,
    resume: bool,
    verbose: bool,
    callbacks: list[Callback],
):
    """Ray Tune over the grid: a new Tuner, or the sweep's restored one on resume."""
    r = spec.resources
    resources = {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial, **ray_memory_reservation(spec)}
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    if resume:  # the restored Tuner keeps its own run config and callbacks: no per-trial lines
        path = experiment_path(spec, storage_path)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    return new_tuner(spec, trainable, storage_path, verbose, callbacks).fit()


def _scheduler(spec: SweepSpec):
    s = spec.scheduler
    if s.name == "asha":
        return ASHAScheduler(
            max_t=spec.training.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    return FIFOScheduler()


def tune_metric(spec: SweepSpec) -> str:
    """What Tune ranks trials by (ASHA's rungs, the verbose table's best trial): the robust
    check where ASHA ranks by it (the spec refuses that with the check off), else clean_acc,
    which every trial measures anyway."""
    s = spec.scheduler
    robust = s.name == "asha" and s.metric == "robust_check"
    return names.ROBUST_CHECK if robust else names.CLEAN_ACC


def new_tuner(
    spec: SweepSpec,
    trainable,
    storage_path: str,
    verbose: bool = False,
    callbacks: list[Callback] | None = None,
) -> tune.Tuner:
    width = max(len(trial_name(point)) for point in grid_points(spec))
    lines = TrialLines(
        spec.num_trials, spec.resources.max_concurrent_trials, rank_eps(spec), trial_name, width
    )
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=tune_metric(spec),
            mode="max",
            reuse_actors=True,  # the next trial runs in a warm worker: no process start, imports
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
            verbose=1 if verbose else 0,
            callbacks=[lines, *(callbacks or [])],
        ),
    )
