"""The names a spec may choose from: activations, attacks by tier, datasets.

They live apart from the code they name so that reading and checking a spec (`satsweep run
--dry-run`, every refused spec) needs neither torch nor the attack library: the command answers
in about a second instead of five. Each registry (`activations.ACTIVATIONS`, `attacks.ATTACKS`,
`data.DATASETS`) checks at import that it holds exactly these names, in this order, so the two
cannot drift apart unnoticed.
"""

ACTIVATION_NAMES = ("relu", "sigmoid", "tanh")
# the order is the default order of evaluation
CHEAP_ATTACKS = (
    "fgsm", "fgsm_stable", "pgd_ce", "pgd_margin", "pgd_bpda", "apgd_ce", "apgd_t", "transfer",
    "noise",
)  # fmt: skip
AUDIT_ATTACKS = ("square", "autoattack")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")


def check_registry(kind: str, registered: tuple[str, ...], declared: tuple[str, ...]) -> None:
    """Fail at import, naming both lists, when a registry and its declared names differ."""
    if registered != declared:
        raise ImportError(
            f"the {kind} registry holds {registered} but trainables/names.py declares {declared}: "
            "add the new name there too, in the same order"
        )
