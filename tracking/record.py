"""A sweep as the store holds it: one typed record, read once, that everyone after the grid reads
(the audit, reconciling, the report, what the sweep cost, the closing lines, `best`, `export`).

A trial's figures, flags and settings are read from its MLflow run here and nowhere else: the
flag from its tags, the figures from its latest metrics, the settings from its params (the masking
thresholds that judged it included). Tune's results carry only what Tune alone knows (the Ray
trial id, its error, its checkpoint). After an audit batch only the audited runs are read again
(`SweepRecord.refresh`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.runs import AUDITED_TAG, STATUS_TAG, TRIAL_ID_TAG, trial_runs
from tracking.sweep_run import latest_sweep_run

SETTING_AXES = ("arch.name", "activation", "lam", "defence", "seed")  # what varies in a grid


@dataclass(frozen=True)
class TrialRecord:
    """One trial as its run records it."""

    run_id: str
    name: str
    ray_trial_id: str
    status: str  # finished, diverged, stopped_early, failed, interrupted; or MLflow's RUNNING...
    params: dict[str, str]
    metrics: dict[str, float]
    flags: tuple[str, ...]  # the masking diagnostics whose tag is "true"
    audited: bool
    start_ms: int
    end_ms: int | None

    @classmethod
    def from_run(cls, run: Run) -> TrialRecord:
        tags = run.data.tags
        finished = run.info.status == "FINISHED"
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id,
            ray_trial_id=tags.get(TRIAL_ID_TAG, ""),
            status=tags.get(STATUS_TAG, "") if finished else run.info.status,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            flags=tuple(names.flags_from_tags(tags)),
            audited=tags.get(AUDITED_TAG) == "true",
            start_ms=run.info.start_time,
            end_ms=run.info.end_time,
        )

    # the grid point
    @property
    def arch(self) -> str:
        return self.params.get("arch.name", "")

    @property
    def activation(self) -> str:
        return self.params.get("activation", "")

    @property
    def lam(self) -> float:
        return float(self.params.get("lam", "nan"))

    @property
    def defence(self) -> str:
        return self.params.get("defence", "none")

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", "0"))

    # the figures
    @property
    def clean(self) -> float:
        return self.metrics.get(names.CLEAN_ACC, 0.0)

    def worst(self, eps: float) -> float | None:
        return self.metrics.get(names.worst_case_acc(eps))

    def fgsm(self, eps: float) -> float | None:
        return self.metrics.get(names.robust_acc("fgsm", eps))

    @property
    def worst_curve(self) -> dict[float, float]:
        """eps -> worst case, the unbounded budget included."""
        m = self.metrics
        return {e: v for k, v in m.items() if (e := names.parse_worst_case_acc(k)) is not None}

    @property
    def collapsed(self) -> bool:
        return self.metrics.get(names.COLLAPSED) == 1.0

    @property
    def flagged(self) -> bool:
        return names.MASKING_SUSPECTED in self.flags

    @property
    def evaluated(self) -> bool:
        """It ran its final evaluation (the cheap tier): a worst case exists."""
        return bool(self.worst_curve)

    # the thresholds that judged it (its own masking settings); None for a run that did not log
    # them (not a satsweep trial, or one from before they were logged)
    def _param(self, key: str) -> float | None:
        value = self.params.get(key)
        return None if value is None else float(value)

    @property
    def unbounded_eps(self) -> float | None:
        return self._param("evaluation.unbounded_eps")

    @property
    def unbounded_threshold(self) -> float | None:
        return self._param("evaluation.masking.unbounded_threshold")

    @property
    def tolerance(self) -> float | None:
        return self._param("evaluation.masking.tolerance")

    # what it cost
    @property
    def busy_seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000 if self.end_ms else 0.0

    @property
    def epochs_run(self) -> float:
        """Epochs trained for this trial, retrained ones after a restore and a twin included."""
        m = self.metrics
        return m.get(names.EPOCHS_RUN, 0.0) + m.get(names.TWIN_EPOCHS_TRAINED, 0.0)


@dataclass
class SweepRecord:
    """A sweep's latest launch: its parent run and every trial run under it."""

    name: str
    experiment_id: str
    parent: Run
    trials: dict[str, TrialRecord] = field(default_factory=dict)  # by MLflow run id

    @classmethod
    def load(cls, client: MlflowClient, sweep: str) -> SweepRecord:
        """The one read of a sweep: its latest parent run, then its trial runs, page by page."""
        experiment_id, parent = latest_sweep_run(client, sweep)
        runs = trial_runs(client, experiment_id, parent.info.run_id)
        trials = {r.info.run_id: TrialRecord.from_run(r) for r in runs}
        return cls(sweep, experiment_id, parent, trials)

    @property
    def parent_run_id(self) -> str:
        return self.parent.info.run_id

    def refresh(self, client: MlflowClient, run_ids) -> None:
        """Read these runs again (the ones an audit batch just wrote to)."""
        for run_id in run_ids:
            self.trials[run_id] = TrialRecord.from_run(client.get_run(run_id))

    def mark(self, run_id: str, status: str) -> None:
        """What a close of the run wrote, without reading it back."""
        self.trials[run_id] = replace(self.trials[run_id], status=status)

    def by_ray_trial(self) -> dict[str, TrialRecord]:
        return {t.ray_trial_id: t for t in self.trials.values()}

    def evaluated(self) -> list[TrialRecord]:
        return [t for t in self.trials.values() if t.evaluated]

    def evaluated_eps(self) -> list[float]:
        """The budgets some trial's worst case was measured at (the unbounded one excluded)."""
        return sorted({e for t in self.evaluated() for e in t.worst_curve if e != t.unbounded_eps})
