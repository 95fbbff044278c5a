"""The plain training loop: it learns, it is seeded, the penalty saturates units, and a resumed
run continues exactly where an uninterrupted one would be."""

import pytest
import torch

from trainables.train import (
    CheckpointError,
    load_checkpoint,
    new_state,
    save_checkpoint,
    train,
    train_one_epoch,
)


def run(cfg, data):
    """Train; returns each epoch's metrics (wall-clock timings left out) and the final state."""
    state = new_state(cfg, data, torch.device("cpu"))
    return [untimed(m) for m in train(cfg, data, state)], state


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("timing/")}


def test_mlp_learns_digits(cfg_factory, digits):
    history, _ = run(cfg_factory(training={"epochs": 8}), digits)
    assert [m["epoch"] for m in history] == list(range(1, 9))
    assert history[-1]["clean_acc"] >= 0.9
    assert history[-1]["train/cross_entropy"] < history[0]["train/cross_entropy"]


def test_same_seed_same_numbers_other_seed_other_numbers(cfg_factory, digits):
    a, _ = run(cfg_factory(training={"epochs": 2}), digits)
    b, _ = run(cfg_factory(training={"epochs": 2}), digits)
    c, _ = run(cfg_factory(seed=1, training={"epochs": 2}), digits)
    assert a == b
    assert a[-1]["train/loss"] != c[-1]["train/loss"]


def test_penalty_drives_sigmoid_units_into_saturation(cfg_factory, digits):
    plain, _ = run(cfg_factory(activation="sigmoid", training={"epochs": 8}), digits)
    penalised, _ = run(cfg_factory(activation="sigmoid", lam=5.0, training={"epochs": 8}), digits)
    assert penalised[-1]["saturation/layer1"] > plain[-1]["saturation/layer1"] + 0.3
    assert penalised[-1]["train/penalty"] < plain[-1]["train/penalty"]


def test_linear_warmup_reports_rising_lambda(cfg_factory, digits):
    cfg = cfg_factory(
        lam=2.0, training={"epochs": 3, "penalty": {"schedule": "linear", "warmup_epochs": 2}}
    )
    history, _ = run(cfg, digits)
    assert [m["train/effective_lambda"] for m in history] == pytest.approx([1.0, 2.0, 2.0])


def test_cnn_metrics_cover_every_hidden_layer(cfg_factory, digits):
    cfg = cfg_factory(
        arch={"kind": "cnn", "hidden": [16], "channels": [4]},
        activation="sigmoid",
        training={"epochs": 1},
    )
    (m,), _ = run(cfg, digits)
    assert {"saturation/layer1", "saturation/layer2", "saturation_float32_flat/layer2"} <= set(m)
    assert {"weight_kurtosis/conv1", "weight_kurtosis/dense1", "weight_kurtosis/out"} <= set(m)


def test_resume_from_checkpoint_matches_uninterrupted_run(cfg_factory, digits, tmp_path):
    cfg = cfg_factory(training={"epochs": 3})
    straight, _ = run(cfg, digits)
    interrupted, state = run(cfg_factory(training={"epochs": 2}), digits)
    save_checkpoint(tmp_path / "state.pt", state, {"mlflow_run_id": "abc"})
    resumed = new_state(cfg, digits, torch.device("cpu"))
    extra = load_checkpoint(tmp_path / "state.pt", resumed)
    assert extra == {"mlflow_run_id": "abc"} and resumed.epoch == 2
    rest = [untimed(m) for m in train(cfg, digits, resumed)]
    assert interrupted + rest == straight


def test_truncated_checkpoint_is_reported(cfg_factory, digits, tmp_path):
    _, state = run(cfg_factory(training={"epochs": 1}), digits)
    path = tmp_path / "state.pt"
    save_checkpoint(path, state)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, state)


def test_gradient_clipping_bounds_each_step(cfg_factory, digits):
    """With the global gradient norm clipped to c, one SGD step moves the weights by at most
    lr * c; unclipped, the same step moves them further."""

    def first_step_size(clip):
        training = {"epochs": 1, "batch_size": 2000, "grad_clip_norm": clip,
                    "optimizer": {"name": "sgd", "lr": 1.0}}  # fmt: skip
        cfg = cfg_factory(training=training)
        state = new_state(cfg, digits, torch.device("cpu"))
        before = torch.cat([p.detach().flatten().clone() for p in state.model.parameters()])
        train_one_epoch(cfg, digits, state, epoch=1)  # one batch: the whole split
        after = torch.cat([p.detach().flatten() for p in state.model.parameters()])
        return (after - before).norm().item()

    assert first_step_size(1e-3) <= 1e-3 * (1 + 1e-4)
    assert first_step_size(None) > 10 * 1e-3
    assert (
        cfg_factory(training={"grad_clip_norm": 0.5}).params()["training.grad_clip_norm"] == "0.5"
    )


def test_a_resumed_keep_best_trial_ends_on_the_weights_an_uninterrupted_one_kept(
    cfg_factory, digits, tmp_path
):
    """The overfitting watch's state (best accuracy, its epoch, its weights) travels in the
    checkpoint: a keep_best trial interrupted after its best epoch and resumed from the file
    ends on the weights the uninterrupted trial ends on. Without that state (the check starts
    afresh after a resume) it would keep a later epoch's weights."""
    from trainables.settings import DefenceSettings

    defence = DefenceSettings(kind="fgsm_rs", eps=0.3, keep_best=True)
    cfg = cfg_factory(training={"epochs": 8}).model_copy(update={"defence": defence})
    whole = new_state(cfg, digits, torch.device("cpu"))
    kept = list(train(cfg, digits, whole))[-1]["train/kept_epoch"]
    stop_at = kept + 1
    assert stop_at < cfg.training.epochs, "the best epoch must come before the interruption"

    def resumed(forget_the_watch: bool):
        first = new_state(cfg, digits, torch.device("cpu"))
        for metrics in train(cfg, digits, first):
            if metrics["epoch"] == stop_at:
                save_checkpoint(tmp_path / "state.pt", first)
                break
        later = new_state(cfg, digits, torch.device("cpu"))
        load_checkpoint(tmp_path / "state.pt", later)
        if forget_the_watch:  # what a checkpoint without the watch's state restored
            later.best_watch, later.best_epoch, later.best_weights = -1.0, 0, None
        history = list(train(cfg, digits, later))
        return later, history[-1]["train/kept_epoch"]

    state, kept_after_resume = resumed(forget_the_watch=False)
    assert kept_after_resume == kept
    assert all(
        torch.equal(v, state.model.state_dict()[k]) for k, v in whole.model.state_dict().items()
    )
    forgot, kept_forgetting = resumed(forget_the_watch=True)
    assert kept_forgetting != kept  # the test can tell the two apart


def test_a_checkpoint_waits_for_its_epoch_and_for_the_seconds_floor():
    """Every `checkpoint_every` epochs, but never sooner than `checkpoint_min_seconds` after
    the last one: the floor that keeps Tune from rewriting its state once per short trial."""
    from trainables.settings import TrainingSettings
    from trainables.trainable import checkpoint_due

    floor = TrainingSettings(checkpoint_every=2, checkpoint_min_seconds=30.0)
    assert [checkpoint_due(floor, e, 31.0) for e in (1, 2, 3, 4)] == [False, True, False, True]
    assert not checkpoint_due(floor, 2, 29.9)
    every_epoch = TrainingSettings(checkpoint_min_seconds=0.0)
    assert all(checkpoint_due(every_epoch, e, 0.0) for e in (1, 2, 3))
