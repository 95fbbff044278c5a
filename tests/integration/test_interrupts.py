"""Interrupted is not finished, and one sweep runs once at a time: real processes, real signals,
a real Ray instance and a real SQLite MLflow store."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_faults import FAST_EVAL, start, trial_runs, wait_for, write_spec

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def slow_spec(name: str) -> dict:
    return {
        "name": name,
        "grid": {"architectures": [{"kind": "mlp", "hidden": [64]}],
                 "activations": ["relu", "sigmoid"], "lambdas": [0.0]},
        # long enough to be interrupted after epoch 40: a warm 2-core machine trains 150 epochs
        # in 15 s, about as long as a test's reads of a SQLite store the trials write to can take
        "training": {"epochs": 200, "batch_size": 16, "checkpoint_min_seconds": 0},
        "evaluation": FAST_EVAL, "audit": {"enabled": False},
        "resources": {"max_concurrent_trials": 2},
    }  # fmt: skip


def listed_checkpoints(experiment: Path) -> list[Path]:
    """Every checkpoint Tune's saved state lists for the sweep's trials."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(experiment)).trials
    return [Path(r.checkpoint.path) for t in trials
            for r in t.run_metadata.checkpoint_manager.best_checkpoint_results]  # fmt: skip


def kill_all(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def interrupt(proc, how: str) -> str:
    """Ctrl-C (SIGINT to the whole group, as a terminal sends it) or SIGTERM to the driver;
    the sweep must end as interrupted (exit 130). Returns its output."""
    try:
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_all(proc)
    assert proc.returncode == 130, out[-3000:]
    return out


def all_runs(client, name):
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_is_killed_not_finished_and_resumes(tmp_path, how):
    name = f"interrupt-{how}"
    client = write_spec(tmp_path, slow_spec(name))
    proc = start(tmp_path)
    try:
        # well into training, with many checkpoints written and deleted since Tune's last
        # periodic snapshot of its state
        wait_for(
            lambda: any(
                len(client.get_metric_history(r.info.run_id, "clean_acc")) >= 40
                for r in trial_runs(client, name)
            ),
            300,
            "a trial's 40th epoch",
        )
        assert proc.poll() is None, "the sweep ended before the interrupt: the test proves nothing"
    except BaseException:
        kill_all(proc)
        raise
    out = interrupt(proc, how)
    assert "--resume" in out and "Traceback" not in out
    runs = all_runs(client, name)
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    (parent,) = [r for r in runs if r.data.tags["satsweep.role"] == "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["satsweep.status"] == "interrupted"
    listed = listed_checkpoints(tmp_path / "results" / name)
    assert listed and all(p.is_dir() for p in listed), listed  # what a resume restores from
    if how != "ctrl-c":
        return  # one resume is enough: how the sweep was stopped does not change what it resumes
    resumed = start(tmp_path, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "Error" not in out, out[-3000:]  # no library's noise
    runs = all_runs(client, name)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len([r for r in runs if r.data.tags["satsweep.role"] == "trial"]) == 2


def test_a_second_launch_of_a_running_sweep_is_refused(tmp_path):
    """The first launch cannot finish on its own (it is killed at the end), so the second one
    meets it running however slowly the machine starts the second interpreter."""
    endless = slow_spec("twice")
    endless["training"] = {"epochs": 100_000, "batch_size": 16}
    client = write_spec(tmp_path, endless)
    first = start(tmp_path)
    try:
        wait_for(lambda: trial_runs(client, "twice"), 300, "the first launch's trials")
        second = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--storage-path", "results"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        first_still_running = first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert first_still_running, "the first launch ended: the test proves nothing"
    assert second.returncode == 2 and "already running" in second.stderr, second.stderr
    assert (
        len([r for r in all_runs(client, "twice") if r.data.tags["satsweep.role"] == "sweep"]) == 1
    )


def test_two_sweeps_started_together_on_a_new_store_both_finish(tmp_path):
    procs = []
    for name in ("left", "right"):
        work = tmp_path / name
        work.mkdir()
        spec = slow_spec(name) | {
            "training": {"epochs": 2, "batch_size": 64, "penalty": {"warmup_epochs": 1}}
        }
        write_spec(work, spec)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--storage-path", "results",
             "--tracking-uri", f"sqlite:///{tmp_path / 'shared.db'}"],
            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]


def test_a_resumed_sweep_counts_each_launchs_own_work_and_shows_the_grids_progress(tmp_path):
    """A real SIGTERM after two trials, an idle gap, then --resume: progress goes on from where
    the grid stopped, the sweep's wall time leaves the gap out, utilisation stays at most 1,
    and audits begin while the resumed grid runs (masking thresholds at 0 flag every trial)."""
    name = "resume-counts"
    spec = {
        "name": name,
        "grid": {"architectures": [{"kind": "mlp", "hidden": [64]}],
                 "activations": ["relu", "sigmoid"], "lambdas": [0.0, 1.0]},
        "training": {"epochs": 25, "batch_size": 16},
        "evaluation": FAST_EVAL | {"attacks": ["fgsm", "fgsm_stable", "pgd_ce", "pgd_margin"],
                                   "masking": {"gap_threshold": 0.0, "tolerance": 0.0,
                                               "zero_grad_threshold": 0.0}},
        "audit": {"square_queries": 20, "attacks": ["square"], "top_k": 1},
        "resources": {"max_concurrent_trials": 1},
    }  # fmt: skip
    client = write_spec(tmp_path, spec)
    began = time.monotonic()
    proc = start(tmp_path)
    try:
        finished = lambda: [r for r in trial_runs(client, name) if r.info.status == "FINISHED"]  # noqa: E731
        wait_for(lambda: len(finished()) >= 2, 600, "two finished trials")
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    done_before = len(finished())
    idle = 8.0
    time.sleep(idle)  # the gap between the crash and --resume is what is under test
    resumed = start(tmp_path, "--resume")
    out, _ = resumed.communicate(timeout=900)
    elapsed = time.monotonic() - began
    assert resumed.returncode == 0, out[-3000:]
    counts = [int(line[1:].split("/")[0]) for line in out.splitlines() if line.startswith("[")]
    # the count goes on from the grid's state (Tune's snapshot may lag MLflow by a trial, whose
    # finished run then returns at once and is counted again), never from [1/4]
    assert 1 < counts[0] <= done_before + 1 and counts == list(range(counts[0], 5)), counts
    assert "over 2 launches" in out
    begun = re.search(r"\((\d+) begun while the grid ran\)", out)
    assert begun and int(begun.group(1)) >= 1, out[-3000:]
    (parent,) = client.search_runs([trial_runs(client, name)[0].info.experiment_id],
                                   "tags.`satsweep.role` = 'sweep'")  # fmt: skip
    m = parent.data.metrics
    assert m["sweep/wall_seconds"] <= elapsed - 0.9 * idle  # the idle gap is in no launch
    assert 0 < m["sweep/slot_utilisation"] <= 1.0
    assert m["sweep/busy_seconds"] <= m["sweep/slots"] * m["sweep/wall_seconds"]
    launches = client.get_metric_history(parent.info.run_id, "sweep/launch_wall_seconds")
    assert sorted(x.step for x in launches) == [0, 1]
    assert sum(x.value for x in launches) == pytest.approx(m["sweep/wall_seconds"], rel=1e-6)


def test_an_interrupted_search_resumes_with_its_searcher_nothing_run_twice_or_lost(tmp_path):
    """Ctrl-C half way through an Optuna search, then `--resume`: every sampled configuration
    runs over both seeds exactly once, and the searcher, restored from Tune's snapshot, is told
    each configuration's mean once."""
    import pickle

    name = "search-interrupt"
    spec = slow_spec(name)
    spec["grid"] = {"architectures": [{"kind": "mlp", "hidden": [32]}], "activations": ["relu"],
                    "seeds": [0, 1]}  # fmt: skip
    space = {"lam": {"loguniform": [0.01, 1.0]},
             "training.optimizer.lr": {"loguniform": [1.0e-3, 1.0e-2]}}  # fmt: skip
    spec["search"] = {"name": "optuna", "num_samples": 3, "space": space,
                      "objectives": ["worst_case", "clean_acc"]}  # fmt: skip
    spec["training"] = {"epochs": 60, "batch_size": 16, "checkpoint_min_seconds": 0,
                        "penalty": {"warmup_epochs": 5}}  # fmt: skip
    spec["evaluation"] = FAST_EVAL | {"attacks": ["fgsm", "pgd_ce", "pgd_margin"]}
    client = write_spec(tmp_path, spec)
    proc = start(tmp_path)
    try:
        wait_for(
            lambda: len([r for r in trial_runs(client, name) if r.info.status == "FINISHED"]) >= 2,
            600,
            "two finished trials",
        )
        finished_before = {r.info.run_name for r in trial_runs(client, name)
                           if r.info.status == "FINISHED"}  # fmt: skip
        assert proc.poll() is None, "the search ended before the interrupt: the test proves nothing"
    except BaseException:
        kill_all(proc)
        raise
    interrupt(proc, "ctrl-c")
    resumed = start(tmp_path, "--resume")
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    runs = trial_runs(client, name)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len(runs) == 6, sorted(r.info.run_name for r in runs)  # none duplicated, none lost
    assert finished_before <= {r.info.run_name for r in runs}
    configurations = {}
    for r in runs:
        sampled = (r.data.params["lam"], r.data.params["training.optimizer.lr"])
        configurations.setdefault(sampled, []).append(int(r.data.params["seed"]))
    assert sorted(map(sorted, configurations.values())) == [[0, 1]] * 3
    # one state file per launch, named by the launch's start: the resumed launch's sorts last
    # (Ray's sync rewrites every file of the folder at the end, so their times tell nothing)
    state = max((tmp_path / "results" / name).glob("searcher-state-*.pkl"))
    searcher = pickle.loads(state.read_bytes())
    assert len(searcher["told"]) == 3 and all(v is not None for v in searcher["told"].values())
    study = searcher["studies"][0]._ot_study
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
