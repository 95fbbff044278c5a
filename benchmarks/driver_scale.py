"""The driver at thousands of trials: a sweep of `LARGE` near-empty trials (the real trainable on
digits, a tiny MLP, 3 epochs, one cheap attack on 20 points, no audit) against the same sweep of
`SMALL`, each launched as a user launches it but in a child process that also times Tune's
experiment-state snapshots (`TuneController.save_to_dir`, which writes every trial's state).
Reported per trial, as ratios large against small: the driver's CPU seconds, the sweep's wall
seconds, the snapshot seconds; and the driver's peak memory. A ratio near 1 is linear growth;
one that grows with the trial count is what made users' drivers crawl at a few thousand trials.

At 5,000 trials this is the longest benchmark: 40 minutes on 2 cores (0.46 s of wall per
trial against 0.55 s at 100, once the workers' collections stopped growing). `python -m
benchmarks.driver_scale N FOLDER [CHECKPOINT_MIN_SECONDS]` runs one size and prints its figures
(0: a checkpoint every epoch, as before `training.checkpoint_min_seconds`)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import result

SMALL, LARGE = 100, 5000
REPO = Path(__file__).resolve().parents[1]


def spec(trials: int, checkpoint_min_seconds: float | None = None) -> dict:
    """The sweep; `checkpoint_min_seconds` 0 checkpoints every epoch (what trials did before
    the setting existed)."""
    floor = {} if checkpoint_min_seconds is None else {"checkpoint_min_seconds":
                                                       checkpoint_min_seconds}  # fmt: skip
    return {
        "name": f"driver-{trials}",
        "dataset": {"name": "digits"},
        "grid": {"architectures": [{"kind": "mlp", "hidden": [8]}], "activations": ["relu"],
                 "lambdas": [round(0.001 * i, 3) for i in range(trials)]},
        "training": {"epochs": 3, "batch_size": 256, "penalty": {"warmup_epochs": 1}, **floor},
        "evaluation": {"size": 20, "eps": [0.1], "attacks": ["fgsm"], "every_epochs": 0},
        "audit": {"enabled": False},
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
        "confirm_above": trials,
    }  # fmt: skip


def measure_here(trials: int, folder: Path, checkpoint_min_seconds: float | None = None) -> dict:
    """One sweep in this process, with Tune's snapshots timed; its figures."""
    from ray.tune.execution.tune_controller import TuneController

    from sweeps.launch import run_sweep
    from sweeps.spec import parse_spec

    snapshots: list[float] = []
    save = TuneController.save_to_dir

    def timed_save(self):
        start = time.perf_counter()
        save(self)
        snapshots.append(time.perf_counter() - start)

    TuneController.save_to_dir = timed_save
    raw = spec(trials, checkpoint_min_seconds)
    text = yaml.safe_dump(raw)
    start = time.perf_counter()
    outcome = run_sweep(parse_spec(raw), text, f"sqlite:///{folder / 'mlflow.db'}",
                        str(folder / "results"))  # fmt: skip
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "trials": trials,
        "finished": outcome.finished,
        "wall_s": wall,
        "driver_cpu_s": usage.ru_utime + usage.ru_stime,
        "driver_peak_mib": usage.ru_maxrss / 1024,
        "snapshots": len(snapshots),
        "snapshot_s": sum(snapshots),
        "largest_snapshot_s": max(snapshots, default=0.0),
    }


def measure(trials: int) -> dict:
    """One size in a fresh interpreter (its own Ray, its own peak memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.driver_scale", str(trials), tmp],
            cwd=REPO, capture_output=True, text=True, timeout=4 * 3600,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the {trials}-trial sweep failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(large: int = LARGE) -> list[dict]:
    return rows(measure(SMALL), measure(large))


def rows(small: dict, big: dict) -> list[dict]:
    for m in (small, big):
        if m["finished"] != m["trials"]:
            raise RuntimeError(f"{m['finished']} of {m['trials']} trials finished")
    what = f"{big['trials']:,} near-empty trials vs {small['trials']}"

    def per_trial(m: dict, key: str) -> float:
        return m[key] / m["trials"]

    return [
        result(f"driver CPU seconds per trial, {what}", per_trial(big, "driver_cpu_s"),
               "seconds per trial", per_trial(small, "driver_cpu_s")),
        result(f"sweep wall seconds per trial, {what}", per_trial(big, "wall_s"),
               "seconds per trial", per_trial(small, "wall_s")),
        result(f"Tune snapshot seconds per trial, {what} ({big['snapshots']} snapshots vs "
               f"{small['snapshots']}; largest {big['largest_snapshot_s']:.2f} s)",
               per_trial(big, "snapshot_s"), "seconds per trial", per_trial(small, "snapshot_s")),
        result(f"driver peak memory, {what}", big["driver_peak_mib"], "MiB",
               small["driver_peak_mib"]),
    ]  # fmt: skip


if __name__ == "__main__":
    from sweeps.console import quiet_libraries

    quiet_libraries(verbose=False)
    floor = float(sys.argv[3]) if len(sys.argv) > 3 else None
    print(json.dumps(measure_here(int(sys.argv[1]), Path(sys.argv[2]), floor)))
