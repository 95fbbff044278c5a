"""Spec -> Ray Tune. The driver creates the sweep's MLflow parent run, hands each trial where to
log, runs the Tuner, then closes any trial run that Ray stopped before the trial could."""

from __future__ import annotations

import dataclasses
import os
import urllib.error
import urllib.request
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sweeps.spec import SweepSpec
from tracking.report import write_report
from tracking.runs import (
    code_version,
    ensure_experiment,
    find_trial_run,
    finish_run,
    reconcile_trial_runs,
    redact_uri,
    start_sweep_run,
    ui_command,
)
from tracking.select import DEFAULT_EPS, DEFAULT_MIN_CLEAN_ACC, SelectionError, sweep_parent_run
from trainables.config import run_name
from trainables.data import load_dataset
from trainables.evaluate import eps_name
from trainables.models import SaturatingNet
from trainables.trainable import (
    audit_trial,
    build_param_space,
    run_trial,
    trial_name,
    trial_settings,
)


@dataclasses.dataclass
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    finished: int
    failed: int


def trial_rows(spec: SweepSpec) -> list[dict]:
    """One row per point of the grid."""
    g = spec.grid
    return [
        {
            "run_name": run_name(arch, act, lam, seed),
            "arch": arch,
            "activation": act,
            "lam": lam,
            "seed": seed,
        }
        for seed in g.seeds
        for lam in g.lambdas
        for act in g.activations
        for arch in spec.architectures
    ]


def fixed_settings(spec: SweepSpec) -> dict:
    """The trial settings shared by every point of the grid."""
    t, d = spec.training, spec.dataset
    data_dir = str(Path(d.data_dir).expanduser().resolve()) if d.data_dir else None
    return {
        "dataset": d.name,
        "data_dir": data_dir,
        "download": d.download,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "eval_batch_size": t.eval_batch_size,
        "optimizer": t.optimizer.name,
        "lr": t.optimizer.lr,
        "momentum": t.optimizer.momentum,
        "weight_decay": t.optimizer.weight_decay,
        "penalty_reduction": t.penalty.reduction,
        "lambda_schedule": t.penalty.schedule,
        "warmup_epochs": t.penalty.warmup_epochs,
        "saturation_threshold": t.saturation_threshold,
        "checkpoint_every": t.checkpoint_every,
        "evaluation": evaluation_settings(spec),
    }


def evaluation_settings(spec: SweepSpec) -> dict:
    """The EvalConfig fields, from the evaluation and audit sections of the spec."""
    e = spec.evaluation
    return {
        "size": e.size,
        "seed": e.seed,
        "eps": list(e.eps),
        "unbounded_eps": e.unbounded_eps,
        "attacks": list(e.attacks),
        "pgd_steps": e.pgd_steps,
        "pgd_restarts": e.pgd_restarts,
        "pgd_step_factor": e.pgd_step_factor,
        "apgd_iterations": e.apgd_iterations,
        "noise_draws": e.noise_draws,
        "bpda_temperature": e.bpda_temperature,
        "square_queries": spec.audit.square_queries,
        "every_epochs": e.every_epochs,
        **dataclasses.asdict(e.masking),
    }


def preflight_data(spec: SweepSpec) -> None:
    """Load the dataset once in the driver and build each architecture on it, so a missing
    dataset or an impossible architecture fails before Ray starts (DatasetNotFoundError or
    ValueError, both phrased for people)."""
    d = spec.dataset
    data = load_dataset(d.name, fixed_settings(spec)["data_dir"], d.download)
    for arch in spec.architectures.values():
        for act in spec.grid.activations:
            SaturatingNet(arch, act, data.input_shape, data.num_classes)


def storage_uri(path: str) -> str:
    """Ray needs an absolute local path or a URI."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _scheduler(spec: SweepSpec):
    if spec.scheduler.name == "asha":
        return ASHAScheduler(
            max_t=spec.training.epochs,
            grace_period=spec.scheduler.grace_period,
        )
    return FIFOScheduler()


def rank_eps(spec: SweepSpec) -> float:
    """The budget that ranks trials: audit.rank_eps, else selection's default if evaluated,
    else the largest evaluated budget."""
    if spec.audit.rank_eps is not None:
        return spec.audit.rank_eps
    return DEFAULT_EPS if DEFAULT_EPS in spec.evaluation.eps else max(spec.evaluation.eps)


def audit_candidates(spec: SweepSpec, results) -> list:
    """The top-k finished trials by worst case at the ranking eps among those that clear the
    selection floor (a collapsed, constant classifier keeps its class share "robustly" and must
    not crowd out real candidates), plus every flagged trial."""
    key = f"worst_case_acc/{eps_name(rank_eps(spec))}"
    finished = [r for r in results if r.error is None and r.checkpoint is not None
                and key in r.metrics]  # fmt: skip
    accurate = [r for r in finished if r.metrics.get("clean_acc", 0) >= DEFAULT_MIN_CLEAN_ACC]
    top = sorted(accurate, key=lambda r: r.metrics[key], reverse=True)[: spec.audit.top_k]
    flagged = [r for r in finished if r.metrics.get("masking/masking_suspected") == 1.0]
    return list({r.metrics["trial_id"]: r for r in top + flagged}.values())


def run_audit(
    spec: SweepSpec, results, settings: dict, client: MlflowClient, experiment_id: str, parent: str
) -> None:
    """Run the audit tier as Ray tasks (same resources as a trial), one per candidate; a failed
    audit is tagged on its run and does not fail the sweep."""
    candidates = audit_candidates(spec, results)
    audit = {"size": spec.audit.size, "eps": spec.audit.eps, "attacks": spec.audit.attacks}
    task = ray.remote(audit_trial).options(
        num_cpus=spec.resources.cpus_per_trial, num_gpus=spec.resources.gpus_per_trial
    )
    print(
        f"satsweep: audit ({', '.join(spec.audit.attacks)}) of {len(candidates)} trials: "
        + ", ".join(trial_name(r.config) for r in candidates)
    )
    pending = {}
    for r in candidates:
        run_id = find_trial_run(client, experiment_id, parent, r.metrics["trial_id"])
        ref = task.remote(r.config, settings, r.checkpoint.path, run_id, audit)
        pending[ref] = (trial_name(r.config), run_id)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name, run_id = pending.pop(done[0])
        try:
            metrics = ray.get(done[0])
        except Exception as err:  # one broken audit must not hide the others' results
            client.set_tag(run_id, "satsweep.audited", f"failed: {type(err).__name__}")
            print(f"satsweep: audit of {name} failed: {err}")
            continue
        worst = {
            k.split("/")[1]: round(v, 3)
            for k, v in metrics.items()
            if k.startswith("worst_case_acc/")
        }
        print(
            f"satsweep: audited {name}: worst case {worst}, "
            f"masking_suspected={bool(metrics['masking/masking_suspected'])}"
        )


def report_sweep(spec: SweepSpec, tracking_uri: str) -> None:
    """The sweep report on the parent run; a failed report is printed, never fatal."""
    try:
        paths = write_report(tracking_uri, spec.name, eps=rank_eps(spec))
        print(f"satsweep: report ({', '.join(paths)}) logged to the sweep run")
    except Exception as err:  # the trials' results are safe; the report can be redone
        print(f"satsweep: report failed ({err}); redo it with `satsweep report {spec.name}`")


class PreflightError(RuntimeError):
    """Something outside the spec stops the sweep before Ray starts: phrased for people."""


def check_storage(storage_path: str) -> None:
    """A local storage path must be a writable folder (remote URIs are checked by Ray)."""
    if "://" in storage_path:
        return
    folder = Path(storage_uri(storage_path))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".satsweep-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PreflightError(
            f"storage path {folder} is not writable ({err.strerror}); pass "
            "--storage-path with a folder you can write to"
        ) from err


def check_tracking(tracking_uri: str) -> None:
    """The tracking store must answer: an HTTP server's /health, or a writable SQLite folder."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError) as err:
            raise PreflightError(
                f"the MLflow server at {redact_uri(tracking_uri)} does not "
                f"answer ({err}); start it (see README, 'Run on a cluster') or "
                "fix --tracking-uri"
            ) from err
        raise PreflightError(f"the MLflow server at {redact_uri(tracking_uri)} is unhealthy")
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PreflightError(
                f"cannot create the MLflow store in {folder}; pass "
                "--tracking-uri sqlite:////a/writable/folder/mlflow.db"
            )


NETWORK_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "glusterfs",
    "fuse.",
)  # fuse.* covers s3fs, gcsfuse, ...


def on_network_filesystem(path: Path) -> bool:
    """Whether the mount holding `path` is a network filesystem (from /proc/mounts)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    best = max(
        (m for m in mounts if str(path).startswith(m[1])), key=lambda m: len(m[1]), default=None
    )
    return best is not None and best[2].startswith(NETWORK_FILESYSTEMS)


def check_shared_storage(storage_path: str) -> None:
    """On a cluster spanning several hosts, trials checkpoint from every node: a node-local
    folder would scatter checkpoints where resume and export cannot find them."""
    if "://" in storage_path:
        return
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    path = Path(storage_uri(storage_path))
    if len(hosts) > 1 and not on_network_filesystem(path):
        raise PreflightError(
            f"storage path {path} is local to this machine, but the Ray cluster spans "
            f"{len(hosts)} hosts; use shared storage: --storage-path s3://bucket/sweeps, "
            "gs://bucket/sweeps, or a folder on NFS mounted at the same path on every node"
        )


def connect_ray(address: str | None) -> None:
    """Connect to a cluster (`auto`, `ray://host:port`, or RAY_ADDRESS), else start a local
    instance without its dashboard (faster on small machines; nothing listens beyond Ray's own
    ports)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)


def experiment_path(spec: SweepSpec, storage_path: str) -> str:
    """Where Ray keeps this sweep's experiment state (what `Tuner.restore` reads)."""
    root = storage_uri(storage_path)
    return f"{root.rstrip('/')}/{spec.name}" if "://" in root else str(Path(root) / spec.name)


def open_sweep_run(
    spec: SweepSpec, spec_text: str, client: MlflowClient, tracking_uri: str, resume: bool
) -> tuple[str, str] | None:
    """(experiment id, parent run id): a new parent run, or on resume the sweep's latest one,
    reopened; None when resuming a sweep that already finished."""
    if not resume:
        experiment_id = ensure_experiment(client, spec.name, tracking_uri)
        params = dataclasses.asdict(spec)
        params["tracking_uri"] = redact_uri(params["tracking_uri"] or "")
        return experiment_id, start_sweep_run(client, experiment_id, spec.name, spec_text, params)
    try:
        experiment, parent = sweep_parent_run(client, spec.name)
    except SelectionError as err:
        raise PreflightError(f"cannot resume: {err}") from err
    if parent.info.status == "FINISHED":
        return None
    client.update_run(parent.info.run_id, status="RUNNING")
    client.set_tag(parent.info.run_id, "satsweep.resumed", "true")
    return experiment.experiment_id, parent.info.run_id


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    tracking_uri: str,
    storage_path: str,
    resume: bool = False,
    address: str | None = None,
) -> SweepOutcome | None:
    """Run the whole grid (or, with `resume`, what a crash left of it); every MLflow run this
    creates ends FINISHED or FAILED. Returns None when asked to resume a finished sweep."""
    connect_ray(address)
    check_shared_storage(storage_path)
    path = experiment_path(spec, storage_path)
    if resume and not tune.Tuner.can_restore(path):
        raise PreflightError(
            f"no sweep {spec.name!r} to resume under {path}; start it with "
            "`satsweep run SPEC` (or give the --storage-path it used)"
        )
    print(f"satsweep: MLflow store {redact_uri(tracking_uri)}")
    print(f"satsweep: browse it with  {ui_command(tracking_uri)}")
    client = MlflowClient(tracking_uri)
    opened = open_sweep_run(spec, spec_text, client, tracking_uri, resume)
    if opened is None:
        print(f"satsweep: sweep {spec.name!r} already finished; nothing to resume")
        return None
    experiment_id, parent = opened
    ray_status: dict[str, str] = {}
    try:
        resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
        settings = trial_settings(
            fixed=fixed_settings(spec),
            architectures={
                n: {"kind": a.kind, "hidden": list(a.hidden), "channels": list(a.channels)}
                for n, a in spec.architectures.items()
            },
            tracking={
                "uri": tracking_uri,
                "experiment_id": experiment_id,
                "parent_run_id": parent,
                "git_commit": code_version(),
            },
            cpus_per_trial=spec.resources.cpus_per_trial,
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, settings=settings), resources
        )
        if resume:
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            tuner = new_tuner(spec, trainable, storage_path)
        results = tuner.fit()
        for result in results:
            if "trial_id" in result.metrics:
                ray_status[result.metrics["trial_id"]] = "ERROR" if result.error else "TERMINATED"
        failed = len(results.errors)
        if spec.audit.enabled:
            run_audit(spec, results, settings, client, experiment_id, parent)
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        client.set_tag(parent, "satsweep.trials_failed", str(failed))
        report_sweep(spec, tracking_uri)
        finish_run(client, parent, "FINISHED", note="finished" if not failed else "partial")
    except BaseException:
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        finish_run(client, parent, "FAILED", note="failed")
        raise
    return SweepOutcome(parent, experiment_id, len(results) - failed, failed)


def new_tuner(spec: SweepSpec, trainable, storage_path: str) -> tune.Tuner:
    g = spec.grid
    return tune.Tuner(
        trainable,
        param_space=build_param_space(list(spec.architectures), g.activations, g.lambdas, g.seeds),
        tune_config=tune.TuneConfig(
            metric="clean_acc",  # Tune prints the current best trial by it; ASHA ranks by it
            mode="max",
            scheduler=_scheduler(spec),
            max_concurrent_trials=spec.resources.max_concurrent_trials,
            trial_name_creator=lambda t: trial_name(t.config),
            trial_dirname_creator=lambda t: f"{trial_name(t.config)}_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage_uri(storage_path),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=1,
        ),
    )
