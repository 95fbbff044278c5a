"""A sweep as the store holds it: one typed record, read once, that everyone after the grid reads
(the audit, reconciling, the report, what the sweep cost, the closing lines, `best`, `export`).

A trial's figures, flags and settings are read from its MLflow run here and nowhere else: the
flag from its tags, the figures from its latest metrics, the settings from its params (the masking
thresholds that judged it included). Tune's results carry only what Tune alone knows (the Ray
trial id, its error, its checkpoint). After an audit batch only the audited runs are read again
(`SweepRecord.refresh`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.evidence import interval
from tracking.runs import (
    AUDITED_TAG,
    DEFENCE_FAILURE_TAG,
    NOTHING_STANDING,
    STATUS_TAG,
    TRIAL_ID_TAG,
    trial_runs,
)
from tracking.sweep_run import latest_sweep_run

SETTING_AXES = ("arch.name", "activation", "lam", "defence", "seed")  # what varies in a grid


@dataclass(frozen=True)
class TrialRecord:
    """One trial as its run records it."""

    run_id: str
    name: str
    status: str  # finished, diverged, stopped_early, failed, interrupted; or MLflow's RUNNING...
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]  # every tag, as read: flags, audit state, Ray's trial id
    start_ms: int
    end_ms: int | None
    artifact_uri: str | None = None  # where its artifacts live (read without asking for the run)

    @classmethod
    def from_run(cls, run: Run) -> TrialRecord:
        tags = run.data.tags
        finished = run.info.status == "FINISHED"
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id,
            status=tags.get(STATUS_TAG, "") if finished else run.info.status,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=dict(tags),
            start_ms=run.info.start_time,
            end_ms=run.info.end_time,
            artifact_uri=run.info.artifact_uri,
        )

    # what its tags say
    @property
    def ray_trial_id(self) -> str:
        return self.tags.get(TRIAL_ID_TAG, "")

    @property
    def flags(self) -> tuple[str, ...]:
        """The masking diagnostics whose tag is "true"."""
        return tuple(names.flags_from_tags(self.tags))

    @property
    def audited(self) -> bool:
        """Its audit results are merged in, or nothing was left standing to audit."""
        return self.tags.get(AUDITED_TAG) in ("true", NOTHING_STANDING)

    @property
    def defence_failure(self) -> str | None:
        """How its training-time defence failed, in words."""
        return self.tags.get(DEFENCE_FAILURE_TAG)

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
        """The worst case at eps on every evaluation point."""
        return self.metrics.get(names.worst_case_acc(eps))

    def worst_on(self, eps: float, half: str) -> float | None:
        """The worst case at eps on the selection or the report points (None for a run from
        before the halves were logged)."""
        return self.metrics.get(names.worst_case_on(eps, half))

    def choosing_worst(self, eps: float) -> float | None:
        """The figure the rule ranks by: the worst case on the selection points, so that the
        report points can report the champion's figure unbiased (all points for older runs)."""
        chosen = self.worst_on(eps, names.SELECTION)
        return chosen if chosen is not None else self.worst(eps)

    @property
    def eval_points(self) -> int | None:
        n = self.metrics.get(names.EVAL_POINTS)
        return None if n is None else int(n)

    def half_points(self, half: str) -> int | None:
        """How many evaluation points a half holds (`data.selection_points`: ceil for the
        selection half)."""
        n = self.eval_points
        if n is None:
            return None
        return (n + 1) // 2 if half == names.SELECTION else n // 2

    @property
    def clean_points(self) -> int | None:
        n = self.metrics.get(names.CLEAN_POINTS)
        return None if n is None else int(n)

    @property
    def seedless_name(self) -> str:
        """The configuration's name: the run name without its `_seedN` (at its end, or before
        a search's sampled values)."""
        seed = f"_seed{self.params.get('seed', '')}"
        if self.name.endswith(seed):
            return self.name[: -len(seed)]
        head, found, tail = self.name.partition(seed + "_")
        return f"{head}_{tail}" if found else self.name

    @property
    def configuration_key(self) -> tuple:
        """What the trial's settings are, but for its seed: trials with one key are seeds of
        one configuration."""
        return tuple(sorted((k, v) for k, v in self.params.items() if k != "seed"))

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

    def flag_reasons(self) -> list[str]:
        """Each raised masking flag beside the value and the threshold that raised it
        (`stabilisation_gap 0.350 > 0.1`), read from the run's own metrics and params."""
        reasons = []
        for flag in self.flags:
            if flag == names.MASKING_SUSPECTED:
                continue
            value = self.metrics.get(names.masking(flag))
            known = flag in names.MASKING_THRESHOLDS
            threshold = self._param(names.masking_threshold_param(flag)) if known else None
            if value is None or threshold is None:
                reasons.append(flag)
            else:
                reasons.append(f"{flag} {value:.3f} > {threshold:g}")
        return reasons

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

    def configurations(self) -> list[Configuration]:
        return configurations(self.trials.values())

    def evaluated_eps(self) -> list[float]:
        """The budgets some trial's worst case was measured at (the unbounded one excluded)."""
        return sorted({e for t in self.evaluated() for e in t.worst_curve if e != t.unbounded_eps})


@dataclass(frozen=True)
class Configuration:
    """Trials that differ only in their seed: replicates of one recipe. Its figures are means
    over the seeds that have them."""

    trials: list[TrialRecord]

    @property
    def name(self) -> str:
        return self.trials[0].seedless_name

    @property
    def seeds(self) -> list[int]:
        return [t.seed for t in self.trials]

    def mean(self, figure) -> float | None:
        """The mean of `figure(trial)` over the seeds where it exists."""
        values = [v for t in self.trials if (v := figure(t)) is not None]
        return sum(values) / len(values) if values else None

    def values(self, figure) -> list[float]:
        return [v for t in self.trials if (v := figure(t)) is not None]

    @property
    def clean(self) -> float:
        return self.mean(lambda t: t.clean) or 0.0

    def worst(self, eps: float) -> float | None:
        return self.mean(lambda t: t.worst(eps))

    def choosing_worst(self, eps: float) -> float | None:
        return self.mean(lambda t: t.choosing_worst(eps))

    def fgsm(self, eps: float) -> float | None:
        return self.mean(lambda t: t.fgsm(eps))

    def worst_on(self, eps: float, half: str) -> float | None:
        return self.mean(lambda t: t.worst_on(eps, half))

    def worst_interval(self, eps: float, half: str | None = None) -> tuple[float, float] | None:
        """95 % interval of the worst case at eps, on every point or on one half: Wilson for one
        seed, seeds and points together for several (`evidence.interval`)."""
        first = self.trials[0]
        n = first.eval_points if half is None else first.half_points(half)
        values = self.values(lambda t: t.worst(eps) if half is None else t.worst_on(eps, half))
        return interval(values, n) if values and n else None

    def clean_interval(self) -> tuple[float, float] | None:
        n = self.trials[0].clean_points
        values = self.values(lambda t: t.clean)
        return interval(values, n) if values and n else None

    def spread(self, eps: float) -> tuple[float, float, float] | None:
        """(standard deviation, min, max) of the worst case at eps over the seeds; None for one."""
        values = self.values(lambda t: t.worst(eps))
        if len(values) < 2:
            return None
        return float(statistics.stdev(values)), min(values), max(values)

    @property
    def collapsed(self) -> bool:
        return any(t.collapsed for t in self.trials)

    @property
    def flagged(self) -> bool:
        return any(t.flagged for t in self.trials)

    @property
    def defence_failures(self) -> list[str]:
        """How its defence failed, seed by seed ("seed 1: never robust: ..."), for those it did."""
        prefix = len(self.trials) > 1
        return [f"seed {t.seed}: {t.defence_failure}" if prefix else t.defence_failure
                for t in self.trials if t.defence_failure]  # fmt: skip


def configurations(trials) -> list[Configuration]:
    """The trials grouped by everything but their seed, each group ordered by seed."""
    groups: dict[tuple, list[TrialRecord]] = {}
    for t in trials:
        groups.setdefault(t.configuration_key, []).append(t)
    return [Configuration(sorted(g, key=lambda t: t.seed)) for g in groups.values()]
