"""The commands a researcher types after a big sweep, on a sweep of 10,000 trial runs served by
`satsweep server`: `best`, `report`, `export` and the store work of a `--resume` (reopening the
sweep run, then the after-grid read every launch makes). The store is built by `big_store`:
2,500 configurations of 4 seeds, each run with the per-example record the report pairs, the
best configuration the oldest, a real model logged on its runs for `export`. Each command is
timed end to end against the floor measured in the same run: paging the same trial runs
through the same server with a bare MlflowClient. And one trial's run lookup
(`find_trial_run`, made by every trial as it starts) at 10,000 runs against 100: a lookup
that grows with the store makes a sweep's lookups grow with the square of its trials.

The Tune side of a resume at thousands of trials (restoring its experiment state) is the
driver benchmark's, not this one's."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.big_store import SWEEP, build
from benchmarks.common import result, satsweep_seconds
from benchmarks.tracking_server import server

TRIALS = 10_000
SEEDS = 4  # 2,500 configurations of 4 seeds, each run with its per-example record
POINTS = 500
SMALL = 100
LOOKUPS = 20  # find_trial_run calls timed per store (the median is reported)


def log_a_real_model(uri: str) -> None:
    """The model artifacts a real trial logs, on every run of the best configuration (λ 0):
    an untrained digits MLP through the trainable's own `log_model`, so `export` has something
    to copy whichever seed it picks."""
    import torch

    from trainables.data import load_dataset
    from trainables.settings import ArchitectureSettings, SweepSettings, TrialSettings
    from trainables.train import new_state
    from trainables.trainable import log_model

    shared = SweepSettings.model_validate({"dataset": {"name": "digits"}})
    cfg = TrialSettings.at(shared, arch=ArchitectureSettings(kind="mlp", hidden=[32]),
                           activation="relu", lam=0.0, seed=0)  # fmt: skip
    data = load_dataset("digits", None, False)
    client = MlflowClient(uri)
    state = new_state(cfg, data, torch.device("cpu"))
    experiment = client.get_experiment_by_name(SWEEP).experiment_id
    for run in client.search_runs([experiment], "params.lam = '0'"):
        log_model(cfg, data, state, client, run.info.run_id)


def paging_seconds(url: str) -> float:
    """The floor: a new client pages every trial run of the sweep's latest launch (the better
    of two, the first after an untimed one that warms the server)."""
    from tracking.runs import trial_runs
    from tracking.sweep_run import latest_sweep_run

    def page() -> float:
        start = time.perf_counter()
        client = MlflowClient(url)
        experiment_id, parent = latest_sweep_run(client, SWEEP)
        runs = trial_runs(client, experiment_id, parent.info.run_id)
        if len(runs) < SMALL:
            raise RuntimeError(f"paging found {len(runs)} trial runs: the store was not built")
        return time.perf_counter() - start

    page()
    return min(page(), page())


def resume_store_seconds(url: str) -> float:
    """What a `--resume` asks of the store besides its trials: the sweep run reopened, and the
    one read of every trial run after the grid."""
    from tracking.record import SweepRecord
    from tracking.sweep_run import reopen_sweep_run

    start = time.perf_counter()
    client = MlflowClient(url)
    if reopen_sweep_run(client, SWEEP) is None:
        raise RuntimeError("the store's sweep run is FINISHED: a resume would stop at once")
    SweepRecord.load(client, SWEEP)
    return time.perf_counter() - start


def lookup_seconds(url: str) -> float:
    """Median seconds of one trial's run lookup by its Ray trial id, as `open_trial_run` and
    `finished_run_metrics` make it (an id no run has: the whole filter is evaluated)."""
    from tracking.runs import find_trial_run
    from tracking.sweep_run import latest_sweep_run

    client = MlflowClient(url)
    experiment_id, parent = latest_sweep_run(client, SWEEP)
    find_trial_run(client, experiment_id, parent.info.run_id, "warm-up")
    times = []
    for i in range(LOOKUPS):
        start = time.perf_counter()
        find_trial_run(client, experiment_id, parent.info.run_id, f"absent_{i}")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def small_store_lookup(folder: Path) -> float:
    folder.mkdir()
    uri, _ = build(folder, SMALL)
    with server(folder, None, ["--backend-store-uri", uri]) as url:
        return lookup_seconds(url)


def run(trials: int = TRIALS) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "big"
        folder.mkdir()
        print(f"server_scale: building a store of {trials:,} trial runs (minutes)", flush=True)
        uri, _ = build(folder, trials, SEEDS, POINTS)
        log_a_real_model(uri)
        small = small_store_lookup(Path(tmp) / "small")
        with server(folder, None, ["--backend-store-uri", uri]) as url:
            big = lookup_seconds(url)  # first, as on the small store's new server
            floor = paging_seconds(url)
            on = ("--tracking-uri", url)
            seconds = {
                "best": satsweep_seconds("best", SWEEP, *on, cwd=Path(tmp)),
                "report": satsweep_seconds("report", SWEEP, *on, cwd=Path(tmp)),
                "export": satsweep_seconds(
                    "export", SWEEP, "--out", str(Path(tmp) / "out"), *on, cwd=Path(tmp)
                ),  # fmt: skip
                "the store work of --resume": resume_store_seconds(url),
            }
    size = f"{trials:,} trial runs through satsweep server (SQLite)"
    rows = [result(f"satsweep {what} on {size} vs paging them with a bare MlflowClient",
                   s, "seconds (lower is better)", floor)
            for what, s in seconds.items()]  # fmt: skip
    rows.append(result(f"one trial's run lookup (find_trial_run) at {trials:,} runs vs at "
                       f"{SMALL}", big * 1000, "ms (median of 20)", small * 1000))  # fmt: skip
    return rows
