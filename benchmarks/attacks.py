"""How fast is our PGD against the original AutoAttack code, and what does early exit save?

- `pgd_ce vs apgd_ce`: evaluation throughput, (points x steps) / s, of `pgd_ce` against
  pyautoattack's APGD-CE at equal iterations, one restart, on the same model and points; and
  the same without PGD's early exit, so both do equal work (target >= 1.0).
- `pgd_ce early exit`: the same PGD with and without dropping points once they are fooled.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import median_seconds, result
from benchmarks.train_loop import MNIST10K, _config
from trainables.attacks import apgd_ce, pgd_ce
from trainables.data import load_dataset
from trainables.evaluate import eval_indices
from trainables.train import new_state, pick_device, train

EPS = 0.1
STEPS = 100


def _trained_model(device):
    """The paper's MLP, relu, briefly trained without penalty: a model attacks can break."""
    dataset, data_dir = ("mnist", str(MNIST10K)) if MNIST10K.exists() else ("digits", None)
    cfg = _config(dataset, data_dir, activation="relu", lam=0.0)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 3})})
    d = cfg.dataset
    data = load_dataset(d.name, d.data_dir, d.download).to(device)
    state = new_state(cfg, data, device)
    for _ in train(cfg, data, state):
        pass
    idx = eval_indices(len(data.y_test), 1000, 0).to(device)
    return state.model.eval(), data.x_test[idx], data.y_test[idx], d.name


def run(repeats: int = 3) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = pick_device()
    model, x, y, dataset = _trained_model(device)
    work = len(y) * STEPS  # nominal points x steps of one attack run
    fns = {
        "pgd": lambda: pgd_ce(model, x, y, EPS, steps=STEPS, restarts=1),
        "pgd_no_exit": lambda: pgd_ce(model, x, y, EPS, steps=STEPS, restarts=1, early_exit=False),
        "apgd": lambda: apgd_ce(model, x, y, EPS, iterations=STEPS, restarts=1),
    }
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, as in train_loop
        for name, fn in fns.items():
            seconds[name].append(median_seconds(fn, 1))
    rate = {k: work / statistics.median(v) for k, v in seconds.items()}
    tag = f"{dataset} mlp-200x200 relu, {len(y)} points, {STEPS} steps, eps {EPS:g}"
    saved = 1 - statistics.median(seconds["pgd"]) / statistics.median(seconds["pgd_no_exit"])
    print(f"early exit saves {saved:.0%} of PGD-CE's time ({tag})")
    return [
        result(f"pgd_ce vs apgd_ce ({tag})", rate["pgd"], "points*steps/s", rate["apgd"]),
        result(  # equal work: both step every point every iteration
            f"pgd_ce without early exit vs apgd_ce ({tag})",
            rate["pgd_no_exit"],
            "points*steps/s",
            rate["apgd"],
        ),
        result(
            f"pgd_ce early exit vs none ({tag})", rate["pgd"], "points*steps/s", rate["pgd_no_exit"]
        ),
    ]
