"""Training-time defences: the loss one batch is trained on under `none`, `fgsm_rs`, `pgd` or
`trades` (see `settings.DefenceSettings`), and the catastrophic-overfitting watch.

The training attack is the evaluation's PGD code (`attacks.gradient.pgd_train`), crafted with
the model in eval mode, inside the eps-ball and [0, 1]. No Ray, no MLflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks.gradient import fgsm, pgd, pgd_train
from trainables.penalty import saturation_penalty
from trainables.settings import DefenceSettings, TrialSettings


def eps_in_force(d: DefenceSettings, progress: float) -> float:
    """The defence's eps after `progress` epochs: ramped linearly over `warmup_epochs`."""
    if d.warmup_epochs == 0:
        return d.eps
    return d.eps * min(1.0, progress / d.warmup_epochs)


def craft(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    d: DefenceSettings,
    eps: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The batch's training adversarial, crafted in eval mode (batch statistics untouched)."""
    was_training = model.training
    model.eval()
    alpha = d.alpha * eps / d.eps  # the step shrinks with eps during a warm-up
    if d.kind == "trades":
        with torch.no_grad():
            target = F.log_softmax(model(x), dim=1)
        x_adv = pgd_train(model, x, target, eps, steps=d.steps, step_size=alpha, loss="kl",
                          generator=generator, start="small_normal")  # fmt: skip
    else:
        steps = 1 if d.kind == "fgsm_rs" else d.steps
        x_adv = pgd_train(model, x, y, eps, steps=steps, step_size=alpha, generator=generator)
    model.train(was_training)
    return x_adv


def training_terms(
    cfg: TrialSettings,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data loss, saturation penalty, logits of the inputs trained on) for one batch; the
    trainer adds lambda * penalty. Under `none`, or while a warm-up holds eps at 0, the batch is
    the clean one."""
    d, reduction = cfg.defence, cfg.training.penalty.reduction
    if d.kind == "none" or eps == 0:
        logits, pre = model.forward_with_preactivations(x)
        return (
            F.cross_entropy(logits, y),
            saturation_penalty(pre, cfg.activation, reduction),
            logits,
        )
    x_adv = craft(model, x, y, d, eps, generator)
    logits_adv, pre_adv = model.forward_with_preactivations(x_adv)
    if d.kind == "trades":
        logits, pre_clean = model.forward_with_preactivations(x)
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.log_softmax(logits, 1), reduction="batchmean",
                      log_target=True)  # fmt: skip
        data = F.cross_entropy(logits, y) + d.beta * kl
        shown = logits
    else:
        data = F.cross_entropy(logits_adv, y)
        pre_clean = model.forward_with_preactivations(x)[1] if d.penalty_on == "clean" else None
        shown = logits_adv
    pre = pre_adv if d.penalty_on == "adversarial" else pre_clean
    return data, saturation_penalty(pre, cfg.activation, reduction), shown


def pgd_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    seed: int,
    losses: tuple[str, ...] = ("ce",),
) -> float:
    """PGD accuracy on a small fixed batch, per example the worst over `losses`: the cheap
    per-epoch robustness signal. With PGD-CE on training points its collapse marks catastrophic
    overfitting; with PGD-CE and PGD-margin on evaluation points it is what ASHA ranks trials by.
    Same PGD as the evaluation, step 2.5 eps / steps."""
    was_training = model.training
    model.eval()
    robust = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for loss in losses:
        x_adv = pgd(model, x, y, eps, loss=loss, steps=steps, step_size=2.5 * eps / steps,
                    seed=seed)  # fmt: skip
        with torch.no_grad():
            robust &= model(x_adv).argmax(1) == y
    model.train(was_training)
    return robust.float().mean().item()


def fgsm_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Single-step (FGSM) accuracy on the same fixed batch: beside the watch's PGD accuracy it
    tells a defence that never became robust (high) from one that cannot fit at all (low)."""
    was_training = model.training
    model.eval()
    x_adv = fgsm(model, x, y, eps)
    with torch.no_grad():
        accuracy = (model(x_adv).argmax(1) == y).float().mean().item()
    model.train(was_training)
    return accuracy


def never_robust(best_pgd: float, final_fgsm: float, drop: float) -> bool:
    """Catastrophic overfitting from the first epoch: the watch's PGD accuracy never rose above
    `drop` (so no fall of more than `drop` could ever be seen), while single-step accuracy ended
    more than `drop` above it: the model learned to beat the training attack, not to be robust."""
    return best_pgd <= drop and final_fgsm > best_pgd + drop


def overfitting_note(epoch: int, accuracy: float, best: float, best_epoch: int) -> str:
    return (f"catastrophic overfitting at epoch {epoch}: training PGD accuracy {accuracy:.2f}, "
            f"down from {best:.2f} at epoch {best_epoch}")  # fmt: skip


def never_robust_note(best: float, single_step: float) -> str:
    return (f"never robust: training PGD accuracy at most {best:.2f} in every epoch, while "
            f"single-step (FGSM) accuracy ended at {single_step:.2f}")  # fmt: skip
