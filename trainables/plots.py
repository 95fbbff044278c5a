"""Figures a trial logs: pre-activation histograms per hidden layer (the paper's figure)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

from trainables.activations import activation


@torch.no_grad()
def preactivation_histograms(model, x: torch.Tensor, threshold: float, title: str):
    """One panel per hidden layer: the distribution of h, log-scale counts, with the saturation
    threshold (and, where the activation has one, the float32 flat point) marked."""
    model.eval()
    _, preacts = model.forward_with_preactivations(x)
    fig = Figure(figsize=(4 * len(preacts), 3.2))
    axes = fig.subplots(1, len(preacts), squeeze=False)
    for i, (ax, h) in enumerate(zip(axes[0], preacts, strict=True)):
        values = h.flatten().double().cpu().numpy()
        ax.hist(values, bins=80, color="#4c72b0", log=True)
        marks = [0.0] if model.activation == "relu" else [-threshold, threshold]
        flat = activation(model.activation).float32_flat
        if flat is not None:
            marks += [-flat, flat]
        for m in marks:
            ax.axvline(m, color="#c44e52", lw=0.8, ls="--")
        ax.set_title(f"hidden layer {i + 1}")
        ax.set_xlabel("pre-activation h")
    axes[0][0].set_ylabel("units x points (log)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
