"""The training loop as a plain generator: no Ray, no MLflow.

    data = load_dataset(...).to(device)
    state = new_state(cfg, data, device)
    for metrics in train(cfg, data, state):   # one dict per epoch; `state` is updated in place
        ...

Read top to bottom: set-up, one epoch of training, evaluation, the epoch loop, checkpoints.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tracking import metric_names as names
from tracking.evidence import wilson
from trainables.activations import activation as activation_entry
from trainables.data import Dataset, fixed_subset, selection_points
from trainables.defences import (
    eps_in_force,
    fgsm_accuracy,
    never_robust,
    pgd_accuracy,
    training_terms,
)
from trainables.diagnostics import saturated_units, weight_kurtosis
from trainables.models import SaturatingNet
from trainables.penalty import effective_lambda
from trainables.settings import TrialSettings


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not ours."""


class TrainingDiverged(ArithmeticError):
    """The epoch's loss was NaN or infinite (e.g. a huge lambda or learning rate)."""

    def __init__(self, epoch: int, metrics: dict):
        self.epoch, self.metrics = epoch, metrics
        super().__init__(f"training diverged in epoch {epoch}: loss = {metrics[names.LOSS]}")


@dataclass
class TrainState:
    model: SaturatingNet
    optimizer: torch.optim.Optimizer
    epoch: int  # epochs completed
    # the overfitting watch's best epoch so far, and its weights when keep_best (checkpointed:
    # a resumed trial must undo a collapse with the weights it would have kept)
    best_watch: float = -1.0
    best_epoch: int = 0
    best_weights: dict | None = None
    # wall-clock training time of the epochs this process ran (resets on resume)
    seconds_trained: float = 0.0
    epochs_trained: int = 0
    # epochs trained before the checkpoint this state was restored from (by earlier attempts)
    epochs_run_before: int = 0


def pick_device() -> torch.device:
    """CUDA when present (Ray has already narrowed CUDA_VISIBLE_DEVICES to the trial's GPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_problem(gpu_ids: list, device: torch.device) -> str | None:
    """Why a trial that Ray gave a GPU cannot use it (None when it can, or was given none):
    what the node's torch sees, for the person who fixes the node."""
    if not gpu_ids or device.type == "cuda":
        return None
    given = ", ".join(str(g) for g in gpu_ids)
    return (f"Ray gave this trial GPU {given} but torch {torch.__version__} finds no CUDA "
            f"device (built for CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})")  # fmt: skip


def release_cuda() -> None:
    """Give a finished trial's GPU memory back: tensors kept by reference cycles, the caching
    allocator's blocks and cuBLAS's per-process workspaces (which the allocator also counts:
    65 MiB measured on an H200)."""
    if not torch.cuda.is_available():
        return
    gc.collect()  # tensors held only by reference cycles (closures, generators) go first
    torch.cuda.synchronize()
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    torch.cuda.empty_cache()


def new_state(cfg: TrialSettings, data: Dataset, device: torch.device) -> TrainState:
    """A freshly initialised model and optimiser, seeded by the trial's seed."""
    torch.manual_seed(cfg.seed)
    model = SaturatingNet(cfg.arch, cfg.activation, data.input_shape, data.num_classes).to(device)
    o = cfg.training.optimizer
    if o.name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    else:  # sgd: the spec allows no other
        opt = torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    return TrainState(model, opt, epoch=0)


def train_one_epoch(cfg: TrialSettings, data: Dataset, state: TrainState, epoch: int) -> dict:
    """One pass over the training set in a permutation seeded by (seed, epoch), so a resumed
    trial sees the same batches it would have seen. Sums stay on the device: one sync per epoch."""
    model, opt, t = state.model, state.optimizer, cfg.training
    model.train()
    n = len(data.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    order = order.to(data.x_train.device)
    steps = (n + t.batch_size - 1) // t.batch_size
    device = data.x_train.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, data loss, pen, correct
    # the training attack's randomness, seeded like the batch order
    attack_rng = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch + 7)
    lam_t = eps_t = 0.0
    for step in range(steps):
        idx = order[step * t.batch_size : (step + 1) * t.batch_size]
        x, y = data.x_train[idx], data.y_train[idx]
        progress = epoch - 1 + (step + 1) / steps
        eps_t = eps_in_force(cfg.defence, progress)
        ce, penalty, logits = training_terms(cfg, model, x, y, eps_t, attack_rng)
        lam_t = effective_lambda(cfg.lam, t.penalty.schedule, t.penalty.warmup_epochs, progress)
        loss = ce + lam_t * penalty if lam_t > 0 else ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip_norm is not None:  # returns the norm as a tensor: no host sync
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
        opt.step()
        with torch.no_grad():  # running sums; train_acc is the running accuracy of the epoch
            correct = (logits.argmax(1) == y).sum() / len(y)
            totals.add_(torch.stack([loss, ce, penalty, correct]), alpha=len(y))
    loss_mean, ce_mean, penalty_mean, train_acc = (totals / n).tolist()
    metrics = {
        names.LOSS: loss_mean,
        names.CROSS_ENTROPY: ce_mean,
        names.PENALTY: penalty_mean,
        names.EFFECTIVE_LAMBDA: lam_t,
        names.TRAIN_ACC: train_acc,
    }
    if cfg.defence.kind != "none":
        metrics[names.DEFENCE_EPS] = eps_t
    return metrics


@torch.no_grad()
def clean_metrics(cfg: TrialSettings, data: Dataset, model: SaturatingNet) -> dict:
    """Test accuracy (`clean_acc`) and, from the same forward pass, per-layer saturation (and,
    where the activation has one, the fraction of units past its float32-flat point)."""
    model.eval()
    batch, threshold = cfg.training.eval_batch_size, cfg.training.saturation_threshold
    flat_point = activation_entry(cfg.activation).float32_flat
    correct = torch.zeros((), dtype=torch.int64, device=data.x_test.device)
    saturated = flat = None  # per-layer counts of saturated / numerically flat units
    for start in range(0, len(data.y_test), batch):
        x, y = data.x_test[start : start + batch], data.y_test[start : start + batch]
        logits, preacts = model.forward_with_preactivations(x)
        correct += (logits.argmax(1) == y).sum()
        sat = torch.stack([saturated_units(h, cfg.activation, threshold).sum() for h in preacts])
        saturated = sat if saturated is None else saturated + sat
        if flat_point is not None:
            fl = torch.stack([(h.abs() > flat_point).sum() for h in preacts])
            flat = fl if flat is None else flat + fl
    n = len(data.y_test)
    units_per_example = [h[0].numel() for h in preacts]
    hits = int(correct.item())
    low, high = wilson(hits, n)  # a binomial over the test split's points
    metrics = {names.CLEAN_ACC: hits / n, names.CLEAN_LOW: low, names.CLEAN_HIGH: high,
               names.CLEAN_POINTS: float(n)}  # fmt: skip
    for i, units in enumerate(units_per_example):
        metrics[names.saturation(i + 1)] = saturated[i].item() / (n * units)
        if flat is not None:
            metrics[names.saturation_flat(i + 1)] = flat[i].item() / (n * units)
    for name, layer in model.weight_layers().items():
        metrics[names.weight_kurtosis(name)] = weight_kurtosis(layer)
    return metrics


def train(
    cfg: TrialSettings, data: Dataset, state: TrainState, early_stopping: bool = False
) -> Iterator[dict]:
    """Train from `state.epoch + 1` to `cfg.training.epochs`, yielding each epoch's metrics; raises
    TrainingDiverged (with the epoch's training metrics) once the loss is NaN or infinite.
    `early_stopping`: measure the early-stopping signal too; only a trial that ASHA ranks by it
    asks, because on small data it costs up to half an epoch."""
    watch = _overfit_points(cfg, data)
    stopping_points = _stopping_points(cfg, data) if early_stopping else None
    for epoch in range(state.epoch + 1, cfg.training.epochs + 1):
        metrics = {names.EPOCH: epoch}
        start = time.perf_counter()
        metrics.update(train_one_epoch(cfg, data, state, epoch))  # ends with a host sync
        metrics[names.TRAIN_SECONDS] = time.perf_counter() - start
        state.seconds_trained += metrics[names.TRAIN_SECONDS]
        state.epochs_trained += 1
        metrics[names.SECONDS_PER_EPOCH] = state.seconds_trained / state.epochs_trained
        metrics[names.EPOCHS_RUN] = state.epochs_run_before + state.epochs_trained
        if not math.isfinite(metrics[names.LOSS]):
            raise TrainingDiverged(epoch, metrics)
        if watch is not None:
            metrics.update(_watch_overfitting(cfg, state, watch, epoch))
        if stopping_points is not None:
            metrics[names.EARLY_STOPPING] = _early_stopping_signal(cfg, state, stopping_points)
        state.epoch = epoch
        if epoch == cfg.training.epochs and state.best_weights is not None:
            if state.best_epoch != epoch:  # the remedy: end on the best epoch before a collapse
                state.model.load_state_dict(state.best_weights)
            metrics[names.KEPT_EPOCH] = state.best_epoch
        metrics.update(clean_metrics(cfg, data, state.model))
        yield metrics


def _overfit_points(cfg: TrialSettings, data: Dataset):
    """The fixed training batch of the overfitting watch (None without a defence)."""
    d = cfg.defence
    if d.kind == "none":
        return None
    idx = fixed_subset(len(data.y_train), d.overfit_size, cfg.seed).to(data.y_train.device)
    return data.x_train[idx], data.y_train[idx]


def _stopping_points(cfg: TrialSettings, data: Dataset):
    """The first `stopping_size` selection points of the evaluation subset (None when the
    signal is off): ASHA chooses too, so it must not look at the points that report."""
    e = cfg.evaluation
    if e.stopping_size == 0:
        return None
    subset = fixed_subset(len(data.y_test), e.size, e.seed)
    idx = subset[selection_points(len(subset), e.seed)][: e.stopping_size]
    idx = idx.to(data.y_test.device)
    return data.x_test[idx], data.y_test[idx]


def _early_stopping_signal(cfg: TrialSettings, state: TrainState, points) -> float:
    e = cfg.evaluation
    return pgd_accuracy(
        state.model, *points, e.stopping_eps, e.stopping_steps, e.seed, ("ce", "margin")
    )


def _watch_overfitting(cfg: TrialSettings, state: TrainState, watch, epoch: int) -> dict:
    """PGD and FGSM accuracy on the watch batch. `catastrophic_overfitting` is 1 in an epoch
    where PGD accuracy falls more than `overfit_drop` below the best epoch so far (Wong et al.
    2020); at the last epoch `never_robust` is 1 when it never rose at all while FGSM accuracy
    stayed high (`defences.never_robust`): the same failure, from the first epoch."""
    d = cfg.defence
    acc = pgd_accuracy(state.model, *watch, d.eps, d.overfit_steps, cfg.seed)
    single_step = fgsm_accuracy(state.model, *watch, d.eps)
    collapsed = acc < state.best_watch - d.overfit_drop
    if acc > state.best_watch:
        state.best_watch, state.best_epoch = acc, epoch
        if d.keep_best:
            state.best_weights = {
                k: v.detach().clone() for k, v in state.model.state_dict().items()
            }
    metrics = {
        names.OVERFITTING: acc,
        names.OVERFITTING_SINGLE_STEP: single_step,
        names.CATASTROPHIC_OVERFITTING: float(collapsed),
    }
    if epoch == cfg.training.epochs:
        metrics[names.NEVER_ROBUST] = float(
            never_robust(state.best_watch, single_step, d.overfit_drop)
        )
    return metrics


def save_checkpoint(path: Path, state: TrainState, extra: dict | None = None) -> None:
    """Write atomically (temp file, then rename) so a crash never leaves a half-written file."""
    payload = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "epochs_run": state.epochs_run_before + state.epochs_trained,
        # the overfitting watch, so a resumed keep_best trial ends on the same weights
        "best_watch": state.best_watch,
        "best_epoch": state.best_epoch,
        "best_weights": state.best_weights,
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, state: TrainState) -> dict:
    """Restore `state` in place (tensors only: weights_only=True) and return the `extra` dict."""
    try:
        payload = torch.load(
            path, map_location=next(state.model.parameters()).device, weights_only=True
        )
        state.model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
        state.epoch = int(payload["epoch"])
        state.epochs_run_before = int(payload.get("epochs_run", state.epoch))
        state.epochs_trained = 0
        state.best_watch = float(payload.get("best_watch", -1.0))
        state.best_epoch = int(payload.get("best_epoch", 0))
        state.best_weights = payload.get("best_weights")
    except Exception as err:  # truncated zip, wrong keys, wrong shapes: all mean "don't use it"
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {err}") from err
    return payload.get("extra", {})
