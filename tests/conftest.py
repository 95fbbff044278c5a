"""Shared fixtures: complete trial settings for tiny, fast runs, and where the MNIST subset lives.

The MNIST tests read an offline torchvision root: $SATSWEEP_MNIST_ROOT, else `data/mnist` in
the checkout (docs/data.md); they skip where it is absent.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from trainables.data import default_mnist_root
from trainables.settings import ArchitectureSettings, SweepSettings, TrialSettings

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


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def digits():
    from trainables.data import load_dataset

    return load_dataset("digits", None, False)
