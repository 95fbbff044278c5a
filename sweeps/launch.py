"""Spec -> Ray Tune. The driver creates the sweep's MLflow parent run, hands each trial where to
log, runs the Tuner, then closes any trial run that Ray stopped before the trial could."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sweeps.spec import SweepSpec
from tracking.runs import (
    code_version,
    ensure_experiment,
    finish_run,
    reconcile_trial_runs,
    start_sweep_run,
    ui_command,
)
from trainables.data import load_dataset
from trainables.models import SaturatingNet
from trainables.trainable import build_param_space, run_trial, trial_config


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
            "run_name": f"{arch}_{act}_lam{lam:g}_seed{seed}",
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


def _readable_name(trial) -> str:
    return trial_config(trial.config).run_name


def run_sweep(
    spec: SweepSpec, spec_text: str, tracking_uri: str, storage_path: str
) -> SweepOutcome:
    """Run the whole grid; every MLflow run this creates ends FINISHED or FAILED."""
    print(f"satsweep: MLflow store {tracking_uri}")
    print(f"satsweep: browse it with  {ui_command(tracking_uri)}")
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, spec.name, tracking_uri)
    parent = start_sweep_run(client, experiment_id, spec.name, spec_text, dataclasses.asdict(spec))
    ray_status: dict[str, str] = {}
    try:
        if not ray.is_initialized():
            ray.init(include_dashboard=False)
        resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
        param_space = build_param_space(
            fixed=fixed_settings(spec),
            architectures={
                n: {"kind": a.kind, "hidden": list(a.hidden), "channels": list(a.channels)}
                for n, a in spec.architectures.items()
            },
            activations=spec.grid.activations,
            lambdas=spec.grid.lambdas,
            seeds=spec.grid.seeds,
            tracking={
                "uri": tracking_uri,
                "experiment_id": experiment_id,
                "parent_run_id": parent,
                "git_commit": code_version(),
            },
            cpus_per_trial=spec.resources.cpus_per_trial,
        )
        tuner = tune.Tuner(
            tune.with_resources(run_trial, resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="clean_acc",  # Tune prints the current best trial by it; ASHA ranks by it
                mode="max",
                scheduler=_scheduler(spec),
                max_concurrent_trials=spec.resources.max_concurrent_trials,
                trial_name_creator=_readable_name,
                trial_dirname_creator=lambda t: f"{_readable_name(t)}_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=storage_uri(storage_path),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=1,
            ),
        )
        results = tuner.fit()
        for result in results:
            if "trial_id" in result.metrics:
                ray_status[result.metrics["trial_id"]] = "ERROR" if result.error else "TERMINATED"
        failed = len(results.errors)
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        client.set_tag(parent, "satsweep.trials_failed", str(failed))
        finish_run(client, parent, "FINISHED", note="finished" if not failed else "partial")
    except BaseException:
        reconcile_trial_runs(client, experiment_id, parent, ray_status)
        finish_run(client, parent, "FAILED", note="failed")
        raise
    return SweepOutcome(parent, experiment_id, spec.num_trials - failed, failed)
