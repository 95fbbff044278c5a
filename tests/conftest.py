"""Shared fixtures: a complete TrialConfig for tiny, fast runs, and where the MNIST subset lives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trainables.config import EvalConfig, TrialConfig
from trainables.models import ArchConfig

REPO = Path(__file__).resolve().parents[1]
MNIST10K = REPO.parent / "shared" / "data" / "mnist10k"


def make_eval(**overrides) -> EvalConfig:
    """A small but complete evaluation config; tests override what they exercise."""
    base = EvalConfig(
        size=200, seed=0, eps=(0.05, 0.1, 0.2, 0.3), unbounded_eps=1.0,
        attacks=("fgsm", "fgsm_stable", "pgd_ce", "pgd_margin", "pgd_bpda", "apgd_ce", "apgd_t",
                 "transfer", "noise"),
        pgd_steps=20, pgd_restarts=1, pgd_step_factor=2.5, apgd_iterations=20, noise_draws=20,
        bpda_temperature=4.0, square_queries=500, every_epochs=0, zero_grad_threshold=0.05,
        gap_threshold=0.1,
        tolerance=0.02, unbounded_threshold=0.05,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def make_cfg(**overrides) -> TrialConfig:
    """A full trial config for a small digits MLP; tests override what they exercise."""
    base = TrialConfig(
        dataset="digits", data_dir=None, download=False,
        arch=ArchConfig("mlp", (32,)), activation="relu", lam=0.0, seed=0,
        epochs=3, batch_size=64, optimizer="adam", lr=3e-3, momentum=0.0, weight_decay=0.0,
        penalty_reduction="mean", lambda_schedule="constant", warmup_epochs=0,
        saturation_threshold=5.0, eval_batch_size=256, checkpoint_every=1,
        evaluation=make_eval(),
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def digits():
    from trainables.data import load_dataset

    return load_dataset("digits", None, False)
