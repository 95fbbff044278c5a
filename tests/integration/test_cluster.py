"""A real two-node Ray cluster on this machine and a real `mlflow server` process on 127.0.0.1:
trials run on both nodes and every run, metric and artifact arrives through the server."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"MLflow server at {url} never became healthy")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, just not reaped yet
        return f.read().split()[2] != "Z"


def two_trial_spec(name: str) -> dict:
    """Two short trials, one per node, the top one audited: a sweep that crosses nodes."""
    return {
        "name": name,
        "grid": {"architectures": [{"kind": "mlp", "hidden": [32]}],
                 "activations": ["relu", "sigmoid"], "lambdas": [0.0]},
        "training": {"epochs": 5, "batch_size": 32, "optimizer": {"lr": 3.0e-3},
                     "penalty": {"schedule": "constant"}},
        "evaluation": {"size": 50, "eps": [0.1], "attacks": ["fgsm", "pgd_ce"], "pgd_steps": 5},
        "audit": {"top_k": 1, "square_queries": 20, "attacks": ["square"]},
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
    }  # fmt: skip


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        # one host: loopback (today's single-machine recipe) stays allowed, without a password
        [sys.executable, "-m", "sweeps.cli", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    pids = [p.process.pid for node in cluster.list_all_nodes()
            for procs in node.all_processes.values() for p in procs]  # fmt: skip
    try:
        yield cluster, pids
    finally:
        cluster.shutdown()


def test_sweep_on_two_nodes_logs_everything_through_the_server(
    tmp_path, mlflow_server, two_node_cluster
):
    url, server = mlflow_server
    cluster, ray_pids = two_node_cluster
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(two_trial_spec("cluster-sweep")))
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--address", cluster.address,
         "--tracking-uri", url, "--storage-path", str(tmp_path / "results")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    client = MlflowClient(url)
    exp = client.get_experiment_by_name("cluster-sweep")
    trials = client.search_runs([exp.experiment_id], "tags.`satsweep.role` = 'trial'")
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    assert len({t.data.tags["satsweep.ray_node_id"] for t in trials}) == 2  # both nodes
    for t in trials:
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "clean_acc")]
        assert sorted(steps) == [1, 2, 3, 4, 5]
        artifacts = {a.path for a in client.list_artifacts(t.info.run_id, "model")}
        assert {"model/model.pt2", "model/state_dict.pt", "model/config.json"} <= artifacts
    assert any(t.data.tags.get("satsweep.audited") == "true" for t in trials)
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store

    cluster.shutdown()
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    time.sleep(2)
    assert not [pid for pid in ray_pids if alive(pid)], "Ray processes left behind"
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)
