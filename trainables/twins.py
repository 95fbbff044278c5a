"""The transfer attack's source model: a trial's lambda = 0 twin (same architecture, activation,
defence, seed and shared settings; only lambda differs, and in a search every setting sampled
from a range is back at the spec's value: `SweepContext.twin`), trained once per sweep.

Where the twin comes from, in order:
1. the trial is its own twin (lambda = 0 and nothing else sampled away from the spec);
2. the twin's final weights are already in the store: the grid's own lambda = 0 trial logged
   them (the grid runs lambda ascending, so that trial started first), or another trial trained
   the twin for the sweep and logged it;
3. the twin is being trained right now (its trial runs, or another trial claimed it): wait for
   it, at most about as long as this trial's own training took, then go on to 4;
4. train it here, claim it first so no other trial trains it too, and share its weights for
   the trials that need it later.

All of that goes through a `TwinStore` (in a sweep, the sweep's MLflow runs), so this logic is
tested without MLflow.

Training is seeded, so every route yields the same model (bit for bit on a CPU). A twin trial
that ASHA stopped early, that failed or diverged never logs final weights: the first trial that
needs the twin then trains it (4), and the others reuse that one.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from trainables.data import Dataset
from trainables.settings import TrialSettings
from trainables.train import TrainingDiverged, TrainState, new_state, train

POLL_SECONDS = 2.0
WAIT_FLOOR_SECONDS = 60.0  # a twin that started first needs at most about our own training time
WEIGHTS_FILE = "state_dict.pt"


class TwinStore(Protocol):
    """Where a sweep's twins are found and shared (in a sweep: its MLflow runs,
    `tracking.twin_store.MlflowTwinStore`, built by the trainable)."""

    def weights_file(self, twin_name: str, folder: str) -> str | None:
        """The trained twin's state_dict file, fetched into `folder`; None while there is none."""

    def in_training(self, twin_name: str) -> bool:
        """Is some trial training it right now (its own, or one that claimed it)?"""

    def claim(self, twin_name: str) -> None:
        """This trial trains it: others wait instead of training it too."""

    def release(self, twin_name: str) -> None:
        """This trial gave up training it (its training diverged)."""

    def publish(self, twin_name: str, weights_file: str) -> None:
        """Share the weights this trial trained, under the twin's name."""


@dataclass
class Twin:
    model: nn.Module | None  # None when the twin's own training diverged: no transfer attack
    epochs_trained: int  # epochs this trial spent training it: 0 when it was reused
    wait_seconds: float  # time spent waiting for another trial to finish it


def transfer_twin(
    cfg: TrialSettings,
    twin_cfg: TrialSettings,
    data: Dataset,
    state: TrainState,
    store: TwinStore,
) -> Twin:
    """The trained twin of this trial (see the module docstring for the order): `twin_cfg`, in
    a sweep `SweepContext.twin` of the trial."""
    if twin_cfg.run_name == cfg.run_name:  # a name holds every setting a sweep varies
        return Twin(state.model, 0, 0.0)
    name = twin_cfg.run_name
    per_epoch = state.seconds_trained / max(1, state.epochs_trained)
    limit = WAIT_FLOOR_SECONDS + per_epoch * cfg.training.epochs
    start = time.perf_counter()
    while True:
        found = load_twin(twin_cfg, data, store)
        if found is not None:
            return Twin(found, 0, _since(start))
        if not store.in_training(name) or _since(start) > limit:
            break
        time.sleep(POLL_SECONDS)
    waited = _since(start)
    store.claim(name)
    try:
        model = train_twin(twin_cfg, data)
    except TrainingDiverged as err:  # the epochs it ran were still spent
        store.release(name)
        return Twin(None, err.epoch, waited)
    share_twin(store, model, name)
    return Twin(model, cfg.training.epochs, waited)


def _since(start: float) -> float:
    return time.perf_counter() - start


def train_twin(twin_cfg: TrialSettings, data: Dataset) -> nn.Module:
    """Train the twin from scratch, exactly as its own trial would (seeded)."""
    twin = new_state(twin_cfg, data, data.x_train.device)
    for _ in train(twin_cfg, data, twin):
        pass
    return twin.model.eval()


def load_twin(twin_cfg: TrialSettings, data: Dataset, store: TwinStore) -> nn.Module | None:
    """The twin's stored weights in a fresh model of its architecture, or None."""
    with tempfile.TemporaryDirectory() as folder:
        local = store.weights_file(twin_cfg.run_name, folder)
        if local is None:
            return None
        weights = torch.load(local, map_location=data.x_train.device, weights_only=True)
    model = new_state(twin_cfg, data, data.x_train.device).model
    model.load_state_dict(weights)
    return model.eval()


def share_twin(store: TwinStore, model: nn.Module, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / WEIGHTS_FILE
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, file)
        store.publish(name, str(file))
