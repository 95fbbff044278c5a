"""The transfer source is trained once per sweep: a trial reuses the weights its lambda = 0 twin
logged, waits for a twin still training, and trains (and shares) a twin nobody else has.
Real SQLite MLflow store, real training on the bundled digits; no Ray."""

import threading
import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tracking.runs import TWIN_TAG, WEIGHTS_TAG
from trainables.train import new_state, train
from trainables.trainable import log_model
from trainables.twins import POLL_SECONDS, SweepRuns, train_twin, transfer_twin

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


def trained(cfg, digits):
    state = new_state(cfg, digits, torch.device("cpu"))
    for _ in train(cfg, digits, state):
        pass
    return state


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


@pytest.fixture
def setting(cfg_factory, digits):
    """A lambda = 1 trial that has finished training, and its twin's settings."""
    cfg = cfg_factory(lam=1.0, training={"epochs": EPOCHS})
    return cfg, trained(cfg, digits), cfg.model_copy(update={"lam": 0.0})


def log_final_weights(runs, twin_cfg, digits, run_id) -> torch.nn.Module:
    """What the twin's own trial does at its final evaluation."""
    state = trained(twin_cfg, digits)
    log_model(twin_cfg, digits, state, runs.client, run_id)
    runs.client.set_tag(run_id, WEIGHTS_TAG, "true")
    return state.model


def test_the_grid_twin_is_reused_not_retrained(runs, setting, digits):
    cfg, state, twin_cfg = setting
    logged = log_final_weights(runs, twin_cfg, digits, trial_run(runs, twin_cfg.run_name))
    twin = transfer_twin(cfg, digits, state, runs, trial_run(runs, cfg.run_name))
    assert twin.epochs_trained == 0 and same_weights(twin.model, logged)


def test_a_missing_twin_is_trained_once_and_shared(runs, setting, cfg_factory, digits):
    cfg, state, twin_cfg = setting
    first_run = trial_run(runs, cfg.run_name)
    first = transfer_twin(cfg, digits, state, runs, first_run)
    assert first.epochs_trained == EPOCHS
    assert runs.client.get_run(first_run).data.tags[TWIN_TAG] == twin_cfg.run_name
    other = cfg.model_copy(update={"lam": 3.0})  # same twin
    second = transfer_twin(other, digits, state, runs, trial_run(runs, other.run_name))
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
    twin = transfer_twin(cfg, digits, state, runs, trial_run(runs, cfg.run_name))
    worker.join()
    assert twin.epochs_trained == 0 and twin.wait_seconds >= 2.5
    assert same_weights(twin.model, logged["model"])


def test_a_twin_that_ended_without_weights_is_trained_here(runs, setting, digits):
    cfg, state, twin_cfg = setting
    stopped = trial_run(runs, twin_cfg.run_name)  # e.g. ASHA stopped it early
    runs.client.set_terminated(stopped, "FINISHED")
    start = time.perf_counter()
    twin = transfer_twin(cfg, digits, state, runs, trial_run(runs, cfg.run_name))
    assert twin.epochs_trained == EPOCHS and twin.wait_seconds < POLL_SECONDS  # never polled
    assert time.perf_counter() - start < 60


def test_a_lambda_zero_trial_is_its_own_twin(runs, cfg_factory, digits):
    cfg = cfg_factory(lam=0.0, training={"epochs": 1})
    state = trained(cfg, digits)
    twin = transfer_twin(cfg, digits, state, runs, trial_run(runs, cfg.run_name))
    assert twin.model is state.model and twin.epochs_trained == 0
