"""Selection on a real SQLite MLflow store holding runs with known metrics: the floor, when a
masking flag excludes a trial (unaudited, or a flag that questions every attack) and when it
does not (audited), collapsed models, the tie-break, non-finished runs, the Pareto front, and
the CLI's errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmarks.big_store import JUDGED_BY  # the thresholds a real trial logs
from tracking.metric_names import masking_tag
from tracking.record import TrialRecord
from tracking.run_notes import trial_description
from tracking.runs import AUDITED_TAG
from tracking.select import (
    SelectionError,
    SelectionRule,
    best_run_id,
    load_sweep,
    pareto_front,
    select_champion,
    verdict,
)

GAP, UNBOUNDED = ["stabilisation_gap"], ["unbounded_failure"]
AUDITED = {"satsweep.audited": "true"}
# name: (clean, worst at 0.1, masking flags, status tag, MLflow status, other tags[, metrics])
TRIALS = {
    "a": (0.95, 0.30, [], "finished", "FINISHED", {}),
    "b": (0.97, 0.60, GAP, "finished", "FINISHED", {}),  # flagged, not audited: out
    "c": (0.85, 0.70, [], "finished", "FINISHED", {}),  # below the floor
    "d": (0.96, 0.30, [], "finished", "FINISHED", {}),
    "e": (0.99, 0.90, [], "failed", "FAILED", {}),
    "f": (0.98, 0.80, [], "stopped_early", "FINISHED", {}),
    "g": (0.95, 0.65, GAP, "finished", "FINISHED", AUDITED),  # confirmed by the audit
    # audited, but every attack together leaves 0.3 standing in the whole box: in doubt
    "h": (0.96, 0.75, UNBOUNDED, "finished", "FINISHED", AUDITED, {"worst_case_acc/eps_1": 0.3}),
    "i": (
        0.97,
        0.85,
        [],
        "finished",
        "FINISHED",
        {"satsweep.collapsed": "true"},
        {"collapsed": 1.0},
    ),
    # PGD-CE alone failed in the box, the other attacks did not: the worst case stands
    "j": (0.95, 0.50, UNBOUNDED, "finished", "FINISHED", AUDITED, {"worst_case_acc/eps_1": 0.0}),
    # audited, but the worst case rises with eps: an attack broke at the larger budget
    "k": (0.95, 0.55, GAP, "finished", "FINISHED", AUDITED, {"worst_case_acc/eps_0.2": 0.7}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("synth", artifact_location=(folder / "art").as_uri())
    parent = client.create_run(exp, run_name="synth", tags={"satsweep.role": "sweep"})
    ids = {}
    for number, (name, (clean, worst, flags, status, mlflow_status, extra, *more)) in enumerate(
        TRIALS.items()
    ):
        run = client.create_run(
            exp,
            run_name=name,
            tags={
                "satsweep.role": "trial",
                "mlflow.parentRunId": parent.info.run_id,
                "satsweep.status": status,
                "masking.masking_suspected": str(bool(flags)).lower(),
                **{f"masking.{flag}": "true" for flag in flags},
                **extra,
            },
        )
        rid = run.info.run_id
        # each its own configuration (a λ of its own), one seed
        params = {"lam": f"{number}.0", "arch.name": "mlp-8", "activation": "relu", "seed": "0",
                  **JUDGED_BY}  # fmt: skip
        for key, value in params.items():
            client.log_param(rid, key, value)
        for key, value in (
            ("clean_acc", clean),
            ("worst_case_acc/eps_0.1", worst),
            ("robust_acc/fgsm/eps_0.1", 0.99),
            *(more[0].items() if more else ()),
        ):
            client.log_metric(rid, key, value, step=3)
        client.set_terminated(rid, mlflow_status)
        ids[name] = rid
    client.set_terminated(parent.info.run_id)
    return uri, ids, parent.info.run_id


def test_an_audited_flagged_trial_is_not_hidden_by_its_flag(store):
    uri, ids, _ = store  # g: flagged, audited, 0.65 beats the unflagged 0.30s
    assert best_run_id(uri, "synth") == ids["g"]


def trials(uri: str) -> list:
    return list(load_sweep(MlflowClient(uri), "synth").trials.values())


def verdicts(uri: str, **rule) -> dict[str, tuple[bool, str]]:
    rule = SelectionRule(**({"eps": 0.1} | rule))
    return {t.name: verdict(t, rule) for t in trials(uri)}


def test_each_trial_is_in_or_out_for_a_stated_reason(store):
    uri, _, _ = store
    v = verdicts(uri)
    assert v["a"] == (True, "in: no masking flag") and v["d"][0]
    assert not v["b"][0] and "not audited" in v["b"][1]  # an unconfirmed worst case
    assert not v["c"][0] and "< floor 0.9" in v["c"][1]
    assert not v["e"][0] and "FAILED" in v["e"][1]
    assert not v["f"][0] and "stopped_early" in v["f"][1]
    assert v["g"][0] and "includes the audit" in v["g"][1]
    assert not v["h"][0] and "leaves 0.300" in v["h"][1]  # audited, yet the worst case doubted
    assert not v["i"][0] and "collapsed" in v["i"][1]
    assert v["j"][0] and "includes the audit" in v["j"][1]
    assert not v["k"][0] and "rises from 0.550" in v["k"][1]


def test_ties_go_to_clean_accuracy(store):
    uri, ids, _ = store
    plain = [t for t in trials(uri) if t.name in ("a", "d")]
    champion = select_champion(plain, SelectionRule(eps=0.1))
    assert champion.model.run_id == ids["d"]  # ties a on worst, wins clean


def test_flagged_trials_count_when_asked(store):
    uri, ids, _ = store
    assert best_run_id(uri, "synth", include_flagged=True) == ids["h"]
    assert verdicts(uri, include_flagged=True)["i"][0] is False  # collapsed stays out


def test_the_floor_is_honoured(store):
    uri, ids, _ = store
    assert best_run_id(uri, "synth", min_clean_acc=0.8) == ids["c"]
    with pytest.raises(SelectionError, match="no finished trial"):
        best_run_id(uri, "synth", min_clean_acc=0.999)


def test_pareto_front_of_finished_uncollapsed_trials(store):
    uri, ids, _ = store
    front = pareto_front(trials(uri), 0.1)
    assert [c.trials[0].run_id for c in front] == [ids["h"], ids["b"]]


def test_unknown_sweep_and_missing_eps_are_explained(store):
    uri, _, _ = store
    with pytest.raises(SelectionError, match="no sweep named 'nope'.*synth"):
        best_run_id(uri, "nope")
    with pytest.raises(SelectionError, match="available eps: 0.1"):
        best_run_id(uri, "synth", eps=0.3)


def satsweep(*args):
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, timeout=120
    )


def selection_tags(uri: str, parent: str) -> dict:
    tags = MlflowClient(uri).get_run(parent).data.tags
    return {k: v for k, v in tags.items() if k.startswith("satsweep.selection.")}


def test_cli_best_prints_the_table_and_writes_nothing(store):
    uri, _, parent = store
    before = MlflowClient(uri).get_run(parent).data
    out = satsweep("best", "synth", "--tracking-uri", uri)
    assert out.returncode == 0, out.stderr
    assert "champion g (1 seed)" in out.stdout and "Pareto front" in out.stdout
    assert "out: clean 0.850 < floor 0.9" in out.stdout and "out: FAILED" in out.stdout
    after = MlflowClient(uri).get_run(parent).data
    assert after.tags == before.tags and after.params == before.params
    assert "recorded" not in out.stdout


def test_cli_best_record_writes_the_rule_and_says_so(store):
    uri, ids, parent = store
    out = satsweep("best", "synth", "--record", "--tracking-uri", uri)
    assert out.returncode == 0, out.stderr
    assert f"recorded this selection on the sweep run {parent}" in out.stdout
    tags = selection_tags(uri, parent)
    assert tags["satsweep.selection.champion_run_id"] == ids["g"]
    assert tags["satsweep.selection.min_clean_acc"] == "0.9"


@pytest.mark.parametrize("args, message", [
    (["best", "nope"], "no sweep named"),
    (["export", "0123456789abcdef0123456789abcdef", "--out", "x"], "no run with id"),
    (["best", "synth", "--eps", "3"], "--eps"),
])  # fmt: skip
def test_cli_errors_exit_2_without_traceback(store, args, message):
    uri, _, _ = store
    out = satsweep(*args, "--tracking-uri", uri)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_cli_refuses_a_store_that_does_not_exist(tmp_path):
    out = satsweep("best", "synth", "--tracking-uri", f"sqlite:///{tmp_path}/none.db")
    assert out.returncode == 2 and "no MLflow store" in out.stderr
    assert not (tmp_path / "none.db").exists()


def test_selection_pages_past_the_first_thousand_runs(tmp_path):
    """MLflow answers at most a page of runs per request; the best of 1,100 trials sits past
    the first 1,000 (runs come back newest first, so the oldest is on the last page)."""
    from benchmarks.big_store import SWEEP, build
    from tracking.runs import PAGE

    trials = PAGE + 100
    uri, best = build(tmp_path, trials)
    assert len(load_sweep(MlflowClient(uri), SWEEP).trials) == trials
    assert best_run_id(uri, SWEEP) == best


def test_the_rule_is_the_sweeps_own_and_flags_override_it_saying_so(store):
    """`best` judges a sweep by the rule it logged (`selection.*` on the sweep run); a flag
    overrides one input and the command says which. (Last in the module: it logs a rule on the
    shared store's sweep run.)"""
    uri, ids, parent = store
    client = MlflowClient(uri)
    client.log_param(parent, "selection.min_clean_acc", "0.8")  # this sweep's floor
    client.log_param(parent, "selection.eps", "0.1")
    assert best_run_id(uri, "synth") == ids["c"]  # 0.85 clears the sweep's own 0.8
    out = satsweep("best", "synth", "--tracking-uri", uri, "--min-clean-acc", "0.9")
    assert out.returncode == 0 and "champion g (1 seed)" in out.stdout
    assert "--min-clean-acc 0.9 overrides the sweep's 0.8" in out.stderr


def synthetic_sweep(folder, trials: list[dict]) -> str:
    """A store holding one sweep whose trials have these params and metrics (each dict:
    name, params, metrics); every trial finished, unflagged."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("seeds", artifact_location=(folder / "art").as_uri())
    parent = client.create_run(exp, run_name="seeds", tags={"satsweep.role": "sweep"})
    for t in trials:
        run = client.create_run(exp, run_name=t["name"], tags={
            "satsweep.role": "trial", "mlflow.parentRunId": parent.info.run_id,
            "satsweep.status": "finished", "masking.masking_suspected": "false"})  # fmt: skip
        for key, value in {**JUDGED_BY, "arch.name": "mlp-8", "activation": "relu",
                           **t["params"]}.items():  # fmt: skip
            client.log_param(run.info.run_id, key, value)
        for key, value in {"clean_acc": 0.95, "points/eval": 400.0, **t["metrics"]}.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    return uri


def worst_of(all_points: float, selection: float, report: float) -> dict:
    return {"worst_case_acc/eps_0.1": all_points,
            "worst_case_acc/eps_0.1/selection_points": selection,
            "worst_case_acc/eps_0.1/report_points": report}  # fmt: skip


def test_a_lucky_seed_does_not_win(tmp_path):
    """Recipe A: one seed at 0.9, two at 0.1 (mean 0.37); recipe B: three seeds at 0.5. The best
    single trial is A's lucky seed; the rule ranks recipes, so B wins."""
    lucky = [0.9, 0.1, 0.1]
    trials = [
        {
            "name": f"a_seed{s}",
            "params": {"lam": "1.0", "seed": str(s)},
            "metrics": worst_of(w, w, w),
        }
        for s, w in enumerate(lucky)
    ]
    trials += [{"name": f"b_seed{s}", "params": {"lam": "2.0", "seed": str(s)},
                "metrics": worst_of(0.5, 0.5, 0.5)} for s in range(3)]  # fmt: skip
    uri = synthetic_sweep(tmp_path, trials)
    champion = select_champion(trials_of(uri, "seeds"), SelectionRule(eps=0.1))
    assert champion.configuration.name == "b" and len(champion.configuration.trials) == 3
    best = satsweep("best", "seeds", "--json", "--tracking-uri", uri)
    ranking = json.loads(best.stdout)
    assert ranking["champion_configuration"] == "b"
    (a,) = [c for c in ranking["configurations"] if c["configuration"] == "a"]
    assert a["seeds"] == [0, 1, 2] and a["worst"] == pytest.approx(sum(lucky) / 3)
    assert (
        a["worst_min"] == 0.1
        and a["worst_max"] == 0.9
        and a["worst_ci"][0] < 0.37 < a["worst_ci"][1]
    )


def trials_of(uri: str, sweep: str) -> list:
    return list(load_sweep(MlflowClient(uri), sweep).trials.values())


def shiny_and_steady(folder) -> str:
    """Two one-seed trials: `shiny` best on the selection points (0.90) but worst on the report
    points (0.40), `steady` the other way round (0.60 and 0.80) and best over all points."""
    return synthetic_sweep(folder, [
        {"name": "shiny_seed0", "params": {"lam": "1.0", "seed": "0"},
         "metrics": worst_of(0.65, 0.90, 0.40)},
        {"name": "steady_seed0", "params": {"lam": "2.0", "seed": "0"},
         "metrics": worst_of(0.70, 0.60, 0.80)},
    ])  # fmt: skip


def test_the_champion_is_graded_on_points_that_did_not_choose_it(tmp_path):
    """The rule ranks by the selection points and the champion is reported on the others: a
    trial that shines on the selection points only wins, and is reported at its other figure."""
    uri = shiny_and_steady(tmp_path)
    ranking = json.loads(satsweep("best", "seeds", "--json", "--tracking-uri", uri).stdout)
    assert ranking["champion_configuration"] == "shiny"  # chosen on the selection points
    assert ranking["champion_worst_selection"] == 0.90
    assert ranking["champion_worst_report"] == 0.40  # and reported where it did not choose
    low, high = ranking["champion_worst_report_ci"]
    assert low < 0.40 < high and high - low > 0.08  # 200 report points: about ±7 points


def test_the_selection_and_report_points_split_every_evaluation_set_in_two():
    import torch

    from trainables.data import selection_points

    for n in (1, 7, 450, 2000):
        chosen = selection_points(n, seed=0)
        assert int(chosen.sum()) == (n + 1) // 2 and len(chosen) == n
        assert torch.equal(chosen, selection_points(n, seed=0))  # the same for every trial
    assert not torch.equal(selection_points(450, 0), selection_points(450, 1))


def test_the_audit_ranks_trials_as_the_rule_does(tmp_path):
    """Top-1 audit candidate: the trial the rule would crown (best on the selection points),
    not the one best over all points, so the champion's audit is not left to run alone."""
    from sweeps.audit import audit_candidates

    uri = shiny_and_steady(tmp_path)
    record = load_sweep(MlflowClient(uri), "seeds")
    (top,) = audit_candidates(record, SelectionRule(eps=0.1), top_k=1)
    assert top.name == "shiny_seed0"
    assert select_champion(record.trials.values(), SelectionRule(eps=0.1)).model.name == top.name


def flagged_trial(clean: float, audited: bool, gap_threshold: str) -> TrialRecord:
    return TrialRecord(
        run_id="r", name="lam1_relu_mlp-8_seed0", status="finished",
        params={**JUDGED_BY, "evaluation.masking.gap_threshold": gap_threshold},
        metrics={"clean_acc": clean, "masking/stabilisation_gap": 0.3,
                 "worst_case_acc/eps_0.1": 0.2, "worst_case_acc/eps_1": 0.0},
        tags={masking_tag("masking_suspected"): "true", masking_tag("stabilisation_gap"): "true",
              AUDITED_TAG: "true" if audited else "false"},
        start_ms=0, end_ms=1,
    )  # fmt: skip


def test_a_trials_description_puts_each_threshold_beside_the_value_it_judged():
    rule = SelectionRule(eps=0.1, min_clean_acc=0.9)
    out = trial_description(flagged_trial(0.85, audited=False, gap_threshold="0.25"), rule, False)
    assert out.startswith("**Out** of selection: clean 0.850 < floor 0.9")
    assert "stabilisation_gap 0.300 > 0.25" in out and "worst case 0.200 at ε = 0.1" in out
    admitted = trial_description(flagged_trial(0.95, audited=True, gap_threshold="0.1"), rule, True)
    assert admitted.startswith("**Champion**, in selection: flagged (stabilisation_gap")
    assert "0.300 > 0.1" in admitted and "clean 0.950 (floor 0.9)" in admitted


@pytest.mark.parametrize("per_example_points", [0, 60])
def test_report_pairs_the_runs_that_carry_per_example_records_and_says_what_it_left_out(
    tmp_path, per_example_points
):
    """A store whose runs predate per-example records (or lost them) still gets its report,
    which says the comparisons were left out; runs that carry them are compared (λ k against
    λ 0, seeds grouped). No traceback and no library warning on the console either way."""
    from benchmarks.big_store import SWEEP, build

    uri, _ = build(tmp_path, trials=12, seeds=2, per_example_points=per_example_points)
    out = satsweep("report", SWEEP, "--tracking-uri", uri)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
    client = MlflowClient(uri)
    parent = load_sweep(client, SWEEP).parent_run_id
    summary = client.download_artifacts(parent, "report/summary.md", str(tmp_path))
    text = Path(summary).read_text()
    compared = [line for line in text.splitlines() if line.startswith("| λ=")]
    if per_example_points:
        assert len(compared) == 5 and "left out" not in text  # λ 1..5 against λ 0
    else:
        assert compared == [] and "5 comparisons left out" in text
