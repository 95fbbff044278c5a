"""The Ray Tune function trainable: glue between the plain training loop, Ray and MLflow.

Per epoch it logs metrics to the trial's MLflow run, writes a checkpoint (model, optimiser,
epoch, MLflow run id) and reports both to Tune. A restarted or restored trial resumes from its
last checkpoint and keeps its one MLflow run.

The grid (`build_param_space`) and the settings every trial shares (`bind_settings`) are built
by functions in this file, so the layout of what a trial receives is defined in one place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune

from tracking.runs import (
    finish_run,
    finished_run_metrics,
    log_epoch,
    log_masking_tags,
    open_trial_run,
    version_tags,
)
from trainables.config import TrialConfig, run_name
from trainables.data import Dataset, load_dataset
from trainables.diagnostics import SIGMOID_FLOAT32_FLAT
from trainables.evaluate import (
    AttackResult,
    eps_name,
    eval_indices,
    evaluate_robustness,
    robustness_metrics,
    run_attacks,
)
from trainables.masking import diagnose
from trainables.models import export_program
from trainables.plots import preactivation_histograms
from trainables.train import (
    TrainingDiverged,
    TrainState,
    evaluate,
    load_checkpoint,
    new_state,
    pick_device,
    save_checkpoint,
    train,
)

CHECKPOINT_FILE = "state.pt"
# Tune's console table shows the first four metrics of a report: the headline ones go first.
HEADLINE_METRICS = ("epoch", "clean_acc", "train_acc", "effective_lambda")


def build_param_space(
    architectures: list[str], activations: list[str], lambdas: list[float], seeds: list[int]
) -> dict:
    """The grid as Tune sees it: four axes only, so Tune's tables show just what varies."""
    return {
        "arch": tune.grid_search(architectures),
        "activation": tune.grid_search(activations),
        "lam": tune.grid_search(lambdas),
        "seed": tune.grid_search(seeds),
    }


def trial_settings(
    fixed: dict, architectures: dict[str, dict], tracking: dict, cpus_per_trial: float
) -> dict:
    """What every trial shares: fixed settings, the architecture table, where to log. Bound to
    `run_trial` with `tune.with_parameters`, so it travels once through Ray's object store
    instead of being copied into (and printed with) each trial's config."""
    return {
        "fixed": fixed,
        "architectures": architectures,
        "tracking": tracking,
        "cpus_per_trial": cpus_per_trial,
    }


def trial_name(config: dict) -> str:
    """The run name of a grid point, from its four axes."""
    return run_name(config["arch"], config["activation"], config["lam"], config["seed"])


def trial_config(config: dict, settings: dict) -> TrialConfig:
    """One grid point plus the shared settings, as a TrialConfig."""
    return TrialConfig.from_dict(
        {
            **settings["fixed"],
            "arch": settings["architectures"][config["arch"]],
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
        "transfer_surrogate": "the lambda = 0 twin: same architecture, activation, seed and "
        "recipe, trained in-trial (the model itself when lambda = 0)",
        "robust_acc_counts": "points correct on the clean input and on the attack's output",
    }


def train_surrogate(cfg: TrialConfig, data: Dataset, state: TrainState) -> torch.nn.Module:
    """The transfer attack's source: this trial's lambda = 0 twin. Training is seeded, so it is
    the model the sweep's lambda = 0 trial of the same architecture/activation/seed trains,
    without waiting for that trial (which may run concurrently or on another node)."""
    if cfg.lam == 0:
        return state.model
    twin_cfg = dataclasses.replace(cfg, lam=0.0)
    twin = new_state(twin_cfg, data, data.x_train.device)
    for _ in train(twin_cfg, data, twin):
        pass
    return twin.model.eval()


def final_evaluation(
    cfg: TrialConfig, data: Dataset, state: TrainState, client: MlflowClient, run_id: str
) -> dict:
    """The full cheap attack tier, masking flags, per-example results and the saturation figure,
    logged to the trial's run; returns the metrics to report with the last epoch."""
    ecfg = cfg.evaluation
    idx = eval_indices(len(data.y_test), ecfg.size, ecfg.seed).to(data.y_test.device)
    x, y = data.x_test[idx], data.y_test[idx]
    start = time.perf_counter()
    surrogate = train_surrogate(cfg, data, state) if "transfer" in ecfg.attacks else None
    surrogate_seconds = time.perf_counter() - start
    metrics, diagnostics, results = evaluate_robustness(state.model, x, y, ecfg, surrogate)
    metrics["attack_seconds/transfer_surrogate_training"] = surrogate_seconds
    log_masking_tags(client, run_id, {name: flag for name, (_, flag) in diagnostics.items()})
    client.log_dict(run_id, {
        "eval_indices": idx.tolist(),
        "robust": {f"{r.attack}@{r.eps:g}": r.robust.int().tolist() for r in results},
    }, "robustness/per_example.json")  # fmt: skip
    figure = preactivation_histograms(state.model, x, cfg.saturation_threshold, cfg.run_name)
    client.log_figure(run_id, figure, "saturation/preactivation_histograms.png")
    log_model(cfg, data, state, client, run_id)
    return metrics


def log_model(
    cfg: TrialConfig, data: Dataset, state: TrainState, client: MlflowClient, run_id: str
) -> None:
    """The final model as run artifacts under `model/`: an exported program, a state_dict and
    the config that describes its input, so exporting a champion is a copy, not a rebuild."""
    model = state.model.eval()
    with tempfile.TemporaryDirectory() as folder:
        torch.export.save(export_program(model, data.input_shape), Path(folder) / "model.pt2")
        cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(cpu_state, Path(folder) / "state_dict.pt")
        info = {
            "dataset": cfg.dataset, "input_shape": list(data.input_shape),
            "input_dtype": "float32", "input_range": [0.0, 1.0],
            "num_classes": data.num_classes, "architecture": cfg.to_dict()["arch"],
            "activation": cfg.activation, "lam": cfg.lam, "seed": cfg.seed, "run_id": run_id,
        }  # fmt: skip
        (Path(folder) / "config.json").write_text(json.dumps(info, indent=2))
        client.log_artifacts(run_id, folder, "model")


def audit_trial(
    config: dict, settings: dict, checkpoint_dir: str, run_id: str, audit: dict
) -> dict:
    """The audit tier on one finished trial (a Ray task): `audit["attacks"]` (Square, AutoAttack
    standard) on the audit set, which contains the evaluation subset. On that subset the audit
    results join the trial's per-example cheap-tier results, so `worst_case_acc` and the masking
    flags are recomputed per example, not overwritten. Logged into the trial's own run."""
    cfg = trial_config(config, settings)
    ecfg = cfg.evaluation
    torch.set_num_threads(max(1, int(settings["cpus_per_trial"])))
    device = pick_device()
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download).to(device)
    state = new_state(cfg, data, device)
    load_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE, state)
    model = state.model.eval()
    audit_idx = eval_indices(len(data.y_test), audit["size"], ecfg.seed)
    eps_list = tuple(audit["eps"] or ecfg.eps)
    audit_results = run_attacks(
        model,
        data.x_test[audit_idx.to(device)],
        data.y_test[audit_idx.to(device)],
        tuple(audit["attacks"]),
        eps_list,
        ecfg,
    )

    client = MlflowClient(settings["tracking"]["uri"])
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, "robustness/per_example.json", folder)
        stored = json.loads(Path(path).read_text())
    position = {int(i): p for p, i in enumerate(audit_idx.tolist())}
    on_eval = torch.tensor([position[i] for i in stored["eval_indices"]])
    cheap = [
        AttackResult(key.split("@")[0], float(key.split("@")[1]), torch.tensor(mask).bool(), 0.0)
        for key, mask in stored["robust"].items()
    ]
    merged = cheap + [
        AttackResult(r.attack, r.eps, r.robust[on_eval].cpu(), r.seconds) for r in audit_results
    ]
    metrics = {
        k: v
        for k, v in robustness_metrics(merged).items()
        if not k.startswith("attack_seconds/") or k.split("/")[1] in audit["attacks"]
    }
    for r in audit_results:
        metrics[f"audit_set_acc/{r.attack}/{eps_name(r.eps)}"] = r.accuracy
    logged = client.get_run(run_id).data.metrics
    acc = {(r.attack, r.eps): r.accuracy for r in merged}
    diagnostics = diagnose(
        acc,
        logged["masking/zero_grad_float32"],
        logged["masking/zero_grad_float64"],
        ecfg,
        transfer_is_black_box=cfg.lam != 0,
    )
    metrics |= {f"masking/{name}": value for name, (value, _) in diagnostics.items()}
    log_epoch(client, run_id, metrics, step=cfg.epochs)
    log_masking_tags(client, run_id, {name: flag for name, (_, flag) in diagnostics.items()})
    client.set_tag(run_id, "satsweep.audited", "true")
    client.log_dict(run_id, {"audit_indices": audit_idx.tolist(), **audit}, "robustness/audit.json")
    return metrics


def quick_evaluation(cfg: TrialConfig, data: Dataset, state: TrainState) -> dict:
    """FGSM and PGD-CE on the evaluation subset, for robustness curves over training."""
    ecfg = cfg.evaluation
    idx = eval_indices(len(data.y_test), ecfg.size, ecfg.seed).to(data.y_test.device)
    results = run_attacks(
        state.model, data.x_test[idx], data.y_test[idx], ("fgsm", "pgd_ce"), ecfg.eps, ecfg
    )
    return robustness_metrics(results)


def run_trial(config: dict, settings: dict) -> None:
    cfg = trial_config(config, settings)
    # Ray logs a line per checkpoint; with one checkpoint per epoch that drowns the progress table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    tracking = settings["tracking"]
    client = MlflowClient(tracking["uri"])
    trial_id = tune.get_context().get_trial_id()
    # Ray's experiment snapshot can lag behind a crash: a trial whose run already ended is done
    done = finished_run_metrics(
        client, tracking["experiment_id"], tracking["parent_run_id"], trial_id
    )
    if done is not None:
        tune.report({"clean_acc": float("nan")} | done)  # Tune needs its metric in every report
        return
    torch.set_num_threads(max(1, int(settings["cpus_per_trial"])))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = pick_device()
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download).to(device)
    state = new_state(cfg, data, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_checkpoint(Path(folder) / CHECKPOINT_FILE, state)

    tags = {
        "satsweep.git_commit": tracking["git_commit"],
        "satsweep.device": str(device),
        "satsweep.ray_node_id": ray.get_runtime_context().get_node_id(),
        **version_tags(),
    }
    run_id = open_trial_run(
        client,
        tracking["experiment_id"],
        tracking["parent_run_id"],
        trial_id,
        cfg.run_name,
        trial_params(cfg),
        tags,
    )
    try:
        for metrics in train(cfg, data, state):
            every = cfg.evaluation.every_epochs
            if state.epoch == cfg.epochs:
                metrics |= final_evaluation(cfg, data, state, client, run_id)
            elif every and state.epoch % every == 0:
                metrics |= quick_evaluation(cfg, data, state)
            log_epoch(client, run_id, metrics, step=state.epoch)
            headline = {k: metrics[k] for k in HEADLINE_METRICS}
            if state.epoch % cfg.checkpoint_every and state.epoch != cfg.epochs:
                tune.report(headline | metrics)
                continue
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder) / CHECKPOINT_FILE, state, {"mlflow_run_id": run_id})
                tune.report(headline | metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except TrainingDiverged as err:  # a result, not a crash: keep what was logged, go on
        final = {
            "epoch": err.epoch,
            "clean_acc": evaluate(cfg, data, state.model)["clean_acc"],
            "diverged_at_epoch": err.epoch,
            **err.metrics,
        }
        log_epoch(client, run_id, final, step=err.epoch)
        finish_run(client, run_id, "FINISHED", note="diverged")
        tune.report(final)
        return
    except BaseException:
        finish_run(client, run_id, "FAILED", note="failed")
        raise
    finally:
        if device.type == "cuda":
            del data, state
            torch.cuda.empty_cache()
    finish_run(client, run_id, "FINISHED", note="finished")
