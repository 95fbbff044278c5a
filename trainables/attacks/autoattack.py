"""APGD-CE, APGD-T, Square and AutoAttack `standard`, from the original AutoAttack code
(`pyautoattack` 0.2.0). We wrap, we don't re-implement: these attacks are long and subtle."""

from __future__ import annotations

import logging

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
    n_targets = min(9, model(x[:1]).shape[1] - 1)
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


def _apgd_options(settings, eps: float) -> dict:
    return {"iterations": settings.evaluation.apgd_iterations, "seed": settings.evaluation.seed}


def _square_options(settings, eps: float) -> dict:
    return {"queries": settings.audit.square_queries, "seed": settings.evaluation.seed}


def _autoattack_options(settings, eps: float) -> dict:
    e = settings.evaluation
    return {"seed": e.seed, "batch_size": e.attack_batch_size}


ENTRIES = (
    Attack("apgd_ce", apgd_ce, "cheap", "white", _apgd_options, strengthens="pgd_ce"),
    Attack("apgd_t", apgd_t, "cheap", "white", _apgd_options, strengthens="pgd_ce"),
    Attack("square", square, "audit", "black", _square_options),
    Attack(
        "autoattack",
        autoattack_standard,
        "audit",
        "white",
        _autoattack_options,
        strengthens="pgd_ce",
    ),
)
