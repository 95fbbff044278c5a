"""After the grid the driver reads the sweep once, as one record, and judges it by one rule.

A real sweep (a real local Ray instance, a real SQLite MLflow store) whose spec asks for
`selection.eps: 0.2`: the driver reads the trial runs once after the grid (plus one read of each
audited run as its audit arrives: counted by wrapping the real read functions), audits and
crowns at 0.2, and `satsweep best` and `satsweep export` on the same store, with no flags, name
the same champion by the sweep's logged rule.
"""

import contextlib
import io
import subprocess
import sys

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

import tracking.record
import tracking.sweep_run
from sweeps.launch import run_sweep
from sweeps.spec import parse_spec

pytestmark = pytest.mark.integration

SPEC = {
    "name": "record-sweep",
    "grid": {"architectures": [{"kind": "mlp", "hidden": [32]}],
             "activations": ["relu", "sigmoid"], "lambdas": [0.0, 0.5]},
    "training": {"epochs": 4, "batch_size": 32, "optimizer": {"lr": 3.0e-3},
                 "penalty": {"schedule": "constant"}},
    "evaluation": {"size": 100, "eps": [0.1, 0.2], "pgd_steps": 5, "apgd_iterations": 5,
                   "noise_draws": 5, "attacks": ["fgsm", "fgsm_stable", "pgd_ce", "pgd_margin"]},
    "audit": {"top_k": 1, "square_queries": 30, "attacks": ["square"]},
    "selection": {"eps": 0.2, "min_clean_acc": 0.5},
    "resources": {"max_concurrent_trials": 2},
}  # fmt: skip


class Counted:
    """Wraps a real function and counts its calls (the function still runs)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    work = tmp_path_factory.mktemp("record")
    spec = parse_spec(SPEC)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    reads = Counted(tracking.record.trial_runs)  # the record's paging read of the trial runs
    searches = Counted(tracking.sweep_run.search_all)  # reconcile's and interrupt's reads
    refreshes = Counted(tracking.record.SweepRecord.refresh)
    patch = pytest.MonkeyPatch()
    patch.setattr(tracking.record, "trial_runs", reads)
    patch.setattr(tracking.sweep_run, "search_all", searches)
    patch.setattr(tracking.record.SweepRecord, "refresh", lambda self, client, ids: refreshes(
        self, client, ids))  # fmt: skip
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            outcome = run_sweep(spec, yaml.safe_dump(SPEC), uri, str(work / "results"))
    finally:
        patch.undo()
        ray.shutdown()
    return work, uri, outcome, reads.calls, searches.calls, refreshes.calls, printed.getvalue()


def audited_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("record-sweep")
    runs = client.search_runs([exp.experiment_id], "tags.`satsweep.role` = 'trial'")
    return [r for r in runs if r.data.tags.get("satsweep.audited") == "true"]


def test_after_the_grid_the_trial_runs_are_read_once_plus_each_audited_run(swept):
    _, uri, outcome, reads, searches, refreshes, _ = swept
    assert outcome.failed == 0
    assert reads == 1  # one read of every trial run after the grid (report, costs, lines too)
    assert searches == 0  # nothing left RUNNING to reconcile by searching
    assert refreshes == len(audited_runs(uri)) >= 1  # one read per audited run


def satsweep(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_sweeps_rule_crowns_prints_and_exports_one_champion(swept):
    work, uri, _, _, _, _, printed = swept
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("record-sweep")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`satsweep.role` = 'sweep'")
    assert parent.data.params["selection.eps"] == "0.2"  # the rule, logged once
    best = satsweep("best", "record-sweep", "--json", "--tracking-uri", uri, cwd=work)
    assert best.returncode == 0, best.stderr
    ranking = yaml.safe_load(best.stdout)
    assert ranking["eps"] == 0.2 and ranking["min_clean_acc"] == 0.5 and not best.stderr
    champion = ranking["champion"]
    assert any(r.info.run_id == champion for r in audited_runs(uri))  # crowned only once audited
    name = ranking["champion_configuration"]
    assert f"satsweep: champion {name} (1 seed): worst case" in printed and "at eps 0.2" in printed
    assert "worst@0.2" in printed  # the audit lines speak the rule's budget
    out = satsweep("export", "record-sweep", "--out", str(work / "champion"), "--tracking-uri",
                   uri, cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert champion in out.stdout
