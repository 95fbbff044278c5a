"""What an activation is, in one table: its forward, its saturation distance psi_c, the smooth
slope the BPDA attack back-propagates instead of the true one, which units count as saturated,
and where float32 autograd's slope becomes exactly zero.

Adding an activation is one `Activation(...)` entry here plus its test; the spec's choices, the
models, the penalty, the saturation metrics and the BPDA attack all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainables.names import ACTIVATION_NAMES, check_registry

Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    name: str
    forward: Callable[[Tensor], Tensor]
    # psi_c(h): distance from h to the nearest point where the slope is zero (Nayebi & Ganguli)
    psi: Callable[[Tensor], Tensor]
    # slope of a softened stand-in at temperature T, for BPDA; constant factors (1/T) dropped,
    # since they do not change the direction of a signed step
    surrogate_slope: Callable[[Tensor, float], Tensor]
    # boolean mask of saturated units, given the spec's training.saturation_threshold
    saturated: Callable[[Tensor, float], Tensor]
    # |h| beyond which the float32 slope is exactly 0 (None: no such point)
    float32_flat: float | None


def _sigmoid_slope(h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1 - s)


def _tanh_slope(h: Tensor) -> Tensor:
    return 1 - torch.tanh(h) ** 2


def _beyond(h: Tensor, threshold: float) -> Tensor:
    return h.abs() > threshold


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        # every h <= 0 has zero slope, so psi = relu(h); BPDA passes softplus's slope
        Activation(
            "relu",
            torch.relu,
            psi=torch.relu,
            surrogate_slope=lambda h, t: torch.sigmoid(h / t),
            saturated=lambda h, threshold: h <= 0,
            float32_flat=None,
        ),
        # the slope vanishes only at +-inf: psi = sigma'(h). float32 sigma(h) rounds to exactly
        # 1.0 above h = 16.6356, so autograd's sigma(1 - sigma) is exactly 0 (Brendel & Bethge)
        Activation(
            "sigmoid",
            torch.sigmoid,
            psi=_sigmoid_slope,
            surrogate_slope=lambda h, t: _sigmoid_slope(h / t),
            saturated=_beyond,
            float32_flat=16.6,
        ),
        # same idea as sigmoid: psi = 1 - tanh(h)^2; float32 tanh(h) is exactly 1.0 above 9.0109
        Activation(
            "tanh",
            torch.tanh,
            psi=_tanh_slope,
            surrogate_slope=lambda h, t: _tanh_slope(h / t),
            saturated=_beyond,
            float32_flat=9.01,
        ),
    )
}
check_registry("activation", tuple(ACTIVATIONS), ACTIVATION_NAMES)


def activation(name: str) -> Activation:
    """The table entry for `name`, with an error that lists the choices."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {list(ACTIVATIONS)}"
        ) from None
