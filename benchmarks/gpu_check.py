"""The GPU path in one short script (about 5 minutes on one GPU): training loop, defence loop
and PGD throughput against bare loops in the same run, CUDA memory released between trials, and,
where Ray is installed, fractional GPUs packing 4 trials at once on one GPU.

    python -m benchmarks.gpu_check          # prints one line per check, writes gpu_check.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import attacks, defence_loop, train_loop
from benchmarks.common import machine

OUT = Path(__file__).with_name("gpu_check.json")


def memory_released(trials: int = 3) -> dict:
    """Train and attack `trials` models one after another in this process; after each, with
    its tensors dropped, the allocator must be back where it started."""
    from trainables.data import load_dataset
    from trainables.evaluate import evaluate_robustness
    from trainables.settings import ArchitectureSettings, SweepSettings, TrialSettings
    from trainables.train import new_state, release_cuda, train

    device = torch.device("cuda")
    baseline = torch.cuda.memory_allocated()
    leftovers = []
    for seed in range(trials):
        shared = SweepSettings.model_validate(
            {"training": {"epochs": 2, "penalty": {"warmup_epochs": 0}}}
        )
        cfg = TrialSettings.at(shared, arch=ArchitectureSettings(kind="cnn", channels=[8, 16],
                               hidden=[64]), activation="relu", lam=0.0, seed=seed)  # fmt: skip
        data = load_dataset("digits", None, False).to(device)
        state = new_state(cfg, data, device)
        for _ in train(cfg, data, state):
            pass
        evaluate_robustness(state.model, data.x_test[:200], data.y_test[:200], cfg, state.model)
        del data, state
        release_cuda()
        leftovers.append(torch.cuda.memory_allocated() - baseline)
    return {"check": "cuda memory released between trials", "leftover_bytes": leftovers,
            "ok": all(b == 0 for b in leftovers)}  # fmt: skip


def packing(trials: int = 4, fraction: float = 0.25) -> dict:
    """`trials` Tune trials of `fraction` GPU each: how many ran at once (from their own
    start and end times)."""
    try:
        from ray import tune
    except ImportError:
        return {"check": "fractional GPU packing", "ok": None, "why": "ray is not installed"}

    def work(config):
        start = time.time()
        x = torch.randn(4096, 4096, device="cuda")
        for _ in range(200):
            x = torch.tanh(x @ x / 4096)
        torch.cuda.synchronize()
        tune.report({"start": start, "end": time.time()})

    trainable = tune.with_resources(work, {"cpu": 1, "gpu": fraction})
    grid = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(trials)))})
    spans = [(r.metrics["start"], r.metrics["end"]) for r in grid.fit()]
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    return {"check": "fractional GPU packing", "at_once": most, "ok": most >= trials}


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = [memory_released(), packing()]
    for module in (train_loop, defence_loop, attacks):
        results.extend(module.run(repeats=3))
    for r in results:
        print(json.dumps(r))
    OUT.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    return 0 if all(r.get("ok") is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
