"""What the tracking server's authentication costs a trial: the median time of one `log_batch`
(an epoch's worth of metrics, as a trial logs them) through `satsweep server` with MLflow's
basic-auth app, against the same server without it, both on 127.0.0.1 in the same run.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from benchmarks.common import result
from tracking.server import stop_process_group

CALLS = 200
METRICS_PER_BATCH = 40  # about what a trial logs per epoch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    folder: Path,
    credentials: tuple[str, str] | None = None,
    store: list[str] | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen, str]:
    """`satsweep server` on a loopback port (a free one unless given), in its own process group
    (so one signal reaches MLflow's workers too); (process, URL). `store`: its store flags
    (default a SQLite file in `folder`)."""
    port = port or free_port()
    store = store or ["--backend-store-uri", f"sqlite:///{folder / 'runs.db'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    if credentials:
        env |= {"MLFLOW_TRACKING_USERNAME": credentials[0], "MLFLOW_TRACKING_PASSWORD":
                credentials[1]}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "server", "--host", "127.0.0.1", "--port",
         str(port), *store, "--artifacts-destination", str(folder / "artifacts")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the server at {url} did not start") from None
            time.sleep(0.5)


@contextmanager
def server(folder: Path, credentials: tuple[str, str] | None, store: list[str] | None = None):
    """A started, healthy server, stopped afterwards; yields its URL."""
    proc, url = start_server(folder, credentials, store)
    try:
        wait_healthy(proc, url)
        yield url
    finally:
        stop_process_group(proc, grace_s=60)


def logger(url: str):
    """A function that logs one epoch's batch to a new run on that server."""
    client = MlflowClient(url)
    run_id = client.create_run(client.create_experiment("bench")).info.run_id

    def log(step: int) -> float:
        batch = [Metric(f"m{i}", float(i), 0, step) for i in range(METRICS_PER_BATCH)]
        start = time.perf_counter()
        client.log_batch(run_id, metrics=batch)
        return time.perf_counter() - start

    return log


def run() -> list[dict]:
    """Both servers up at once and their calls interleaved, so a busy machine slows both alike.
    MLflow's client sends the credentials (from the environment) with every request; the server
    without authentication ignores them."""
    credentials = ("bench", f"bench-{secrets.token_hex(12)}")
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.pop(k, None) for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        plain_dir, auth_dir = Path(tmp) / "plain", Path(tmp) / "auth"
        plain_dir.mkdir()
        auth_dir.mkdir()
        with server(plain_dir, None) as plain_url, server(auth_dir, credentials) as auth_url:
            os.environ.update(zip(keys, credentials, strict=True))
            try:
                plain, authed = logger(plain_url), logger(auth_url)
                times = [(plain(step), authed(step)) for step in range(CALLS)][10:]  # warm-up
            finally:
                for k in keys:
                    os.environ.pop(k, None)
                os.environ.update({k: v for k, v in saved.items() if v is not None})
    return [
        result(f"tracking server: log_batch of {METRICS_PER_BATCH} metrics with password "
               f"authentication vs without (median of {len(times)} interleaved calls)",
               statistics.median(t[1] for t in times) * 1000, "ms",
               statistics.median(t[0] for t in times) * 1000),
    ]  # fmt: skip
