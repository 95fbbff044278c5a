"""Saturation diagnostics per hidden layer: how many units sit where the slope (nearly) vanishes,
and how heavy-tailed each layer's weights are."""

from __future__ import annotations

import torch
from torch import nn

from trainables.activations import activation as activation_entry


def saturated_units(h: torch.Tensor, activation: str, threshold: float) -> torch.Tensor:
    """Boolean mask of saturated units, by the activation table's rule."""
    return activation_entry(activation).saturated(h, threshold)


def weight_kurtosis(layer: nn.Module) -> float:
    """Excess (Fisher) kurtosis of a layer's weights: 0 for a Gaussian, > 0 for heavy tails."""
    w = layer.weight.detach().double().flatten()
    centred = w - w.mean()
    var = centred.pow(2).mean()
    return float(centred.pow(4).mean() / var.pow(2) - 3.0)
