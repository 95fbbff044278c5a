"""Progress of a running grid: one line per finished or failed trial, with ETA, and a line per
retry."""

from __future__ import annotations

import time

from ray.tune.experiment import Trial

from sweeps.console import duration, summary
from sweeps.tuner import DriverCallback
from sweeps.worker_deaths import last_failure, why_it_failed

ENDED = (Trial.TERMINATED, Trial.ERROR)


class TrialLines(DriverCallback):
    """One line per finished or failed trial: `[k/N] elapsed, ETA, name, clean, worst, flags`.
    k counts the grid's ended trials from Tune's own statuses, so a resumed grid goes on where
    it stopped. The ETA assumes the remaining trials take as long as this launch's finished
    ones, `slots` at a time."""

    role = "lines"

    def __init__(self, total: int, slots: int, eps: float, name_of, width: int = 0):
        self.total, self.slots, self.eps, self.name_of = total, max(1, slots), eps, name_of
        self.width = width  # run names padded to this, so the figures line up
        self.start = time.monotonic()
        self.trial_seconds: list[float] = []
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.monotonic())

    def _progress(self, trials, trial) -> str:
        done = sum(t.status in ENDED for t in trials if t is not trial) + 1
        now = time.monotonic()
        self.trial_seconds.append(now - self.started.get(trial.trial_id, self.start))
        left = self.total - done
        mean = sum(self.trial_seconds) / len(self.trial_seconds)
        eta = duration(left * mean / self.slots) if left > 0 else "0s"
        width = len(str(self.total))
        return f"[{done:>{width}}/{self.total}] {duration(now - self.start)}, ETA {eta}"

    def on_trial_complete(self, iteration, trials, trial, **info):
        line = summary(trial.last_result, self.eps)
        name = self.name_of(trial.config)
        print(f"{self._progress(trials, trial)}  {name:<{self.width}}  {line}", flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed attempt that Tune retries from the last checkpoint: not progress."""
        why, _ = why_it_failed(last_failure(trial.error_file))
        print(f"retrying {self.name_of(trial.config)} from its last checkpoint (failure "
              f"{trial.num_failures}): {why}", flush=True)  # fmt: skip

    def on_trial_error(self, iteration, trials, trial, **info):
        why, fix = why_it_failed(last_failure(trial.error_file))
        details = f"details: {trial.error_file or 'its trial folder'}"
        print(f"{self._progress(trials, trial)}  {self.name_of(trial.config)}  FAILED: {why}"
              + (f". Fix: {fix}" if fix else "") + f" ({details})", flush=True)  # fmt: skip
