"""White-box gradient attacks: FGSM (naive and stabilised), PGD on cross-entropy or margin, and
PGD through a surrogate backward for saturated units (BPDA)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainables.activations import activation
from trainables.attacks.catalog import Attack, pgd_options, pgd_passes
from trainables.attacks.losses import LOSSES, input_gradient, project


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed step on float32 cross-entropy: the paper's naive baseline. A zero gradient
    gives sign(0) = 0, i.e. the input comes back unchanged."""
    grad = input_gradient(model, x, y, "ce")
    return project(x + eps * grad.sign(), x, eps)


def fgsm_stable(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM on the margin loss with the gradient taken in float64 (Brendel & Bethge's check);
    the adversarial is returned in float32 and scored on the float32 model."""
    model64 = copy.deepcopy(model).double()
    grad = input_gradient(model64, x.double(), y, "margin")
    return project(x + eps * grad.sign().float(), x, eps)


@torch.no_grad()
def _fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) != y


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A uniform draw from the eps-ball around x, clipped to [0, 1]: PGD's random start."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return project(x + (2 * u - 1) * eps, x, eps)


def signed_step(
    x_adv: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, alpha: float, eps: float
) -> torch.Tensor:
    """One ascent step of every PGD here: alpha * sign(gradient), back into the ball and box."""
    return project(x_adv.detach() + alpha * grad.sign(), x0, eps)


def pgd_train(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    steps: int,
    step_size: float | torch.Tensor,
    loss: str = "ce",
    generator: torch.Generator,
    start: str = "uniform",
) -> torch.Tensor:
    """PGD as adversarial training uses it (Madry et al. 2018; one step from a uniform start is
    FGSM-RS, Wong et al. 2020): every point attacked, `steps` signed steps, the last iterate.
    The same start, step and projection as the evaluation's `pgd`; no per-step host sync (no
    early exit, no bookkeeping). `target` is the labels, or the clean log-probabilities for
    TRADES' `kl` loss; `start="small_normal"` is TRADES' x + 0.001 N(0, 1)."""
    x = x.detach()
    if start == "uniform":
        x_adv = uniform_start(x, eps, generator)
    else:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = project(x + 0.001 * noise, x, eps)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(LOSSES[loss](model(x_adv), target).sum(), x_adv)
        x_adv = signed_step(x_adv, grad, x, step_size, eps)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    loss: str = "ce",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    seed: int = 0,
    early_exit: bool = True,
) -> torch.Tensor:
    """PGD with a uniform random start, `restarts` restarts and best-iterate tracking.

    Early exit: only points that are still classified correctly are attacked, and a point
    leaves the active set as soon as an iterate fools `model`; the rest keep their
    highest-loss iterate. `step_size` defaults to 2.5 * eps / steps. `early_exit=False` keeps
    stepping fooled points too (same result, more work: a benchmark). One forward pass per
    iterate both scores it and gives the gradient of the next step.
    """
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    generator = torch.Generator(device=x.device).manual_seed(seed)
    x_best = x.clone()
    best_loss = torch.full((len(x),), float("-inf"), device=x.device)
    done = _fooled(model, x, y)
    for _ in range(restarts):
        active = (~done).nonzero().squeeze(1)
        if len(active) == 0:
            break
        x0, y0 = x[active], y[active]
        x_adv = uniform_start(x0, eps, generator)
        for step in range(steps + 1):
            x_adv = x_adv.detach().requires_grad_(step < steps)
            losses = LOSSES[loss](logits := model(x_adv), y0)
            current, fooled = losses.detach(), logits.detach().argmax(1) != y0
            better = ~done[active] & ((current > best_loss[active]) | fooled)
            x_best[active[better]] = x_adv.detach()[better]  # a fooled point keeps its iterate
            best_loss[active[better]] = current[better]
            done[active[fooled]] = True
            if step == steps:
                break
            (grad,) = torch.autograd.grad(losses.sum(), x_adv)  # `sum`: per-example gradients
            keep = ~fooled if early_exit else torch.ones_like(fooled)
            active, x0, y0 = active[keep], x0[keep], y0[keep]
            if len(active) == 0:
                break
            x_adv = signed_step(x_adv.detach()[keep], grad[keep], x0, alpha, eps)
    return x_best


def pgd_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **opts) -> torch.Tensor:
    """PGD on float32 cross-entropy: the naive iterative attack."""
    return pgd(model, x, y, eps, loss="ce", **opts)


def pgd_margin(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **opts
) -> torch.Tensor:
    """PGD on the logit margin: immune to softmax saturation."""
    return pgd(model, x, y, eps, loss="margin", **opts)


class _SurrogateActivation(torch.autograd.Function):
    """Exact forward; backward through a smooth stand-in whose slope never vanishes (the
    activation table's `surrogate_slope`)."""

    @staticmethod
    def forward(ctx, h, kind: str, temperature: float):
        ctx.save_for_backward(h)
        ctx.kind, ctx.temperature = kind, temperature
        return activation(kind).forward(h)

    @staticmethod
    def backward(ctx, grad_out):
        (h,) = ctx.saved_tensors
        return grad_out * activation(ctx.kind).surrogate_slope(h, ctx.temperature), None, None


def pgd_bpda(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    temperature: float = 4.0,
    **opts,
) -> torch.Tensor:
    """PGD on the margin through a copy of the model whose hidden nonlinearities keep their exact
    forward but back-propagate a softened slope (temperature T): the adaptive attack against
    hidden-unit saturation. The surrogate's forward is exact, so scoring iterates on it is
    scoring them on the model."""
    if not hasattr(model, "act") or not hasattr(model, "activation"):
        raise TypeError("pgd_bpda needs a satsweep model (attributes `act` and `activation`)")
    surrogate = copy.deepcopy(model)
    kind = model.activation
    surrogate.act = lambda h: _SurrogateActivation.apply(h, kind, temperature)
    return pgd(surrogate, x, y, eps, loss="margin", **opts)


def _bpda_options(settings, eps: float) -> dict:
    return {**pgd_options(settings, eps), "temperature": settings.evaluation.bpda_temperature}


ENTRIES = (
    Attack("fgsm", fgsm, "cheap", "white"),
    Attack("fgsm_stable", fgsm_stable, "cheap", "white", strengthens="fgsm"),
    Attack("pgd_ce", pgd_ce, "cheap", "white", pgd_options, passes=pgd_passes),
    Attack(
        "pgd_margin",
        pgd_margin,
        "cheap",
        "white",
        pgd_options,
        strengthens="pgd_ce",
        passes=pgd_passes,
    ),
    Attack(
        "pgd_bpda",
        pgd_bpda,
        "cheap",
        "white",
        _bpda_options,
        strengthens="pgd_ce",
        passes=pgd_passes,
    ),
)
