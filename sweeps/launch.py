"""One sweep, as its story: connect, open, fit, audit, reconcile, report, account, close.

Each step is a named function in the room it belongs to: Ray (`cluster.py`), the checks after
connecting (`preflight.py`), the parent run (`tracking/sweep_run.py`), Ray Tune (`tuner.py`),
the audit (`audit.py`), the sweep's record that everything after the grid reads
(`tracking/record.py`), the report (`tracking/report.py`), what it cost (`costs.py`) and what
the run says (`console.py`). Every MLflow run this creates ends FINISHED, FAILED or
(interrupted) KILLED.
"""

from __future__ import annotations

import os
import shlex
import signal
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.tracking import MlflowClient
from ray import tune

from sweeps.audit import EarlyAudits, run_audit
from sweeps.cluster import connect_ray, experiment_path
from sweeps.console import closing_lines, command, header, quiet_libraries, say
from sweeps.costs import compute_split, epochs_trained, launch_usage, log_usage
from sweeps.grid import example_points, naming
from sweeps.preflight import (
    PreflightError,
    check_cluster_fits,
    check_shared_storage,
    check_tracking_from_every_host,
    sweep_lock,
)
from sweeps.progress import TrialLines
from sweeps.spec import SweepSpec
from sweeps.tuner import CloseRuns, LaunchClock, fit, tune_metric
from sweeps.worker_deaths import survive_killed_workers
from tracking import metric_names as names
from tracking.record import SweepRecord
from tracking.report import write_report
from tracking.runs import code_version, ensure_experiment, redact_uri
from tracking.store import store_lock
from tracking.sweep_run import (
    SweepNotFound,
    close_left_running,
    close_sweep_run,
    interrupt_sweep_run,
    launch_number,
    reconcile_trial_runs,
    reopen_sweep_run,
    start_sweep_run,
)
from trainables.settings import GRID_AXES, flatten
from trainables.trainable import SweepContext


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    finished: int
    failed: int


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the sweep; its runs are KILLED and `--resume` continues it."""


class Interrupts:
    """One handler for Ctrl-C and SIGTERM for the whole launch. While Tune's `fit()` runs, the
    first signal asks Tune to stop through its own stop signal (SIGUSR1), so that it writes the
    experiment's state one last time before `fit()` returns; `after_fit` then raises. Anywhere
    else, and on a second signal, KeyboardInterrupt at once. Stopped abruptly, Tune left only its
    last periodic snapshot, whose checkpoint lists name checkpoints deleted since (a test found
    one listing checkpoint_000039 of a trial at epoch 40+): deleting one again raises
    FileNotFoundError inside Tune, which prints its traceback. SIGTERM takes Ctrl-C's path."""

    def __init__(self) -> None:
        self.asked = False

    def handle(self, signum, frame) -> None:
        tune_listens = callable(signal.getsignal(signal.SIGUSR1))  # installed inside fit()
        if self.asked or not tune_listens:
            raise KeyboardInterrupt
        self.asked = True
        os.kill(os.getpid(), signal.SIGUSR1)

    def after_fit(self) -> None:
        """Tune's SIGUSR1 handler outlives `fit()`, bound to its finished run: drop it, and
        raise if a signal stopped the grid."""
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        if self.asked:
            raise KeyboardInterrupt


@contextmanager
def interrupts_stop_the_sweep():
    """`Interrupts` installed for the block, the previous handlers restored after it."""
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    previous = {n: signal.getsignal(n) for n in numbers}
    interrupts = Interrupts()
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # an earlier fit() in this process left one
    signal.signal(signal.SIGINT, interrupts.handle)
    signal.signal(signal.SIGTERM, interrupts.handle)
    try:
        yield interrupts
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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
    Returns None when asked to resume a finished sweep; raises SweepInterrupted on Ctrl-C or
    SIGTERM."""
    quiet_libraries(verbose)
    survive_killed_workers()  # a worker killed for memory fails its trial, not the sweep
    # Tune's own Ctrl-C handler ends fit() as if the sweep had finished: take the signal here
    # and ask Tune to stop with its other stop signal (`Interrupts`)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    with sweep_lock(storage_path, spec.folder_name):
        clock = LaunchClock()  # this launch's wall time starts with Ray's
        connect_ray(address, verbose)
        with interrupts_stop_the_sweep() as interrupts:
            check_on_the_cluster(spec, storage_path, tracking_uri, resume)
            header(spec, tracking_uri)
            with store_lock(tracking_uri):  # two new sweeps must not both create the schema
                client = MlflowClient(tracking_uri)  # MLflow opens (and may create) the store
                opened = open_sweep_run(spec, spec_text, client, tracking_uri, resume)
            if opened is None:
                say(f"sweep {spec.name!r} already finished; nothing to resume")
                return None
            context = sweep_context(spec, tracking_uri, *opened)
            return execute(spec, context, client, storage_path, resume, verbose, clock,
                           interrupts)  # fmt: skip


def check_on_the_cluster(spec: SweepSpec, storage_path: str, tracking_uri: str, resume: bool):
    """What can only be checked once connected: every host reaches the storage and the tracking
    store, some node holds a trial, and a resumed sweep exists."""
    check_shared_storage(storage_path)
    check_tracking_from_every_host(tracking_uri)
    check_cluster_fits(spec)
    if resume and not tune.Tuner.can_restore(experiment_path(spec, storage_path)):
        raise PreflightError(
            f"no sweep {spec.name!r} to resume under {experiment_path(spec, storage_path)}; "
            "start it with `satsweep run SPEC` (or give the --storage-path it used)"
        )


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


def sweep_context(
    spec: SweepSpec, tracking_uri: str, experiment_id: str, parent_run_id: str
) -> SweepContext:
    return SweepContext(
        shared=spec.shared(),
        architectures=spec.architectures,
        defences=spec.defences,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        git_commit=code_version(),
        cpus_per_trial=spec.resources.cpus_per_trial,
        early_stopping=tune_metric(spec) == names.EARLY_STOPPING,
        name_order=naming(spec),
        gpu_missing=spec.resources.gpu_missing,
        sampled=tuple(k for k in spec.search.space if k not in GRID_AXES),
        continuous=frozenset(spec.search.continuous()),
    )


def driver_callbacks(spec: SweepSpec, context: SweepContext, clock: LaunchClock) -> list:
    width = max(len(context.run_name(point)) for point in example_points(spec))
    lines = TrialLines(spec.num_trials, spec.resources.max_concurrent_trials, spec.selection.eps,
                       context.run_name, width)  # fmt: skip
    return [lines, clock, CloseRuns(context), EarlyAudits(spec, context)]


def execute(
    spec: SweepSpec,
    context: SweepContext,
    client: MlflowClient,
    storage_path: str,
    resume: bool,
    verbose: bool,
    clock: LaunchClock,
    interrupts: Interrupts,
) -> SweepOutcome:
    """The grid, then everything after it from one read of the store; on an interruption or a
    crash, no run is left RUNNING."""
    experiment_id, parent = context.experiment_id, context.parent_run_id
    callbacks = driver_callbacks(spec, context, clock)
    early = callbacks[-1]
    try:
        results = fit(spec, context, storage_path, resume, verbose, callbacks)
        interrupts.after_fit()
        ray_status = {r.metrics[names.TRIAL_ID]: "ERROR" if r.error else "TERMINATED"
                      for r in results if names.TRIAL_ID in r.metrics}  # fmt: skip
        failed = len(results.errors)
        record = SweepRecord.load(client, spec.name)  # the one read after the grid
        audit_seconds = (
            run_audit(spec, record, results, context, client, early.pending)
            if spec.audit.enabled
            else 0.0
        )
        close_left_running(client, record, ray_status)
        report_sweep(client, record, spec)
        usage = account(spec, record, clock, audit_seconds, client)
        close_sweep_run(client, parent, failed)
        closing_lines(record, spec.selection, usage, failed, launch_number(record.parent),
                      context.tracking_uri)  # fmt: skip
    except KeyboardInterrupt:
        interrupted(client, spec, context, clock)
        raise SweepInterrupted(spec.name) from None
    except BaseException:
        reconcile_trial_runs(client, experiment_id, parent, {})
        close_sweep_run(client, parent, failed=None)
        raise
    return SweepOutcome(parent, experiment_id, len(results) - failed, failed)


def report_sweep(client: MlflowClient, record: SweepRecord, spec: SweepSpec) -> None:
    """The sweep report on the parent run; a failed report is printed, never fatal."""
    try:
        paths = write_report(client, record, spec.selection)
        say(f"report logged to the sweep run ({len(paths)} files under report/)")
    except Exception as err:  # the trials' results are safe; the report can be redone
        say(f"report failed ({err}); redo it with `{command()} report {shlex.quote(spec.name)}`")


def account(
    spec: SweepSpec,
    record: SweepRecord,
    clock: LaunchClock,
    audit_seconds: float,
    client: MlflowClient,
) -> dict[str, float]:
    """What this launch and the sweep so far cost, logged on the sweep run."""
    before = record.parent.data.metrics  # the previous launches' totals, as they left them
    usage = launch_usage(spec, clock, audit_seconds, before) | epochs_trained(spec, record)
    usage |= compute_split(spec, record)
    log_usage(client, record.parent_run_id, usage, launch_number(record.parent))
    return usage


def interrupted(client: MlflowClient, spec: SweepSpec, context: SweepContext, clock) -> None:
    """Ctrl-C or SIGTERM: this launch's work is counted (a resume adds to it), then the sweep's
    runs end KILLED."""
    parent = client.get_run(context.parent_run_id)
    log_usage(client, context.parent_run_id, launch_usage(spec, clock, 0.0, parent.data.metrics),
              launch_number(parent))  # fmt: skip
    interrupt_sweep_run(client, context.experiment_id, context.parent_run_id)
