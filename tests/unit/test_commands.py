"""Commands around a store: `satsweep ui` serves MLflow's UI on 127.0.0.1 as typed; a busy port
is a usage error for `ui` and `server`, not a process that exits 0."""

import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("s", artifact_location=(tmp_path / "a").as_uri())
    return uri


def test_ui_serves_the_store_on_a_free_local_port(store):
    ui = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "ui", "--tracking-uri", store],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = ui.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "the UI never answered"
                time.sleep(0.5)
        with urllib.request.urlopen(url + "/ajax-api/2.0/mlflow/experiments/search?max_results=5",
                                    timeout=5) as response:  # fmt: skip
            assert b'"s"' in response.read()  # the UI reads the store it was given
    finally:
        ui.terminate()
        ui.wait(timeout=30)


@pytest.mark.parametrize("command", [["ui"], ["server"]])
def test_a_busy_port_is_a_usage_error(command, store):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        store_flag = ["--tracking-uri", store] if command == ["ui"] else ["--backend-store-uri",
                                                                           store]  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", *command, "--port", str(port), *store_flag],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 2 and f"port {port}" in out.stderr and "Traceback" not in out.stderr


def test_ui_without_a_store_says_so(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "ui"], cwd=tmp_path, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "no MLflow store" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()
