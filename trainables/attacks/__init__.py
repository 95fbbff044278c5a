"""L-infinity attacks on [0, 1] inputs, one calling convention:

    attack(model, x, y, eps, **opts) -> x_adv      (float32, same shape as x)

Every output stays inside the eps-ball around x and inside [0, 1]; the evaluator checks this.
No fp16, AMP or TF32 anywhere. FGSM, PGD, the margin loss, the float64 and surrogate-gradient
(BPDA) variants, noise and transfer are ours; APGD-CE, APGD-T, Square and AutoAttack come from
the original AutoAttack code (`pyautoattack`).

`ATTACKS` is the catalog (see `catalog.py`): each module lists its attacks next to their code,
so adding an attack is one function and one entry, plus its test.
"""

from trainables import names
from trainables.attacks import autoattack, blackbox, gradient
from trainables.attacks.autoattack import apgd_ce, apgd_t, autoattack_standard, square
from trainables.attacks.blackbox import noise, transfer
from trainables.attacks.catalog import Attack
from trainables.attacks.gradient import fgsm, fgsm_stable, pgd_bpda, pgd_ce, pgd_margin
from trainables.names import check_registry

# the order of the modules is the default order of evaluation
ATTACKS: dict[str, Attack] = {
    a.name: a for module in (gradient, autoattack, blackbox) for a in module.ENTRIES
}
CHEAP_ATTACKS = tuple(n for n, a in ATTACKS.items() if a.tier == "cheap")
AUDIT_ATTACKS = tuple(n for n, a in ATTACKS.items() if a.tier == "audit")
check_registry("cheap attack", CHEAP_ATTACKS, names.CHEAP_ATTACKS)
check_registry("audit attack", AUDIT_ATTACKS, names.AUDIT_ATTACKS)

__all__ = [
    "ATTACKS", "AUDIT_ATTACKS", "CHEAP_ATTACKS", "Attack", "apgd_ce", "apgd_t",
    "autoattack_standard", "fgsm", "fgsm_stable", "noise", "pgd_bpda", "pgd_ce", "pgd_margin",
    "square", "transfer",
]  # fmt: skip
