"""Gradient-masking diagnostics (docs/method.md, section 3; Athalye et al. 2018's checks).

Each diagnostic is a measured value and a flag; `masking_suspected` is any flag. Accuracies come
from `evaluate.py` as {(attack, eps): robust accuracy}. A diagnostic whose attacks were not run
is left out rather than guessed. Which attacks are white- or black-box, and which strengthen a
naive one, comes from the attack catalog (`trainables/attacks`).
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
from torch import nn

from trainables.attacks import ATTACKS
from trainables.attacks.losses import input_gradient
from trainables.settings import EvaluationSettings

WHITE_BOX = tuple(n for n, a in ATTACKS.items() if a.box == "white")
BLACK_BOX = tuple(n for n, a in ATTACKS.items() if a.box == "black")
# naive attack -> the stabilised or adaptive attacks that should not beat it by much
STRONGER = {
    naive: tuple(n for n, a in ATTACKS.items() if a.strengthens == naive)
    for naive in dict.fromkeys(a.strengthens for a in ATTACKS.values() if a.strengthens)
}
MONOTONE_CHECKED = tuple(n for n, a in ATTACKS.items() if a.monotone_checked)


def zero_gradient_fraction(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype
) -> float:
    """Fraction of points whose cross-entropy input gradient is exactly zero in `dtype`."""
    model = copy.deepcopy(model).to(dtype)
    grad = input_gradient(model, x.to(dtype), y, "ce")
    return (grad.flatten(1) == 0).all(1).float().mean().item()


def _max_over_eps(eps: tuple[float, ...], fn) -> float | None:
    values = [fn(e) for e in eps]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def diagnose(
    acc: dict[tuple[str, float], float],
    zero_f32: float,
    zero_f64: float,
    ecfg: EvaluationSettings,
    transfer_is_black_box: bool = True,
    collapsed: bool = False,
) -> dict[str, tuple[float, bool]]:
    """{diagnostic: (value, flag)}; every flag's threshold is a field of `evaluation.masking`.

    `transfer_is_black_box` is False when the transfer surrogate is the model itself (a lambda = 0
    trial): its "transfer" attack is then white-box PGD on the margin. A `collapsed` model (see
    `evaluate.collapse_check`) keeps its flags but is never `masking_suspected`."""
    black_box_attacks = [a for a in BLACK_BOX if a != "transfer" or transfer_is_black_box]
    bounded = tuple(ecfg.eps)
    m = ecfg.masking
    tol = m.tolerance
    get = acc.get
    out: dict[str, tuple[float, bool]] = {
        "zero_grad_float32": (zero_f32, zero_f32 > m.zero_grad_threshold),
        "zero_grad_float64": (zero_f64, zero_f64 > m.zero_grad_threshold),
    }

    def gap(e):  # how much a naive attack overstates robustness against the stronger ones
        diffs = []
        for naive, stronger in STRONGER.items():
            strong = [get((a, e)) for a in stronger if get((a, e)) is not None]
            if get((naive, e)) is not None and strong:
                diffs.append(get((naive, e)) - min(strong))
        return max(diffs) if diffs else None

    def single_step(e):
        a, b = get(("pgd_ce", e)), get(("fgsm", e))
        return None if a is None or b is None else a - b

    def black_box(e):  # the best black-box attack beating the best white-box one
        white = [get((n, e)) for n in WHITE_BOX if get((n, e)) is not None]
        black = [get((n, e)) for n in black_box_attacks if get((n, e)) is not None]
        return min(white) - min(black) if white and black else None

    def non_monotone(attack):
        seq = [get((attack, e)) for e in sorted(bounded)]
        seq = [v for v in seq if v is not None]
        rises = [b - a for a, b in pairwise(seq)]
        return max(rises) if rises else None

    checks = {
        "stabilisation_gap": (_max_over_eps(bounded, gap), m.gap_threshold),
        "single_step_beats_iterative": (_max_over_eps(bounded, single_step), tol),
        "blackbox_beats_whitebox": (_max_over_eps(bounded, black_box), tol),
        "eps_non_monotone": (
            max((v for a in MONOTONE_CHECKED if (v := non_monotone(a)) is not None), default=None),
            tol,
        ),
        "unbounded_failure": (get(("pgd_ce", ecfg.unbounded_eps)), m.unbounded_threshold),
    }
    for name, (value, threshold) in checks.items():
        if value is not None:
            out[name] = (value, value > threshold)
    suspected = any(flag for _, flag in out.values()) and not collapsed
    out["masking_suspected"] = (float(suspected), suspected)
    return out
