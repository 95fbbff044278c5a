"""Answers with evidence, on a real two-seed sweep (a real local Ray instance, a real SQLite
MLflow store, the bundled digits): every trial logs the bounds of its worst case and clean
accuracy, `best --json` groups the seeds into configurations, `compare` gives numbers this test
recomputes from the trials' own per_example.json, and the report compares each λ with λ = 0."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from scipy import stats

pytestmark = pytest.mark.integration

SPEC = {
    "name": "evidence",
    "grid": {"architectures": [{"kind": "mlp", "hidden": [32]}], "activations": ["relu"],
             "lambdas": [0.0, 0.5], "seeds": [0, 1]},
    "training": {"epochs": 4, "batch_size": 32, "optimizer": {"lr": 3.0e-3},
                 "penalty": {"schedule": "constant"}},
    "evaluation": {"size": 300, "eps": [0.1], "pgd_steps": 5,
                   "attacks": ["fgsm", "fgsm_stable", "pgd_ce", "pgd_margin"]},
    "audit": {"enabled": False},
    "selection": {"min_clean_acc": 0.5},
    "resources": {"max_concurrent_trials": 2},
}  # fmt: skip


def satsweep(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    work = tmp_path_factory.mktemp("evidence")
    (work / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    out = satsweep("run", "spec.yaml", "--storage-path", "results", cwd=work)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("evidence")
    runs = client.search_runs([exp.experiment_id], "tags.`satsweep.role` = 'trial'")
    return work, client, {r.info.run_name: r for r in runs}, out.stdout


def test_every_trial_logs_its_intervals_and_the_points_they_rest_on(swept):
    _, _, runs, stdout = swept
    for run in runs.values():
        m = run.data.metrics
        assert m["points/eval"] == 300 and m["points/clean"] == 450
        low, high = m["worst_case_acc/eps_0.1/ci_low"], m["worst_case_acc/eps_0.1/ci_high"]
        k = round(m["worst_case_acc/eps_0.1"] * 300)
        ci = stats.binomtest(k, 300).proportion_ci(method="wilson")
        assert (low, high) == pytest.approx((ci.low, ci.high))
        assert m["clean_acc/ci_low"] < m["clean_acc"] < m["clean_acc/ci_high"]
        halves = (m["worst_case_acc/eps_0.1/selection_points"] * 150
                  + m["worst_case_acc/eps_0.1/report_points"] * 150)  # fmt: skip
        assert halves == pytest.approx(k)  # the two halves partition the points
    assert "on the report points" in stdout and "[" in stdout  # the closing line's evidence


def test_best_groups_the_seeds_into_configurations(swept):
    work, _, runs, _ = swept
    uri = f"sqlite:///{work / 'mlflow.db'}"
    ranking = json.loads(satsweep("best", "evidence", "--json", "--tracking-uri", uri,
                                  cwd=work).stdout)  # fmt: skip
    configs = {c["configuration"]: c for c in ranking["configurations"]}
    assert set(configs) == {"lam0_relu_mlp-32", "lam0.5_relu_mlp-32"}
    for name, c in configs.items():
        assert c["seeds"] == [0, 1] and len(c["runs"]) == 2
        seeds = [runs[f"{name}_seed{s}"].data.metrics["worst_case_acc/eps_0.1"] for s in (0, 1)]
        assert c["worst"] == pytest.approx(np.mean(seeds))
        assert c["worst_min"] == min(seeds) and c["worst_max"] == max(seeds)
    champion = configs[ranking["champion_configuration"]]
    assert ranking["champion"] in champion["runs"] and ranking["champion_seed"] in (0, 1)


def per_example_worst(client, run) -> np.ndarray:
    path = client.download_artifacts(run.info.run_id, "robustness/per_example.json")
    record = json.loads(Path(path).read_text())
    masks = [np.array(r["robust"], bool) for r in record["results"] if r["eps"] == 0.1]
    return np.logical_and.reduce(masks)


def test_compare_of_two_trials_is_recomputed_from_their_per_example_results(swept):
    work, client, runs, _ = swept
    uri = f"sqlite:///{work / 'mlflow.db'}"
    a_name, b_name = "lam0.5_relu_mlp-32_seed0", "lam0_relu_mlp-32_seed0"
    out = satsweep("compare", "evidence", a_name, b_name, "--json", "--tracking-uri", uri,
                   cwd=work)  # fmt: skip
    result = json.loads(out.stdout)
    a, b = per_example_worst(client, runs[a_name]), per_example_worst(client, runs[b_name])
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert result["discordant"] == [a_only, b_only] and result["n_points"] == 300
    assert result["diff"] == pytest.approx(a.mean() - b.mean())
    assert result["p_value"] == pytest.approx(stats.binomtest(a_only, a_only + b_only).pvalue)
    assert result["test"] == "mcnemar_exact" and result["n_seeds"] == [1, 1]
    assert result["ci_low"] <= result["diff"] <= result["ci_high"]


def test_compare_of_two_configurations_pools_their_seeds(swept):
    work, client, runs, _ = swept
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = json.loads(satsweep("compare", "evidence", "lam=0.5", "lam=0", "--json",
                                 "--tracking-uri", uri, cwd=work).stdout)  # fmt: skip
    means = {lam: [per_example_worst(client, runs[f"lam{lam}_relu_mlp-32_seed{s}"]).mean()
                   for s in (0, 1)] for lam in ("0.5", "0")}  # fmt: skip
    assert result["diff"] == pytest.approx(np.mean(means["0.5"]) - np.mean(means["0"]))
    assert result["test"] == "welch_t" and result["n_seeds"] == [2, 2]
    words = satsweep("compare", "evidence", "lam=0.5", "lam=0", "--tracking-uri", uri, cwd=work)
    assert "points [" in words.stdout and "p = " in words.stdout


def test_the_report_compares_each_lambda_with_zero_and_says_what_it_could_detect(swept):
    _, client, runs, _ = swept
    parent_id = next(iter(runs.values())).data.tags["mlflow.parentRunId"]
    summary = Path(client.download_artifacts(parent_id, "report/summary.md")).read_text()
    assert "## Compared with the baselines" in summary
    assert "λ=0.5 vs λ=0 (mlp-32, relu, none)" in summary and "Holm" in summary
    assert "could tell apart differences of about" in summary
    assert "reported on the other" in summary  # the champion's unbiased figure
