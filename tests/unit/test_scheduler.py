"""ASHA across a resume: Tune restores a sweep's scheduler as it was pickled at launch, so the
rungs must come back from `ResumableASHA`'s own saved state. Real Tune trials (stubs of the real
class) and real files; the decisions compared are ASHA's own."""

import pickle

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from sweeps.asha import ResumableASHA, forget_rungs

RUNGS = {"max_t": 9, "grace_period": 1, "reduction_factor": 3}


def results(trials: int = 9, epochs: int = 3) -> list[tuple[int, int, float]]:
    """(trial, epoch, metric): trial k is worse than trial k - 1 at every epoch, and the
    epochs arrive round by round, as from parallel trials."""
    return [(k, e, e - k / 10) for e in range(1, epochs + 1) for k in range(trials)]


def rung_entries(scheduler: ResumableASHA) -> int:
    """How many (trial, milestone) results the rungs hold (ASHA's private structures, read
    only here)."""
    return sum(len(recorded) for b in scheduler._brackets for _, recorded in b._rungs)


def decisions(scheduler, trials, stream) -> list[str]:
    return [
        scheduler.on_trial_result(None, trials[k], {"training_iteration": e, "m": m})
        for k, e, m in stream
    ]


def launched(scheduler, trials):
    scheduler.set_search_properties("m", "max")
    for t in trials:
        scheduler.on_trial_add(None, t)
    return pickle.dumps(scheduler)  # what the Tuner keeps, and `Tuner.restore` unpickles


def test_a_resumed_asha_decides_as_the_uninterrupted_one(tmp_path):
    trials = [Trial("__fake", stub=True) for _ in range(9)]
    stream = results()
    cut = len(stream) // 2  # the interruption: half of the results reported
    whole = ResumableASHA(str(tmp_path / "one" / "asha_rungs.pkl"), **RUNGS)
    launched(whole, trials)
    expected = decisions(whole, trials, stream)[cut:]
    assert "STOP" in expected, "no decision to get wrong: the test proves nothing"

    first = ResumableASHA(str(tmp_path / "two" / "asha_rungs.pkl"), **RUNGS)
    at_launch = launched(first, trials)
    decisions(first, trials, stream[:cut])
    first.save_state()  # what an interruption leaves (results save it at most every 2 s)
    resumed = pickle.loads(at_launch)
    for t in trials:  # Tune adds the restored trials again
        resumed.on_trial_add(None, t)
    assert rung_entries(resumed) == rung_entries(first) > 0
    assert decisions(resumed, trials, stream[cut:]) == expected

    plain = ASHAScheduler(**RUNGS)  # Tune's own: empty rungs after a resume
    plain_at_launch = launched(plain, trials)
    decisions(plain, trials, stream[:cut])
    restored = pickle.loads(plain_at_launch)
    for t in trials:
        restored.on_trial_add(None, t)
    assert decisions(restored, trials, stream[cut:]) != expected  # what this class mends


def test_a_new_launch_forgets_an_earlier_sweeps_rungs(tmp_path):
    state = tmp_path / "asha_rungs.pkl"
    old = ResumableASHA(str(state), **RUNGS)
    trials = [Trial("__fake", stub=True) for _ in range(3)]
    launched(old, trials)
    decisions(old, trials, results(3, 1))
    old.save_state()
    forget_rungs(str(state))
    assert not state.exists()
    fresh = ResumableASHA(str(state), **RUNGS)
    launched(fresh, trials)
    assert rung_entries(fresh) == 0


def test_a_checkpoint_already_gone_counts_as_deleted_and_its_successor_registers(tmp_path):
    """What a resume after a killed driver meets: Tune's snapshot lists a checkpoint deleted
    after it. Ray's own checkpoint manager, on real folders: registering the next checkpoint
    must complete (no FileNotFoundError half way) and keep only what `num_to_keep` says."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    from sweeps.tuner import gone_checkpoints_count_as_deleted

    def saved(index: int) -> _TrainingResult:
        folder = tmp_path / f"checkpoint_{index:06d}"
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"x")
        return _TrainingResult(Checkpoint.from_directory(str(folder)), {"epoch": index})

    gone_checkpoints_count_as_deleted()
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    for index in (0, 1):
        manager.register_checkpoint(saved(index))
    (tmp_path / "checkpoint_000000" / "state.pt").unlink()
    (tmp_path / "checkpoint_000000").rmdir()  # deleted after the snapshot that lists it
    manager.register_checkpoint(saved(2))
    kept = [r.metrics["epoch"] for r in manager.best_checkpoint_results]
    assert kept == [1, 2]
    manager.register_checkpoint(saved(3))  # and an ordinary deletion still deletes
    assert not (tmp_path / "checkpoint_000001").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002", "checkpoint_000003"]
