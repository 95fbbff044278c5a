"""Attacks that use no gradient of the attacked model: random noise, and transfer from a
surrogate model."""

from __future__ import annotations

import torch
from torch import nn

from trainables.attacks.catalog import Attack, pgd_options, pgd_passes
from trainables.attacks.gradient import pgd
from trainables.attacks.losses import project


@torch.no_grad()
def noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    draws: int = 100,
    seed: int = 0,
) -> torch.Tensor:
    """Uniform noise in the eps-ball, `draws` draws per point; a point keeps the first draw that
    fools the model. If noise beats a white-box attack, that attack is being fooled."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    x_adv = x.clone()
    active = (model(x).argmax(1) == y).nonzero().squeeze(1)
    for _ in range(draws):
        if len(active) == 0:
            break
        u = torch.rand(x[active].shape, generator=generator, device=x.device, dtype=x.dtype)
        candidate = project(x[active] + (2 * u - 1) * eps, x[active], eps)
        fooled = model(candidate).argmax(1) != y[active]
        x_adv[active[fooled]] = candidate[fooled]
        active = active[~fooled]
    return x_adv


def transfer(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    surrogate: nn.Module,
    **pgd_opts,
) -> torch.Tensor:
    """PGD-margin adversarials crafted on `surrogate` (an unpenalised twin), to be scored on
    `model`. `model` is not used to craft them: that is the point."""
    return pgd(surrogate, x, y, eps, loss="margin", **pgd_opts)


def _noise_options(settings, eps: float) -> dict:
    return {"draws": settings.evaluation.noise_draws, "seed": settings.evaluation.seed}


ENTRIES = (
    Attack(
        "transfer", transfer, "cheap", "black", pgd_options, needs_surrogate=True, passes=pgd_passes
    ),
    Attack(
        "noise",
        noise,
        "cheap",
        "black",
        _noise_options,
        monotone_checked=False,
        passes=lambda settings: settings.evaluation.noise_draws,
    ),
)
