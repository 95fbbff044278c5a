"""Commands around a store (a served UI is tested on a real sweep, `test_sweep.py`): a busy port
is a usage error for `ui` and `server`, not a process that exits 0; a server other machines can
reach is refused without a password MLflow's auth app accepts (nothing is started)."""

import os
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("s", artifact_location=(tmp_path / "a").as_uri())
    return uri


def test_ui_for_a_sweep_the_store_lacks_exits_2_naming_the_sweeps_it_has(store):
    """Checked before the server starts: nothing is served for a typo."""
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "ui", "--tracking-uri", store, "--sweep", "x"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "--sweep: no sweep named 'x'" in out.stderr
    assert "sweeps here: s" in out.stderr
    assert "ready" not in out.stdout


@pytest.mark.parametrize("command", [["ui"], ["server"]])
def test_a_busy_port_is_a_usage_error(command, store):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        store_flag = (["--tracking-uri", store] if command == ["ui"] else
                      ["--backend-store-uri", store, "--host", "127.0.0.1"])  # fmt: skip
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


def cluster_address() -> str:
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def server(tmp_path, env: dict, *flags: str) -> subprocess.CompletedProcess:
    """`satsweep server` with only `env`'s MLflow credentials (HOME is the test's folder, so no
    ~/.mlflow/credentials of the user's is read)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "server", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'runs.db'}", *flags],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**clean, "HOME": str(tmp_path), **env},
    )  # fmt: skip


def test_a_server_other_machines_reach_needs_a_password(tmp_path):
    out = server(tmp_path, {})  # the default host: this machine's cluster address
    assert out.returncode == 2 and "requires authentication" in out.stderr, out.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in out.stderr and "--host 127.0.0.1" in out.stderr
    assert not (tmp_path / "runs.db").exists() and "Traceback" not in out.stderr


def test_a_password_mlflow_would_reject_is_refused_before_the_server_starts(tmp_path):
    short = "eleven-char"
    out = server(tmp_path, {"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": short},
                 "--host", cluster_address())  # fmt: skip
    assert out.returncode == 2 and "at least 12 characters" in out.stderr, out.stderr
    assert short not in out.stdout + out.stderr and not (tmp_path / "runs.db").exists()


def test_reading_a_spec_imports_neither_torch_nor_mlflow():
    """A refused spec and `--help` must answer fast: the CLI and the spec load without the
    heavy libraries, which each command imports when it runs."""
    code = ("import sys, sweeps.cli; "
            "print(sorted({'torch', 'mlflow', 'ray', 'scipy'} & set(sys.modules)))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_spelled_out_mlflow_tags_are_mlflows_and_a_registry_drift_is_named():
    """The registries check themselves at import (importing them is the test of that); here,
    that the check names the stray entry, and that the tag names spelled out to keep MLflow
    unimported are MLflow's own."""
    from mlflow.utils import mlflow_tags

    from tracking import runs
    from trainables import names

    assert (runs.MLFLOW_PARENT_RUN_ID, runs.MLFLOW_RUN_NAME) == (
        mlflow_tags.MLFLOW_PARENT_RUN_ID, mlflow_tags.MLFLOW_RUN_NAME
    )  # fmt: skip
    with pytest.raises(ImportError, match="'gelu'"):
        names.check_registry("activation", ("relu", "gelu"), ("relu",))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--workers", "2"], "SQLite takes one writer at a time"),
        (["--workers", "0"], "--workers must be 1 or more"),
        (["--postgres", "pg", "--backend-store-uri", "sqlite:///x.db"], "not both"),
    ],
)
def test_server_flags_that_cannot_work_are_refused(tmp_path, flags, words):
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "server", "--host", "127.0.0.1", *flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and words in out.stderr, out.stderr
    assert os.listdir(tmp_path) == []  # no store, no PostgreSQL folder
