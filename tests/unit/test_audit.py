"""The audit's plan, point by point: AutoAttack's staged loop is the original's when nothing is
known and when the cheap tier's APGD stages are read (bit for bit), a known stage is read
instead of run, an eps with nothing standing is skipped, stages are shared only at AutoAttack's
settings, Square's own figure takes AutoAttack's Square stage, and at the unbounded eps only
PGD-CE runs on every point."""

import pytest
import torch

from tests.conftest import at_autoattack_settings, make_cfg
from trainables.attacks.autoattack import autoattack_stages, autoattack_standard
from trainables.audit import audit_attacks, evaluation_cost, reusable_stages
from trainables.evaluate import AttackResult, correct, evaluate_robustness, run_attacks


@pytest.fixture(scope="module")
def points(eval_points):
    x, y = eval_points
    return x[:60], y[:60]


def test_staged_autoattack_is_the_original_when_nothing_is_known(relu_net, points):
    x, y = points
    ours = autoattack_stages(relu_net, x, y, 0.1, seed=0, batch_size=16)
    x_adv = autoattack_standard(relu_net, x, y, 0.1, seed=0, batch_size=16)
    original = correct(relu_net, x, y) & correct(relu_net, x_adv, y)
    assert torch.equal(ours.robust, original)  # same objects, order and batches: bit for bit
    assert set(ours.seconds) <= {"apgd_ce", "apgd_t", "fab_t", "square"}
    assert "apgd_ce" in ours.seconds


def test_reading_the_cheap_tiers_apgd_stages_is_the_original_bit_for_bit(saturated_net, points):
    """On the masked model, where every random start matters: the cheap tier runs APGD-CE and
    APGD-T as AutoAttack's first two stages (same points, same batches), so reading them changes
    nothing, in batches smaller than the points too."""
    x, y = points
    cfg = at_autoattack_settings(eps=[0.1], attack_batch_size=16)
    _, _, cheap = evaluate_robustness(saturated_net, x, y, cfg, None)
    known = {r.attack: r.robust for r in cheap if r.autoattack_stage}
    assert set(known) == {"apgd_ce", "apgd_t"}
    ours = autoattack_stages(saturated_net, x, y, 0.1, seed=0, batch_size=16, known=known)
    x_adv = autoattack_standard(saturated_net, x, y, 0.1, seed=0, batch_size=16)
    original = correct(saturated_net, x, y) & correct(saturated_net, x_adv, y)
    assert torch.equal(ours.robust, original)
    assert not {"apgd_ce", "apgd_t"} & set(ours.seconds)


def test_a_known_stage_is_read_not_run(relu_net, points):
    x, y = points
    planted = torch.ones(len(y), dtype=torch.bool)
    planted[:10] = False  # this "earlier run" broke the first ten points
    run = autoattack_stages(relu_net, x, y, 0.1, known={"apgd_ce": planted})
    assert "apgd_ce" not in run.seconds and "apgd_ce" not in run.attacked
    assert not run.robust[:10].any()


def test_stages_are_reused_only_at_autoattacks_settings():
    assert reusable_stages(at_autoattack_settings()) == ("apgd_ce", "apgd_t", "square")
    fewer = make_cfg(evaluation={"apgd_iterations": 50}, audit={"square_queries": 1000})
    assert reusable_stages(fewer) == ()


def test_an_eps_with_nothing_standing_is_skipped(relu_net, points):
    x, y = points
    cfg = at_autoattack_settings(eps=[0.1, 0.3])
    nothing = AttackResult("pgd_ce", 0.3, torch.zeros(len(y), dtype=torch.bool), 0.0)
    some = AttackResult("pgd_ce", 0.1, correct(relu_net, x, y).cpu(), 0.0)
    outcome = audit_attacks(relu_net, x, y, [some, nothing], cfg)
    assert outcome.skipped_eps == [0.3]
    assert {r.eps for r in outcome.results} == {0.1}
    assert outcome.reused[0.1] == []  # the planted results hold no AutoAttack stage to read


def test_the_audit_reads_the_cheap_tiers_apgd_and_its_own_square(relu_net, points):
    x, y = points
    cfg = at_autoattack_settings(eps=[0.1])
    _, _, cheap = evaluate_robustness(relu_net, x, y, cfg, None)
    outcome = audit_attacks(relu_net, x, y, [r for r in cheap if r.eps == 0.1], cfg)
    assert outcome.reused[0.1] == ["apgd_ce", "apgd_t"]
    assert set(outcome.stage_seconds) <= {"fab_t", "square"}  # the stages left to run
    by_name = {r.attack: r.robust for r in outcome.results}
    # Square's own figure is AutoAttack's Square stage where that ran: a point AutoAttack left
    # standing survived that stage, so it stands in Square's figure too
    assert not (by_name["autoattack"] & ~by_name["square"]).any()
    assert not (by_name["square"] & ~correct(relu_net, x, y)).any()  # only clean points stand


def test_at_the_unbounded_eps_only_pgd_ce_runs_on_every_point(relu_net, points):
    x, y = points
    cfg = make_cfg(evaluation={"eps": [0.1]})
    results = run_attacks(relu_net, x, y, ("fgsm", "pgd_ce"), (0.1, 1.0), cfg, own=("pgd_ce",))
    at_box = {r.attack: r for r in results if r.eps == 1.0}
    assert at_box["pgd_ce"].own and not at_box["fgsm"].own
    assert not at_box["pgd_ce"].robust.any()  # PGD clears the box ...
    assert at_box["fgsm"].seconds == 0.0  # ... so FGSM had no point left to attack
    assert all(r.own for r in results if r.eps == 0.1)


def test_dry_run_cost_counts_only_the_stages_that_run():
    shared = at_autoattack_settings(eps=[0.1, 0.2])
    cost = evaluation_cost(shared, 100)
    assert cost.audit == {"square": 5000 * 100 * 2, "autoattack/fab_t": 900 * 100 * 2}
    fewer = make_cfg(evaluation={"eps": [0.1], "apgd_iterations": 50})
    assert set(evaluation_cost(fewer, 100).audit) == {
        "square", "autoattack/apgd_ce", "autoattack/apgd_t", "autoattack/fab_t",
        "autoattack/square",
    }  # fmt: skip
