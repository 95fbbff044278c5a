"""Shared fixtures: complete trial settings for tiny, fast runs, and where the MNIST subset lives.

The MNIST tests read an offline torchvision root: $SATSWEEP_MNIST_ROOT, else `data/mnist` in
the checkout (docs/data.md); they skip where it is absent.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from trainables.data import default_mnist_root
from trainables.evaluate import eval_indices
from trainables.settings import ArchitectureSettings, SweepSettings, TrialSettings
from trainables.train import new_state, train

REPO = Path(__file__).resolve().parents[1]
MNIST10K = default_mnist_root()

# small but complete: tests override what they exercise
TEST_SECTIONS = {
    "training": {
        "epochs": 3, "batch_size": 64, "eval_batch_size": 256, "optimizer": {"lr": 3.0e-3},
        "penalty": {"schedule": "constant", "warmup_epochs": 0},
    },
    "evaluation": {"size": 200, "pgd_steps": 20, "apgd_iterations": 20, "noise_draws": 20},
    "audit": {"square_queries": 500},
}  # fmt: skip


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_cfg(
    arch: dict | None = None,
    activation: str = "relu",
    lam: float = 0.0,
    seed: int = 0,
    **sections: dict,
) -> TrialSettings:
    """Trial settings for a small digits MLP; `training={...}`, `evaluation={...}` etc. are
    merged into the test defaults, key by key."""
    shared = SweepSettings.model_validate(_merge(TEST_SECTIONS, sections))
    return TrialSettings.at(
        shared,
        arch=ArchitectureSettings(**(arch or {"kind": "mlp", "hidden": [32]})),
        activation=activation,
        lam=lam,
        seed=seed,
    )


def at_autoattack_settings(**evaluation) -> TrialSettings:
    """Test settings at AutoAttack's own iteration and query counts (the shipped defaults), the
    ones at which the cheap tier's APGD runs are AutoAttack's stages and the audit's Square run
    is its Square stage."""
    return make_cfg(
        evaluation={"apgd_iterations": 100, **evaluation}, audit={"square_queries": 5000}
    )


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def digits():
    from trainables.data import load_dataset

    return load_dataset("digits", None, False)


# real trained models the attack and audit tests share (digits, CPU, seconds to train)
@pytest.fixture(scope="session")
def eval_points(digits):
    idx = eval_indices(len(digits.y_test), 200, seed=0)
    return digits.x_test[idx], digits.y_test[idx]


def trained_net(digits, activation: str):
    cfg = make_cfg(activation=activation, training={"epochs": 10})
    state = new_state(cfg, digits, torch.device("cpu"))
    for _ in train(cfg, digits, state):
        pass
    return state.model.eval()


@pytest.fixture(scope="session")
def relu_net(digits):
    return trained_net(digits, "relu")


@pytest.fixture(scope="session")
def saturated_net(digits):
    """A trained sigmoid MLP with its hidden layer scaled x100 (most |h| > 20) and its output
    layer x100 (softmax rounds to exactly one-hot in float32)."""
    net = copy.deepcopy(trained_net(digits, "sigmoid"))
    with torch.no_grad():
        for layer in (net.dense[0], net.out):
            layer.weight *= 100
            layer.bias *= 100
    return net
