"""A real sweep: `satsweep run` on a real local Ray instance with a real SQLite MLflow store."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tracking.select import SelectionError, best_run_id
from trainables.activations import ACTIVATIONS
from trainables.data import load_dataset

pytestmark = pytest.mark.integration
SHARED_SECTIONS = ("dataset", "training", "evaluation", "audit")

EPOCHS = 5
SPEC = {
    "name": "it-sweep",
    "grid": {
        "architectures": [
            {"kind": "mlp", "hidden": [32]},
            {"kind": "cnn", "channels": [4], "hidden": [16]},
        ],
        "activations": ["relu", "sigmoid"],
        "lambdas": [0.5],
    },
    "training": {
        "epochs": EPOCHS,
        "batch_size": 32,
        "optimizer": {"lr": 3.0e-3},
        "penalty": {"schedule": "linear", "warmup_epochs": 2},
    },
    "evaluation": {
        "size": 200,
        "eps": [0.1, 0.3],
        "pgd_steps": 10,
        "apgd_iterations": 10,
        "noise_draws": 10,
    },
    "audit": {"top_k": 1, "eps": [0.1], "square_queries": 100},
    "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
}


def run_spec(work, spec: dict) -> subprocess.CompletedProcess:
    """`satsweep run spec.yaml` in `work`, as a user types it; the sweep must succeed."""
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--storage-path", "results"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def swept(work, spec: dict) -> tuple[MlflowClient, list, object]:
    """Run `spec` in `work`; (client on its store, its trial runs, its sweep run)."""
    run_spec(work, spec)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(spec["name"]).experiment_id])
    trials = [r for r in runs if r.data.tags["satsweep.role"] == "trial"]
    return client, trials, next(r for r in runs if r.data.tags["satsweep.role"] == "sweep")


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    out = run_spec(work, SPEC)
    uri = f"sqlite:///{work / 'mlflow.db'}"  # the default store: ./mlflow.db, made absolute
    return out, MlflowClient(uri), work


def runs_by_role(client):
    exp = client.get_experiment_by_name("it-sweep")
    runs = client.search_runs([exp.experiment_id])
    return (
        [r for r in runs if r.data.tags.get("satsweep.role") == "sweep"],
        [r for r in runs if r.data.tags.get("satsweep.role") == "trial"],
    )


def test_store_holds_one_sweep_run_and_four_finished_linked_trials(finished_sweep):
    out, client, work = finished_sweep
    assert f"sqlite:///{work / 'mlflow.db'}" in out.stdout and " ui" in out.stdout
    sweeps, trials = runs_by_role(client)
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert len(trials) == 4
    assert {t.info.status for t in trials} == {"FINISHED"}
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {sweeps[0].info.run_id}
    assert {t.info.run_name for t in trials} == {
        f"{act}_{a}_lam0.5_seed0" for a in ("mlp-32", "cnn-c4-16") for act in ("relu", "sigmoid")
    }


def test_a_twin_the_grid_lacks_is_trained_once_by_the_trial_that_needs_it(finished_sweep):
    """Every trial here has lambda = 0.5 and a twin of its own: each trains it once, logs it,
    and the parent's epoch count says so (twice the grid's epochs)."""
    _, client, _ = finished_sweep
    sweeps, trials = runs_by_role(client)
    twins = [t.data.tags["satsweep.twin_trained"] for t in trials]
    assert sorted(twins) == sorted(t.info.run_name.replace("lam0.5", "lam0") for t in trials)
    assert {t.data.metrics["train/twin_epochs_trained"] for t in trials} == {EPOCHS}
    usage = sweeps[0].data.metrics
    assert usage["sweep/training_epochs_run"] == 2 * usage["sweep/grid_epochs"] == 2 * 4 * EPOCHS


def test_every_trial_logs_clean_acc_per_epoch(finished_sweep):
    _, client, _ = finished_sweep
    _, trials = runs_by_role(client)
    for t in trials:
        history = client.get_metric_history(t.info.run_id, "clean_acc")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        assert "early_stopping/eval_pgd_acc" not in t.data.metrics  # only ASHA pays for it
        assert all(0.0 <= m.value <= 1.0 for m in history)
        lam = sorted(
            client.get_metric_history(t.info.run_id, "train/effective_lambda"), key=lambda m: m.step
        )
        assert [m.value for m in lam] == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5])


def test_trial_runs_carry_params_and_provenance(finished_sweep):
    _, client, _ = finished_sweep
    sweeps, trials = runs_by_role(client)
    params, tags = trials[0].data.params, trials[0].data.tags
    assert params["numerics.dtype"] == "float32" and params["training.penalty.reduction"] == "mean"
    assert params["training.penalty.schedule"] == "linear"
    assert params["training.optimizer.lr"] == str(SPEC["training"]["optimizer"]["lr"])
    assert params["evaluation.pgd_steps"] == str(SPEC["evaluation"]["pgd_steps"])
    assert params["audit.square_queries"] == str(SPEC["audit"]["square_queries"])
    assert tags["satsweep.ray_trial_id"] and tags["satsweep.version.torch"]
    assert len(tags["satsweep.git_commit"]) in (40, len("unknown"))
    spec_file = client.download_artifacts(sweeps[0].info.run_id, "spec.yaml")
    with open(spec_file) as f:
        assert yaml.safe_load(f)["name"] == "it-sweep"


def test_sweep_and_trial_runs_share_the_spec_param_names(finished_sweep):
    """The MLflow compare view lines them up: every shared setting has one dotted name."""
    _, client, _ = finished_sweep
    sweeps, trials = runs_by_role(client)
    parent = sweeps[0].data.params
    shared = {k: v for k, v in parent.items() if k.split(".")[0] in SHARED_SECTIONS}
    assert len(shared) > 30  # every field of the sections, not a chosen few
    for t in trials:
        assert {k: t.data.params[k] for k in shared} == shared
        assert t.data.params["lam"] == "0.5" and t.data.params["arch.name"] in t.info.run_name
        assert t.data.params["activation"] in ACTIVATIONS


def test_ray_kept_a_checkpoint_per_trial(finished_sweep):
    _, _, work = finished_sweep
    checkpoints = list((work / "results" / "it-sweep").glob("*/checkpoint_*/state.pt"))
    assert len({c.parent.parent for c in checkpoints}) == 4


def test_every_trial_is_attacked_and_flagged(finished_sweep):
    _, client, _ = finished_sweep
    _, trials = runs_by_role(client)
    for t in trials:
        m = t.data.metrics
        for eps in ("eps_0.1", "eps_0.3", "eps_1"):
            accs = {
                k.split("/")[1]: v
                for k, v in m.items()
                if k.startswith("robust_acc/") and k.endswith("/" + eps)
            }
            if eps == "eps_1":  # the box: only PGD-CE's own figure (the rest ran on survivors)
                assert set(accs) == {"pgd_ce"}, accs
            else:
                assert len(accs) >= 6, accs
            assert m[f"worst_case_acc/{eps}"] <= min(accs.values())
        assert {"masking.zero_grad_float32", "masking.masking_suspected"} <= set(t.data.tags)
        # the summary group MLflow's charts show first repeats the final (audited) figures
        assert m["_summary/clean_acc"] == m["clean_acc"]
        assert m["_summary/worst_case_eps_0.1"] == m["worst_case_acc/eps_0.1"]
        assert m["_summary/masking_suspected"] == m["masking/masking_suspected"]
        assert t.data.tags["masking.masking_suspected"] in ("true", "false")
        assert client.list_artifacts(t.info.run_id, "saturation")
        curves = {a.path for a in client.list_artifacts(t.info.run_id, "robustness")}
        assert "robustness/curves.png" in curves


def test_audit_adds_square_and_autoattack_to_the_chosen_trials(finished_sweep):
    out, client, _ = finished_sweep
    _, trials = runs_by_role(client)
    audited = [t for t in trials if t.data.tags.get("satsweep.audited") == "true"]
    assert audited and "satsweep: audited" in out.stdout
    for t in audited:
        m = t.data.metrics
        assert {"robust_acc/square/eps_0.1", "robust_acc/autoattack/eps_0.1"} <= set(m)
        others = [v for k, v in m.items() if k.startswith("robust_acc/") and "eps_0.1" in k]
        assert m["worst_case_acc/eps_0.1"] <= min(others)


BARE_TORCH = """
import json, sys, torch
program = torch.export.load(sys.argv[1] + "/model.pt2").module()
x, y = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    acc = (program(x).argmax(1) == y).float().mean().item()
assert not {"trainables", "sweeps", "tracking", "mlflow", "ray"} & set(sys.modules)
print(json.dumps({"acc": acc, "single": program(x[:1]).shape[0]}))
"""


@pytest.fixture(scope="module")
def exported(finished_sweep, tmp_path_factory):
    _, client, work = finished_sweep
    out = tmp_path_factory.mktemp("export") / "champion"
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "export", "it-sweep", "--out", str(out),
         "--min-clean-acc", "0", "--include-flagged"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, client, done.stdout


def test_export_writes_the_files_and_registers_the_champion(exported, finished_sweep):
    out, client, stdout = exported
    assert {"model.pt2", "state_dict.pt", "config.json", "metrics.json", "MLmodel"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["sweep"] == "it-sweep" and config["input_shape"] == [1, 8, 8]
    state = torch.load(out / "state_dict.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    champion = client.get_model_version_by_alias("it-sweep", "champion")
    assert champion.run_id == config["run_id"]
    uri = f"sqlite:///{finished_sweep[2] / 'mlflow.db'}"
    assert config["run_id"] == best_run_id(uri, "it-sweep", min_clean_acc=0, include_flagged=True)
    sweep_run = runs_by_role(client)[0][0]  # export does not record a selection on the sweep
    assert not any(k.startswith("satsweep.selection.") for k in sweep_run.data.tags)


def test_export_of_a_run_id_leaves_the_champion_alias_unless_asked(
    exported, finished_sweep, tmp_path
):
    out, client, _ = exported
    uri = f"sqlite:///{finished_sweep[2] / 'mlflow.db'}"
    champion = client.get_model_version_by_alias("it-sweep", "champion").run_id
    _, trials = runs_by_role(client)
    other = next(t.info.run_id for t in trials if t.info.run_id != champion)

    def export(folder: str, *flags: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", "export", other, "--out", str(tmp_path / folder),
             "--tracking-uri", uri, *flags],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return client.get_model_version_by_alias("it-sweep", "champion").run_id

    assert export("plain") == champion
    assert export("promoted", "--champion") == other


def test_exported_program_reproduces_clean_acc_with_torch_only(exported, tmp_path):
    out, client, _ = exported
    data = load_dataset("digits", None, False)
    torch.save((data.x_test, data.y_test), tmp_path / "test.pt")
    done = subprocess.run(
        [sys.executable, "-c", BARE_TORCH, str(out), str(tmp_path / "test.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    logged = client.get_run(json.loads((out / "config.json").read_text())["run_id"])
    assert abs(result["acc"] - logged.data.metrics["clean_acc"]) <= 0.005
    assert result["single"] == 1  # the batch dimension is dynamic


def test_report_is_on_the_sweep_run(finished_sweep):
    _, client, _ = finished_sweep
    sweep_run = runs_by_role(client)[0][0]
    names = {a.path for a in client.list_artifacts(sweep_run.info.run_id, "report")}
    assert {
        "report/robustness_vs_lambda.png",
        "report/clean_vs_worst_case.png",
        "report/saturation_vs_lambda.png",
        "report/worst_case_curves.png",
        "report/summary.md",
    } <= names


def test_console_is_the_runs_own_voice(finished_sweep):
    out, _, _ = finished_sweep
    lines = out.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{k}/4" for k in range(1, 5)]
    assert all("ETA" in line and "clean " in line and "worst@" in line for line in progress)
    assert any(line.startswith("satsweep: champion ") for line in lines)
    nexts = lines[[i for i, line in enumerate(lines) if line.startswith("satsweep: next:")][0] :]
    assert any(" ui" in line and "browse every run" in line for line in nexts)
    everything = out.stdout + out.stderr
    assert "WARNING" not in everything and "╭" not in everything and "Traceback" not in everything
    assert len(lines) <= 40
    assert "slot utilisation" in out.stdout


MLFLOW_LOADERS = """
import json, sys, mlflow.pyfunc, mlflow.pytorch, torch
x, _ = torch.load(sys.argv[2], weights_only=True)
exported = torch.export.load(sys.argv[1] + "/model.pt2").module()
with torch.no_grad():
    want = exported(x)
    by_torch_flavor = mlflow.pytorch.load_model("models:/it-sweep@champion")(x)
served = mlflow.pyfunc.load_model("models:/it-sweep@champion")
by_pyfunc = torch.as_tensor(served.predict(x.numpy()))
print(json.dumps({"pytorch": (by_torch_flavor - want).abs().max().item(),
                  "pyfunc": (by_pyfunc - want).abs().max().item(),
                  "same_digits": bool((by_pyfunc.argmax(1) == want.argmax(1)).all())}))
"""


@pytest.fixture(scope="module")
def promoted(finished_sweep, tmp_path_factory):
    """A trial exported with --champion now: the folder the registry's alias points at, whatever
    the tests before moved it to."""
    _, client, work = finished_sweep
    _, trials = runs_by_role(client)
    out = tmp_path_factory.mktemp("promoted") / "champion"
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "export", trials[-1].info.run_id, "--out", str(out),
         "--champion"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def test_inputs(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "test.pt"
    data = load_dataset("digits", None, False)
    torch.save((data.x_test, data.y_test), path)
    return path, data


def test_the_registered_champion_loads_through_each_mlflow_loader(
    promoted, finished_sweep, test_inputs
):
    """In a fresh process, as a user of the registry would: both MLflow loaders predict what
    the exported program does."""
    out = promoted
    path, _ = test_inputs
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{finished_sweep[2] / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-c", MLFLOW_LOADERS, str(out), str(path)],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pytorch"] <= 1e-5 and result["pyfunc"] <= 1e-5 and result["same_digits"]


def http_until(url: str, server: subprocess.Popen, timeout_s: float = 240) -> None:
    """Wait until `url` answers 200 (or fail if the server exits), polling."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


def test_mlflow_models_serve_answers_with_the_champions_predictions(
    promoted, finished_sweep, test_inputs
):
    out = promoted
    _, data = test_inputs
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{finished_sweep[2] / 'mlflow.db'}"}
    # as a user with the project's environment activated: MLflow runs `uvicorn` from PATH
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/it-sweep@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        http_until(f"http://127.0.0.1:{port}/ping", server)
        x = data.x_test[:8]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            served = torch.tensor(json.loads(answer.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    exported_program = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(served, exported_program(x), atol=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_satsweep_ui_says_ready_once_it_answers_and_opens_the_runs(finished_sweep):
    _, client, work = finished_sweep
    ui = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "ui", "--sweep", "it-sweep"],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        while not any("ready" in line for line in lines):
            line = ui.stdout.readline()
            assert line, ui.stderr.read()[-3000:]  # it exited before saying it was ready
            lines.append(line)
        url = lines[-1].split("ready: ")[1].split()[0]
        with urllib.request.urlopen(url.split("#")[0], timeout=10) as answer:  # answers at once
            assert answer.status == 200
        search = url.split("#")[0] + "ajax-api/2.0/mlflow/experiments/search?max_results=5"
        with urllib.request.urlopen(search, timeout=10) as answer:
            assert b'"it-sweep"' in answer.read()  # it serves the store it was pointed at
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=60)
    experiment = client.get_experiment_by_name("it-sweep")
    assert f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in url
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(lines) == 2  # what it is doing, then the address: MLflow's own lines go to a log


def test_the_parent_names_the_champion_and_one_filter_finds_it(finished_sweep):
    _, client, work = finished_sweep
    sweeps, trials = runs_by_role(client)
    description = sweeps[0].data.tags["mlflow.note.content"]
    assert "Rule:" in description and "worst case at eps" in description
    experiment = client.get_experiment_by_name("it-sweep").experiment_id
    found = client.search_runs([experiment], "tags.`satsweep.champion` = 'true'")
    try:
        champion = best_run_id(f"sqlite:///{work / 'mlflow.db'}", "it-sweep")
    except SelectionError:
        assert not found and "No configuration passes the rule" in description
        return
    assert [r.info.run_id for r in found] == [champion]
    assert f"Champion: {found[0].info.run_name.removesuffix('_seed0')}" in description


def test_every_trial_says_whether_it_is_in_selection_and_why(finished_sweep):
    _, _, _ = finished_sweep
    _, trials = runs_by_role(finished_sweep[1])
    for t in trials:
        note, where = t.data.tags["mlflow.note.content"], t.data.tags["satsweep.selection"]
        assert note.startswith(
            ("In selection", "**Out** of selection", "**Champion**, in selection")
        )
        assert (where == "in") == (not note.startswith("**Out**"))
        assert f"clean {t.data.metrics['clean_acc']:.3f}" in note and "floor 0.9" in note
        flagged = [f for f in ("stabilisation_gap", "zero_grad_float32")
                   if t.data.tags.get(f"masking.{f}") == "true"]  # fmt: skip
        for flag in flagged:  # each flag beside the value and threshold that raised it
            value = t.data.metrics[f"masking/{flag}"]
            assert f"{flag} {value:.3f} >" in note


def test_trials_log_their_data_as_mlflow_datasets_and_their_curves_as_images(finished_sweep):
    _, client, _ = finished_sweep
    _, trials = runs_by_role(client)
    for t in trials:
        inputs = client.get_run(t.info.run_id).inputs.dataset_inputs
        contexts = {
            {tag.key: tag.value for tag in i.tags}["mlflow.data.context"]: i for i in inputs
        }
        assert set(contexts) == {"train", "test", "eval"}
        evaluation = contexts["eval"]
        tags = {tag.key: tag.value for tag in evaluation.tags}
        assert tags["satsweep.eval_seed"] == "0" and tags["satsweep.eval_size"] == "200"
        assert json.loads(evaluation.dataset.profile)["features_shape"] == [200, 1, 8, 8]
        images = [a.path for a in client.list_artifacts(t.info.run_id, "images")]
        assert any("robustness_curves" in path for path in images), images
