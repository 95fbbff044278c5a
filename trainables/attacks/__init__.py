"""L-infinity attacks on [0, 1] inputs, one calling convention:

    attack(model, x, y, eps, **opts) -> x_adv      (float32, same shape as x)

Every output stays inside the eps-ball around x and inside [0, 1]; the evaluator checks this.
No fp16, AMP or TF32 anywhere. FGSM, PGD, the margin loss, the float64 and surrogate-gradient
(BPDA) variants, noise and transfer are ours; APGD-CE, APGD-T, Square and AutoAttack come from
the original AutoAttack code (`pyautoattack`).
"""

from trainables.attacks.autoattack import apgd_ce, apgd_t, autoattack_standard, square
from trainables.attacks.blackbox import noise, transfer
from trainables.attacks.gradient import fgsm, fgsm_stable, pgd_bpda, pgd_ce, pgd_margin

# The cheap tier: run on every trial. `transfer` needs a surrogate model (see evaluate.py).
CHEAP_ATTACKS = {
    "fgsm": fgsm,
    "fgsm_stable": fgsm_stable,
    "pgd_ce": pgd_ce,
    "pgd_margin": pgd_margin,
    "pgd_bpda": pgd_bpda,
    "apgd_ce": apgd_ce,
    "apgd_t": apgd_t,
    "transfer": transfer,
    "noise": noise,
}
# The audit tier: run after the grid on the top trials and every flagged one.
AUDIT_ATTACKS = {"square": square, "autoattack": autoattack_standard}

__all__ = [
    "AUDIT_ATTACKS", "CHEAP_ATTACKS", "apgd_ce", "apgd_t", "autoattack_standard", "fgsm",
    "fgsm_stable", "noise", "pgd_bpda", "pgd_ce", "pgd_margin", "square", "transfer",
]  # fmt: skip
