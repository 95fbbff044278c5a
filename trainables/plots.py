"""Figures a trial logs: pre-activation histograms per hidden layer (the paper's figure) and
its robustness curves (accuracy against eps for every attack and the worst case)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed

from tracking.evidence import accuracy_interval
from tracking.palette import WORST, colour
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
        if model.activation == "relu":
            marks = [(0.0, "saturated: h ≤ 0", "#c44e52", "--")]
        else:
            marks = [(t, f"saturated: |h| > {threshold:g}", "#c44e52", "--")
                     for t in (-threshold, threshold)]  # fmt: skip
        flat = activation(model.activation).float32_flat
        if flat is not None:
            marks += [(t, f"float32 slope = 0: |h| > {flat:g}", "#8c564b", ":")
                      for t in (-flat, flat)]  # fmt: skip
        for position, label, col, style in marks:
            ax.axvline(position, color=col, lw=0.9, ls=style, label=label)
        ax.set_title(f"hidden layer {i + 1}")
        ax.set_xlabel("pre-activation h")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # each threshold once
    axes[0][-1].legend(unique.values(), unique.keys(), fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("units x points (log)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def robustness_curves(
    accuracy: dict[tuple[str, float], float], worst: dict[float, float], title: str, n_points: int
) -> Figure:
    """Accuracy against eps for every attack (thin) and the per-example worst case (bold
    black), each with its 95 % Wilson interval over the n evaluation points: where a naive
    attack's curve sits far above the rest, it is being fooled."""
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    for attack in sorted({a for a, _ in accuracy}):
        points = sorted((e, v) for (a, e), v in accuracy.items() if a == attack)
        style = {"lw": 2, "ls": "--"} if attack == "fgsm" else {"lw": 1, "alpha": 0.8}
        eps, values = zip(*points, strict=True)
        ax.errorbar(eps, values, yerr=_wilson_bars(values, n_points), marker="o", ms=3,
                    capsize=2, elinewidth=0.6, color=colour(attack),
                    label=attack + (" (naive)" if attack == "fgsm" else ""), **style)  # fmt: skip
    eps, values = zip(*sorted(worst.items()), strict=True)
    ax.errorbar(eps, values, yerr=_wilson_bars(values, n_points), marker="s", lw=2.5, capsize=3,
                color=colour(WORST), label=f"{WORST} (95 % CI)")  # fmt: skip
    ax.set_xlabel("ε (L∞, inputs in [0, 1])")
    ax.set_ylabel(f"accuracy on {n_points} points")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9, frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def _wilson_bars(values, n: int) -> list[list[float]]:
    """matplotlib's [[below...], [above...]] for each accuracy's Wilson interval."""
    cis = [accuracy_interval(v, n) for v in values]
    return [[v - lo for v, (lo, _) in zip(values, cis, strict=True)],
            [hi - v for v, (_, hi) in zip(values, cis, strict=True)]]  # fmt: skip
