"""A warm worker's memory across 12 trials (the shipped science's model on the MNIST subset):

- `worker memory: private after trial 10 vs trial 1`: one slot, so every trial runs in the
  same reused worker; each trial logs its worker's private (anonymous) memory once it ended
  and gave its freed pages back (target <= 1.10; before the fix the worker grew from 0.9 to
  6.9 GB over the same trials).
- the same for resident memory, and each trial's resident peak, largest and median, against
  the working-set estimate (dataset, model and optimiser, 30 batch-sized attack tensors) and
  against the budget a trial reserves on its node (`resources.memory_per_trial_gb`'s default).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.common import result
from benchmarks.sweeps import launch, write_spec
from sweeps.spec import parse_spec
from tracking import metric_names as names
from trainables.data import default_mnist_root, load_dataset
from trainables.models import SaturatingNet
from trainables.worker_memory import MIB, trial_budget_bytes, working_set_bytes

SPEC = {
    "name": "worker-memory",
    "dataset": {"name": "mnist", "data_dir": str(default_mnist_root())},
    "grid": {
        "architectures": [{"kind": "mlp", "hidden": [200, 200]}],
        "activations": ["relu", "sigmoid"],
        "lambdas": [0.0, 1.0, 10.0],
        "defences": [{"kind": "none"}, {"kind": "pgd", "eps": 0.1, "steps": 10}],
    },
    "training": {"epochs": 3, "batch_size": 100, "penalty": {"warmup_epochs": 1}},
    "evaluation": {"size": 500, "eps": [0.05, 0.1, 0.2], "pgd_steps": 20,
                   "apgd_iterations": 50, "noise_draws": 50},
    "audit": {"enabled": False},
    "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 1},
}  # fmt: skip


def per_trial(folder: Path) -> dict[int, dict[str, float]]:
    """{k: the k-th trial's worker figures} from the trial runs."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(SPEC["name"])
    runs = client.search_runs([exp.experiment_id], "tags.`satsweep.role` = 'trial'")
    if len({r.data.tags["satsweep.worker_pid"] for r in runs}) != 1:
        raise RuntimeError("the trials did not all run in one reused worker")
    return {int(r.data.metrics[names.WORKER_TRIALS_RUN]): r.data.metrics for r in runs}


def estimates_mb() -> tuple[float, float]:
    """(what a trial's tensors need at once, what a trial reserves), in MiB."""
    spec = parse_spec(SPEC)
    d = spec.dataset
    data = load_dataset(d.name, d.data_dir, d.download)
    points, batch = len(data.y_train) + len(data.y_test), spec.evaluation.attack_batch_size
    net = SaturatingNet(spec.grid.architectures[0], "relu", data.input_shape, data.num_classes)
    parameters = sum(p.numel() for p in net.parameters())
    need = working_set_bytes(data.input_shape, points, batch, parameters)
    return need / MIB, trial_budget_bytes(data.input_shape, points, batch) / MIB


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        launch(folder, write_spec(folder, SPEC))
        trials = per_trial(folder)
    first, tenth = trials[1], trials[10]
    peaks = [m[names.WORKER_PEAK_MB] for m in trials.values()]
    resident = statistics.median(m[names.WORKER_RESIDENT_MB] for m in trials.values())
    need, budget = estimates_mb()
    what = "worker memory (12 MNIST trials, MLP 200-200, one warm worker)"
    return [
        result(f"{what}: private after trial 10 vs after trial 1",
               tenth[names.WORKER_PRIVATE_MB], "MiB", first[names.WORKER_PRIVATE_MB]),
        result(f"{what}: resident after trial 10 vs after trial 1",
               tenth[names.WORKER_RESIDENT_MB], "MiB", first[names.WORKER_RESIDENT_MB]),
        result(f"{what}: largest trial peak above the worker's resident level vs the "
               "working-set estimate", max(peaks) - resident, "MiB", need),
        result(f"{what}: median trial peak above the resident level vs the working-set "
               "estimate", statistics.median(peaks) - resident, "MiB", need),
        result(f"{what}: largest trial peak vs the memory a trial reserves", max(peaks),
               "MiB", budget),
    ]  # fmt: skip
