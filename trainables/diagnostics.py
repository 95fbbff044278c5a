"""Saturation diagnostics per hidden layer: how many units sit where the slope (nearly) vanishes,
and how heavy-tailed each layer's weights are."""

from __future__ import annotations

import torch
from torch import nn

# float32 sigmoid(z) rounds to exactly 1.0 for z above ~16.6, so autograd's sigma(1-sigma)
# backward is exactly 0 there (Brendel & Bethge): the numerically flat region.
SIGMOID_FLOAT32_FLAT = 16.6


def saturated_units(h: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    """Boolean mask of saturated units: relu counts h <= 0; sigmoid/tanh count |h| > threshold."""
    if activation == "relu":
        return h <= 0
    return h.abs() > threshold


def weight_kurtosis(layer: nn.Module) -> float:
    """Excess (Fisher) kurtosis of a layer's weights: 0 for a Gaussian, > 0 for heavy tails."""
    w = layer.weight.detach().double().flatten()
    centred = w - w.mean()
    var = centred.pow(2).mean()
    return float(centred.pow(4).mean() / var.pow(2) - 3.0)
