"""The planned audit is as strong as the one it replaced, on real trained models.

The old audit ran Square and AutoAttack `standard` (pyautoattack's `run_standard_evaluation`)
on every audit point; the new one reads what the cheap tier already knows and attacks only the
points still standing (`trainables.audit`). On a PGD-trained model (robust) and a saturated,
gradient-masked one, on the same points and seeds: the new per-example worst case is never
above the old one's at any eps, and the new AutoAttack figure lies within the run-to-run spread
of the original's random starts (seeds 0-2) around their median. The spread is printed so a
failing run says how far off it was.
"""

import statistics

import pytest
import torch

from tests.conftest import at_autoattack_settings, make_cfg
from trainables.attacks.autoattack import autoattack_standard
from trainables.audit import audit_attacks
from trainables.evaluate import (
    correct,
    evaluate_robustness,
    merge_audit,
    run_attacks,
    share,
    stored_results,
    worst_case,
)
from trainables.evaluate import per_example_record as record_of
from trainables.settings import DefenceSettings
from trainables.train import new_state, train

EPS = (0.1, 0.2)
SPREAD_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def robust_net(digits):
    cfg = make_cfg(training={"epochs": 10})
    cfg = cfg.model_copy(update={"defence": DefenceSettings(kind="pgd", eps=0.2, steps=7)})
    state = new_state(cfg, digits, torch.device("cpu"))
    for _ in train(cfg, digits, state):
        pass
    return state.model.eval()


@pytest.fixture(scope="module", params=["robust", "masked"])
def held_model(request, robust_net, saturated_net):
    return request.param, robust_net if request.param == "robust" else saturated_net


def audits(model, x, y):
    """(cheap tier, new audit's results, old audit's results) on the same points."""
    cfg = at_autoattack_settings(eps=list(EPS), attack_batch_size=256)
    _, _, cheap = evaluate_robustness(model, x, y, cfg, None)
    clean = correct(model, x, y)
    stored = stored_results(record_of(torch.arange(len(y)), cheap, clean, cfg.evaluation.seed))
    new = audit_attacks(model, x, y, stored, cfg).results
    old = run_attacks(model, x, y, ("square", "autoattack"), EPS, cfg)
    return stored, new, old


def test_the_new_audit_is_never_weaker_and_its_autoattack_figure_is_the_originals(
    held_model, eval_points
):
    kind, model = held_model
    x, y = eval_points
    stored, new, old = audits(model, x, y)
    merged_new, merged_old = merge_audit(stored, new), merge_audit(stored, old)
    for eps in EPS:
        worst_new = share(worst_case(merged_new, eps))
        worst_old = share(worst_case(merged_old, eps))
        assert worst_new <= worst_old, (kind, eps, worst_new, worst_old)
    clean = correct(model, x, y)
    original = [
        share(clean & correct(model, autoattack_standard(model, x, y, EPS[0], seed=s), y))
        for s in SPREAD_SEEDS
    ]
    spread = max(original) - min(original)
    ours = next(r.accuracy for r in new if r.attack == "autoattack" and r.eps == EPS[0])
    print(f"{kind}: AutoAttack ours {ours:.3f}, original {original} (spread {spread:.3f})")
    assert ours == original[0]  # seed 0, as ours: the same stages on the same batches
    assert abs(ours - statistics.median(original)) <= max(spread, 2 / len(y))
