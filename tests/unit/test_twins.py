"""The transfer source is trained once per sweep: a trial reuses the weights its lambda = 0 twin
logged, waits for a twin still training, and trains (and shares) a twin nobody else has.
Through the sweep's real store (a SQLite MLflow store, `MlflowTwinStore`), and through a store
in memory, which shows the twin logic needs no MLflow. Real training on the bundled digits;
no Ray."""

import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tracking.runs import TWIN_TAG, WEIGHTS_TAG
from tracking.twin_store import MlflowTwinStore
from trainables.train import new_state, train
from trainables.trainable import SweepRuns, log_model
from trainables.twins import POLL_SECONDS, train_twin, transfer_twin

EPOCHS = 2


@pytest.fixture
def runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("twins", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment, run_name="twins").info.run_id
    return SweepRuns(client, experiment, parent)


def trial_run(runs: SweepRuns, name: str) -> str:
    tags = {MLFLOW_PARENT_RUN_ID: runs.parent_run_id}
    return runs.client.create_run(runs.experiment_id, run_name=name, tags=tags).info.run_id


def store(runs: SweepRuns, run_id: str) -> MlflowTwinStore:
    return MlflowTwinStore(runs.client, runs.experiment_id, runs.parent_run_id, run_id)


def trained(cfg, digits):
    state = new_state(cfg, digits, torch.device("cpu"))
    for _ in train(cfg, digits, state):
        pass
    return state


def at_zero(cfg):
    """The twin a grid gives a trial: the same settings at lambda = 0."""
    return cfg.model_copy(update={"lam": 0.0})


def grid_twin(cfg, runs, digits, state):
    """`transfer_twin` as a grid trial calls it, from a run of its own."""
    return transfer_twin(
        cfg, at_zero(cfg), digits, state, store(runs, trial_run(runs, cfg.run_name))
    )


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


@pytest.fixture
def setting(cfg_factory, digits):
    """A lambda = 1 trial that has finished training, and its twin's settings."""
    cfg = cfg_factory(lam=1.0, training={"epochs": EPOCHS})
    return cfg, trained(cfg, digits), at_zero(cfg)


def log_final_weights(runs, twin_cfg, digits, run_id) -> torch.nn.Module:
    """What the twin's own trial does at its final evaluation."""
    state = trained(twin_cfg, digits)
    log_model(twin_cfg, digits, state, runs.client, run_id)
    runs.client.set_tag(run_id, WEIGHTS_TAG, "true")
    return state.model


def test_the_grid_twin_is_reused_not_retrained(runs, setting, digits):
    cfg, state, twin_cfg = setting
    logged = log_final_weights(runs, twin_cfg, digits, trial_run(runs, twin_cfg.run_name))
    twin = grid_twin(cfg, runs, digits, state)
    assert twin.epochs_trained == 0 and same_weights(twin.model, logged)


def test_a_missing_twin_is_trained_once_and_shared(runs, setting, cfg_factory, digits):
    cfg, state, twin_cfg = setting
    first_run = trial_run(runs, cfg.run_name)
    first = transfer_twin(cfg, at_zero(cfg), digits, state, store(runs, first_run))
    assert first.epochs_trained == EPOCHS
    assert runs.client.get_run(first_run).data.tags[TWIN_TAG] == twin_cfg.run_name
    other = cfg.model_copy(update={"lam": 3.0})  # same twin
    second = grid_twin(other, runs, digits, state)
    assert second.epochs_trained == 0 and same_weights(second.model, first.model)
    # seeded: the same model the twin's own trial would have trained
    assert same_weights(first.model, train_twin(twin_cfg, digits))


def test_a_twin_still_training_is_waited_for(runs, setting, digits):
    cfg, state, twin_cfg = setting
    twin_run = trial_run(runs, twin_cfg.run_name)  # RUNNING, no weights yet
    logged = {}

    def finish_later():
        time.sleep(3)
        logged["model"] = log_final_weights(runs, twin_cfg, digits, twin_run)

    worker = threading.Thread(target=finish_later)
    worker.start()
    twin = grid_twin(cfg, runs, digits, state)
    worker.join()
    assert twin.epochs_trained == 0 and twin.wait_seconds >= 2.5
    assert same_weights(twin.model, logged["model"])


def test_a_twin_that_ended_without_weights_is_trained_here(runs, setting, digits):
    cfg, state, twin_cfg = setting
    stopped = trial_run(runs, twin_cfg.run_name)  # e.g. ASHA stopped it early
    runs.client.set_terminated(stopped, "FINISHED")
    start = time.perf_counter()
    twin = grid_twin(cfg, runs, digits, state)
    assert twin.epochs_trained == EPOCHS and twin.wait_seconds < POLL_SECONDS  # never polled
    assert time.perf_counter() - start < 60


def test_a_lambda_zero_trial_is_its_own_twin(runs, cfg_factory, digits):
    cfg = cfg_factory(lam=0.0, training={"epochs": 1})
    state = trained(cfg, digits)
    twin = grid_twin(cfg, runs, digits, state)
    assert twin.model is state.model and twin.epochs_trained == 0


class MemoryStore:
    """A TwinStore in a dict: what the trials of a sweep would share."""

    def __init__(self):
        self.files, self.training, self.claims = {}, set(), []

    def weights_file(self, twin_name, folder):
        return self.files.get(twin_name)

    def in_training(self, twin_name):
        return twin_name in self.training

    def claim(self, twin_name):
        self.claims.append(twin_name)

    def release(self, twin_name):
        self.claims.remove(twin_name)

    def publish(self, twin_name, weights_file):
        kept = Path(self.folder) / f"{twin_name}.pt"
        kept.write_bytes(Path(weights_file).read_bytes())
        self.files[twin_name] = str(kept)


def test_the_twin_logic_needs_only_a_store(setting, digits, tmp_path):
    cfg, state, twin_cfg = setting
    memory = MemoryStore()
    memory.folder = tmp_path
    first = transfer_twin(cfg, at_zero(cfg), digits, state, memory)
    assert first.epochs_trained == EPOCHS and memory.claims == [twin_cfg.run_name]
    other = cfg.model_copy(update={"lam": 3.0})  # same twin
    again = transfer_twin(other, at_zero(other), digits, state, memory)
    assert again.epochs_trained == 0 and same_weights(again.model, first.model)
    assert same_weights(first.model, train_twin(twin_cfg, digits))


def test_twins_imports_no_mlflow():
    import ast

    import trainables.twins

    tree = ast.parse(Path(trainables.twins.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.split(".")[0] in ("mlflow", "tracking", "ray") for m in imported)
