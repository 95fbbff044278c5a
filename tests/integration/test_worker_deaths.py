"""A killed worker is a failed (or retried) trial, never a crashed sweep: real kills of real Ray
workers, a real local Ray instance and a real SQLite MLflow store.

- SIGKILL of a warm worker the moment its first trial ends, i.e. while Tune sets it up for the
  next trial (Tune 2.60 counted that death twice and left the trial unschedulable).
- A kill by Ray's own memory monitor during training: the test sets the monitor's threshold a
  6 GB above what the node uses, then takes that memory itself once the trial trains (the
  monitor kills only Ray workers, so it kills the trial's). Tune 2.60 crashed with "Caught
  unexpected exception" there.
"""

import mmap
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.test_cluster import alive
from tests.integration.test_faults import FAST_EVAL, start, trial_runs, wait_for, write_spec

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def one_slot_spec(name: str, epochs: int, max_failures: int = 1, lambdas=(0.0, 0.5)) -> dict:
    return {
        "name": name,
        "grid": {"architectures": [{"kind": "mlp", "hidden": [32]}],
                 "activations": ["relu", "sigmoid"], "lambdas": list(lambdas)},
        "training": {"epochs": epochs, "batch_size": 32, "penalty": {"warmup_epochs": 1}},
        "evaluation": FAST_EVAL, "audit": {"enabled": False},
        "resources": {"max_concurrent_trials": 1}, "max_failures": max_failures,
    }  # fmt: skip


def quiet_and_finished(out: str, client, name: str, trials: int = 4) -> None:
    assert "Traceback" not in out and "Caught unexpected exception" not in out, out[-3000:]
    assert "A worker died or was killed" not in out  # the raylet's paragraph: our line says it
    runs = trial_runs(client, name)
    assert len(runs) == trials and {r.info.status for r in runs} == {"FINISHED"}, [
        (r.info.run_name, r.info.status) for r in runs
    ]


def test_a_worker_killed_while_set_up_for_its_next_trial_costs_one_retry(tmp_path):
    name = "kill-at-setup"
    client = write_spec(tmp_path, one_slot_spec(name, epochs=2))
    proc = start(tmp_path)
    try:
        # a trial's last write is its worker's memory: the worker is now handed the next trial
        ended = wait_for(
            lambda: [r for r in trial_runs(client, name) if "worker/trials_run" in r.data.metrics],
            300,
            "the first trial's end",
        )
        worker = int(ended[0].data.tags["satsweep.worker_pid"])
        os.kill(worker, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]  # one death, one retry (max_failures 1): it finished
    assert "retrying " in out and "its worker process died" in out
    quiet_and_finished(out, client, name)
    later = {r.data.tags["satsweep.worker_pid"] for r in trial_runs(client, name)} - {str(worker)}
    assert later, "no trial ran after the kill in another worker"
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{k}/4" for k in range(1, 5)]


def used_and_total() -> tuple[int, int]:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":")
            info[key] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]


def push_until_killed(pressure: mmap.mmap, worker: int, timeout: float = 120) -> None:
    """Make the pages resident 64 MiB at a time, so the node's usage crosses Ray's threshold,
    and stop as soon as the worker is gone (more would get its retry killed as well)."""
    chunk = 64 << 20
    deadline = time.monotonic() + timeout
    for first in range(0, len(pressure), chunk):
        if not alive(worker):
            return
        for page in range(first, min(first + chunk, len(pressure)), mmap.PAGESIZE):
            pressure[page] = 1
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_worker_killed_for_memory_is_retried_and_the_sweep_goes_on(tmp_path):
    name = "kill-for-memory"
    # two trials: the killed one, retried, and one after it (300 epochs: still training when the
    # memory is taken)
    client = write_spec(tmp_path, one_slot_spec(name, epochs=300, max_failures=2, lambdas=[0.0]))
    used, total = used_and_total()
    margin = 6 << 30  # well above what the sweep itself adds (driver, Ray, workers: ~4 GB)
    env = {**os.environ, "RAY_memory_usage_threshold": f"{(used + margin) / total:.4f}",
           "RAY_memory_monitor_refresh_ms": "100"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--storage-path", "results"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env=env,
    )  # fmt: skip
    try:
        training = wait_for(
            lambda: [r for r in trial_runs(client, name)
                     if r.info.status == "RUNNING" and r.data.metrics.get("epoch", 0) >= 2],
            300, "a trial in training",
        )  # fmt: skip
        worker = int(training[0].data.tags["satsweep.worker_pid"])
        pressure = mmap.mmap(-1, margin + (2 << 30))
        try:
            push_until_killed(pressure, worker)
            assert not alive(worker), "Ray's memory monitor did not kill the trial's worker"
        finally:
            pressure.close()  # at once: the retry must not be killed too
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    killed = [line for line in out.splitlines() if "killed for memory" in line]
    assert killed and all(line.startswith("retrying ") for line in killed), out[-3000:]
    assert " GB used of " in killed[0]  # the node's figures, from Ray's own report
    quiet_and_finished(out, client, name, trials=2)
