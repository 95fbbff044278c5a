"""Capacity before launch: preflight compares what a trial needs with what every node offers,
and a trial's `resources.memory_per_trial_gb` is reserved through Ray's `memory` resource. A
real local Ray cluster whose node declares 4 GiB of memory and 2 CPUs (and no object store to
speak of), and `satsweep run --address` on it."""

import subprocess
import sys

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

NODE_MEMORY_GIB = 4


@pytest.fixture(scope="module")
def small_node():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "memory": NODE_MEMORY_GIB << 30},
    )
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def run(tmp_path, address: str, memory_gb: float) -> subprocess.CompletedProcess:
    spec = {
        "name": f"capacity-{memory_gb:g}",
        "grid": {"architectures": [{"kind": "mlp", "hidden": [16]}],
                 "activations": ["relu", "sigmoid"], "lambdas": [0.0]},
        "training": {"epochs": 1, "penalty": {"warmup_epochs": 1}},
        "evaluation": {"size": 30, "eps": [0.1], "attacks": ["fgsm"]},
        "audit": {"enabled": False},
        "resources": {"max_concurrent_trials": 2, "memory_per_trial_gb": memory_gb},
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--address", address,
         "--storage-path", "results"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_trials_no_node_can_hold_are_refused_before_any_starts(tmp_path, small_node):
    out = run(tmp_path, small_node, memory_gb=NODE_MEMORY_GIB + 1)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "5.0 GB one trial needs" in out.stderr and "memory_per_trial_gb" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "mlflow.db").exists()  # refused before the sweep run was opened


def test_memory_that_holds_fewer_trials_than_asked_is_a_warning(tmp_path, small_node):
    out = run(tmp_path, small_node, memory_gb=NODE_MEMORY_GIB * 0.6)  # one fits, not two
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "warning: memory holds 1 trials at once" in out.stderr and "the rest wait" in out.stderr
    assert "2 trials finished, 0 failed" in out.stdout
