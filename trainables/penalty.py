"""The Nayebi & Ganguli saturation penalty and its lambda schedule (docs/method.md, section 1).

psi_c(h), the distance from h to the nearest point where the activation's slope is zero, comes
from the activation table (`trainables/activations.py`).
"""

from __future__ import annotations

import torch

from trainables.activations import activation as activation_entry

REDUCTIONS = ("sum", "mean")
SCHEDULES = ("constant", "linear")


def psi(h: torch.Tensor, activation: str) -> torch.Tensor:
    """Elementwise saturation distance psi_c(h)."""
    return activation_entry(activation).psi(h)


def saturation_penalty(
    preacts: list[torch.Tensor], activation: str, reduction: str
) -> torch.Tensor:
    """Sum over layers of (sum or mean over units of psi), averaged over the batch.

    Units of a conv layer are its channels at every position. `mean` makes lambda independent
    of layer width; the batch is always averaged so lambda is independent of batch size.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    # Every example has the same number of units, so the batch mean of per-example sums (means)
    # is one reduction over the whole tensor: fewer small ops on the training hot path.
    batch = preacts[0].shape[0]
    per_layer = [
        psi(h, activation).sum() / batch if reduction == "sum" else psi(h, activation).mean()
        for h in preacts
    ]
    return torch.stack(per_layer).sum()


def effective_lambda(lam: float, schedule: str, warmup_epochs: int, progress: float) -> float:
    """Lambda in force after `progress` epochs of training (a float: 2.5 = mid third epoch).

    `linear` ramps from 0 to `lam` over the first `warmup_epochs` epochs, then holds.
    """
    if schedule == "constant" or warmup_epochs == 0:
        return lam
    if schedule == "linear":
        return lam * min(1.0, progress / warmup_epochs)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
