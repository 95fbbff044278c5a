"""Faults on the real path (real Ray, real SQLite MLflow store, real processes): a trial's worker
killed mid-training is retried from its checkpoint into its one run; a driver killed mid-sweep
is resumed to completion without duplicate runs; a NaN trial is marked diverged while the
others finish."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FAST_EVAL = {"size": 50, "eps": [0.1], "attacks": ["fgsm", "pgd_ce"], "pgd_steps": 5}


def start(work, *args) -> subprocess.Popen:
    """`satsweep run spec.yaml ...` in its own session, so the test can kill all of it."""
    return subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--storage-path", "results",
         *args],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def session_pids(sid: int, title: str = "") -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if title.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def trial_runs(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`satsweep.role` = 'trial'")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the store may be mid-creation
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def write_spec(work, spec: dict) -> MlflowClient:
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_killed_worker_is_retried_from_its_checkpoint_into_one_run(tmp_path):
    epochs = 60
    client = write_spec(tmp_path, {
        "name": "kill-worker",
        "grid": {"architectures": [{"kind": "mlp", "hidden": [256, 256]}],
                 "activations": ["relu"], "lambdas": [0.0]},
        "training": {"epochs": epochs, "batch_size": 16, "checkpoint_min_seconds": 0},
        "evaluation": FAST_EVAL, "audit": {"enabled": False}, "max_failures": 2,
    })  # fmt: skip
    proc = start(tmp_path)
    try:

        def past_epoch_3():
            (run,) = trial_runs(client, "kill-worker")
            steps = {m.step for m in client.get_metric_history(run.info.run_id, "clean_acc")}
            return max(steps) >= 3 and max(steps) < epochs - 5

        wait_for(past_epoch_3, 300, "the trial to pass epoch 3")
        workers = session_pids(proc.pid, "ray::ImplicitFunc")
        assert workers, "no trial worker process found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        out = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (run,) = trial_runs(client, "kill-worker")
    assert run.info.status == "FINISHED" and run.data.tags["satsweep.status"] == "finished"
    assert run.data.tags["satsweep.restarts"] == "1"
    history = client.get_metric_history(run.info.run_id, "clean_acc")
    assert {m.step for m in history} == set(range(1, epochs + 1))
    assert [m.step for m in history].count(1) == 1  # resumed from a checkpoint, not from scratch
    assert "1 trials finished, 0 failed" in out


def sweep_spec(name: str) -> dict:
    return {
        "name": name,
        "grid": {"architectures": [{"kind": "mlp", "hidden": [128, 128]}],
                 "activations": ["relu", "sigmoid"], "lambdas": [0.0, 0.5]},
        "training": {"epochs": 30, "batch_size": 16},
        "evaluation": FAST_EVAL, "audit": {"enabled": False},
        "resources": {"max_concurrent_trials": 2},
    }  # fmt: skip


def test_killed_driver_is_resumed_without_duplicate_runs(tmp_path):
    client = write_spec(tmp_path, sweep_spec("kill-driver"))
    proc = start(tmp_path)
    try:

        def one_done_one_running():
            runs = trial_runs(client, "kill-driver")
            done = [r for r in runs if r.info.status == "FINISHED"]
            running = [
                r
                for r in runs
                if r.info.status == "RUNNING"
                and client.get_metric_history(r.info.run_id, "clean_acc")
            ]
            return done and running

        wait_for(one_done_one_running, 400, "one finished and one running trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        proc.communicate()
    finished_before = {
        r.info.run_id for r in trial_runs(client, "kill-driver") if r.info.status == "FINISHED"
    }

    out = finish(start(tmp_path, "--resume"))
    assert "Traceback" not in out, out[-3000:]  # Tune's last snapshot may list gone checkpoints
    runs = trial_runs(client, "kill-driver")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.info.run_name for r in runs}) == 4
    for r in runs:
        if r.info.run_id in finished_before:  # not rerun
            assert "satsweep.restarts" not in r.data.tags
    (sweep,) = client.search_runs([runs[0].info.experiment_id], "tags.`satsweep.role` = 'sweep'")
    assert sweep.info.status == "FINISHED" and sweep.data.tags["satsweep.resumed"] == "true"
    assert "4 trials finished, 0 failed" in out

    again = finish(start(tmp_path, "--resume"))
    assert "already finished; nothing to resume" in again
    assert len(trial_runs(client, "kill-driver")) == 4


def test_resuming_a_sweep_that_never_started_is_a_clear_error(tmp_path):
    write_spec(tmp_path, sweep_spec("never-started"))
    proc = start(tmp_path, "--resume")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "no sweep 'never-started' to resume" in out
    assert "Traceback" not in out


def test_nan_trial_is_marked_diverged_while_the_others_finish(tmp_path):
    client = write_spec(tmp_path, {
        "name": "diverge",
        "grid": {"architectures": [{"kind": "mlp", "hidden": [32]}], "activations": ["relu"],
                 "lambdas": [0.0, 1.0e38]},  # sum-reduced penalty x 1e38 overflows float32
        "training": {"epochs": 3, "penalty": {"reduction": "sum", "schedule": "constant"}},
        "evaluation": FAST_EVAL, "audit": {"enabled": False},
    })  # fmt: skip
    finish(start(tmp_path))
    runs = {r.data.params["lam"]: r for r in trial_runs(client, "diverge")}
    diverged, healthy = runs["1e+38"], runs["0.0"]
    assert diverged.info.status == "FINISHED"
    assert diverged.data.tags["satsweep.status"] == "diverged"
    assert diverged.data.metrics["diverged_at_epoch"] == 1
    assert "worst_case_acc/eps_0.1" not in diverged.data.metrics
    assert healthy.data.tags["satsweep.status"] == "finished"
    assert healthy.data.metrics["worst_case_acc/eps_0.1"] >= 0

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.cli",
            "best",
            "diverge",
            "--min-clean-acc",
            "0",
            "--include-flagged",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "champion lam0_relu_mlp-32 (1 seed)" in out.stdout
    assert "out: diverged" in out.stdout
