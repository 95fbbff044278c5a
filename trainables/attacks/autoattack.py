"""APGD-CE, APGD-T, Square and AutoAttack `standard`, from the original AutoAttack code
(`pyautoattack` 0.2.0). We wrap, we don't re-implement: these attacks are long and subtle.

`autoattack_stages` is `run_standard_evaluation`'s own loop (stage after stage, each on the
points the earlier ones left standing, in batches of those points) over the attack objects
`AutoAttack(version="standard")` builds, so every setting is the original's; it differs only in
that a stage the cheap tier already ran as that stage (APGD-CE and APGD-T at AutoAttack's
iterations, on the same points in the same batches: `evaluate.attack_groups`) is read, not run
again. Each attack re-seeds itself at every call, so a batch's result depends only on the
batch: the read stages, and so the figure, are the original's bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.square import SquareAttack
from torch import nn

from trainables.attacks.catalog import Attack

# AutoAttack reports every batch through this logger; the evaluator reports what matters.
logging.getLogger("auto-attack").setLevel(logging.WARNING)


def apgd_ce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    iterations: int = 100,
    restarts: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """APGD on cross-entropy (attacks only correctly classified points)."""
    attack = APGDAttack(
        model,
        n_iter=iterations,
        norm="Linf",
        n_restarts=restarts,
        eps=eps,
        seed=seed,
        loss="ce",
        device=x.device,
    )
    return attack.perturb(x, y)


def apgd_t(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    iterations: int = 100,
    restarts: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Targeted APGD on the DLR loss, against each of the 9 most likely other classes."""
    n_targets = min(APGD_TARGETS, model(x[:1]).shape[1] - 1)
    attack = APGDAttack_targeted(
        model,
        n_iter=iterations,
        norm="Linf",
        n_restarts=restarts,
        eps=eps,
        seed=seed,
        device=x.device,
        n_target_classes=n_targets,
    )
    return attack.perturb(x, y)


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    queries: int = 5000,
    seed: int = 0,
) -> torch.Tensor:
    """Square Attack: gradient-free random search on the margin, immune to gradient masking."""
    attack = SquareAttack(
        model,
        norm="Linf",
        n_queries=queries,
        eps=eps,
        p_init=0.8,
        n_restarts=1,
        seed=seed,
        device=x.device,
        resc_schedule=False,
    )
    with torch.no_grad():
        return attack.perturb(x, y)


def autoattack_standard(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    seed: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """AutoAttack `standard` (APGD-CE, APGD-T, FAB-T, Square), the field's reference evaluation."""
    attack = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=x.device, seed=seed)
    attack.verbose = False
    x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv


# AutoAttack `standard` at L-infinity (`AutoAttack._set_version`): its stages in their order, and
# the settings an attack run elsewhere must have for its per-point result to stand in for one
AUTOATTACK_STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")
AUTOATTACK_APGD_ITERATIONS = 100  # APGD-CE and APGD-T, 1 restart, 9 target classes, rho 0.75
AUTOATTACK_SQUARE_QUERIES = 5000  # Square: p_init 0.8, 1 restart, no rescaled schedule
APGD_TARGETS = FAB_TARGETS = 9  # target classes of APGD-T and FAB-T
FAB_ITERATIONS = 100


def _stage_attacks(model: nn.Module, eps: float, seed: int, device) -> dict[str, Callable]:
    """Each stage as `run_standard_evaluation` calls it, on the objects AutoAttack builds."""
    aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=seed)

    def apgd_ce_stage(x, y):
        aa.apgd.loss, aa.apgd.seed = "ce", aa.get_seed()
        return aa.apgd.perturb(x, y)

    def apgd_t_stage(x, y):
        aa.apgd_targeted.seed = aa.get_seed()
        return aa.apgd_targeted.perturb(x, y)

    def fab_t_stage(x, y):
        aa.fab.targeted, aa.fab.n_restarts, aa.fab.seed = True, 1, aa.get_seed()
        return aa.fab.perturb(x, y)

    def square_stage(x, y):
        aa.square.seed = aa.get_seed()
        return aa.square.perturb(x, y)

    return {"apgd_ce": apgd_ce_stage, "apgd_t": apgd_t_stage, "fab_t": fab_t_stage,
            "square": square_stage}  # fmt: skip


@dataclass
class StagedRun:
    """AutoAttack `standard` on some points: per point, robust after every stage; which points
    each stage that ran attacked (the ones standing before it); each stage's seconds."""

    robust: torch.Tensor
    attacked: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def autoattack_stages(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    seed: int = 0,
    batch_size: int = 500,
    known: dict[str, torch.Tensor] | None = None,
    check: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None,
) -> StagedRun:
    """AutoAttack `standard` stage by stage. `known`: {stage: robust mask on these points} from
    an earlier run that was that very stage (`evaluate.attack_groups`: the same attack and
    settings on the same points in the same batches), AND-ed in first, so the stages that do run
    see exactly the points they would have seen; `check(stage, x_adv, x)` sees every output."""
    known = known or {}
    stages = _stage_attacks(model, eps, seed, x.device)
    with torch.no_grad():  # as the original's loop (the attacks enable gradients themselves)
        run = StagedRun(model(x).argmax(1) == y)
        for stage in AUTOATTACK_STAGES:
            if not run.robust.any():
                break  # as the original: nothing left standing, nothing more to run
            if stage in known:
                run.robust &= known[stage].to(run.robust.device)
                continue
            start = time.perf_counter()
            run.attacked[stage] = run.robust.clone()
            for batch in run.robust.nonzero().flatten().split(batch_size):
                x_adv = stages[stage](x[batch], y[batch])
                if check is not None:
                    check(stage, x_adv, x[batch])
                run.robust[batch] &= model(x_adv).argmax(1) == y[batch]
            run.seconds[stage] = time.perf_counter() - start
    return run


def _apgd_options(settings, eps: float) -> dict:
    return {"iterations": settings.evaluation.apgd_iterations, "seed": settings.evaluation.seed}


def _square_options(settings, eps: float) -> dict:
    return {"queries": settings.audit.square_queries, "seed": settings.evaluation.seed}


def _autoattack_options(settings, eps: float) -> dict:
    e = settings.evaluation
    return {"seed": e.seed, "batch_size": e.attack_batch_size}


def _apgd_t_passes(settings) -> int:
    return APGD_TARGETS * settings.evaluation.apgd_iterations


# the most model passes each stage spends on one point (its settings are fixed)
AUTOATTACK_STAGE_PASSES = {
    "apgd_ce": AUTOATTACK_APGD_ITERATIONS,
    "apgd_t": APGD_TARGETS * AUTOATTACK_APGD_ITERATIONS,
    "fab_t": FAB_TARGETS * FAB_ITERATIONS,
    "square": AUTOATTACK_SQUARE_QUERIES,
}


def autoattack_passes(settings=None) -> int:
    return sum(AUTOATTACK_STAGE_PASSES.values())


ENTRIES = (
    Attack(
        "apgd_ce",
        apgd_ce,
        "cheap",
        "white",
        _apgd_options,
        strengthens="pgd_ce",
        passes=lambda settings: settings.evaluation.apgd_iterations,
    ),
    Attack(
        "apgd_t",
        apgd_t,
        "cheap",
        "white",
        _apgd_options,
        strengthens="pgd_ce",
        passes=_apgd_t_passes,
    ),
    Attack(
        "square",
        square,
        "audit",
        "black",
        _square_options,
        passes=lambda settings: settings.audit.square_queries,
    ),
    Attack(
        "autoattack",
        autoattack_standard,
        "audit",
        "white",
        _autoattack_options,
        strengthens="pgd_ce",
        passes=autoattack_passes,
    ),
)
