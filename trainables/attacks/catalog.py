"""What the evaluator needs to know about an attack besides its code: its tier, whether it sees
the model's gradient, which naive attack it is a stronger version of, and how its options come
from the trial's settings. Each attack module lists its own entries (`ENTRIES`) next to the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the settings import the catalog's names; only type hints go the other way
    from trainables.settings import SweepSettings


def no_options(settings: SweepSettings, eps: float) -> dict:
    return {}


def one_pass(settings: SweepSettings) -> int:
    return 1


def pgd_passes(settings: SweepSettings) -> int:
    e = settings.evaluation
    return e.pgd_steps * e.pgd_restarts


def pgd_options(settings: SweepSettings, eps: float) -> dict:
    """PGD's steps, restarts, seed and step size (factor * eps / steps), shared by every PGD."""
    e = settings.evaluation
    return {
        "steps": e.pgd_steps,
        "restarts": e.pgd_restarts,
        "seed": e.seed,
        "step_size": e.pgd_step_factor * eps / e.pgd_steps,
    }


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable  # attack(model, x, y, eps, **options) -> x_adv
    tier: Literal["cheap", "audit"]  # cheap: every trial; audit: top candidates and flagged ones
    box: Literal["white", "black"]  # does it use the attacked model's gradient?
    options: Callable[[SweepSettings, float], dict] = no_options
    # the naive attack this one stabilises or strengthens: beating it by more than the gap
    # threshold raises the `stabilisation_gap` masking flag
    strengthens: str | None = None
    # include in the "accuracy must not rise with eps" check (random noise is too weak to count)
    monotone_checked: bool = True
    needs_surrogate: bool = False  # crafted on the lambda = 0 twin (transfer)
    # the most model passes (a forward and backward pass, or a query) it spends on one point at
    # one eps: what `--dry-run` prices an evaluation in (attacks stop early on broken points)
    passes: Callable[[SweepSettings], int] = one_pass
