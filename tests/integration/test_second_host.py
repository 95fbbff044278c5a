"""A cluster of two hosts: the Ray worker node runs in a network namespace of its own (its own
loopback), joined to the head by a veth pair this test creates. Everything between them goes
over that pair: the trials on the second host log to the head's authenticated tracking server
and write their checkpoints to an S3-compatible server (moto) on the head, the storage both
hosts share. Traffic goes only to loopback and to the addresses this test gives the pair and
one more address on the head's loopback; each request is bounded in time, and all of it is
removed afterwards.

The namespace is set up as `ip netns add`, `ip link add ... type veth peer ...`, one end moved
into the namespace, a /30 on the pair; torn down by killing every process of the Ray session
(the head's and the namespace's: their command lines name the session), the servers' process
groups, then `ip link del` (which removes both ends) and `ip netns del`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.integration.test_cluster import two_trial_spec

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

BIN = Path(sys.executable).parent
USER, PASSWORD = "sweeper", f"satsweep-test-{secrets.token_hex(8)}"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := condition():
                return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def a_free_subnet() -> int:
    """The third octet of a 10.213.X.0/30 (and 10.214.X.1) no interface here uses."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    for x in range(20 + os.getpid() % 200, 250):
        if f"10.213.{x}." not in used and f"10.214.{x}." not in used:
            return x
    raise AssertionError("no free 10.213.X.0/30 here")


@dataclass
class Hosts:
    head: str  # the head's address on the pair
    worker: str  # the second host's
    elsewhere: str  # an address of the head's that the second host has no route to
    ray: str  # the head's GCS, host:port
    tracking_port: int
    storage: str  # s3://... on the head's moto server
    env: dict[str, str]


@contextlib.contextmanager
def network(x: int, tag: str):
    ns, veth = f"ssw{tag}", f"ssw{tag}h"
    head, worker, elsewhere = f"10.213.{x}.1", f"10.213.{x}.2", f"10.214.{x}.1"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"ssw{tag}w")
        sh("ip", "link", "set", f"ssw{tag}w", "netns", ns)
        sh("ip", "addr", "add", f"{head}/30", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{worker}/30", "dev", f"ssw{tag}w")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"ssw{tag}w", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "addr", "add", f"{elsewhere}/32", "dev", "lo")  # the head's, unrouted there
        yield ns, head, worker, elsewhere
    finally:
        for args in (("ip", "link", "del", veth), ("ip", "addr", "del", f"{elsewhere}/32", "dev",
                     "lo"), ("ip", "netns", "del", ns)):  # fmt: skip
            subprocess.run(args, capture_output=True, timeout=30)


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def session_processes(session: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if session.encode() in f.read():
                    found.append(int(entry))
    return found


def stop(procs: list[subprocess.Popen], ray_temp: Path) -> None:
    latest = ray_temp / "session_latest"
    session = latest.resolve().name if latest.exists() else None
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    if session:
        for pid in session_processes(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not session_processes(session), 30, "the Ray session's processes")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace and a veth pair stand in for the second host")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` to make the second host")
    work = tmp_path_factory.mktemp("hosts")
    tag = f"{os.getpid() % 100000}"
    ray_temp = Path(f"/tmp/ssw-{tag}")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD,
           "AWS_ACCESS_KEY_ID": "satsweep", "AWS_SECRET_ACCESS_KEY": "satsweep-test",
           "AWS_DEFAULT_REGION": "us-east-1", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    procs: list[subprocess.Popen] = []
    with network(a_free_subnet(), tag) as (ns, head, worker, elsewhere):
        try:
            s3, tracking, gcs = free_port(head), free_port("0.0.0.0"), free_port(head)
            procs.append(start([str(BIN / "moto_server"), "-H", head, "-p", str(s3)], env,
                               work / "s3.log"))  # fmt: skip
            # bound to every address of the head: the pair's, the one the second host cannot
            # reach, and loopback (today's recipe), for the refusals below
            procs.append(start([sys.executable, "-m", "sweeps.cli", "server", "--host", "0.0.0.0",
                                "--port", str(tracking), "--backend-store-uri",
                                f"sqlite:///{work / 'server.db'}", "--artifacts-destination",
                                str(work / "artifacts")], env, work / "server.log"))  # fmt: skip
            procs.append(start([str(BIN / "ray"), "start", "--head", "--node-ip-address", head,
                                "--port", str(gcs), "--num-cpus", "1", "--include-dashboard",
                                "false", "--temp-dir", str(ray_temp), "--block"], env,
                               work / "head.log"))  # fmt: skip
            wait_for(lambda: answers(f"http://{head}:{tracking}/health") == 200, 120, "MLflow")
            wait_for(lambda: (ray_temp / "session_latest").exists(), 120, "the Ray head")
            procs.append(
                start(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        str(BIN / "ray"),
                        "start",
                        "--address",
                        f"{head}:{gcs}",
                        "--node-ip-address",
                        worker,
                        "--num-cpus",
                        "1",
                        "--block",
                    ],
                    env,
                    work / "worker.log",
                )
            )
            count = (
                "import ray; ray.init(address='{}', logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))"
            ).format(f"{head}:{gcs}")
            wait_for(lambda: subprocess.run([sys.executable, "-c", count], env=env, text=True,
                                            capture_output=True, timeout=60).stdout.strip() == "2",
                     180, "both Ray nodes")  # fmt: skip
            storage = (f"s3://ckpt/sweeps?endpoint_override={head}:{s3}&scheme=http"
                       "&allow_bucket_creation=true")  # fmt: skip
            yield Hosts(head, worker, elsewhere, f"{head}:{gcs}", tracking, storage, env)
        finally:
            stop(procs, ray_temp)
            shutil.rmtree(ray_temp, ignore_errors=True)


def run(tmp_path, hosts: Hosts, name: str, tracking: str, env: dict | None = None):
    spec = two_trial_spec(name)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "run", "spec.yaml", "--address", hosts.ray,
         "--tracking-uri", tracking, "--storage-path", hosts.storage],
        cwd=tmp_path, env=env or hosts.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_trials_on_the_second_host_log_to_the_head_and_checkpoint_to_shared_storage(
    tmp_path, hosts
):
    url = f"http://{hosts.head}:{hosts.tracking_port}"
    out = run(tmp_path, hosts, "two-hosts", url)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    os.environ.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    try:
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("two-hosts")
        runs = client.search_runs([exp.experiment_id])
        trials = [r for r in runs if r.data.tags["satsweep.role"] == "trial"]
        assert {t.data.tags["satsweep.host"] for t in trials} == {hosts.head, hosts.worker}
        assert {t.info.status for t in trials} == {"FINISHED"}
        for t in trials:
            steps = [m.step for m in client.get_metric_history(t.info.run_id, "clean_acc")]
            assert sorted(steps) == [1, 2, 3, 4, 5]
        assert any(t.data.tags.get("satsweep.audited") == "true" for t in trials), out.stdout
        logged = [out.stdout, out.stderr] + [str(r.data.params) + str(r.data.tags) for r in runs]
        logged += [artifact_text(client, r.info.run_id) for r in runs]
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    assert not any(PASSWORD in text for text in logged)  # no param, tag, artifact or line
    assert not (tmp_path / "mlflow.db").exists()
    import pyarrow.fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(hosts.storage)
    files = filesystem.get_file_info(pafs.FileSelector(f"{root}/two-hosts", recursive=True))
    trial_dirs = {Path(f.path).parent.parent.name for f in files if f.path.endswith("/state.pt")}
    assert len(trial_dirs) == 2  # both trials, one per host, checkpointed to the shared store


def artifact_text(client: MlflowClient, run_id: str, path: str = "") -> str:
    """Every artifact of a run, as text (binary files too: a password would show as bytes)."""
    texts = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            texts.append(artifact_text(client, run_id, item.path))
        else:
            local = client.download_artifacts(run_id, item.path)
            texts.append(Path(local).read_bytes().decode("latin-1"))
    return "\n".join(texts)


def test_a_loopback_or_sqlite_tracking_store_is_refused_on_two_hosts(tmp_path, hosts):
    """Today's recipe: the server answers the driver on 127.0.0.1, which on the second host is
    that host itself. Refused before any trial starts, with the fix."""
    loopback = run(tmp_path, hosts, "loopback", f"http://127.0.0.1:{hosts.tracking_port}")
    assert loopback.returncode == 2, loopback.stdout[-2000:] + loopback.stderr[-2000:]
    assert "names each node's own loopback" in loopback.stderr
    assert "--tracking-uri http://" in loopback.stderr and "satsweep server" in loopback.stderr
    sqlite = run(tmp_path, hosts, "sqlite", f"sqlite:///{tmp_path / 'local.db'}")
    assert sqlite.returncode == 2 and "is a file on this host" in sqlite.stderr
    for out in (loopback, sqlite):
        assert "Traceback" not in out.stdout + out.stderr


def test_a_server_the_second_host_cannot_reach_is_refused_naming_that_host(tmp_path, hosts):
    out = run(tmp_path, hosts, "unreachable", f"http://{hosts.elsewhere}:{hosts.tracking_port}")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"from {hosts.worker}:" in out.stderr and "does not answer" in out.stderr
    assert f"from {hosts.head}:" not in out.stderr  # the head reaches it


def test_the_server_refuses_no_password_and_a_wrong_one(tmp_path, hosts):
    api = f"http://{hosts.head}:{hosts.tracking_port}/api/2.0/mlflow/experiments/search"
    assert answers(api + "?max_results=1") == 401
    assert answers(api + "?max_results=1", (USER, "not-the-password")) == 401
    assert answers(api + "?max_results=1", (USER, PASSWORD)) == 200
    without = {k: v for k, v in hosts.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    wrong = {**hosts.env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    url = f"http://{hosts.head}:{hosts.tracking_port}"
    for env, words in ((without, "requires credentials"), (wrong, "refused the credentials")):
        out = subprocess.run([sys.executable, "-m", "sweeps.cli", "best", "two-hosts",
                              "--tracking-uri", url], env=env, cwd=tmp_path, text=True,
                             capture_output=True, timeout=120)  # fmt: skip
        assert out.returncode == 2 and words in out.stderr, out.stderr
        assert "not-the-password" not in out.stdout + out.stderr
