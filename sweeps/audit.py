"""The audit tier: which finished trials get the strong attacks (the top k by worst case among
those above the selection floor, every flagged one, and the rule's champion until it is
audited), run as Ray tasks with a trial's resources. Flagged trials' audits start as soon as
the trial ends (`EarlyAudits`); the rest once the grid has ranked every trial. A failed audit
is tagged on its run and does not fail the sweep."""

from __future__ import annotations

import ray
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from sweeps.console import say
from sweeps.grid import trial_name
from sweeps.preflight import ray_memory_reservation
from sweeps.spec import SweepSpec
from tracking import metric_names as names
from tracking.runs import AUDITED_TAG, find_trial_run
from tracking.select import (
    DEFAULT_EPS,
    DEFAULT_MIN_CLEAN_ACC,
    SelectionError,
    candidate_from_metrics,
    select_best,
)
from trainables.settings import flatten
from trainables.trainable import AUDIT_SECONDS, SweepContext, audit_trial


def rank_eps(spec: SweepSpec) -> float:
    """The budget that ranks trials: audit.rank_eps, else selection's default if evaluated,
    else the largest evaluated budget."""
    if spec.audit.rank_eps is not None:
        return spec.audit.rank_eps
    return DEFAULT_EPS if DEFAULT_EPS in spec.evaluation.eps else max(spec.evaluation.eps)


def auditable(spec: SweepSpec, metrics: dict) -> bool:
    """A trial that ran its final evaluation and did not collapse (a constant classifier keeps
    its class share "robustly": there is nothing to audit)."""
    key = names.worst_case_acc(rank_eps(spec))
    return key in metrics and not metrics.get(names.COLLAPSED)


def flagged(metrics: dict) -> bool:
    return metrics.get(names.masking(names.MASKING_SUSPECTED)) == 1.0


def audit_candidates(spec: SweepSpec, results) -> list:
    """The top-k finished trials by worst case at the ranking eps among those that clear the
    selection floor, plus every flagged trial; never a collapsed one."""
    key = names.worst_case_acc(rank_eps(spec))
    finished = [r for r in results if r.error is None and r.checkpoint is not None
                and auditable(spec, r.metrics)]  # fmt: skip
    accurate = [r for r in finished if r.metrics.get(names.CLEAN_ACC, 0) >= DEFAULT_MIN_CLEAN_ACC]
    top = sorted(accurate, key=lambda r: r.metrics[key], reverse=True)[: spec.audit.top_k]
    chosen = top + [r for r in finished if flagged(r.metrics)]
    return list({r.metrics[names.TRIAL_ID]: r for r in chosen}.values())


class EarlyAudits(Callback):
    """Every flagged trial is audited whatever the grid's outcome, so its audit is submitted the
    moment the trial ends. Ray starts it on the first free slot: while trials still wait, Tune
    hands its warm workers to them; in the grid's tail, where slots would otherwise idle, the
    audits run. `pending` is handed to `run_audit`."""

    def __init__(self, spec: SweepSpec, context: SweepContext, client: MlflowClient):
        self.spec, self.context, self.client = spec, context, client
        self.pending: dict = {}  # Ray object ref -> (name, run id, Ray trial id)
        self.enabled = spec.audit.enabled

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment; a copy restored by `--resume` is
        not the one the driver reads `pending` from, so it stays idle (the audit after the
        grid covers its trials)."""
        return {"spec": self.spec, "context": self.context, "client": None, "pending": {},
                "enabled": False}  # fmt: skip

    def on_trial_complete(self, iteration, trials, trial, **info):
        metrics = trial.last_result or {}
        if not (self.enabled and auditable(self.spec, metrics) and flagged(metrics)):
            return
        if trial.checkpoint is None:
            return
        job = (trial.config, trial.checkpoint, trial.trial_id)
        self.pending |= submit_audits(self.spec, [job], self.context, self.client)


def submit_audits(
    spec: SweepSpec, trials: list[tuple], context: SweepContext, client: MlflowClient
) -> dict:
    """One Ray audit task per (config, checkpoint, Ray trial id), with a trial's resources;
    returns {ref: (name, run id, Ray trial id)}."""
    r = spec.resources
    task = ray.remote(audit_trial).options(
        num_cpus=r.cpus_per_trial, num_gpus=r.gpus_per_trial, **ray_memory_reservation(spec)
    )
    pending = {}
    for config, checkpoint, trial_id in trials:
        run_id = find_trial_run(client, context.experiment_id, context.parent_run_id, trial_id)
        ref = task.remote(config, context, checkpoint, run_id)
        pending[ref] = (trial_name(config), run_id, trial_id)
    return pending


def run_audit(
    spec: SweepSpec, results, context: SweepContext, client: MlflowClient, early: dict
) -> float:
    """The candidates (some already submitted while the grid ran: `early`), then, until it is
    so, the champion by the selection rule if the audit has not confirmed it yet (an audit can
    only lower a worst case, so this ends): no champion's worst case rests on the cheap tier
    alone. Returns the audit tasks' busy seconds."""
    finished = {
        r.metrics[names.TRIAL_ID]: r
        for r in results
        if r.error is None and r.checkpoint is not None and names.TRIAL_ID in r.metrics
    }
    started = {trial_id for _, _, trial_id in early.values()}
    candidates = audit_candidates(spec, results)
    say(f"audit ({', '.join(spec.audit.attacks)}) of {len(candidates)} trials: the top "
        f"{spec.audit.top_k} above the selection floor and every flagged one "
        f"({len(started)} begun while the grid ran)")  # fmt: skip
    batch = [r for r in candidates if r.metrics[names.TRIAL_ID] not in started]
    audited: dict[str, dict] = {}  # Ray trial id -> metrics after the audit
    failed: set[str] = set()  # audits that broke: tagged on their runs, never retried
    pending = early | _submit(spec, batch, context, client)
    busy = 0.0
    while pending:
        busy += _collect(spec, pending, client, audited, failed)
        champion = _champion(spec, finished, audited)
        settled = champion is None or champion in audited or champion in failed
        if not settled:
            say(f"the champion by the rule, {trial_name(finished[champion].config)}, "
                "is not audited yet")  # fmt: skip
            pending = _submit(spec, [finished[champion]], context, client)
    return busy


def _submit(spec: SweepSpec, results: list, context: SweepContext, client: MlflowClient) -> dict:
    trials = [(r.config, r.checkpoint, r.metrics[names.TRIAL_ID]) for r in results]
    return submit_audits(spec, trials, context, client)


def _champion(spec: SweepSpec, finished: dict, audited: dict[str, dict]) -> str | None:
    """Trial id of the rule's champion on the metrics known now (audited ones merged in)."""
    eps = rank_eps(spec)
    params = flatten(spec.model_dump(mode="json"))  # the thresholds the trials were judged by
    candidates = []
    for trial_id, result in finished.items():
        metrics = result.metrics | audited.get(trial_id, {})
        flags = [names.MASKING_SUSPECTED] if flagged(metrics) else []
        candidates.append(candidate_from_metrics(
            trial_id, metrics, params, eps, run_name=trial_id, status="finished", flags=flags,
            audited=trial_id in audited,
        ))  # fmt: skip
    try:
        return select_best(candidates, DEFAULT_MIN_CLEAN_ACC, include_flagged=False).run_id
    except SelectionError:
        return None


def _collect(
    spec: SweepSpec, pending: dict, client: MlflowClient, audited: dict, failed: set
) -> float:
    """Wait for every pending audit, one line per audited trial as it arrives; the audited
    metrics go into `audited`, broken audits into `failed` (by Ray trial id). Empties
    `pending`; returns the tasks' busy seconds."""
    eps = rank_eps(spec)
    busy = 0.0
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name, run_id, trial_id = pending.pop(done[0])
        try:
            metrics = ray.get(done[0])
        except Exception as err:  # one broken audit must not hide the others' results
            client.set_tag(run_id, AUDITED_TAG, f"failed: {type(err).__name__}")
            say(f"audit of {name} failed: {err}")
            failed.add(trial_id)
            continue
        busy += metrics.pop(AUDIT_SECONDS, 0.0)
        audited[trial_id] = metrics
        worst = metrics.get(names.worst_case_acc(eps))
        worst_text = f"worst@{eps:g} {worst:.3f}" if worst is not None else "no worst case"
        say(f"audited {name}: {worst_text}" + ("  masking suspected" if flagged(metrics) else ""))
    return busy
