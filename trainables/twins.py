"""The transfer attack's source model: a trial's lambda = 0 twin (same architecture, activation,
defence, seed and shared settings; only lambda differs), trained once per sweep.

Where the twin comes from, in order:
1. the trial is its own twin (lambda = 0);
2. the twin's final weights are already in the store: the grid's own lambda = 0 trial logged
   them (the grid runs lambda ascending, so that trial started first), or another trial trained
   the twin for the sweep and logged it;
3. the twin is being trained right now (its trial runs, or another trial claimed it): wait for
   it, at most about as long as this trial's own training took, then go on to 4;
4. train it here, claim it first (a tag on this run) so no other trial trains it too, and log
   its weights for the trials that need it later.

Training is seeded, so every route yields the same model (bit for bit on a CPU). A twin trial
that ASHA stopped early, that failed or diverged never logs final weights: the first trial that
needs the twin then trains it (4), and the others reuse that one.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from torch import nn

from tracking.runs import (
    TWIN_CLAIM_TAG,
    TWIN_TAG,
    TWIN_WEIGHTS,
    twin_in_training,
    twin_weights,
)
from trainables.data import Dataset
from trainables.settings import TrialSettings
from trainables.train import TrainingDiverged, TrainState, new_state, train

POLL_SECONDS = 2.0
WAIT_FLOOR_SECONDS = 60.0  # a twin that started first needs at most about our own training time


@dataclass
class Twin:
    model: nn.Module | None  # None when the twin's own training diverged: no transfer attack
    epochs_trained: int  # epochs this trial spent training it: 0 when it was reused
    wait_seconds: float  # time spent waiting for another trial to finish it


@dataclass(frozen=True)
class SweepRuns:
    """Where a sweep's runs live: enough to find a twin's run."""

    client: MlflowClient
    experiment_id: str
    parent_run_id: str


def transfer_twin(
    cfg: TrialSettings, data: Dataset, state: TrainState, runs: SweepRuns, run_id: str
) -> Twin:
    """The trained lambda = 0 twin of this trial (see the module docstring for the order)."""
    if cfg.lam == 0:
        return Twin(state.model, 0, 0.0)
    twin_cfg = cfg.model_copy(update={"lam": 0.0})
    name = twin_cfg.run_name
    per_epoch = state.seconds_trained / max(1, state.epochs_trained)
    limit = WAIT_FLOOR_SECONDS + per_epoch * cfg.training.epochs
    start = time.perf_counter()
    while True:
        found = twin_weights(runs.client, runs.experiment_id, runs.parent_run_id, name)
        if found is not None:
            return Twin(load_twin(twin_cfg, data, runs.client, *found), 0, _since(start))
        training = twin_in_training(runs.client, runs.experiment_id, runs.parent_run_id, name)
        if not training or _since(start) > limit:
            break
        time.sleep(POLL_SECONDS)
    waited = _since(start)
    runs.client.set_tag(run_id, TWIN_CLAIM_TAG, name)
    try:
        model = train_twin(twin_cfg, data)
    except TrainingDiverged as err:  # the epochs it ran were still spent
        runs.client.delete_tag(run_id, TWIN_CLAIM_TAG)
        return Twin(None, err.epoch, waited)
    log_twin(runs.client, run_id, model, name)
    return Twin(model, cfg.training.epochs, waited)


def _since(start: float) -> float:
    return time.perf_counter() - start


def train_twin(twin_cfg: TrialSettings, data: Dataset) -> nn.Module:
    """Train the twin from scratch, exactly as its own trial would (seeded)."""
    twin = new_state(twin_cfg, data, data.x_train.device)
    for _ in train(twin_cfg, data, twin):
        pass
    return twin.model.eval()


def load_twin(
    twin_cfg: TrialSettings, data: Dataset, client: MlflowClient, run_id: str, path: str
) -> nn.Module:
    """The twin's logged weights in a fresh model of its architecture."""
    model = new_state(twin_cfg, data, data.x_train.device).model
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(run_id, path, folder)
        weights = torch.load(local, map_location=data.x_train.device, weights_only=True)
    model.load_state_dict(weights)
    return model.eval()


def log_twin(client: MlflowClient, run_id: str, model: nn.Module, name: str) -> None:
    """The twin's weights on this trial's run, then the tag that lets other trials find them
    (in that order: a tag never points at weights not yet written)."""
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / Path(TWIN_WEIGHTS).name
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, file)
        client.log_artifact(run_id, str(file), str(Path(TWIN_WEIGHTS).parent))
    client.set_tag(run_id, TWIN_TAG, name)
