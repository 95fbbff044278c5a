"""Ray Tune for one sweep: the Tuner over the grid (new, or restored on `--resume`), the scheduler
and what it ranks by, and the driver's callbacks.

Tune pickles its callbacks with the experiment, and `Tuner.restore` hands back those copies:
counters from the crashed launch, and no way for the driver to read what they gathered.
`DriverCallback` pickles as a reference instead (sweep name and role), which resolves to the
callback the resuming driver registered under that name: a resumed sweep gets the resuming
driver's own callbacks, with their state, and the driver reads them as it would in a new one.
"""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler

from sweeps.asha import STATE_FILE as ASHA_STATE_FILE
from sweeps.asha import ResumableASHA, forget_rungs
from sweeps.cluster import experiment_path
from sweeps.grid import param_space
from sweeps.preflight import ray_memory_reservation, storage_uri
from sweeps.search import CellSearch
from sweeps.spec import SweepSpec
from tracking import metric_names as names
from tracking.store import store_lock
from tracking.sweep_run import close_trial_run
from trainables.trainable import SweepContext, run_trial

_LIVE: dict[str, Callback] = {}  # "sweep:role" -> the callback of the driver running it now


def _live(key: str) -> Callback:
    """What a pickled DriverCallback becomes: this driver's own, or a silent stand-in."""
    return _LIVE.get(key, Callback())


class DriverCallback(Callback):
    """A Tune callback that belongs to the driver running the sweep (see the module docstring).
    Subclasses set `role` and call `register(sweep)` before the Tuner is made or restored."""

    role = ""

    def register(self, sweep: str) -> DriverCallback:
        self.key = f"{sweep}:{self.role}"
        _LIVE[self.key] = self
        return self

    def __reduce__(self):
        return _live, (self.key,)


class CloseRuns(DriverCallback):
    """Ends a trial's MLflow run the moment Tune ends the trial, if the trial could not (ASHA
    stopped it between reports, its worker died): no run waits for the sweep's end RUNNING,
    and no trial waits on it for its transfer source."""

    role = "close-runs"

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


class LaunchClock(DriverCallback):
    """The busy seconds of this launch's trial attempts (start to end, a retried attempt on its
    own), so a resumed sweep counts the work each launch did, not the time between them."""

    role = "clock"

    def __init__(self):
        self.started_at = time.time()
        self.busy_seconds = 0.0
        self._running: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self._running[trial.trial_id] = time.monotonic()

    def _stop(self, trial) -> None:
        start = self._running.pop(trial.trial_id, None)
        if start is not None:
            self.busy_seconds += time.monotonic() - start

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._stop(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stop(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._stop(trial)

    @property
    def wall_seconds(self) -> float:
        return time.time() - self.started_at


def tune_metric(spec: SweepSpec) -> str:
    """What Tune ranks trials by (ASHA's rungs, the verbose table's best trial): the
    early-stopping signal where ASHA ranks by it (the spec refuses that with the signal off),
    else clean_acc, which every trial measures anyway."""
    s = spec.scheduler
    robust = s.name == "asha" and s.metric == "robust"
    return names.EARLY_STOPPING if robust else names.CLEAN_ACC


def _scheduler(spec: SweepSpec, storage_path: str):
    s = spec.scheduler
    if s.name == "asha":
        folder, mark, query = experiment_path(spec, storage_path).partition("?")
        state = f"{folder}/{ASHA_STATE_FILE}{mark}{query}"  # an S3 endpoint's query stays last
        forget_rungs(state)  # a new sweep's rungs start empty, whatever an earlier one left
        return ResumableASHA(
            state,
            max_t=spec.training.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    return FIFOScheduler()


def fit(
    spec: SweepSpec,
    context: SweepContext,
    storage_path: str,
    resume: bool,
    verbose: bool,
    callbacks: list[DriverCallback],
):
    """Ray Tune over the grid: a new Tuner, or the sweep's restored one on resume; either way
    with this driver's callbacks."""
    for callback in callbacks:
        callback.register(spec.name)
    gone_checkpoints_count_as_deleted()
    r = spec.resources
    resources = {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial, **ray_memory_reservation(spec)}
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    if resume:
        path = experiment_path(spec, storage_path)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    return new_tuner(spec, trainable, storage_path, verbose, callbacks, context.run_name).fit()


def gone_checkpoints_count_as_deleted() -> None:
    """Tune deletes a trial's oldest checkpoint as each new one registers. A driver killed
    outright leaves Tune's last snapshot, which can list a checkpoint deleted after it; on
    resume, Ray's deletion of that path raises FileNotFoundError out of the registration half
    way (the trial's checkpoint index and its saved state are left as they were, so the next
    snapshot is stale too) and prints Ray's traceback. A path already gone is what the deletion
    wanted: it counts as deleted and the registration completes. Every other error still
    reaches Ray's own handling."""
    import pyarrow.fs

    try:
        from ray.train._internal import checkpoint_manager
    except ImportError:  # a Ray that moved it: its test says so
        return
    delete = getattr(checkpoint_manager, "_delete_fs_path", None)
    if delete is None or getattr(delete, "satsweep_gone_is_deleted", False):
        return

    def delete_unless_gone(fs: pyarrow.fs.FileSystem, fs_path: str) -> None:
        if fs.get_file_info(fs_path).type != pyarrow.fs.FileType.NotFound:
            delete(fs=fs, fs_path=fs_path)

    delete_unless_gone.satsweep_gone_is_deleted = True
    checkpoint_manager._delete_fs_path = delete_unless_gone


def new_tuner(
    spec: SweepSpec,
    trainable,
    storage_path: str,
    verbose: bool = False,
    callbacks: list[Callback] | None = None,
    name_of=None,
) -> tune.Tuner:
    """A Tuner over the grid, or over what a search samples (`sweeps/search.py`); `name_of`
    names a trial from its config (the trial's run name)."""
    from sweeps.grid import naming, trial_name

    order = naming(spec)
    name_of = name_of or (lambda config: trial_name(config, order))
    searched = spec.search.sampled
    return tune.Tuner(
        trainable,
        param_space={} if searched else param_space(spec),
        tune_config=tune.TuneConfig(
            metric=tune_metric(spec),
            mode="max",
            search_alg=CellSearch(spec, tune_metric(spec)) if searched else None,
            num_samples=spec.num_trials if searched else 1,  # a search's every trial, once
            reuse_actors=True,  # the next trial runs in a warm worker: no process start, imports
            scheduler=_scheduler(spec, storage_path),
            max_concurrent_trials=spec.resources.max_concurrent_trials,  # the searcher's too
            trial_name_creator=lambda t: name_of(t.config),
            trial_dirname_creator=lambda t: f"{name_of(t.config)}_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=spec.folder_name,  # a folder: the experiment keeps the name as given
            storage_path=storage_uri(storage_path),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=1 if verbose else 0,
            callbacks=list(callbacks or []),
        ),
    )
