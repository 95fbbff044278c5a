"""Does our training loop cost more than a bare PyTorch loop? All in one process, on the same
model, data, batch size and batch order:

- `train_loop`: `trainables.train.train_one_epoch` against a hand-written loop that trains the
  same objective (cross-entropy + lambda * penalty, written inline): the loop's own overhead
  (schedule, running statistics). Target ratio >= 0.9.
- `train_loop+eval`: the same, with the per-epoch evaluation and saturation statistics included.
- `penalty_cost`: the hand-written penalised loop against a hand-written cross-entropy-only loop:
  what the method itself costs, for information.
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F

from benchmarks.common import median_seconds, result
from trainables.data import MNIST_ROOT_ENV, default_mnist_root, load_dataset
from trainables.settings import ArchitectureSettings, SweepSettings, TrialSettings
from trainables.train import clean_metrics, new_state, pick_device, train_one_epoch

MNIST10K = default_mnist_root()  # $SATSWEEP_MNIST_ROOT, else data/mnist in the checkout


def _config(dataset: str, data_dir: str | None, **point) -> TrialSettings:
    """The paper's model and recipe (docs/method.md, section 4), penalty switched on."""
    shared = SweepSettings.model_validate({
        "dataset": {"name": dataset, "data_dir": data_dir},
        "training": {"epochs": 1, "batch_size": 100, "optimizer": {"lr": 1.0e-3},
                     "penalty": {"schedule": "constant", "warmup_epochs": 0}},
    })  # fmt: skip
    point = {"activation": "sigmoid", "lam": 30.0, "seed": 0} | point
    arch = ArchitectureSettings(kind="mlp", hidden=[200, 200])
    return TrialSettings.at(shared, arch=arch, **point)


def _bare_epoch(model, opt, x, y, cfg: TrialSettings, penalised: bool) -> None:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + 1))
    order = order.to(x.device)
    batch = cfg.training.batch_size
    for start in range(0, len(y), batch):
        idx = order[start : start + batch]
        logits, preacts = model.forward_with_preactivations(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        if penalised:  # sigmoid psi, mean over units, written out by hand
            loss = loss + cfg.lam * sum(
                (torch.sigmoid(h) * (1 - torch.sigmoid(h))).mean() for h in preacts
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _samples_per_second(fns: dict, n: int, repeats: int) -> dict[str, float]:
    """Median samples/s per function; repeats interleave the functions so that drift in the
    machine's load hits all of them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(median_seconds(fn, 1))
    return {name: n / statistics.median(s) for name, s in seconds.items()}


def run(repeats: int = 9) -> list[dict]:
    cfg = _config("mnist", str(MNIST10K)) if MNIST10K.exists() else _config("digits", None)
    if not MNIST10K.exists():
        print(f"no MNIST root at {MNIST10K} (set {MNIST_ROOT_ENV}): benchmarking on digits")
    device = pick_device()
    d = cfg.dataset
    data = load_dataset(d.name, d.data_dir, d.download).to(device)
    ours = new_state(cfg, data, device)
    models = {name: copy.deepcopy(ours.model) for name in ("bare", "bare_ce")}
    lr = cfg.training.optimizer.lr
    opts = {name: torch.optim.Adam(m.parameters(), lr=lr) for name, m in models.items()}
    x, y = data.x_train, data.y_train
    rates = _samples_per_second(
        {
            "ours": lambda: train_one_epoch(cfg, data, ours, epoch=1),
            "ours+eval": lambda: (
                train_one_epoch(cfg, data, ours, 1),
                clean_metrics(cfg, data, ours.model),
            ),
            "bare": lambda: _bare_epoch(models["bare"], opts["bare"], x, y, cfg, penalised=True),
            "bare_ce": lambda: _bare_epoch(models["bare_ce"], opts["bare_ce"], x, y, cfg, False),
        },
        n=len(y),
        repeats=repeats,
    )
    tag = f"{d.name} mlp-200x200 sigmoid lambda {cfg.lam:g}, batch {cfg.training.batch_size}"
    return [
        result(f"train_loop ({tag})", rates["ours"], "samples/s", rates["bare"]),
        result(f"train_loop+eval ({tag})", rates["ours+eval"], "samples/s", rates["bare"]),
        result(f"penalty_cost ({tag})", rates["bare"], "samples/s", rates["bare_ce"]),
    ]
