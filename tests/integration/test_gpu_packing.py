"""Fractional GPUs, observed without one: Ray schedules by declared resources, so a real local
Ray node that declares one logical GPU shows how `resources.gpus_per_trial: 0.25` packs trials
(four at once, a fifth waits) on this CPU-only machine. Torch there finds no CUDA device, which
is also the case of a GPU node with a broken driver: a trial fails saying so, unless the spec
asks for the logged CPU fallback. Real `satsweep run` processes and a real SQLite store."""

import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

TRIALS = 5


def packing_spec(name: str, gpu_missing: str) -> dict:
    return {
        "name": name,
        "grid": {"architectures": [{"kind": "mlp", "hidden": [16]}], "activations": ["relu"],
                 "lambdas": [0.1 * k for k in range(TRIALS)]},
        # long enough that four trials started together are still training when the first
        # of them ends: the overlap is what is measured
        "training": {"epochs": 30, "batch_size": 16},
        "evaluation": {"size": 50, "eps": [0.1], "attacks": ["fgsm"]},
        "audit": {"enabled": False},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0.25,
                      "max_concurrent_trials": TRIALS, "gpu_missing": gpu_missing},
        "max_failures": 0,
    }  # fmt: skip


@pytest.fixture(scope="module")
def one_logical_gpu():
    """A real Ray node with a CPU per trial and one GPU that exists only in Ray's books."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": TRIALS, "num_gpus": 1})
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def run(tmp_path, spec: dict, address: str) -> tuple[subprocess.CompletedProcess, list]:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--address", address,
         "--storage-path", str(tmp_path / "results")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(spec["name"])
    trials = client.search_runs([exp.experiment_id], "tags.`satsweep.role` = 'trial'")
    return out, trials


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The largest number of [start, end] intervals that hold one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, step in events:  # at a tie an end (-1) sorts first: touching runs do not overlap
        now += step
        most = max(most, now)
    return most


def test_a_quarter_gpu_each_packs_four_trials_on_one_gpu(tmp_path, one_logical_gpu):
    out, trials = run(tmp_path, packing_spec("quarter-gpus", "cpu"), one_logical_gpu.address)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(trials) == TRIALS and {t.info.status for t in trials} == {"FINISHED"}
    # each trial saw the GPU Ray gave it (the node's only one), and why it trained on the CPU
    assert {t.data.tags["satsweep.gpu_ids"] for t in trials} == {"0"}
    assert all("finds no CUDA device" in t.data.tags["satsweep.gpu_fallback"] for t in trials)
    assert {t.data.tags["satsweep.device"] for t in trials} == {"cpu"}
    spans = [(t.info.start_time, t.info.end_time) for t in trials]
    assert most_at_once(spans) == 4  # four quarters at once, never the fifth trial too
    fifth = max(spans)  # the last to start began only after one of the first four ended
    assert fifth[0] >= min(end for start, end in spans if (start, end) != fifth)


def test_a_given_gpu_without_cuda_fails_the_trial_saying_so(tmp_path, one_logical_gpu):
    spec = packing_spec("no-cuda", "fail")
    spec["grid"]["lambdas"] = [0.0]
    out, trials = run(tmp_path, spec, one_logical_gpu.address)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "finds no CUDA device" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    (trial,) = trials
    assert trial.info.status == "FAILED"
    why = trial.data.tags["mlflow.note.content"]
    assert "Ray gave this trial GPU 0" in why and "resources.gpus_per_trial: 0" in why
