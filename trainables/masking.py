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

from tracking.metric_names import MASKING_THRESHOLDS
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
# the attack whose accuracy at the unbounded eps (the whole [0, 1] box) `unbounded_failure` reads:
# the only figure there a diagnostic compares, so the other attacks run there only on what it leaves
UNBOUNDED_ATTACK = "pgd_ce"


def zero_gradient_fraction(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype
) -> float:
    """Fraction of points whose cross-entropy input gradient is exactly zero in `dtype`."""
    model = copy.deepcopy(model).to(dtype)
    grad = input_gradient(model, x.to(dtype), y, "ce")
    return (grad.flatten(1) == 0).all(1).float().mean().item()


Accuracies = dict[tuple[str, float], float]


def _max_over_eps(eps: tuple[float, ...], fn) -> float | None:
    values = [v for v in (fn(e) for e in eps) if v is not None]
    return max(values) if values else None


def stabilisation_gap(acc: Accuracies, eps: tuple[float, ...]) -> float | None:
    """Max over eps of how far a naive attack (FGSM, PGD-CE) overstates robustness against the
    best of the attacks that stabilise or strengthen it (the catalog's `strengthens`)."""

    def at(e):
        diffs = []
        for naive, stronger in STRONGER.items():
            strong = [acc[(a, e)] for a in stronger if (a, e) in acc]
            if (naive, e) in acc and strong:
                diffs.append(acc[(naive, e)] - min(strong))
        return max(diffs) if diffs else None

    return _max_over_eps(eps, at)


def single_step_beats_iterative(acc: Accuracies, eps: tuple[float, ...]) -> float | None:
    """Max over eps of PGD-CE minus FGSM accuracy: an iterative attack should not do worse."""

    def at(e):
        if ("pgd_ce", e) in acc and ("fgsm", e) in acc:
            return acc[("pgd_ce", e)] - acc[("fgsm", e)]
        return None

    return _max_over_eps(eps, at)


def blackbox_beats_whitebox(
    acc: Accuracies, eps: tuple[float, ...], black_box: tuple[str, ...]
) -> float | None:
    """Max over eps of the best white-box accuracy minus the best black-box one: an attack that
    sees no gradient should not do better."""

    def at(e):
        white = [acc[(n, e)] for n in WHITE_BOX if (n, e) in acc]
        black = [acc[(n, e)] for n in black_box if (n, e) in acc]
        return min(white) - min(black) if white and black else None

    return _max_over_eps(eps, at)


def eps_non_monotone(acc: Accuracies, eps: tuple[float, ...]) -> float | None:
    """The largest rise of any (monotone-checked) attack's accuracy as eps grows."""

    def rise(attack):
        seq = [acc[(attack, e)] for e in sorted(eps) if (attack, e) in acc]
        rises = [b - a for a, b in pairwise(seq)]
        return max(rises) if rises else None

    return max((v for a in MONOTONE_CHECKED if (v := rise(a)) is not None), default=None)


def diagnose(
    acc: Accuracies,
    zero_f32: float,
    zero_f64: float,
    ecfg: EvaluationSettings,
    transfer_is_black_box: bool = True,
    collapsed: bool = False,
) -> dict[str, tuple[float, bool]]:
    """{diagnostic: (value, flag)}; every flag's threshold is a field of `evaluation.masking`.

    `transfer_is_black_box` is False when the transfer surrogate is the model itself (a lambda = 0
    trial): its "transfer" attack is then white-box PGD on the margin. A `collapsed` model (see
    `evaluate.collapse_check`) keeps its flags but is never `masking_suspected`. A diagnostic
    whose attacks were not run is left out rather than guessed."""
    black_box = tuple(a for a in BLACK_BOX if a != "transfer" or transfer_is_black_box)
    bounded = tuple(ecfg.eps)
    values = {
        "zero_grad_float32": zero_f32,
        "zero_grad_float64": zero_f64,
        "stabilisation_gap": stabilisation_gap(acc, bounded),
        "single_step_beats_iterative": single_step_beats_iterative(acc, bounded),
        "blackbox_beats_whitebox": blackbox_beats_whitebox(acc, bounded, black_box),
        "eps_non_monotone": eps_non_monotone(acc, bounded),
        "unbounded_failure": acc.get((UNBOUNDED_ATTACK, ecfg.unbounded_eps)),
    }
    thresholds = {n: getattr(ecfg.masking, field) for n, field in MASKING_THRESHOLDS.items()}
    out = {name: (value, value > thresholds[name]) for name, value in values.items()
           if value is not None}  # fmt: skip
    suspected = any(flag for _, flag in out.values()) and not collapsed
    out["masking_suspected"] = (float(suspected), suspected)
    return out
