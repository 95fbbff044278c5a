"""ASHA on the per-epoch robust check, through `satsweep run` on a real local Ray instance and a
SQLite store: trials it stops end FINISHED and tagged `stopped_early` at once (not FAILED, not
left RUNNING), trials that ran every epoch are `finished`, and the parent counts fewer epochs
than the grid's. (A lambda > 0 trial whose twin ASHA stopped is tested on a real store in
`tests/unit/test_twins.py`: which trials ASHA lets finish depends on timing, so no sweep here
can promise that case.)"""

import pytest

from tests.integration.test_sweep import swept

pytestmark = pytest.mark.integration

EPOCHS = 6
SPEC = {
    "name": "it-asha",
    "grid": {
        "architectures": [{"kind": "mlp", "hidden": [16]}],
        "activations": ["relu", "sigmoid"],
        "lambdas": [0.0, 0.3, 1.0, 3.0],
    },
    "training": {"epochs": EPOCHS, "batch_size": 32, "optimizer": {"lr": 3.0e-3},
                 "penalty": {"schedule": "constant", "warmup_epochs": 0}},
    "evaluation": {"size": 100, "eps": [0.1], "pgd_steps": 5, "apgd_iterations": 5,
                   "noise_draws": 5, "stopping_size": 50, "stopping_steps": 5},
    "audit": {"top_k": 1, "square_queries": 50},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
}  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    client, trials, parent = swept(tmp_path_factory.mktemp("asha"), SPEC)
    return client, {r.info.run_name: r for r in trials}, parent


def test_stopped_trials_end_finished_and_say_so(sweep):
    client, trials, _ = sweep
    assert len(trials) == 8 and {r.info.status for r in trials.values()} == {"FINISHED"}
    stopped = [r for r in trials.values() if r.data.metrics["train/epochs_run"] < EPOCHS]
    assert stopped, "ASHA stopped no trial: the test exercises nothing"
    assert all(r.data.tags["satsweep.status"] == "stopped_early" for r in stopped)
    ran = [r for r in trials.values() if r.data.metrics["train/epochs_run"] == EPOCHS]
    assert all(r.data.tags["satsweep.status"] == "finished" for r in ran)
    for run in trials.values():  # the metric ASHA ranks by, every epoch the trial ran
        history = client.get_metric_history(run.info.run_id, "early_stopping/eval_pgd_acc")
        assert len(history) == len({m.step for m in history}) >= 1
        assert all(0 <= m.value <= 1 for m in history)


def test_the_parent_counts_the_epochs_asha_saved(sweep):
    _, trials, parent = sweep
    m = parent.data.metrics
    own = sum(r.data.metrics["train/epochs_run"] for r in trials.values())
    twins = sum(r.data.metrics.get("train/twin_epochs_trained", 0) for r in trials.values())
    assert m["sweep/training_epochs_run"] == own + twins
    assert m["sweep/grid_epochs"] == 8 * EPOCHS and own < m["sweep/grid_epochs"]


SEARCH_SPEC = {
    **SPEC,
    "name": "it-asha-search",
    "grid": {"architectures": [{"kind": "mlp", "hidden": [16]}], "activations": ["relu"]},
    "search": {"name": "optuna", "num_samples": 8, "space": {"lam": {"loguniform": [0.01, 10.0]}}},
}


def test_asha_on_a_search_stops_trials_and_the_study_learns_only_finished_ones(tmp_path):
    """ASHA over an Optuna search: stopped trials end FINISHED and tagged, and the study is told
    a final worst case only for configurations that ran every epoch; a stopped one is told as
    failed (it has no final figure), so TPE neither learns from nor chases a half-trained one."""
    import pickle

    client, runs, _ = swept(tmp_path, SEARCH_SPEC)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    stopped = {r.data.params["lam"] for r in runs if r.data.metrics["train/epochs_run"] < EPOCHS}
    assert stopped, "ASHA stopped no trial: the test exercises nothing"
    state = max((tmp_path / "results" / SEARCH_SPEC["name"]).glob("searcher-state-*.pkl"))
    searcher = pickle.loads(state.read_bytes())
    study = searcher["studies"][0]._ot_study
    states = {f"{t.params['lam']:g}": t.state.name for t in study.trials}
    assert len(states) == 8
    for lam, state_name in states.items():
        assert state_name == ("FAIL" if lam in {f"{float(s):g}" for s in stopped} else "COMPLETE")
