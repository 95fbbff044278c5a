"""A trial whose worker is killed is a failed trial, not a crashed sweep, and the console says why.

Two gaps in Ray Tune 2.60's handling of a dead trial worker, closed here by one patch applied
before `Tuner.fit()`, and tested with real kills (tests/integration/test_worker_deaths.py):

- Ray's memory monitor reports a worker it killed as `ray.exceptions.OutOfMemoryError`
  (ray-project/ray#28937), which Tune's actor manager does not expect: it raises "Caught
  unexpected exception" and `Tuner.fit()` ends for every trial (the shipped defences sweep lost
  its last 12 trials that way). Here the kill becomes what it is, the death of the trial's
  actor (`RayActorError`), which Tune retries from the last checkpoint or fails.
- A worker that dies while Tune resets it for its next trial (`reuse_actors`) is reported
  twice, by the actor's error callback and by the reset task's, so one death uses up two of
  the trial's `max_failures`; and the trial stays in Tune's set of resetting trials, so a retry
  would never be given a worker. Here a failed task ends the trial's reset, and one death is
  one failure.

A worker killed any other way (a signal, a lost node) already reaches Tune as a `RayActorError`.
"""

from __future__ import annotations

import re

from ray.air.execution._internal.actor_manager import RayActorManager
from ray.exceptions import OutOfMemoryError, RayActorError
from ray.tune.execution.tune_controller import TuneController

KILLED_FOR_MEMORY = "killed for memory"
# Ray's own wording (raylet memory monitor): "Memory on the node (IP: 10.0.0.5, ID: ...) was
# 22.49GB used / 23.54GB limit (0.955)" and "exceeded threshold of ... (95.0% of ... limit)"
_NODE_MEMORY = re.compile(
    r"Memory on the node \(IP: (?P<ip>[^,]+),[^)]*\) was (?P<used>[\d.]+)GB used / "
    r"(?P<limit>[\d.]+)GB limit"
)
_THRESHOLD = re.compile(r"\((?P<percent>[\d.]+)% of \d+B limit\)")
_WORKER_DIED = ("worker process has died", "actor died", "worker died", "ActorDiedError")


def survive_killed_workers() -> None:
    """Apply both repairs (once per process; see the module docstring)."""
    _memory_kills_are_actor_deaths()
    _one_death_is_one_failure()


def _memory_kills_are_actor_deaths() -> None:
    original = RayActorManager._actor_task_failed
    if getattr(original, "satsweep_patched", False):
        return

    def _actor_task_failed(self, tracked_actor_task, exception):
        if isinstance(exception, OutOfMemoryError):
            exception = RayActorError(error_msg=f"{KILLED_FOR_MEMORY}: {exception}")
        return original(self, tracked_actor_task, exception)

    _actor_task_failed.satsweep_patched = True
    RayActorManager._actor_task_failed = _actor_task_failed


def _one_death_is_one_failure() -> None:
    original = TuneController._trial_task_failure
    if getattr(original, "satsweep_patched", False):
        return

    def _trial_task_failure(self, trial, exception):
        self._resetting_trials.discard(trial)  # a reset that failed never reports back
        seen = self.__dict__.setdefault("_satsweep_last_failure", {})
        if seen.get(trial.trial_id) is exception:  # the same death, through its second callback
            return None
        seen[trial.trial_id] = exception
        return original(self, trial, exception)

    _trial_task_failure.satsweep_patched = True
    TuneController._trial_task_failure = _trial_task_failure


def last_failure(error_file: str | None) -> str:
    """The newest failure Tune recorded in a trial's error.txt ('' when there is none)."""
    if not error_file:
        return ""
    try:
        with open(error_file, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return ""
    return re.split(r"^Failure # \d+ .*$", text, flags=re.MULTILINE)[-1].strip()


def why_it_failed(failure: str) -> tuple[str, str]:
    """(why a trial's attempt ended, what to do about it, '' when nothing), in words."""
    if KILLED_FOR_MEMORY in failure or "running low on memory" in failure:
        node = _NODE_MEMORY.search(failure)
        threshold = _THRESHOLD.search(failure)
        figures = ""
        if node:
            limit = f", Ray kills above {float(threshold['percent']):g}%" if threshold else ""
            figures = (
                f" (node {node['ip']}: {float(node['used']):.1f} GB used of "
                f"{float(node['limit']):.1f} GB{limit})"
            )
        fix = (
            "run fewer trials at once (resources.max_concurrent_trials), attack fewer points at "
            "once (evaluation.attack_batch_size), or reserve more per trial "
            "(resources.memory_per_trial_gb)"
        )
        return f"its worker was killed for memory{figures}", fix
    if any(sign in failure for sign in _WORKER_DIED):
        return "its worker process died (killed, or its node was lost)", ""
    lines = [line for line in failure.splitlines() if line.strip()]
    return (lines[-1][:200] if lines else "an error in the trial"), ""
