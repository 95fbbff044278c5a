"""Sweep specs: shipped specs parse; malformed ones are refused with the field named, and the
CLI turns that into exit code 2 without a traceback."""

import copy
import subprocess
import sys

import pytest
import yaml

from sweeps.spec import SchedulerSpec, SpecError, load_spec, parse_spec
from tests.conftest import REPO
from trainables.settings import DatasetSettings, TrainingSettings

GOOD = {
    "name": "t",
    "grid": {
        "architectures": [{"kind": "mlp", "hidden": [16]}],
        "activations": ["relu"],
        "lambdas": [0.0, 1.0],
    },
}


def with_change(path: str, value):
    """GOOD with the value at a dotted path replaced (or deleted when value is DELETE)."""
    spec = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


DELETE = object()

MALFORMED = [
    # (change, value, field the message must name)
    ("name", DELETE, "name"),
    ("name", 5, "name"),
    ("grid", DELETE, "grid"),
    ("grid.lambdas", [0.0, -1.0], "grid.lambdas[1]"),
    ("grid.lambdas", "0.1", "grid.lambdas"),
    ("grid.lambdas", [], "grid.lambdas"),
    ("grid.lambdas", [1.0, 1.0], "grid.lambdas"),
    ("grid.activations", ["relu", "gelu"], "grid.activations[1]"),
    ("grid.architectures", [], "grid.architectures"),
    ("grid.architectures.0.kind", "transformer", "grid.architectures[0].kind"),
    ("grid.architectures.0.hidden", [16, 0], "grid.architectures[0].hidden[1]"),
    ("grid.architectures.0.hidden", [], "grid.architectures[0].hidden"),
    ("grid.architectures.0.channels", [8], "grid.architectures[0].channels"),
    ("grid.architectures.0.width", 3, "grid.architectures[0].width"),
    ("grid.seeds", [0.5], "grid.seeds[0]"),
    ("grid.lamdas", [0.0], "grid.lamdas"),
    ("training.epochs", 0, "training.epochs"),
    ("training.epochs", True, "training.epochs"),
    ("training.batch_size", -4, "training.batch_size"),
    ("training.optimizer.name", "lbfgs", "training.optimizer.name"),
    ("training.optimizer.lr", 0.0, "training.optimizer.lr"),
    ("training.penalty.reduction", "max", "training.penalty.reduction"),
    ("training.penalty.schedule", "cosine", "training.penalty.schedule"),
    ("training.penalty.warmup_epochs", 500, "training.penalty.warmup_epochs"),
    ("training.penalty.warmup_epochs", -1, "training.penalty.warmup_epochs"),
    ("training.checkpoint_every", 0, "training.checkpoint_every"),
    ("training.checkpoint_min_seconds", -1, "training.checkpoint_min_seconds"),
    ("max_failures", -1, "max_failures"),
    ("confirm_above", 0, "confirm_above"),
    ("evaluation.eps", [0.1, 2.0], "evaluation.eps[1]"),
    ("evaluation.attacks", ["fgsm", "boundary"], "evaluation.attacks[1]"),
    ("evaluation.masking.gap_threshold", 3.0, "evaluation.masking.gap_threshold"),
    ("audit.size", 1000, "audit.size"),  # removed: the audit attacks the evaluation points
    ("selection.eps", 0.25, "selection.eps"),  # not an evaluation budget
    ("selection.min_clean_acc", 1.5, "selection.min_clean_acc"),
    ("audit.attacks", ["fab"], "audit.attacks[0]"),
    ("dataset.name", "imagenet", "dataset.name"),
    ("dataset.name", "mnist", "dataset.data_dir"),
    ("dataset.download", "yes", "dataset.download"),
    ("resources.cpus_per_trial", 0, "resources.cpus_per_trial"),
    ("resources.gpus_per_trial", 1.5, "resources.gpus_per_trial"),
    ("resources.max_concurrent_trials", 0, "resources.max_concurrent_trials"),
    ("scheduler.name", "pbt", "scheduler.name"),
    ("scheduler.metric", "loss", "scheduler.metric"),
    ("scheduler.reduction_factor", 1, "scheduler.reduction_factor"),
    ("evaluation.stopping_size", -1, "evaluation.stopping_size"),
    ("evaluation.stopping_eps", 0.0, "evaluation.stopping_eps"),
    ("storage_path", "", "storage_path"),
    ("audit.attacks", [], "audit.attacks"),
    ("name", "a/b", "name"),
    ("name", " padded", "name"),
    ("name", "tab\there", "name"),
    ("name", "x" * 101, "name"),
]


@pytest.mark.faults
@pytest.mark.parametrize("change, value, field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_is_refused_naming_the_field(change, value, field):
    with pytest.raises(SpecError) as err:
        parse_spec(with_change(change, value), source="bad.yaml")
    assert f"bad.yaml: {field}:" in str(err.value)
    assert "Fix:" in str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(SpecError, match="did you mean `lambdas`"):
        parse_spec(with_change("grid.lamdas", [0.0]))


def test_warmup_length_only_matters_for_the_linear_schedule():
    spec = with_change("training", {"epochs": 3, "penalty": {"schedule": "constant"}})
    assert parse_spec(spec).training.penalty.warmup_epochs > 3


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec(["not", "a", "mapping"])


def test_defaults_fill_what_the_spec_leaves_out():
    spec = parse_spec(GOOD)
    assert spec.dataset == DatasetSettings() and spec.training == TrainingSettings()
    assert spec.scheduler == SchedulerSpec() and spec.grid.seeds == [0]
    assert spec.num_trials == 2
    assert isinstance(spec.grid.lambdas[1], float)


def test_quickstart_spans_the_grid_the_demo_promises():
    spec, _ = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert spec.dataset.name == "digits"
    assert {a.kind for a in spec.grid.architectures} == {"mlp", "cnn"}
    assert {"relu", "sigmoid"} <= set(spec.grid.activations)
    assert len(spec.grid.lambdas) >= 3 and 0.0 in spec.grid.lambdas


def test_mnist_paper_spec_is_the_paper_setting():
    spec, _ = load_spec(REPO / "sweeps" / "mnist_paper.yaml")
    assert spec.dataset.name == "mnist" and spec.dataset.data_dir
    assert [a.hidden for a in spec.grid.architectures] == [[200, 200]]
    assert {"sigmoid", "relu"} <= set(spec.grid.activations)
    assert 0.0 in spec.grid.lambdas and max(spec.grid.lambdas) >= 30


def satsweep(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_spec_exits_2_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("training.epochs", 0)))
    out = satsweep("run", str(bad), "--dry-run")
    assert out.returncode == 2
    assert "training.epochs" in out.stderr and "Traceback" not in out.stderr


def test_cli_missing_spec_and_bad_flag_exit_2(tmp_path):
    assert satsweep("run", str(tmp_path / "missing.yaml")).returncode == 2
    assert satsweep("run", "sweeps/quickstart.yaml", "--bogus").returncode == 2


def test_cli_missing_dataset_exits_2_before_ray_starts(tmp_path):
    spec = with_change("dataset", {"name": "mnist", "data_dir": str(tmp_path / "none")})
    path = tmp_path / "mnist.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = satsweep("run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(tmp_path / "none") in out.stderr
    assert not (tmp_path / "m.db").exists()  # nothing half-written


def test_cli_dry_run_prints_every_trial():
    out = satsweep("run", "sweeps/quickstart.yaml", "--dry-run")
    spec, _ = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert out.returncode == 0
    assert f"{spec.num_trials} trials" in out.stdout
    assert "lam3_sigmoid_mlp-64x64_seed0" in out.stdout


def test_cli_unwritable_storage_exits_2_before_ray_starts(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(GOOD))
    (tmp_path / "a_file").write_text("not a folder")
    out = satsweep(
        "run",
        str(tmp_path / "spec.yaml"),
        "--storage-path",
        str(tmp_path / "a_file" / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
    )
    assert out.returncode == 2 and "cannot be used" in out.stderr and "is a file" in out.stderr
    assert not (tmp_path / "m.db").exists()


def test_cli_silent_tracking_server_exits_2(tmp_path):
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(GOOD))
    out = satsweep(
        "run",
        str(tmp_path / "spec.yaml"),
        "--storage-path",
        str(tmp_path / "r"),
        "--tracking-uri",
        f"http://user:secret@127.0.0.1:{port}",
    )
    assert out.returncode == 2 and "does not answer" in out.stderr
    assert "secret" not in out.stderr + out.stdout  # credentials are redacted


def test_grad_clip_norm_must_be_positive():
    with pytest.raises(SpecError, match=r"training.grad_clip_norm: must be > 0.*Fix:"):
        parse_spec(with_change("training.grad_clip_norm", 0.0), source="bad.yaml")


DEFENCE_ERRORS = [
    ({"kind": "madry"}, "grid.defences[0].kind", "unknown value"),
    ({"kind": "pgd", "eps": 0.0}, "grid.defences[0].eps", "must be > 0"),
    ({"kind": "pgd", "eps": -0.1}, "grid.defences[0].eps", "must be > 0"),
    ({"kind": "pgd", "steps": 0}, "grid.defences[0].steps", "must be >= 1"),
    ({"kind": "fgsm_rs", "step_size": 0.0}, "grid.defences[0].step_size", "must be > 0"),
    ({"kind": "trades", "beta": -1.0}, "grid.defences[0].beta", "must be > 0"),
    ({"kind": "pgd", "epsilon": 0.1}, "grid.defences[0].epsilon", "did you mean `eps`"),
]


@pytest.mark.parametrize("entry, field, problem", DEFENCE_ERRORS)
def test_bad_defence_entries_are_refused_naming_the_field(entry, field, problem):
    with pytest.raises(SpecError) as err:
        parse_spec(with_change("grid.defences", [entry]), source="bad.yaml")
    message = str(err.value)
    assert f"bad.yaml: {field}:" in message and problem in message and "Fix:" in message


def test_cli_bad_defence_exits_2_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("grid.defences", [{"kind": "pgd", "steps": 0}])))
    out = satsweep("run", str(bad), "--dry-run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "grid.defences[0].steps" in out.stderr


def test_defences_multiply_the_grid_and_name_the_runs():
    spec = parse_spec(with_change("grid.defences", [{"kind": "none"}, {"kind": "pgd", "eps": 0.1}]))
    assert spec.num_trials == 4
    assert list(spec.defences) == ["none", "pgd-e0.1-k40-a0.00625"]


def test_duplicate_defences_are_refused():
    twice = [{"kind": "pgd", "eps": 0.1}, {"kind": "pgd", "eps": 0.1}]
    with pytest.raises(SpecError, match=r"grid.defences\[1\]: duplicates"):
        parse_spec(with_change("grid.defences", twice))


def test_defences_mnist_spec_answers_the_papers_question():
    spec, _ = load_spec(REPO / "sweeps" / "defences_mnist.yaml")
    assert {d.kind for d in spec.grid.defences} == {"none", "fgsm_rs", "pgd", "trades"}
    assert 0.0 in spec.grid.lambdas and {"relu", "sigmoid"} <= set(spec.grid.activations)


def test_asha_on_the_robust_signal_needs_the_signal_on():
    spec = with_change("scheduler", {"name": "asha", "metric": "robust"})
    spec["evaluation"] = {"stopping_size": 0}
    with pytest.raises(SpecError, match=r"scheduler.metric: .*stopping_size is 0.*Fix:"):
        parse_spec(spec)
    spec["scheduler"]["metric"] = "clean_acc"
    assert parse_spec(spec).scheduler.metric == "clean_acc"


@pytest.mark.parametrize("old, value, new", [
    ("audit.rank_eps", 0.1, "selection.eps"),
    ("evaluation.check_size", 50, "evaluation.stopping_size"),
    ("evaluation.check_eps", 0.1, "evaluation.stopping_eps"),
])  # fmt: skip
def test_a_renamed_key_says_where_it_went(old, value, new):
    with pytest.raises(SpecError, match=rf"{old}: was renamed. Fix: write it as `{new}`"):
        parse_spec(with_change(old, value))


def test_renamed_defence_keys_and_scheduler_metric_say_where_they_went():
    defences = [{"kind": "pgd", "eps": 0.1, "check_drop": 0.3}]
    with pytest.raises(SpecError, match=r"check_drop: was renamed.*`overfit_drop`"):
        parse_spec(with_change("grid.defences", defences))
    with pytest.raises(SpecError, match=r"scheduler.metric: robust_check was renamed.*robust"):
        parse_spec(with_change("scheduler", {"name": "asha", "metric": "robust_check"}))


def test_the_selection_rule_is_declared_once_and_resolved_to_a_number():
    default = parse_spec(GOOD).selection  # evaluates 0.1: the reference budget
    assert default.eps == 0.1 and default.min_clean_acc == 0.9
    elsewhere = parse_spec(with_change("evaluation.eps", [0.05, 0.2]))
    assert elsewhere.selection.eps == 0.2  # the largest evaluated budget
    chosen = parse_spec(with_change("selection", {"eps": 0.05, "min_clean_acc": 0.8}))
    assert (chosen.selection.eps, chosen.selection.min_clean_acc) == (0.05, 0.8)
    from trainables.settings import flatten

    params = flatten(chosen.model_dump(mode="json"))
    assert params["selection.eps"] == "0.05" and params["selection.include_flagged"] == "False"


def test_tune_runs_the_grid_in_the_order_grid_points_promises_zero_lambda_first():
    from ray.tune.search.variant_generator import generate_variants

    from sweeps.grid import grid_points, param_space

    spec = parse_spec(
        with_change("grid", {**GOOD["grid"], "lambdas": [3.0, 0.0, 0.5], "activations":
                             ["relu", "sigmoid"], "seeds": [0, 1]})
    )  # fmt: skip
    tune_order = [dict(variant) for _, variant in generate_variants(param_space(spec))]
    assert tune_order == grid_points(spec)
    for seed in (0, 1):  # a twin shares its trial's seed: all of a seed's twins come first
        lams = [point["lam"] for point in tune_order if point["seed"] == seed]
        assert lams == sorted(lams) and lams[:2] == [0.0, 0.0]


def test_run_names_lead_with_the_axes_that_vary_and_keep_the_rest():
    """MLflow's run list shows about 16 characters of a name: what differs comes first."""
    from sweeps.grid import grid_points, naming, trial_name

    spec = parse_spec(with_change("grid.lambdas", [0.0, 0.5]))
    order = naming(spec)
    assert order[0] == "lam" and len(order) == 4
    names = {trial_name(p, order) for p in grid_points(spec)}
    assert len(names) == spec.num_trials  # unique within the sweep
    assert all(n.startswith(("lam0_", "lam0.5_")) and n.endswith("_seed0") for n in names)
    assert all("mlp-16" in n and "relu" in n for n in names)  # the fixed axes stay in the name
    varied = with_change("grid.activations", ["relu", "sigmoid"])
    varied["grid"]["lambdas"] = [0.0]
    assert naming(parse_spec(varied))[0] == "activation"


@pytest.mark.parametrize(
    "name", ["Sättigung gegen PGD", "飽和 スイープ", "sweep one", "plain-name.2"]
)
def test_a_sweep_may_be_named_in_any_language_and_gets_a_safe_folder(name):
    spec = parse_spec(with_change("name", name))
    assert spec.name == name  # the experiment keeps the name as given
    folder = spec.folder_name
    assert folder.isascii() and all(c.isalnum() or c in "_.-" for c in folder)
    assert folder == name if name.isascii() and " " not in name else folder != name
    others = {
        parse_spec(with_change("name", other)).folder_name for other in (name + "!", name + "?")
    }
    assert len(others | {folder}) == 3  # names differing only in unsafe characters do not collide
