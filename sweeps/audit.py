"""The audit tier: which finished trials get the strong attacks, run as Ray tasks with a trial's
resources. The top k by worst case at the rule's eps among those above the rule's floor, every
flagged one, and the rule's champion until it is audited. Flagged trials' audits start as soon
as the trial ends (`EarlyAudits`); the rest once the grid has ended. The trials' figures come
from the sweep's record; Tune supplies only the checkpoints (and the grid point to rebuild the
model from). A failed audit is tagged on its run and does not fail the sweep."""

from __future__ import annotations

from dataclasses import replace

import ray
from mlflow.tracking import MlflowClient

from sweeps.console import say
from sweeps.preflight import ray_memory_reservation
from sweeps.spec import SweepSpec
from sweeps.tuner import DriverCallback
from tracking import metric_names as names
from tracking.record import SweepRecord, TrialRecord
from tracking.rules import SelectionRule
from tracking.runs import AUDITED_TAG, NOTHING_STANDING, find_trial_run
from tracking.select import Champion, champion_or_none
from tracking.store import store_lock
from trainables.trainable import AUDIT_SECONDS, SweepContext, audit_trial


def auditable(t: TrialRecord, rule: SelectionRule) -> bool:
    """A trial that ran its final evaluation and did not collapse (a constant classifier keeps
    its class share "robustly": there is nothing to audit)."""
    return t.status == "finished" and t.worst(rule.eps) is not None and not t.collapsed


def nothing_left_at_audit_eps(t: TrialRecord, spec: SweepSpec) -> bool:
    """The cheap tier left no point standing at any audit eps: no attack can lower a worst case
    of 0, so the trial's figures are final without an audit task."""
    eps = spec.audit.eps or spec.evaluation.eps
    return all(t.worst(e) == 0.0 for e in eps)


def settle_without_attacks(
    trials: list[TrialRecord], spec: SweepSpec, client: MlflowClient
) -> list[TrialRecord]:
    """Tag the trials with nothing standing as settled (`satsweep.audited`: nothing standing)
    and return the others, which need an audit task."""
    rest = []
    for t in trials:
        if nothing_left_at_audit_eps(t, spec) and not t.audited:
            client.set_tag(t.run_id, AUDITED_TAG, NOTHING_STANDING)
            say(f"not audited {t.name}: the cheap tier left no point standing")
        else:
            rest.append(t)
    return rest


def audit_candidates(record: SweepRecord, rule: SelectionRule, top_k: int) -> list[TrialRecord]:
    """The top-k auditable trials by the figure the rule ranks by (the worst case at its eps on
    the selection points) among those that clear its floor, plus every flagged one: ranking by
    all the points would audit trials the rule does not crown, and leave the champion's audit
    to run alone after them."""
    pool = [t for t in record.trials.values() if auditable(t, rule)]
    accurate = [t for t in pool if t.clean >= rule.min_clean_acc]
    top = sorted(accurate, key=lambda t: t.choosing_worst(rule.eps), reverse=True)[:top_k]
    return list({t.run_id: t for t in top + [t for t in pool if t.flagged]}.values())


class EarlyAudits(DriverCallback):
    """Every flagged trial is audited whatever the grid's outcome, so its audit is submitted the
    moment the trial ends (its run read once, as the record reads it). Ray starts it on the first
    free slot: while trials still wait, Tune hands its warm workers to them; in the grid's tail,
    where slots would otherwise idle, the audits run. `pending` is handed to `run_audit`."""

    role = "early-audits"

    def __init__(self, spec: SweepSpec, context: SweepContext):
        self.spec, self.context = spec, context
        self.pending: dict = {}  # Ray object ref -> (run id, Ray trial id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.spec.audit.enabled or trial.checkpoint is None:
            return
        with store_lock(self.context.tracking_uri):
            client = MlflowClient(self.context.tracking_uri)
        c = self.context
        run_id = find_trial_run(client, c.experiment_id, c.parent_run_id, trial.trial_id)
        if run_id is None:
            return
        t = TrialRecord.from_run(client.get_run(run_id))
        if auditable(t, self.spec.selection) and t.flagged:
            if not settle_without_attacks([t], self.spec, client):
                return
            job = (trial.config, trial.checkpoint, run_id, trial.trial_id)
            self.pending |= submit_audits(self.spec, [job], self.context)


def submit_audits(spec: SweepSpec, jobs: list[tuple], context: SweepContext) -> dict:
    """One Ray audit task per (grid point, checkpoint, run id, Ray trial id), with a trial's
    resources; returns {ref: (run id, Ray trial id)}."""
    r = spec.resources
    task = ray.remote(audit_trial).options(
        num_cpus=r.cpus_per_trial, num_gpus=r.gpus_per_trial, **ray_memory_reservation(spec)
    )
    return {task.remote(config, context, checkpoint, run_id): (run_id, trial_id)
            for config, checkpoint, run_id, trial_id in jobs}  # fmt: skip


def run_audit(
    spec: SweepSpec,
    record: SweepRecord,
    results,
    context: SweepContext,
    client: MlflowClient,
    early: dict,
) -> float:
    """The candidates (some already submitted while the grid ran: `early`), then, until it is
    so, the champion by the rule if the audit has not confirmed it yet (an audit can only lower
    a worst case, so this ends): no champion's worst case rests on the cheap tier alone. Each
    audit that arrives is read back into the record. Returns the audit tasks' busy seconds."""
    rule = spec.selection
    checkpoints = {  # what only Tune knows: the trial's grid point and its checkpoint
        r.metrics[names.TRIAL_ID]: (r.config, r.checkpoint)
        for r in results
        if r.error is None and r.checkpoint is not None and names.TRIAL_ID in r.metrics
    }
    candidates = audit_candidates(record, rule, spec.audit.top_k)
    started = {trial_id for _, trial_id in early.values()}
    say(f"audit ({', '.join(spec.audit.attacks)}) of {len(candidates)} trials: the top "
        f"{spec.audit.top_k} above the selection floor and every flagged one "
        f"({len(started)} begun while the grid ran)")  # fmt: skip
    # an earlier launch (before a --resume) may have audited some already
    batch = [t for t in candidates if t.ray_trial_id not in started and not t.audited]
    pending = early | _submit(spec, batch, checkpoints, context, client, record)
    done: set[str] = set()  # run ids audited, or whose audit broke (tagged, never retried)
    busy = 0.0
    while pending:
        busy += _collect(pending, client, record, rule, done)
        champion = champion_or_none(record.trials.values(), rule)
        unaudited = _unconfirmed(champion, done, checkpoints) if champion else []
        if unaudited:
            say(f"the champion by the rule, {champion.configuration.name}, is not audited yet "
                f"({len(unaudited)} of its seeds)")  # fmt: skip
            pending = _submit(spec, unaudited, checkpoints, context, client, record)
    return busy


def _submit(
    spec: SweepSpec,
    trials: list[TrialRecord],
    checkpoints: dict,
    context: SweepContext,
    client: MlflowClient,
    record: SweepRecord,
) -> dict:
    """Audit tasks for the trials that need one; those with nothing standing are settled here
    (and read back into the record)."""
    need = settle_without_attacks(trials, spec, client)
    for t in trials:
        if t not in need:
            record.trials[t.run_id] = replace(t, tags={**t.tags, AUDITED_TAG: NOTHING_STANDING})
    return submit_audits(spec, _jobs(need, checkpoints), context)


def _unconfirmed(champion: Champion, done: set[str], checkpoints: dict) -> list[TrialRecord]:
    """The champion configuration's seeds not audited (in this launch or an earlier one) that
    can be (their checkpoint exists): the figure it is crowned on must include the audit."""
    seeds = champion.configuration.trials
    return [
        t for t in seeds if not (t.audited or t.run_id in done) and t.ray_trial_id in checkpoints
    ]


def _jobs(trials: list[TrialRecord], checkpoints: dict) -> list[tuple]:
    return [(*checkpoints[t.ray_trial_id], t.run_id, t.ray_trial_id)
            for t in trials if t.ray_trial_id in checkpoints]  # fmt: skip


def _collect(
    pending: dict, client: MlflowClient, record: SweepRecord, rule: SelectionRule, done: set
) -> float:
    """Wait for every pending audit; each that arrives is read back into the record (that run
    only) and said in one line; a broken one is tagged on its run. Empties `pending`; returns
    the tasks' busy seconds."""
    busy = 0.0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        run_id, _ = pending.pop(ready[0])
        done.add(run_id)
        name = record.trials[run_id].name
        try:
            busy += ray.get(ready[0]).get(AUDIT_SECONDS, 0.0)
        except Exception as err:  # one broken audit must not hide the others' results
            client.set_tag(run_id, AUDITED_TAG, f"failed: {type(err).__name__}")
            say(f"audit of {name} failed: {err}")
            continue
        record.refresh(client, [run_id])
        t = record.trials[run_id]
        worst = t.worst(rule.eps)
        text = f"worst@{rule.eps:g} {worst:.3f}" if worst is not None else "no worst case"
        say(f"audited {name}: {text}" + ("  masking suspected" if t.flagged else ""))
    return busy
