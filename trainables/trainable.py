"""The Ray Tune function trainable and the audit task: glue between the plain training loop and
evaluation on one side and Ray and MLflow on the other. It decides when to evaluate (the final
epoch, `every_epochs`), what the twin store is (the sweep's runs) and what is logged where; what
the numbers are (attacks, worst case, flags, the audit's merge) is computed in `evaluate.py`
and `masking.py`, and this module only calls them and logs their results.

Per epoch a trial logs metrics to its MLflow run, writes a checkpoint (model, optimiser, epoch,
MLflow run id) and reports both to Tune. A restarted or restored trial resumes from its last
checkpoint and keeps its one MLflow run.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune

from tracking import metric_names as names
from tracking.per_example import PER_EXAMPLE_ARTIFACT
from tracking.runs import (
    AUDITED_TAG,
    COLLAPSED_TAG,
    DESCRIPTION_TAG,
    WEIGHTS_TAG,
    finish_run,
    finished_run_metrics,
    log_epoch,
    log_masking_tags,
    open_trial_run,
    record_defence_failure,
    version_tags,
)
from tracking.store import store_lock
from tracking.twin_store import MlflowTwinStore
from trainables.audit import audit_attacks
from trainables.data import Dataset, load_dataset
from trainables.defences import never_robust_note, overfitting_note
from trainables.evaluate import (
    audit_metrics,
    correct,
    evaluate_robustness,
    evaluation_points,
    merge_audit,
    per_example_record,
    quick_evaluation,
    record_with,
    robustness_curves_data,
    stored_results,
)
from trainables.plots import preactivation_histograms, robustness_curves
from trainables.settings import (
    NAME_AXES,
    ArchitectureSettings,
    DefenceSettings,
    SweepSettings,
    TrainingSettings,
    TrialSettings,
    with_settings,
)
from trainables.train import (
    TrainingDiverged,
    TrainState,
    clean_metrics,
    gpu_problem,
    load_checkpoint,
    new_state,
    pick_device,
    release_cuda,
    save_checkpoint,
    train,
)
from trainables.twins import transfer_twin
from trainables.worker_memory import MIB, begin_trial, read_memory, release_freed_memory

CHECKPOINT_FILE = "state.pt"
CURVES_ARTIFACT = "robustness/curves.png"
CURVES_KEY = "robustness_curves"  # the image key the compare view lines trials up by
AUDIT_SECONDS = "audit_task_seconds"  # returned to the driver, not logged
# Tune's console table shows the first four metrics of a report: the headline ones go first.
HEADLINE_METRICS = (names.EPOCH, names.CLEAN_ACC, names.TRAIN_ACC, names.EFFECTIVE_LAMBDA)
# Tune refuses a report without the metric it ranks by: reports that have no measurement of
# it (a finished trial's replay, a diverged trial) carry NaN
UNMEASURED = {names.CLEAN_ACC: float("nan"), names.EARLY_STOPPING: float("nan")}


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares, bound to `run_trial` with `tune.with_parameters` so
    it travels once through Ray's object store instead of with (and printed in) each config.
    Tune's config holds only the grid point: the axes of `settings.GRID_AXES`."""

    shared: SweepSettings
    architectures: dict[str, ArchitectureSettings]
    defences: dict[str, DefenceSettings]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    git_commit: str
    cpus_per_trial: float
    early_stopping: bool  # ASHA ranks by the early-stopping signal: measure it every epoch
    name_order: tuple[str, ...] = NAME_AXES  # the axes in run names (`settings.name_order`)
    gpu_missing: str = "fail"  # resources.gpu_missing: a given GPU torch cannot see fails the trial
    # a search's sampled settings beyond lam and the activation, by dotted name, in the spec's
    # order; Tune's config carries their values beside the axes
    sampled: tuple[str, ...] = ()
    continuous: frozenset[str] = frozenset()  # those drawn from a range (not `choice`)

    def trial(self, config: dict) -> TrialSettings:
        """The trial at a config: the grid point, then the sampled settings it carries (each
        validated as the spec's own would be)."""
        point = TrialSettings.at(
            self.shared,
            arch=self.architectures[config["arch"]],
            activation=config["activation"],
            lam=float(config["lam"]),
            seed=int(config["seed"]),
            defence=self.defences[config["defence"]],
            name_order=self.name_order,
        )
        sampled = tuple(key for key in self.sampled if key in config)
        if not sampled:
            return point
        return with_settings(point, {key: config[key] for key in sampled} | {"sampled": sampled})

    def twin(self, config: dict) -> TrialSettings:
        """The trial's transfer source (`twins.py`): lambda 0 and every setting sampled from a
        range back at the spec's value; the grid's axes and the settings chosen from a list
        stay. So a search over continuous settings trains one twin per cell and seed, not one
        per trial."""
        kept = {k: v for k, v in config.items() if k not in self.continuous}
        return self.trial(kept | {"lam": 0.0})

    def run_name(self, config: dict) -> str:
        return self.trial(config).run_name


@dataclass(frozen=True)
class SweepRuns:
    """Where a trial's sweep lives in MLflow."""

    client: MlflowClient
    experiment_id: str
    parent_run_id: str


def _prepare_worker(context: SweepContext) -> torch.device:
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return pick_device()


def final_evaluation(
    cfg: TrialSettings,
    data: Dataset,
    state: TrainState,
    runs: SweepRuns,
    run_id: str,
    twin_cfg: TrialSettings,
) -> tuple[dict, list[str]]:
    """The final model first (so trials waiting for this one as their transfer source can go
    on), then the cheap attack tier, masking flags, per-example results and the saturation
    figure, logged to the trial's run; returns the metrics to report with the last epoch and
    the names of the raised flags."""
    client, e = runs.client, cfg.evaluation
    log_model(cfg, data, state, client, run_id)
    client.set_tag(run_id, WEIGHTS_TAG, "true")
    idx, x, y = evaluation_points(cfg, data)
    start = time.perf_counter()
    store = MlflowTwinStore(client, runs.experiment_id, runs.parent_run_id, run_id)
    twin = transfer_twin(cfg, twin_cfg, data, state, store) if "transfer" in e.attacks else None
    surrogate_seconds = time.perf_counter() - start
    metrics, diagnostics, results = evaluate_robustness(
        state.model, x, y, cfg, twin.model if twin else None
    )
    metrics[names.attack_seconds("transfer_surrogate_training")] = surrogate_seconds
    metrics[names.TWIN_EPOCHS_TRAINED] = float(twin.epochs_trained if twin else 0)
    metrics[names.TWIN_WAIT_SECONDS] = twin.wait_seconds if twin else 0.0
    log_masking_tags(client, run_id, {name: flag for name, (_, flag) in diagnostics.items()})
    client.set_tag(run_id, COLLAPSED_TAG, "true" if metrics[names.COLLAPSED] else "false")
    clean = correct(state.model.eval(), x, y).cpu()
    client.log_dict(run_id, per_example_record(idx.cpu(), results, clean, e.seed),
                    PER_EXAMPLE_ARTIFACT)  # fmt: skip
    threshold = cfg.training.saturation_threshold
    figure = preactivation_histograms(state.model, x, threshold, cfg.run_name)
    client.log_figure(run_id, figure, "saturation/preactivation_histograms.png")
    log_curves(client, run_id, results, cfg, cfg.run_name)
    raised = [n for n, (_, flag) in diagnostics.items() if flag and n != names.MASKING_SUSPECTED]
    return metrics, raised


def log_curves(
    client: MlflowClient,
    run_id: str,
    results: list,
    cfg: TrialSettings,
    title: str,
    audited: bool = False,
) -> None:
    """The trial's robustness curves over the bounded budgets: a figure artifact, and the same
    picture as an MLflow image under one key (step 0 after the cheap tier, 1 once audited), so
    the UI can show several trials' curves side by side in its compare view."""
    accuracy, worst = robustness_curves_data(results, cfg.evaluation.unbounded_eps)
    image = figure_image(robustness_curves(accuracy, worst, title, len(results[0].robust)))
    client.log_image(run_id, image, artifact_file=CURVES_ARTIFACT)  # rendered once, logged twice
    client.log_image(run_id, image, key=CURVES_KEY, step=int(audited))


def figure_image(figure):
    """A matplotlib figure as a PIL image (what `log_image` takes, as a file or with a key)."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    return Image.open(buffer)


def log_model(
    cfg: TrialSettings, data: Dataset, state: TrainState, client: MlflowClient, run_id: str
) -> None:
    """The final model as run artifacts under `model/`: an MLflow Model (the `pytorch` flavor,
    so the registry, `mlflow.pyfunc.load_model` and `mlflow models serve` can use it), and beside
    it an exported program, a state_dict and the config that describes its input for users who
    load without MLflow; exporting a champion is then a copy, not a rebuild.

    `model.pt2` is the program MLflow's flavor already exported, copied: a second
    `torch.export` would double what each export leaves in torch's caches for good (about
    70 KB and 290 objects in a reused worker, measured with torch 2.14)."""
    model = state.model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        save_mlflow_model(model, data.input_shape, folder)
        shutil.copyfile(folder / "data" / "model.pt2", folder / "model.pt2")
        cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(cpu_state, folder / "state_dict.pt")
        info = {
            "dataset": cfg.dataset.name, "input_shape": list(data.input_shape),
            "input_dtype": "float32", "input_range": [0.0, 1.0],
            "num_classes": data.num_classes, "architecture": cfg.arch.model_dump(),
            "activation": cfg.activation, "lam": cfg.lam, "seed": cfg.seed, "run_id": run_id,
        }  # fmt: skip
        (folder / "config.json").write_text(json.dumps(info, indent=2))
        client.log_artifacts(run_id, str(folder), "model")


def save_mlflow_model(model: torch.nn.Module, input_shape: tuple[int, ...], folder: Path) -> None:
    """The classifier as an MLflow Model in `folder`: MLflow's `pt2` serialisation (a
    `torch.export` program, so loading needs no satsweep code), a CPU copy (a GPU-trained model
    serves anywhere), a signature float32 N x C x H x W in [0, 1] -> logits with a dynamic batch,
    and requirements pinned from this environment (MLflow's inference of them would start a
    subprocess per trial)."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    cpu = copy.deepcopy(model).cpu().eval()
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = cpu(example)
    mlflow.pytorch.save_model(
        cpu,
        str(folder),
        serialization_format="pt2",
        signature=infer_signature(example.numpy(), logits.numpy()),
        input_example=example.numpy(),
        pip_requirements=[f"torch=={version('torch')}", f"mlflow=={version('mlflow')}"],
    )


def audit_trial(
    config: dict, context: SweepContext, checkpoint: tune.Checkpoint, run_id: str
) -> dict:
    """The audit tier on one finished trial (a Ray task): the audit's attacks on the trial's
    evaluation points, planned from and joined per example with its stored cheap-tier results
    (`audit.audit_attacks`, `evaluate.merge_audit`), logged into the trial's own run."""
    start = time.perf_counter()
    begin_trial()
    try:
        return _audit_in_run(config, context, checkpoint, run_id) | {
            AUDIT_SECONDS: time.perf_counter() - start
        }
    finally:  # Ray reuses this worker for the next audit
        release_freed_memory()


def _audit_in_run(
    config: dict, context: SweepContext, checkpoint: tune.Checkpoint, run_id: str
) -> dict:
    cfg = context.trial(config)
    device = _prepare_worker(context)
    data = load_dataset(cfg.dataset.name, cfg.dataset.data_dir, cfg.dataset.download).to(device)
    state = new_state(cfg, data, device)
    with checkpoint.as_directory() as folder:  # downloaded first where storage is remote
        load_checkpoint(Path(folder) / CHECKPOINT_FILE, state)
    with store_lock(context.tracking_uri):  # MLflow opens (and checks) the store here
        client = MlflowClient(context.tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, PER_EXAMPLE_ARTIFACT, folder)
        record = json.loads(Path(path).read_text())
    idx = torch.tensor(record["eval_indices"], device=device)  # the points the cheap tier ran on
    stored = stored_results(record)
    outcome = audit_attacks(state.model, data.x_test[idx], data.y_test[idx], stored, cfg)
    merged = merge_audit(stored, outcome.results)
    logged = client.get_run(run_id).data.metrics
    metrics, diagnostics = audit_metrics(
        merged,
        outcome.results,
        logged[names.masking("zero_grad_float32")],
        logged[names.masking("zero_grad_float64")],
        cfg,
    )
    metrics |= {names.autoattack_stage_seconds(s): v for s, v in outcome.stage_seconds.items()}
    metrics |= names.summary_metrics(metrics)  # the audited worst case and flag
    log_epoch(client, run_id, metrics, step=cfg.training.epochs)
    log_masking_tags(client, run_id, {name: flag for name, (_, flag) in diagnostics.items()})
    client.log_dict(run_id, record_with(record, merged), PER_EXAMPLE_ARTIFACT)  # now audited
    client.set_tag(run_id, AUDITED_TAG, "true")
    log_curves(client, run_id, merged, cfg, f"{cfg.run_name} (audited)", audited=True)
    audit_info = {
        **cfg.audit.model_dump(mode="json"),
        "skipped_eps": outcome.skipped_eps,  # the cheap tier left nothing standing there
        "autoattack_stages_reused": {f"{e:g}": s for e, s in outcome.reused.items()},
    }
    client.log_dict(run_id, audit_info, "robustness/audit.json")
    return metrics


def run_trial(config: dict, context: SweepContext) -> None:
    """One trial in its MLflow run; the worker gives back what the trial freed when it ends,
    because Tune runs the next trial in this same process."""
    trials_run = begin_trial()  # first: what this trial makes stays out of the frozen set
    cfg = context.trial(config)
    # Ray logs a line per checkpoint; with one checkpoint per epoch that drowns the progress table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial_id = tune.get_context().get_trial_id()
    with store_lock(context.tracking_uri):  # MLflow opens (and checks) the store here
        client = MlflowClient(context.tracking_uri)
    # Ray's experiment snapshot can lag behind a crash: a trial whose run already ended is done
    done = finished_run_metrics(client, context.experiment_id, context.parent_run_id, trial_id)
    if done is not None:  # Tune needs its metric in every report
        tune.report(UNMEASURED | done)
        return
    device = _prepare_worker(context)
    gpu_ids = ray.get_gpu_ids()  # what Ray gave this trial: ids of logical GPUs on its node
    tags = {
        "satsweep.git_commit": context.git_commit,
        "satsweep.device": str(device),
        "satsweep.gpu_ids": ",".join(str(g) for g in gpu_ids) or "none",
        "satsweep.ray_node_id": ray.get_runtime_context().get_node_id(),
        "satsweep.host": ray.util.get_node_ip_address(),  # which machine ran the trial
        "satsweep.worker_pid": str(os.getpid()),
        **version_tags(),
    }
    run_id = open_trial_run(
        client,
        context.experiment_id,
        context.parent_run_id,
        trial_id,
        cfg.run_name,
        cfg.params(),
        tags,
    )
    try:
        use_given_gpu(context, client, run_id, gpu_problem(gpu_ids, device))
        _train_in_run(cfg, context.twin(config), context, client, run_id, device)
    finally:  # the trial's tensors went with `_train_in_run`'s frame (or wait in a traceback)
        end_of_trial(client, run_id, trials_run, device)


class GpuMissing(RuntimeError):
    """Ray gave the trial a GPU its node's torch cannot use, and the spec says to fail."""


def use_given_gpu(context: SweepContext, client: MlflowClient, run_id: str, problem: str | None):
    """A GPU that torch cannot see fails the trial, saying why and how to fix it; with
    `resources.gpu_missing: cpu` the trial trains on the CPU and its run says so (a tag)."""
    if problem is None:
        return
    if context.gpu_missing == "cpu":
        client.set_tag(run_id, "satsweep.gpu_fallback", f"{problem}; trained on the CPU "
                       "(resources.gpu_missing: cpu)")  # fmt: skip
        return
    message = (f"{problem}: fix the node's NVIDIA driver or its torch build, or set "
               "resources.gpus_per_trial: 0 for CPU trials (resources.gpu_missing: cpu trains "
               "such trials on the CPU instead)")  # fmt: skip
    client.set_tag(run_id, DESCRIPTION_TAG, f"Failed: {message}.")  # what the UI shows first
    finish_run(client, run_id, "FAILED", note="failed")
    raise GpuMissing(message)


def _train_in_run(
    cfg: TrialSettings,
    twin_cfg: TrialSettings,
    context: SweepContext,
    client: MlflowClient,
    run_id: str,
    device,
) -> None:
    """Data, model and checkpoint, then training and evaluation; the run ends FINISHED
    (divergence is a result), FAILED on an error, or as Tune decides when it stops the trial."""
    data = load_dataset(cfg.dataset.name, cfg.dataset.data_dir, cfg.dataset.download).to(device)
    state = new_state(cfg, data, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_checkpoint(Path(folder) / CHECKPOINT_FILE, state)
    else:
        log_data_inputs(cfg, data, client, run_id)
    try:
        runs = SweepRuns(client, context.experiment_id, context.parent_run_id)
        _train_and_report(cfg, twin_cfg, data, state, runs, run_id, context.early_stopping)
    except TrainingDiverged as err:  # a result, not a crash: keep what was logged, go on
        final = UNMEASURED | {
            names.EPOCH: err.epoch,
            names.CLEAN_ACC: clean_metrics(cfg, data, state.model)[names.CLEAN_ACC],
            names.DIVERGED_AT_EPOCH: err.epoch,
            **err.metrics,
        }
        log_epoch(client, run_id, final, step=err.epoch)
        finish_run(client, run_id, "FINISHED", note="diverged")
        tune.report(final)
    except SystemExit:  # Tune stopped the trial at a report: the driver's `CloseRuns` ends the
        raise  # run as Tune decided, unless the trial had already finished it
    except BaseException:
        finish_run(client, run_id, "FAILED", note="failed")
        raise


def log_data_inputs(cfg: TrialSettings, data: Dataset, client: MlflowClient, run_id: str) -> None:
    """The data the trial saw, as MLflow dataset inputs (the run list's Dataset column): the
    training split, the test split clean accuracy is measured on, and the evaluation subset the
    attacks ran on, each with its digest, sizes (the profile) and, for the subset, its seed."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    e = cfg.evaluation
    _, x_eval, y_eval = evaluation_points(cfg, data)
    splits = {
        "train": (data.x_train, data.y_train, {}),
        "test": (data.x_test, data.y_test, {}),
        "eval": (x_eval, y_eval,
                 {"satsweep.eval_seed": str(e.seed), "satsweep.eval_size": str(len(y_eval))}),
    }  # fmt: skip
    source = dataset_source(cfg)
    inputs = []
    for split, (x, y, extra) in splits.items():
        name = f"{cfg.dataset.name}/{split}" + (f"-{len(y_eval)}-seed{e.seed}" if extra else "")
        dataset = mlflow.data.from_numpy(x.cpu().numpy(), targets=y.cpu().numpy(), name=name,
                                         source=source)  # fmt: skip
        tags = [InputTag("mlflow.data.context", split)]
        tags += [InputTag(k, v) for k, v in extra.items()]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
    client.log_inputs(run_id, datasets=inputs)


def dataset_source(cfg: TrialSettings):
    """Where the data came from: the torchvision folder, or the loader of a bundled dataset."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    if cfg.dataset.data_dir:
        return str(Path(cfg.dataset.data_dir).resolve())
    return CodeDatasetSource({"loader": f"trainables.data.load_dataset({cfg.dataset.name!r})"})


def end_of_trial(client: MlflowClient, run_id: str, trials_run: int, device) -> None:
    """Give back what the trial freed (CUDA blocks, glibc's heap pages), then log the worker's
    memory: its peak during the trial and what it carries into the next one."""
    if device.type == "cuda":
        release_cuda()
    release_freed_memory()
    reading = read_memory()
    if reading is None:
        return
    metrics = {
        names.WORKER_TRIALS_RUN: trials_run,
        names.WORKER_PEAK_MB: reading.peak / MIB,
        names.WORKER_RESIDENT_MB: reading.resident / MIB,
        names.WORKER_PRIVATE_MB: reading.private / MIB,
    }
    try:
        log_epoch(client, run_id, metrics, step=0)
    except Exception:  # a diagnostic: it must not hide the trial's own outcome
        logging.getLogger(__name__).warning("could not log the worker's memory", exc_info=True)


def _train_and_report(
    cfg: TrialSettings,
    twin_cfg: TrialSettings,
    data: Dataset,
    state: TrainState,
    runs: SweepRuns,
    run_id: str,
    early_stopping: bool,
) -> None:
    """Each epoch: metrics to MLflow, then to Tune with a checkpoint when one is due
    (`checkpoint_due`) and at the last epoch (after the final evaluation). The run is finished
    before the last report: its record is complete, and Tune may stop the trial at that report
    (ASHA does at its last rung), so no code after it is sure to run."""
    client, epochs, every = runs.client, cfg.training.epochs, cfg.evaluation.every_epochs
    overfitted = False
    saved_at = time.monotonic()  # a restored trial counts from its restart
    for metrics in train(cfg, data, state, early_stopping):
        flags = {}
        if state.epoch == epochs:
            final, raised = final_evaluation(cfg, data, state, runs, run_id, twin_cfg)
            metrics |= final
            metrics |= names.summary_metrics(metrics)
            flags = {names.FLAGS_REPORT: ", ".join(raised)}  # for the console; not a metric
        elif every and state.epoch % every == 0:
            metrics |= quick_evaluation(cfg, data, state.model)
        log_epoch(client, run_id, metrics, step=state.epoch)
        if metrics.get(names.CATASTROPHIC_OVERFITTING) and not overfitted:
            overfitted = True  # the first epoch of the collapse
            note = overfitting_note(state.epoch, metrics[names.OVERFITTING], state.best_watch,
                                 state.best_epoch)  # fmt: skip
            record_defence_failure(client, run_id, note)
        if metrics.get(names.NEVER_ROBUST):
            note = never_robust_note(state.best_watch, metrics[names.OVERFITTING_SINGLE_STEP])
            record_defence_failure(client, run_id, note)
        headline = {k: metrics[k] for k in HEADLINE_METRICS}
        if state.epoch == epochs:
            finish_run(client, run_id, "FINISHED", note="finished")
        elif not checkpoint_due(cfg.training, state.epoch, time.monotonic() - saved_at):
            tune.report(headline | metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder) / CHECKPOINT_FILE, state, {"mlflow_run_id": run_id})
            checkpoint = tune.Checkpoint.from_directory(folder)
            saved_at = time.monotonic()
            tune.report(headline | metrics | flags, checkpoint=checkpoint)


def checkpoint_due(training: TrainingSettings, epoch: int, since_last_s: float) -> bool:
    """Every `checkpoint_every` epochs, once `checkpoint_min_seconds` have passed since the last
    checkpoint (or the trial's start)."""
    return (
        epoch % training.checkpoint_every == 0 and since_last_s >= training.checkpoint_min_seconds
    )
