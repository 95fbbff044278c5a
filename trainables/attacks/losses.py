"""Per-example attack losses and the projection every attack ends with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example softmax cross-entropy: the naive loss, whose gradient vanishes once the
    softmax rounds to exactly 1 (a logit margin of ~17 in float32)."""
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y per example (CW/DLR-style): positive once misclassified, and its
    gradient does not pass through the softmax, so it does not vanish with confidence."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    return others.max(1).values - true


def kl(logits: torch.Tensor, clean_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p_clean || p_adv), TRADES' inner objective; the "labels" are the clean
    log-probabilities (detached)."""
    log_p = F.log_softmax(logits, dim=1)
    return F.kl_div(log_p, clean_log_probs, reduction="none", log_target=True).sum(1)


LOSSES = {"ce": cross_entropy, "margin": margin, "kl": kl}


def project(x_adv: torch.Tensor, x: torch.Tensor, eps) -> torch.Tensor:
    """Back into the eps-ball around x, then into [0, 1] (eps: a float or a 0-d tensor)."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def input_gradient(model, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Gradient of the per-example loss, reduced with `sum` (so each example's gradient is its
    own, not scaled by the batch size), with respect to the input, in x's dtype."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(LOSSES[loss](model(x), y).sum(), x)
    return grad
