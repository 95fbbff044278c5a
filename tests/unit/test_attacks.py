"""The attack suite and masking flags, as the method's claims: FGSM is optimal on a linear model,
PGD beats FGSM on a normal net, FGSM cannot move a saturated sigmoid net while stabilised and
BPDA attacks can, the flags fire there and stay off on a normal net, and no attack ever leaves
the eps-ball or [0, 1]."""

import pytest
import torch
from torch import nn

from tests.conftest import make_cfg, trained_net
from trainables.attacks import (
    ATTACKS,
    fgsm,
    fgsm_stable,
    pgd_bpda,
    pgd_ce,
    pgd_margin,
)
from trainables.attacks.losses import margin
from trainables.evaluate import (
    AttackBoundsError,
    AttackResult,
    attack_options,
    check_bounds,
    collapse_check,
    correct,
    eval_indices,
    evaluate_robustness,
    robustness_metrics,
    worst_case,
)
from trainables.masking import zero_gradient_fraction


def accuracy(model, x_adv, x, y) -> float:
    return (correct(model, x, y) & correct(model, x_adv, y)).float().mean().item()


def test_margin_loss_by_hand():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    assert margin(logits, torch.tensor([1, 0])).tolist() == [2.0 - 5.0, 3.0 - 0.0]


def test_fgsm_on_a_linear_model_is_the_closed_form_optimum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.full((1, 1, 4, 4), 0.5)  # far enough from 0 and 1 that clipping never binds
    y = torch.tensor([0])
    w = model[1].weight.detach()
    # two classes: maximising CE = maximising z_1 - z_0 = (w_1 - w_0) . x + const over the
    # L-inf ball, whose maximiser is x + eps * sign(w_1 - w_0)
    optimum = x + 0.1 * (w[1] - w[0]).sign().reshape(1, 1, 4, 4)
    x_adv = fgsm(model, x, y, 0.1)
    assert torch.allclose(x_adv, optimum, atol=1e-7)
    gain = margin(model(x_adv), y) - margin(model(x), y)
    assert gain.item() == pytest.approx(0.1 * (w[1] - w[0]).abs().sum().item(), rel=1e-4)


def test_pgd_is_at_least_as_strong_as_fgsm_on_a_normally_trained_net(relu_net, eval_points):
    x, y = eval_points
    for eps in (0.05, 0.1, 0.2):
        assert accuracy(relu_net, pgd_ce(relu_net, x, y, eps), x, y) <= accuracy(
            relu_net, fgsm(relu_net, x, y, eps), x, y
        )


def test_fgsm_cannot_move_a_saturated_sigmoid_net_but_bpda_can(saturated_net, eval_points):
    x, y = eval_points
    # independently of our helpers: which points have an exactly-zero float32 input gradient?
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(saturated_net(xg), y, reduction="sum").backward()
    flat = (xg.grad.flatten(1) == 0).all(1)
    assert flat.float().mean() > 0.5
    x_fgsm = fgsm(saturated_net, x, y, 0.1)
    assert torch.equal(x_fgsm[flat], x[flat])  # sign(0) = 0: nothing moves
    naive = accuracy(saturated_net, x_fgsm, x, y)
    assert accuracy(saturated_net, fgsm_stable(saturated_net, x, y, 0.1), x, y) < naive
    assert accuracy(saturated_net, pgd_bpda(saturated_net, x, y, 0.1), x, y) < naive - 0.2
    assert zero_gradient_fraction(saturated_net, x, y, torch.float64) < 0.05


def test_masking_flags_fire_on_the_saturated_net(saturated_net, relu_net, eval_points):
    x, y = eval_points
    _, diagnostics, _ = evaluate_robustness(saturated_net, x, y, make_cfg(), surrogate=relu_net)
    assert diagnostics["zero_grad_float32"][1] and diagnostics["stabilisation_gap"][1]
    assert diagnostics["masking_suspected"] == (1.0, True)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_masking_flags_stay_off_on_a_normally_trained_net(digits, eval_points, activation):
    x, y = eval_points
    net = trained_net(digits, activation)
    metrics, diagnostics, _ = evaluate_robustness(net, x, y, make_cfg(), surrogate=net)
    assert {name for name, (_, flag) in diagnostics.items() if flag} == set()
    assert metrics["masking/masking_suspected"] == 0.0


def test_unbounded_budget_drives_accuracy_to_zero(relu_net, eval_points):
    x, y = eval_points
    assert accuracy(relu_net, pgd_margin(relu_net, x, y, 1.0), x, y) == 0.0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_no_attack_leaves_the_eps_ball_or_the_unit_box(name, relu_net, eval_points):
    x, y = eval_points[0][:40], eval_points[1][:40]
    eps = 0.1
    settings = make_cfg(audit={"square_queries": 200})
    x_adv = ATTACKS[name].run(relu_net, x, y, eps, **attack_options(name, eps, settings, relu_net))
    assert x_adv.dtype == torch.float32 and x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_an_attack_output_outside_the_ball_is_refused():
    x = torch.full((2, 1, 2, 2), 0.5)
    with pytest.raises(AttackBoundsError):
        check_bounds("bad", x + 0.2, x, 0.1)
    with pytest.raises(AttackBoundsError):
        check_bounds("bad", x * 3, x, 2.0)  # inside the ball, outside [0, 1]


def test_worst_case_is_per_example_not_a_minimum_of_accuracies():
    half_a = torch.tensor([True, True, False, False])
    half_b = torch.tensor([False, False, True, True])
    results = [AttackResult("a", 0.1, half_a, 0.0), AttackResult("b", 0.1, half_b, 0.0)]
    assert worst_case(results, 0.1).tolist() == [False] * 4
    metrics = robustness_metrics(results, selection=torch.tensor([True, False, True, False]))
    assert metrics["robust_acc/a/eps_0.1"] == 0.5 and metrics["worst_case_acc/eps_0.1"] == 0.0
    assert metrics["points/eval"] == 4


def test_eval_subset_is_fixed_and_nested_in_larger_audit_sets():
    small, again, large = (
        eval_indices(450, 100, 0),
        eval_indices(450, 100, 0),
        eval_indices(450, 300, 0),
    )
    assert torch.equal(small, again)
    assert set(small.tolist()) <= set(large.tolist())
    assert len(eval_indices(450, 1000, 0)) == 450


def test_early_exit_saves_work_without_changing_the_result(relu_net, eval_points):
    x, y = eval_points
    fast = accuracy(relu_net, pgd_ce(relu_net, x, y, 0.1, steps=20), x, y)
    slow = accuracy(relu_net, pgd_ce(relu_net, x, y, 0.1, steps=20, early_exit=False), x, y)
    assert fast == pytest.approx(slow, abs=0.01)


def test_stabilisation_gap_catches_naive_attacks_that_only_adaptive_ones_expose():
    # the saturated-sigmoid pattern of docs/method.md, section 4: FGSM in float32 and float64
    # agree, no gradient is exactly zero, yet APGD leaves far fewer points than PGD-CE
    from trainables.masking import diagnose

    saturated = {("fgsm", 0.1): 0.55, ("fgsm_stable", 0.1): 0.55, ("pgd_ce", 0.1): 0.18,
                 ("pgd_margin", 0.1): 0.27, ("apgd_t", 0.1): 0.07}  # fmt: skip
    normal = {("fgsm", 0.1): 0.13, ("fgsm_stable", 0.1): 0.06, ("pgd_ce", 0.1): 0.010,
              ("pgd_margin", 0.1): 0.012, ("apgd_t", 0.1): 0.003}  # fmt: skip
    ecfg = make_cfg(evaluation={"eps": [0.1]}).evaluation
    assert diagnose(saturated, 0.0, 0.0, ecfg)["stabilisation_gap"] == (pytest.approx(0.11), True)
    assert diagnose(normal, 0.0, 0.0, ecfg)["stabilisation_gap"][1] is False


class ConstantNet(nn.Module):
    """Predicts class 3 whatever the input: a collapsed model."""

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 3] = 5.0
        return logits + 0 * x.flatten(1).sum(1, keepdim=True)


def test_a_constant_classifier_is_collapsed_not_masked(eval_points, relu_net):
    x, y = eval_points
    settings = make_cfg()
    share, collapsed = collapse_check(ConstantNet(), x, y, settings)
    assert share == 1.0 and collapsed
    assert collapse_check(relu_net, x, y, settings)[1] is False
    acc = {("fgsm", 0.1): 0.1, ("pgd_ce", 0.1): 0.1, ("pgd_ce", 1.0): 0.1}  # nothing moves it
    from trainables.masking import diagnose

    raised = diagnose(acc, 1.0, 1.0, settings.evaluation, collapsed=True)
    assert raised["unbounded_failure"][1] and raised["masking_suspected"] == (0.0, False)
    assert diagnose(acc, 1.0, 1.0, settings.evaluation)["masking_suspected"][1] is True
