"""What a sweep cost, logged on its sweep run and said in its closing lines: slot utilisation
(busy seconds of trial attempts and audit tasks over slots x wall time), the epochs trained
against the grid's own, and where the trials' compute went (training, the cheap attack tier,
the audit).

Each launch counts its own work and its own wall time (`tuner.LaunchClock`); a resumed sweep
adds them to the launches before it, so the hours a crashed sweep sat idle before `--resume`
are in no figure, and utilisation never exceeds 1. The epochs come from the sweep's record.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from sweeps.spec import SweepSpec
from sweeps.tuner import LaunchClock
from tracking import metric_names as names
from tracking.record import SweepRecord
from tracking.runs import log_epoch


def launch_usage(
    spec: SweepSpec, clock: LaunchClock, audit_seconds: float, before: dict[str, float]
) -> dict[str, float]:
    """This launch's wall and busy seconds, and the sweep's so far (`before`: the sweep run's
    metrics as the previous launches left them)."""
    slots = spec.resources.max_concurrent_trials
    wall = clock.wall_seconds
    busy = clock.busy_seconds + audit_seconds
    total_wall = before.get(names.SWEEP_WALL, 0.0) + wall
    total_busy = before.get(names.SWEEP_BUSY, 0.0) + busy
    return {
        names.SWEEP_LAUNCH_WALL: wall,
        names.SWEEP_LAUNCH_BUSY: busy,
        names.SWEEP_WALL: total_wall,
        names.SWEEP_BUSY: total_busy,
        names.SWEEP_SLOTS: float(slots),
        names.SWEEP_UTILISATION: total_busy / (slots * total_wall) if total_wall > 0 else 0.0,
    }


def epochs_trained(spec: SweepSpec, record: SweepRecord) -> dict[str, float]:
    """Every trial's epochs (retrained ones after a restore, and twins a trial trained) over the
    grid's own (trials x epochs): 1.00 when no model is trained twice, below 1 under ASHA."""
    run = sum(t.epochs_run for t in record.trials.values())
    grid = spec.num_trials * spec.training.epochs
    return {
        names.SWEEP_EPOCHS_RUN: run,
        names.SWEEP_GRID_EPOCHS: float(grid),
        names.SWEEP_EPOCHS_RATIO: run / grid,
    }


def compute_split(spec: SweepSpec, record: SweepRecord) -> dict[str, float]:
    """Seconds of training, of the cheap attack tier and of the audit's attacks, summed over the
    trials from their own metrics (`train_seconds_per_epoch` x epochs run, `attack_seconds/*`),
    and the audit's share of the three: the figure the audit's planning is judged by."""
    audit_attacks = set(spec.audit.attacks)
    train = cheap = audit = 0.0
    for t in record.trials.values():
        train += t.metrics.get(names.SECONDS_PER_EPOCH, 0.0) * t.epochs_run
        for key, seconds in t.metrics.items():
            attack = names.parse_attack_seconds(key)
            if attack in audit_attacks:
                audit += seconds
            elif attack is not None:
                cheap += seconds
    total = train + cheap + audit
    return {
        names.SWEEP_TRAIN_SECONDS: train,
        names.SWEEP_CHEAP_SECONDS: cheap,
        names.SWEEP_AUDIT_SECONDS: audit,
        names.SWEEP_AUDIT_SHARE: audit / total if total > 0 else 0.0,
    }


def log_usage(client: MlflowClient, parent_run_id: str, usage: dict, launch: int) -> None:
    """On the sweep run, at step = the launch's number (0 for the first)."""
    log_epoch(client, parent_run_id, usage, step=launch)
