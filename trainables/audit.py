"""What an audit attacks, point by point. No Ray, no MLflow: `trainable.audit_trial` logs it.

The audit exists to lower a trial's per-example worst case as far as the strong attacks can, and
to measure AutoAttack `standard`'s own figure on the evaluation points (the figure RobustBench
reports). It is planned per point, so that no attack runs twice on a point with the same
settings and none runs where it cannot change an answer:

- an eps at which the cheap tier left no point standing is skipped: no attack lowers a worst
  case of 0, and AutoAttack's figure there is not measured (`AuditOutcome.skipped_eps` says so);
- AutoAttack runs its stages in its own order, each on the points the earlier ones left
  standing (`attacks.autoattack.autoattack_stages`), and reads APGD-CE and APGD-T from the
  cheap tier where the cheap tier ran them as those very stages (`evaluate.attack_groups`);
- Square's own figure (the black-box diagnostic reads it) takes AutoAttack's Square stage on
  the points that stage attacked, when the audit's queries are AutoAttack's, and runs Square
  only on the clean-correct points left over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from trainables.attacks import ATTACKS
from trainables.attacks.autoattack import (
    AUTOATTACK_APGD_ITERATIONS,
    AUTOATTACK_SQUARE_QUERIES,
    AUTOATTACK_STAGE_PASSES,
    AUTOATTACK_STAGES,
    StagedRun,
    autoattack_stages,
)
from trainables.evaluate import AttackResult, attack_points, check_bounds, correct, worst_case
from trainables.masking import UNBOUNDED_ATTACK
from trainables.settings import SweepSettings, TrialSettings


@dataclass
class AuditOutcome:
    results: list[AttackResult] = field(default_factory=list)
    skipped_eps: list[float] = field(default_factory=list)  # nothing stood after the cheap tier
    reused: dict[float, list[str]] = field(default_factory=dict)  # eps -> stages read, not run
    stage_seconds: dict[str, float] = field(default_factory=dict)  # AutoAttack stages run


def audit_eps(cfg: SweepSettings) -> tuple[float, ...]:
    return tuple(cfg.audit.eps or cfg.evaluation.eps)


def reusable_stages(cfg: SweepSettings) -> tuple[str, ...]:
    """AutoAttack's stages an earlier run at its settings stands in for (what `--dry-run`
    counts): APGD-CE and APGD-T from the cheap tier at 100 iterations, and Square's own figure
    from AutoAttack's Square stage at 5,000 queries."""
    stages = []
    if cfg.evaluation.apgd_iterations == AUTOATTACK_APGD_ITERATIONS:
        stages += [a for a in ("apgd_ce", "apgd_t") if a in cfg.evaluation.attacks]
    if cfg.audit.square_queries == AUTOATTACK_SQUARE_QUERIES and "square" in cfg.audit.attacks:
        stages.append("square")
    return tuple(stages)


def nothing_standing(stored: list[AttackResult], eps: float) -> bool:
    """The cheap tier ran at eps and left no point standing."""
    at_eps = [r for r in stored if r.eps == eps]
    return bool(at_eps) and not worst_case(at_eps, eps).any()


def audit_attacks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    stored: list[AttackResult],
    cfg: TrialSettings,
) -> AuditOutcome:
    """The audit's attacks at every audit eps on the evaluation points `x, y`, given the cheap
    tier's per-point results on them (`stored`, CPU)."""
    model.eval()
    outcome = AuditOutcome()
    clean = correct(model, x, y)
    for eps in audit_eps(cfg):
        if nothing_standing(stored, eps):
            outcome.skipped_eps.append(eps)
            continue
        staged = None
        if "autoattack" in cfg.audit.attacks:
            known = {r.attack: r.robust for r in stored
                     if r.eps == eps and r.own and r.autoattack_stage}  # fmt: skip
            outcome.reused[eps] = [s for s in AUTOATTACK_STAGES if s in known]
            staged = _autoattack(model, x, y, eps, cfg, known, outcome)
        if "square" in cfg.audit.attacks:
            outcome.results.append(_square(model, x, y, eps, cfg, clean, staged))
    return outcome


def _autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    cfg: TrialSettings,
    known: dict[str, torch.Tensor],
    outcome: AuditOutcome,
) -> StagedRun:
    e = cfg.evaluation
    start = time.perf_counter()
    run = autoattack_stages(
        model, x, y, eps, seed=e.seed, batch_size=e.attack_batch_size, known=known,
        check=lambda stage, x_adv, x_in: check_bounds(f"autoattack/{stage}", x_adv, x_in, eps),
    )  # fmt: skip
    for stage, s in run.seconds.items():
        outcome.stage_seconds[stage] = outcome.stage_seconds.get(stage, 0.0) + s
    seconds = time.perf_counter() - start
    outcome.results.append(AttackResult("autoattack", eps, run.robust.cpu(), seconds))
    return run


def _square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    cfg: TrialSettings,
    clean: torch.Tensor,
    staged: StagedRun | None,
) -> AttackResult:
    """Square's own figure on every clean-correct point. Where AutoAttack's Square stage ran
    with the same queries, its result on the points it attacked is Square's there (the same
    attack, settings and seed on the same points in the same batches), and Square runs only on
    the rest."""
    done = torch.zeros_like(clean)  # the points AutoAttack's Square stage attacked
    survived = torch.zeros_like(clean)
    shared = cfg.audit.square_queries == AUTOATTACK_SQUARE_QUERIES
    if shared and staged is not None and "square" in staged.attacked:
        done, survived = staged.attacked["square"], staged.robust
    rest = (clean & ~done).nonzero().flatten()
    result = attack_points(model, x, y, "square", eps, cfg, None, [rest])
    result.robust = (result.robust | (done & survived)).cpu()
    return result


# ---- what it costs, before anything runs ----------------------------------------------------


@dataclass(frozen=True)
class EvaluationCost:
    """Upper bounds on one trial's evaluation in attack-point-steps (one model pass, forward
    and backward or a query, on one point): attacks stop early on the points they break, and
    the audit skips an eps the cheap tier left nothing standing at."""

    cheap: int  # every trial
    audit: dict[str, int]  # each audited trial: Square's own run, AutoAttack's stages run
    reused: tuple[str, ...]  # AutoAttack's stages read from an earlier run instead


def evaluation_cost(cfg: SweepSettings, n_points: int) -> EvaluationCost:
    e = cfg.evaluation
    cheap = sum(ATTACKS[a].passes(cfg) for a in e.attacks) * len(e.eps)
    if UNBOUNDED_ATTACK in e.attacks:  # the box: PGD-CE alone, the rest on what it leaves
        cheap += ATTACKS[UNBOUNDED_ATTACK].passes(cfg)
    n_eps = len(audit_eps(cfg))
    audit = {}
    if "square" in cfg.audit.attacks:
        audit["square"] = ATTACKS["square"].passes(cfg) * n_points * n_eps
    reused = reusable_stages(cfg) if "autoattack" in cfg.audit.attacks else ()
    if "autoattack" in cfg.audit.attacks:
        for stage in AUTOATTACK_STAGES:
            if stage not in reused:
                audit[f"autoattack/{stage}"] = AUTOATTACK_STAGE_PASSES[stage] * n_points * n_eps
    return EvaluationCost(cheap * n_points, audit, reused)
