"""The audit tier, after the grid: which finished trials get the strong attacks (the top k by
worst case among those above the selection floor, every flagged one, and the rule's champion
until it is audited), run as Ray tasks with a trial's resources. A failed audit is tagged on
its run and does not fail the sweep."""

from __future__ import annotations

import ray
from mlflow.tracking import MlflowClient

from sweeps.console import say
from sweeps.grid import trial_name
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


def audit_candidates(spec: SweepSpec, results) -> list:
    """The top-k finished trials by worst case at the ranking eps among those that clear the
    selection floor, plus every flagged trial; never a collapsed one (a constant classifier
    keeps its class share "robustly": there is nothing to audit)."""
    key = names.worst_case_acc(rank_eps(spec))
    finished = [r for r in results if r.error is None and r.checkpoint is not None
                and key in r.metrics and not r.metrics.get(names.COLLAPSED)]  # fmt: skip
    accurate = [r for r in finished if r.metrics.get(names.CLEAN_ACC, 0) >= DEFAULT_MIN_CLEAN_ACC]
    top = sorted(accurate, key=lambda r: r.metrics[key], reverse=True)[: spec.audit.top_k]
    suspected = names.masking(names.MASKING_SUSPECTED)
    flagged = [r for r in finished if r.metrics.get(suspected) == 1.0]
    return list({r.metrics[names.TRIAL_ID]: r for r in top + flagged}.values())


def run_audit(spec: SweepSpec, results, context: SweepContext, client: MlflowClient) -> float:
    """The candidates first, then, until it is so, the champion by the selection rule if the
    audit has not confirmed it yet (an audit can only lower a worst case, so this ends): no
    champion's worst case rests on the cheap tier alone. Returns the audit tasks' busy seconds."""
    finished = {
        r.metrics[names.TRIAL_ID]: r
        for r in results
        if r.error is None and r.checkpoint is not None and names.TRIAL_ID in r.metrics
    }
    batch = audit_candidates(spec, results)
    say(f"audit ({', '.join(spec.audit.attacks)}) of {len(batch)} trials: the top "
        f"{spec.audit.top_k} above the selection floor and every flagged one")  # fmt: skip
    audited: dict[str, dict] = {}  # Ray trial id -> metrics after the audit
    failed: set[str] = set()  # audits that broke: tagged on their runs, never retried
    busy = 0.0
    while batch:
        busy += _audit_batch(spec, batch, context, client, audited, failed)
        champion = _champion(spec, finished, audited)
        settled = champion is None or champion in audited or champion in failed
        batch = [] if settled else [finished[champion]]
        if batch:
            say(f"the champion by the rule, {trial_name(batch[0].config)}, is not audited yet")
    return busy


def _champion(spec: SweepSpec, finished: dict, audited: dict[str, dict]) -> str | None:
    """Trial id of the rule's champion on the metrics known now (audited ones merged in)."""
    eps = rank_eps(spec)
    params = flatten(spec.model_dump(mode="json"))  # the thresholds the trials were judged by
    suspected = names.masking(names.MASKING_SUSPECTED)
    candidates = []
    for trial_id, result in finished.items():
        metrics = result.metrics | audited.get(trial_id, {})
        flags = [names.MASKING_SUSPECTED] if metrics.get(suspected) == 1.0 else []
        candidates.append(candidate_from_metrics(
            trial_id, metrics, params, eps, run_name=trial_id, status="finished", flags=flags,
            audited=trial_id in audited,
        ))  # fmt: skip
    try:
        return select_best(candidates, DEFAULT_MIN_CLEAN_ACC, include_flagged=False).run_id
    except SelectionError:
        return None


def _audit_batch(
    spec: SweepSpec,
    batch: list,
    context: SweepContext,
    client: MlflowClient,
    audited: dict,
    failed: set,
) -> float:
    """One Ray task per trial of the batch, one line per audited trial as it arrives; the
    audited metrics go into `audited`, broken audits into `failed` (by Ray trial id)."""
    task = ray.remote(audit_trial).options(
        num_cpus=spec.resources.cpus_per_trial, num_gpus=spec.resources.gpus_per_trial
    )
    eps = rank_eps(spec)
    busy = 0.0
    pending = {}
    for r in batch:
        trial_id = r.metrics[names.TRIAL_ID]
        run_id = find_trial_run(client, context.experiment_id, context.parent_run_id, trial_id)
        ref = task.remote(r.config, context, r.checkpoint.path, run_id)
        pending[ref] = (trial_name(r.config), run_id, trial_id)
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
        suspected = bool(metrics[names.masking(names.MASKING_SUSPECTED)])
        worst_text = f"worst@{eps:g} {worst:.3f}" if worst is not None else "no worst case"
        say(f"audited {name}: {worst_text}" + ("  masking suspected" if suspected else ""))
    return busy
