"""A real sweep with the defence axis: `satsweep run` on a local Ray instance and a SQLite
MLflow store; the defence is a param and part of the run name, the overfitting check and the
training cost are logged, and the report compares the defences. The grid holds every lambda = 0
twin, so no model is trained twice."""

from pathlib import Path

import pytest

from tests.integration.test_sweep import swept

pytestmark = pytest.mark.integration

SPEC = {
    "name": "it-defences",
    "grid": {
        "architectures": [{"kind": "mlp", "hidden": [32]}],
        "activations": ["relu"],
        "lambdas": [0.0, 0.5],
        "defences": [{"kind": "none"}, {"kind": "fgsm_rs", "eps": 0.1, "keep_best": True}],
    },
    "training": {"epochs": 3, "batch_size": 32, "optimizer": {"lr": 3.0e-3},
                 "penalty": {"warmup_epochs": 1}},
    "evaluation": {"size": 100, "eps": [0.1], "pgd_steps": 5, "apgd_iterations": 5,
                   "noise_draws": 5},
    "audit": {"top_k": 1, "square_queries": 50},
}  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    client, trials, parent = swept(tmp_path_factory.mktemp("defences"), SPEC)
    by_defence = {r.data.params["defence"]: r for r in trials if r.data.params["lam"] == "0.0"}
    return client, by_defence, parent, trials


def test_no_model_is_trained_twice_when_the_grid_holds_every_twin(sweep):
    *_, parent, trials = sweep
    assert len(trials) == 4
    for run in trials:  # the lambda = 0.5 trials took their twin's logged weights
        assert run.data.metrics["train/twin_epochs_trained"] == 0
        assert run.data.metrics["train/epochs_run"] == 3
    usage = parent.data.metrics
    assert usage["sweep/training_epochs_run"] == usage["sweep/grid_epochs"] == 4 * 3
    assert usage["sweep/training_epochs_ratio"] == 1.0
    assert 0 < usage["sweep/slot_utilisation"] <= 1


def test_each_defence_is_a_param_and_in_the_run_name(sweep):
    _, trials, _, _ = sweep
    assert set(trials) == {"none", "fgsm_rs"}
    fgsm = trials["fgsm_rs"]
    assert fgsm.info.run_name == "lam0_fgsm_rs-e0.1-a0.125-best_relu_mlp-32_seed0"
    assert (
        fgsm.data.params["defence.eps"] == "0.1"
        and fgsm.data.params["defence.step_size"] == "0.125"
    )
    assert fgsm.data.params["defence.penalty_on"] == "adversarial"
    assert trials["none"].info.run_name == "lam0_relu_mlp-32_seed0"


def test_the_defended_trial_logs_its_check_and_its_cost(sweep):
    client, trials, _, _ = sweep
    run_id = trials["fgsm_rs"].info.run_id
    checks = client.get_metric_history(run_id, "overfitting/train_pgd_acc")
    assert sorted(m.step for m in checks) == [1, 2, 3]
    assert len(client.get_metric_history(run_id, "catastrophic_overfitting")) == 3
    assert 1 <= trials["fgsm_rs"].data.metrics["train/kept_epoch"] <= 3
    # the cost is logged per epoch; how it compares with `none` is a ratio in `make bench`
    # (wall-clock seconds of two trials are not comparable on a loaded machine)
    seconds = client.get_metric_history(run_id, "timing/train_seconds")
    assert sorted(m.step for m in seconds) == [1, 2, 3] and all(m.value > 0 for m in seconds)
    assert trials["fgsm_rs"].data.metrics["timing/train_seconds_per_epoch"] > 0


def test_report_compares_the_defences(sweep):
    client, _, parent, _ = sweep
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/defence_comparison.png" in names
    path = client.download_artifacts(parent.info.run_id, "report/summary.md")
    summary = Path(path).read_text()
    assert "## Defences compared" in summary and "fgsm_rs ε=0.1" in summary
    assert "(champion)" in summary
