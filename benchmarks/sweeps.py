"""What a whole sweep costs, each sweep launched as a user launches it (`satsweep run` in a fresh
folder, local Ray, a SQLite MLflow store):

- `quickstart slot utilisation`: busy seconds of trial runs and audit tasks over slots x wall
  time (target >= 0.85), and the epochs trained over the grid's own epochs (1.00: no model
  trained twice), read from the sweep's parent run.
- `one trial through Ray + MLflow vs a plain process`: a single trial of about a minute against
  a plain Python process that loads the data, trains and runs the same cheap attack tier
  (target <= 1.10); the sweep's own wall time, and the whole command with Ray's start.
- `ASHA vs grid`: the same small spec with FIFO and with ASHA on the per-epoch robust check:
  the trial-epochs ASHA spent over the grid's (target <= 0.40) and whether both crown the same
  champion by the selection rule.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from benchmarks.common import result
from tracking.select import best_run_id
from tracking.sweep_run import latest_sweep_run
from trainables.data import default_mnist_root

REPO = Path(__file__).resolve().parents[1]

# One CNN trial on MNIST (the offline subset, docs/data.md), about a minute on one core, no
# audit: the plain process below does exactly this training and this evaluation.
SINGLE_TRIAL = {
    "name": "single-trial",
    "dataset": {"name": "mnist", "data_dir": str(default_mnist_root())},
    "grid": {
        "architectures": [{"kind": "cnn", "channels": [16, 32], "hidden": [128]}],
        "activations": ["relu"],
        "lambdas": [0.3],
    },
    "training": {"epochs": 14, "batch_size": 64, "optimizer": {"lr": 3.0e-3},
                 "penalty": {"warmup_epochs": 2}},
    "evaluation": {"size": 500, "attacks": ["fgsm", "fgsm_stable", "pgd_ce", "pgd_margin"]},
    "audit": {"enabled": False},
    "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 1},
}  # fmt: skip

PLAIN_TRIAL = textwrap.dedent(
    """
    import sys, torch, yaml
    from sweeps.spec import parse_spec
    from trainables.data import load_dataset
    from trainables.evaluate import evaluate_robustness, evaluation_points
    from trainables.settings import TrialSettings
    from trainables.train import new_state, train

    torch.set_num_threads(1)  # a trial's one CPU, as Ray gives it
    spec = parse_spec(yaml.safe_load(open(sys.argv[1])))
    cfg = TrialSettings.at(spec.shared(), arch=spec.grid.architectures[0], activation="relu",
                           lam=0.3, seed=0)
    data = load_dataset(cfg.dataset.name, cfg.dataset.data_dir, False)
    state = new_state(cfg, data, torch.device("cpu"))
    for metrics in train(cfg, data, state):
        pass
    _, x, y = evaluation_points(cfg, data)
    evaluate_robustness(state.model, x, y, cfg, None)
    print(metrics["clean_acc"])
    """
)

# The ASHA comparison: lambda's effect shows from the first epoch (constant schedule), so the
# robust check can rank early; the rungs sit at 2 and 6 of 15 epochs.
ASHA_SPEC = {
    "name": "asha-vs-grid",
    "dataset": {"name": "digits"},
    "grid": {
        "architectures": [{"kind": "mlp", "hidden": [64, 64]},
                          {"kind": "cnn", "channels": [8, 16], "hidden": [64]}],
        "activations": ["relu", "sigmoid"],
        "lambdas": [0.0, 0.1, 0.3, 1.0, 3.0],
    },
    "training": {"epochs": 15, "batch_size": 32, "optimizer": {"lr": 3.0e-3},
                 "penalty": {"schedule": "constant", "warmup_epochs": 0}},
    "evaluation": {"size": 450, "eps": [0.05, 0.1, 0.2]},
    "audit": {"top_k": 1, "square_queries": 500},
    "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
}  # fmt: skip
ASHA = {"name": "asha", "grace_period": 2, "reduction_factor": 3, "metric": "robust"}


def launch(folder: Path, spec_file: Path) -> float:
    """`satsweep run` in `folder`; returns its wall time. A failed sweep fails the benchmark."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", str(spec_file), "--storage-path", "results"],
        cwd=folder, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"sweep {spec_file} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return seconds


def sweep_metrics(folder: Path, name: str) -> dict[str, float]:
    """The `sweep/*` figures the parent run logged."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    _, parent = latest_sweep_run(client, name)
    return dict(parent.data.metrics)


def champion_name(folder: Path, name: str) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return MlflowClient(uri).get_run(best_run_id(uri, name)).info.run_name


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def quickstart_usage() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        launch(folder, REPO / "sweeps" / "quickstart.yaml")
        m = sweep_metrics(folder, "quickstart")
    slots = m["sweep/slots"]
    return [
        result("quickstart slot utilisation (busy / slots x wall)", m["sweep/busy_seconds"] / slots,
               "busy seconds per slot", m["sweep/wall_seconds"]),
        result("quickstart training epochs run / grid epochs", m["sweep/training_epochs_run"],
               "epochs", m["sweep/grid_epochs"]),
    ]  # fmt: skip


def ray_vs_plain() -> list[dict]:
    """The plain process end to end (interpreter start included) against the sweep twice:
    its own wall time (the parent run, start to end: the trial with Ray's worker, MLflow
    logging, checkpoints and the report around it) and the whole `satsweep run` command (also
    imports, preflight, starting and stopping Ray)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec_file = write_spec(folder, SINGLE_TRIAL)
        script = folder / "plain.py"
        script.write_text(PLAIN_TRIAL)
        start = time.perf_counter()
        subprocess.run([sys.executable, str(script), str(spec_file)], cwd=REPO, check=True,
                       capture_output=True, timeout=3600)  # fmt: skip
        plain = time.perf_counter() - start
        command = launch(folder, spec_file)
        sweep = sweep_metrics(folder, SINGLE_TRIAL["name"])["sweep/wall_seconds"]
    what = "one trial (cnn on mnist, 14 epochs)"
    return [
        result(f"{what}: sweep wall time through Ray + MLflow vs a plain process", sweep,
               "seconds (lower is better)", plain),
        result(f"{what}: the whole satsweep run command vs a plain process", command,
               "seconds (lower is better)", plain),
    ]  # fmt: skip


def asha_vs_grid() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        grid_dir, asha_dir = Path(tmp) / "grid", Path(tmp) / "asha"
        grid_dir.mkdir()
        asha_dir.mkdir()
        launch(grid_dir, write_spec(grid_dir, ASHA_SPEC))
        launch(asha_dir, write_spec(asha_dir, copy.deepcopy(ASHA_SPEC) | {"scheduler": ASHA}))
        grid, asha = (
            sweep_metrics(grid_dir, "asha-vs-grid"),
            sweep_metrics(asha_dir, "asha-vs-grid"),
        )
        champions = champion_name(grid_dir, "asha-vs-grid"), champion_name(asha_dir, "asha-vs-grid")
    same = "same champion" if champions[0] == champions[1] else "other champion"
    return [
        result(f"ASHA trial-epochs vs the grid's ({same}: grid {champions[0]}, "
               f"ASHA {champions[1]})", asha["sweep/training_epochs_run"], "epochs",
               grid["sweep/training_epochs_run"]),
        result("ASHA sweep wall time vs the grid's", asha["sweep/wall_seconds"], "seconds",
               grid["sweep/wall_seconds"]),
    ]  # fmt: skip


def run() -> list[dict]:
    return quickstart_usage() + ray_vs_plain() + asha_vs_grid()
