"""Does our adversarial training loop cost more than a plain PGD-training loop?

`pgd_training`: `trainables.train.train_one_epoch` with the `pgd` defence (eps 0.1, 10 steps
of 0.025, lambda 0) against a PGD-training epoch written out here by hand (Madry et al.: random
start, signed steps, projection, train on the last iterate), same model, data, batch size and
batch order, all in one process, interleaved. Target ratio >= 0.95.
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F

from benchmarks.common import median_seconds, result
from benchmarks.train_loop import MNIST10K, _config
from trainables.data import load_dataset
from trainables.settings import DefenceSettings
from trainables.train import new_state, pick_device, train_one_epoch

EPS, STEPS, ALPHA = 0.1, 10, 0.025


def _bare_pgd_epoch(model, opt, x, y, seed: int, batch: int) -> None:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 100_003 + 1))
    order = order.to(x.device)
    for start in range(0, len(y), batch):
        idx = order[start : start + batch]
        xb, yb = x[idx], y[idx]
        model.eval()
        x_adv = (xb + (2 * torch.rand_like(xb) - 1) * EPS).clamp(0, 1)
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), yb, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.minimum(torch.maximum(x_adv.detach() + ALPHA * grad.sign(), xb - EPS),
                                  xb + EPS).clamp(0, 1)  # fmt: skip
        model.train()
        loss = F.cross_entropy(model(x_adv), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run(repeats: int = 5) -> list[dict]:
    dataset, data_dir = ("mnist", str(MNIST10K)) if MNIST10K.exists() else ("digits", None)
    cfg = _config(dataset, data_dir, activation="relu", lam=0.0)
    defence = DefenceSettings(kind="pgd", eps=EPS, steps=STEPS, step_size=ALPHA)
    cfg = cfg.model_copy(update={"defence": defence})
    device = pick_device()
    data = load_dataset(dataset, data_dir, False).to(device)
    ours = new_state(cfg, data, device)
    bare = copy.deepcopy(ours.model)
    opt = torch.optim.Adam(bare.parameters(), lr=cfg.training.optimizer.lr)
    x, y, batch = data.x_train, data.y_train, cfg.training.batch_size
    fns = {
        "ours": lambda: train_one_epoch(cfg, data, ours, epoch=1),
        "bare": lambda: _bare_pgd_epoch(bare, opt, x, y, cfg.seed, batch),
    }
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, as in train_loop
        for name, fn in fns.items():
            seconds[name].append(median_seconds(fn, 1))
    rate = {k: len(y) / statistics.median(v) for k, v in seconds.items()}
    tag = f"{dataset} mlp-200x200 relu, PGD-{STEPS} eps {EPS:g}, batch {batch}"
    return [result(f"pgd_training vs bare PGD loop ({tag})", rate["ours"], "samples/s",
                   rate["bare"])]  # fmt: skip
