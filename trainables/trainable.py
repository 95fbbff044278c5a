"""The Ray Tune function trainable: glue between the plain training loop, Ray and MLflow.

Per epoch it logs metrics to the trial's MLflow run, writes a checkpoint (model, optimiser,
epoch, MLflow run id) and reports both to Tune. A restarted or restored trial resumes from its
last checkpoint and keeps its one MLflow run.

The param space this trainable reads is built by `build_param_space` below, so the layout of a
Ray config dict is defined in exactly one file.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from ray import tune

from tracking.runs import finish_run, log_epoch, open_trial_run, version_tags
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.diagnostics import SIGMOID_FLOAT32_FLAT
from trainables.train import load_checkpoint, new_state, pick_device, save_checkpoint, train

CHECKPOINT_FILE = "state.pt"
# Tune's console table shows the first four metrics of a report: the headline ones go first.
HEADLINE_METRICS = ("epoch", "clean_acc", "train_acc", "effective_lambda")


def build_param_space(
    fixed: dict,
    architectures: dict[str, dict],
    activations: list[str],
    lambdas: list[float],
    seeds: list[int],
    tracking: dict,
    cpus_per_trial: float,
) -> dict:
    """The grid as Tune sees it: four grid axes (shown in Tune's progress table), the fixed
    trial settings, the architecture table, and where to log."""
    return {
        "arch": tune.grid_search(list(architectures)),
        "activation": tune.grid_search(activations),
        "lam": tune.grid_search(lambdas),
        "seed": tune.grid_search(seeds),
        "fixed": fixed,
        "architectures": architectures,
        "tracking": tracking,
        "cpus_per_trial": cpus_per_trial,
    }


def trial_config(config: dict) -> TrialConfig:
    """One Tune config dict (a point of `build_param_space`'s grid) as a TrialConfig."""
    return TrialConfig.from_dict(
        {
            **config["fixed"],
            "arch": config["architectures"][config["arch"]],
            "activation": config["activation"],
            "lam": float(config["lam"]),
            "seed": int(config["seed"]),
        }
    )


def trial_params(cfg: TrialConfig) -> dict:
    """Everything a trial's numbers depend on, including the constants of the method."""
    return {
        **cfg.to_dict(),
        "penalty_batch_reduction": "mean",
        "saturation_rule": "relu: h <= 0; sigmoid/tanh: |h| > saturation_threshold",
        "saturation_float32_flat_threshold": SIGMOID_FLOAT32_FLAT,
        "weight_kurtosis_kind": "excess (Fisher)",
        "train_acc_kind": "running accuracy over the epoch's batches",
        "tf32": False,
    }


def run_trial(config: dict) -> None:
    cfg = trial_config(config)
    # Ray logs a line per checkpoint; with one checkpoint per epoch that drowns the progress table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    tracking = config["tracking"]
    torch.set_num_threads(max(1, int(config["cpus_per_trial"])))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = pick_device()
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download).to(device)
    state = new_state(cfg, data, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_checkpoint(Path(folder) / CHECKPOINT_FILE, state)

    client = MlflowClient(tracking["uri"])
    tags = {
        "satsweep.git_commit": tracking["git_commit"],
        "satsweep.device": str(device),
        **version_tags(),
    }
    run_id = open_trial_run(
        client,
        tracking["experiment_id"],
        tracking["parent_run_id"],
        tune.get_context().get_trial_id(),
        cfg.run_name,
        trial_params(cfg),
        tags,
    )
    try:
        for metrics in train(cfg, data, state):
            log_epoch(client, run_id, metrics, step=state.epoch)
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder) / CHECKPOINT_FILE, state, {"mlflow_run_id": run_id})
                headline = {k: metrics[k] for k in HEADLINE_METRICS}
                tune.report(headline | metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except BaseException:
        finish_run(client, run_id, "FAILED", note="failed")
        raise
    finally:
        if device.type == "cuda":
            del data, state
            torch.cuda.empty_cache()
    finish_run(client, run_id, "FINISHED", note="finished")
