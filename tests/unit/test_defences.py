"""Adversarial training as the method's claims: PGD training buys PGD robustness that plain
training does not, the training attack never leaves the eps-ball or [0, 1], TRADES trains, and
the catastrophic-overfitting watch fires on a collapse and stays quiet on a healthy run."""

import pytest
import torch

from trainables.attacks.gradient import pgd, pgd_ce
from trainables.defences import craft, pgd_accuracy
from trainables.evaluate import eval_indices
from trainables.settings import DefenceSettings
from trainables.train import _watch_overfitting, new_state, train

EPS = 0.2


def trained(cfg_factory, digits, defence: dict, epochs: int = 10, **point):
    cfg = cfg_factory(training={"epochs": epochs}, **point)
    cfg = cfg.model_copy(update={"defence": DefenceSettings(**defence)})
    state = new_state(cfg, digits, torch.device("cpu"))
    history = list(train(cfg, digits, state))
    return state, history, cfg


def held_out_pgd_acc(model, digits, eps=EPS):
    idx = eval_indices(len(digits.y_test), 300, 0)
    x, y = digits.x_test[idx], digits.y_test[idx]
    x_adv = pgd_ce(model, x, y, eps, steps=20)
    return (model(x_adv).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def plain_and_pgd(digits):
    from tests.conftest import make_cfg

    plain, _, _ = trained(make_cfg, digits, {"kind": "none"})
    robust, history, cfg = trained(make_cfg, digits, {"kind": "pgd", "eps": EPS, "steps": 7})
    return plain, robust, history, cfg


def test_pgd_training_raises_pgd_accuracy_well_above_plain_training(plain_and_pgd, digits):
    plain, robust, history, _ = plain_and_pgd
    plain_acc = held_out_pgd_acc(plain.model.eval(), digits)
    robust_acc = held_out_pgd_acc(robust.model.eval(), digits)
    assert robust_acc > plain_acc + 0.2, (plain_acc, robust_acc)
    assert history[-1]["clean_acc"] > 0.8
    assert (
        history[-1]["train/defence_eps"] == EPS and history[-1]["catastrophic_overfitting"] == 0.0
    )


@pytest.mark.parametrize("kind", ["fgsm_rs", "pgd", "trades"])
def test_training_attack_stays_in_the_ball_and_the_box(kind, plain_and_pgd, digits):
    model = plain_and_pgd[0].model
    model.train()
    x, y = digits.x_train[:64], digits.y_train[:64]
    d = DefenceSettings(kind=kind, eps=0.3, steps=5, step_size=0.2)  # big steps: must project
    x_adv = craft(model, x, y, d, 0.3, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()
    assert model.training  # crafted in eval mode, then put back


def test_trades_trains_to_a_robust_and_accurate_model(cfg_factory, digits, plain_and_pgd):
    state, history, _ = trained(cfg_factory, digits, {"kind": "trades", "eps": EPS, "steps": 5})
    assert history[-1]["clean_acc"] > 0.8
    assert held_out_pgd_acc(state.model.eval(), digits) > held_out_pgd_acc(
        plain_and_pgd[0].model, digits
    )


def test_the_overfitting_watch_fires_on_a_collapse_and_keeps_the_best_weights(
    plain_and_pgd, digits
):
    plain, robust, _, cfg = plain_and_pgd
    cfg = cfg.model_copy(update={"defence": cfg.defence.model_copy(update={"keep_best": True})})
    watch = digits.x_train[:100], digits.y_train[:100]
    state = new_state(cfg, digits, torch.device("cpu"))
    state.model.load_state_dict(robust.model.state_dict())
    healthy = _watch_overfitting(cfg, state, watch, epoch=1)
    assert healthy["catastrophic_overfitting"] == 0.0 and state.best_epoch == 1
    again = _watch_overfitting(cfg, state, watch, epoch=2)  # the same robust weights: quiet
    assert again["catastrophic_overfitting"] == 0.0
    state.model.load_state_dict(plain.model.state_dict())  # robustness gone within an epoch
    collapsed = _watch_overfitting(cfg, state, watch, epoch=3)
    assert collapsed["catastrophic_overfitting"] == 1.0
    assert collapsed["overfitting/train_pgd_acc"] < healthy["overfitting/train_pgd_acc"] - 0.2
    assert state.best_epoch in (1, 2) and state.best_weights is not None
    kept = {k: torch.equal(v, state.best_weights[k]) for k, v in robust.model.state_dict().items()}
    assert all(kept.values())


def test_single_step_training_that_never_became_robust_is_named(cfg_factory, digits, plain_and_pgd):
    """FGSM-RS at a budget too large for it: the watch's PGD accuracy stays near zero from the
    first epoch (no fall for the collapse check to see) while FGSM accuracy climbs."""
    _, history, _ = trained(cfg_factory, digits, {"kind": "fgsm_rs", "eps": 0.5}, epochs=8)
    assert not any(m["catastrophic_overfitting"] for m in history)
    assert max(m["overfitting/train_pgd_acc"] for m in history) <= 0.2
    assert history[-1]["overfitting/train_fgsm_acc"] > 0.3
    assert history[-1]["never_robust"] == 1.0
    assert "never_robust" not in history[0]  # judged once, at the last epoch
    _, robust_history, _ = plain_and_pgd[1:]
    assert robust_history[-1]["never_robust"] == 0.0  # PGD training did become robust


def test_pgd_accuracy_is_the_evaluation_pgd(plain_and_pgd, digits):
    model = plain_and_pgd[1].model.eval()
    x, y = digits.x_test[:100], digits.y_test[:100]
    x_adv = pgd_ce(model, x, y, EPS, steps=10, step_size=2.5 * EPS / 10, seed=0)
    expected = (model(x_adv).argmax(1) == y).float().mean().item()
    assert pgd_accuracy(model, x, y, EPS, 10, seed=0) == expected


def test_the_early_stopping_signal_is_pgd_ce_and_margin_per_example(plain_and_pgd, digits):
    """With CE alone it is the overfitting watch's PGD-CE; adding the margin loss can only
    lower it, and it equals the per-example worst of the two attacks run on their own."""
    _, robust, _, _ = plain_and_pgd
    model = robust.model
    idx = eval_indices(len(digits.y_test), 100, 0)
    x, y = digits.x_test[idx], digits.y_test[idx]
    ce_only = pgd_accuracy(model, x, y, EPS, 10, 0)
    both = pgd_accuracy(model, x, y, EPS, 10, 0, ("ce", "margin"))
    step = 2.5 * EPS / 10
    survives = [
        model(pgd(model, x, y, EPS, loss=loss, steps=10, step_size=step, seed=0)).argmax(1) == y
        for loss in ("ce", "margin")
    ]
    assert ce_only == survives[0].float().mean().item()
    assert both == (survives[0] & survives[1]).float().mean().item() <= ce_only
