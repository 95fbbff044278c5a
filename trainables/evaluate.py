"""The robustness evaluation of one model: a fixed evaluation subset, every attack at every
eps, per-example worst case, and the masking diagnostics.

Worst case is per example (AutoAttack-style): a point counts as robust at eps only if it is
classified correctly clean and survives every attack run on it. It is never a minimum of
aggregate accuracies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from trainables.attacks import AUDIT_ATTACKS, CHEAP_ATTACKS
from trainables.config import EvalConfig
from trainables.masking import diagnose, zero_gradient_fraction

ATTACKS = {**CHEAP_ATTACKS, **AUDIT_ATTACKS}
BOUND_TOLERANCE = 1e-6  # float32 rounding when projecting onto the eps-ball


class AttackBoundsError(RuntimeError):
    """An attack returned a point outside the eps-ball or outside [0, 1]: a bug, never a result."""


@dataclass
class AttackResult:
    attack: str
    eps: float
    robust: torch.Tensor  # bool, one per evaluation point
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.robust.float().mean().item()


def eval_indices(n_test: int, size: int, seed: int) -> torch.Tensor:
    """The first `size` points of a seeded permutation of the test split: identical for every
    trial, and a larger audit set (same seed) always contains the evaluation set."""
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))
    return order[: min(size, n_test)].sort().values


def eps_name(eps: float) -> str:
    return f"eps_{eps:g}"


def attack_options(name: str, eps: float, ecfg: EvalConfig, surrogate: nn.Module | None) -> dict:
    """The keyword options each attack gets, all from the EvalConfig (single source)."""
    pgd = {
        "steps": ecfg.pgd_steps,
        "restarts": ecfg.pgd_restarts,
        "seed": ecfg.seed,
        "step_size": ecfg.pgd_step_factor * eps / ecfg.pgd_steps,
    }
    return {
        "pgd_ce": pgd,
        "pgd_margin": pgd,
        "pgd_bpda": {**pgd, "temperature": ecfg.bpda_temperature},
        "transfer": {**pgd, "surrogate": surrogate},
        "apgd_ce": {"iterations": ecfg.apgd_iterations, "seed": ecfg.seed},
        "apgd_t": {"iterations": ecfg.apgd_iterations, "seed": ecfg.seed},
        "noise": {"draws": ecfg.noise_draws, "seed": ecfg.seed},
        "square": {"queries": ecfg.square_queries, "seed": ecfg.seed},
        "autoattack": {"seed": ecfg.seed},
    }.get(name, {})


def check_bounds(name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    excess = ((x_adv - x).abs().max() - eps).item()
    if excess > BOUND_TOLERANCE or x_adv.min() < 0 or x_adv.max() > 1:
        raise AttackBoundsError(
            f"{name} at eps={eps:g} left the eps-ball or [0, 1] (excess {excess:.3g})"
        )


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def run_attacks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: tuple[str, ...],
    eps_list: tuple[float, ...],
    ecfg: EvalConfig,
    surrogate: nn.Module | None = None,
) -> list[AttackResult]:
    """Every attack at every eps, each output bounds-checked and scored on the float32 model."""
    model.eval()
    clean = correct(model, x, y)
    results = []
    for eps in eps_list:
        for name in attacks:
            start = time.perf_counter()
            x_adv = ATTACKS[name](model, x, y, eps, **attack_options(name, eps, ecfg, surrogate))
            seconds = time.perf_counter() - start
            check_bounds(name, x_adv, x, eps)
            results.append(AttackResult(name, eps, clean & correct(model, x_adv, y), seconds))
    return results


def worst_case(results: list[AttackResult], eps: float) -> torch.Tensor:
    """Per example: robust only if it survives every attack run at this eps."""
    masks = [r.robust for r in results if r.eps == eps]
    return torch.stack(masks).all(0)


def robustness_metrics(results: list[AttackResult]) -> dict[str, float]:
    """robust_acc/<attack>/eps_<e>, worst_case_acc/eps_<e>, attack_seconds/<attack>."""
    metrics: dict[str, float] = {}
    for r in results:
        metrics[f"robust_acc/{r.attack}/{eps_name(r.eps)}"] = r.accuracy
        key = f"attack_seconds/{r.attack}"
        metrics[key] = metrics.get(key, 0.0) + r.seconds
    for eps in sorted({r.eps for r in results}):
        metrics[f"worst_case_acc/{eps_name(eps)}"] = worst_case(results, eps).float().mean().item()
    return metrics


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ecfg: EvalConfig,
    surrogate: nn.Module | None,
) -> tuple[dict, dict, list[AttackResult]]:
    """The full cheap tier on the final model: (metrics, {diagnostic: (value, flag)}, results)."""
    eps_list = (*ecfg.eps, ecfg.unbounded_eps)
    attacks = tuple(a for a in ecfg.attacks if a != "transfer" or surrogate is not None)
    results = run_attacks(model, x, y, attacks, eps_list, ecfg, surrogate)
    metrics = robustness_metrics(results)
    acc = {(r.attack, r.eps): r.accuracy for r in results}
    diagnostics = diagnose(
        acc,
        zero_gradient_fraction(model, x, y, torch.float32),
        zero_gradient_fraction(model, x, y, torch.float64),
        ecfg,
        transfer_is_black_box=surrogate is not None and surrogate is not model,
    )
    for name, (value, _) in diagnostics.items():
        metrics[f"masking/{name}"] = value
    return metrics, diagnostics, results
