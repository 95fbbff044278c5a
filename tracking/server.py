"""The tracking server a cluster logs to: MLflow's own `mlflow server`, with its basic-auth app,
bound to an address the workers reach.

Why MLflow's basic-auth app and not a proxy in front of MLflow: it ships with MLflow
(`mlflow[auth]`), needs no second service to install, configure and keep in step on the head,
and its users and permissions are managed through MLflow's own API. What it costs: every request
checks the password's PBKDF2 hash (measured in README, 'Run on a cluster'); the hash check is
cached per worker for AUTH_CACHE_SECONDS, so a changed password reaches a running server's other
workers within that time.

The credentials are the ones MLflow's clients send: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials). On first start the server creates that
account as its admin; every trial and command then logs in with the same environment. They are
never written to a file, a spec, a param, a tag or a printed line: the server gets them through
MLflow's MLFLOW_AUTH_ADMIN_* variables.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tracking.store import is_loopback

AUTH_CACHE_SECONDS = 60
NO_CREDENTIALS = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the account the server creates "
    "and every trial logs in with) in the environment, or write them to ~/.mlflow/credentials"
)


class ServerError(ValueError):
    """The server cannot be started as asked: phrased for people."""


def credentials() -> tuple[str, str] | None:
    """(username, password) as MLflow's clients find them: the environment, then
    ~/.mlflow/credentials; None when there are none."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    return (creds.username, creds.password) if creds.username and creds.password else None


def auth_store(backend_store_uri: str) -> Path:
    """The users' database, beside a SQLite run store (else in the working directory)."""
    if backend_store_uri.startswith("sqlite:///"):
        store = Path(backend_store_uri[len("sqlite:///") :])
        return store.with_name(store.stem + "-auth.db")
    return Path("mlflow-auth.db").resolve()


def check_admin(database: Path, username: str, password: str) -> None:
    """An auth store made earlier keeps its users: refuse to start one whose account does not
    accept these credentials, rather than a server every trial is refused by."""
    if not database.exists():
        return
    from werkzeug.security import check_password_hash

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("select password_hash from users where username = ?", (username,))
        found = row.fetchone()
    if found is None or not check_password_hash(found[0], password):
        raise ServerError(
            f"the auth store {database} has no account {username!r} with this password; use "
            "the credentials it was made with, or move it away to start afresh"
        )


def check_password(password: str) -> None:
    """MLflow's own policy for the admin password, checked before the server starts (it would
    exit on it, naming MLflow's variables rather than ours)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_password

    try:
        _validate_password(password)
    except MlflowException as err:
        raise ServerError(
            f"MLFLOW_TRACKING_PASSWORD cannot be the server's admin password: {err.message} "
            "Use a longer one (the same on every node and machine that logs to the server)"
        ) from None


def write_auth_config(database: Path) -> Path:
    """MLflow's auth settings beside the users' database (no secret in it): no permission for
    any account but the admin, and the password check cached for AUTH_CACHE_SECONDS."""
    config = database.with_suffix(".ini")
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{database}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )
    return config


def server_command(
    host: str, port: int, backend_store_uri: str, artifacts: str, workers: int = 1
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the MLflow server. Authentication is required unless the server
    binds a loopback address (one machine: nothing else can reach it)."""
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts, "--serve-artifacts", "--host", host,
            "--port", str(port), "--workers", str(workers)]  # fmt: skip
    env = dict(os.environ)  # carries MLFLOW_QUIET_ENV, which the CLI set at start
    found = credentials()
    if found is None:
        if not is_loopback(f"http://{host}"):
            raise ServerError(
                f"a server on {host} is reachable from other machines, so it requires "
                f"authentication: {NO_CREDENTIALS}; or serve this machine only with "
                "--host 127.0.0.1"
            )
        return argv, env
    username, password = found
    check_password(password)
    database = auth_store(backend_store_uri)
    check_admin(database, username, password)
    env |= {
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(database)),
        "MLFLOW_AUTH_ADMIN_USERNAME": username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        # CSRF protection of the auth app's forms; a new one per start is fine (one server)
        "MLFLOW_FLASK_SERVER_SECRET_KEY": env.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or secrets.token_hex(32),
    }
    return [*argv, "--app-name", "basic-auth"], env


@dataclass(frozen=True)
class UiPage:
    """Where in MLflow's UI a reader should land: `path` after the server's address, and what
    it shows, in words."""

    path: str
    what: str


def ui_page(client, sweep: str | None) -> UiPage:
    """The runs list of `sweep` (default: the sweep created last) in the model-training view:
    the sweep's experiment is marked a training one first, since MLflow 3 shows an unmarked
    experiment as a GenAI one (traces, an overview) and the runs one toggle away."""
    from tracking.runs import TRAINING_EXPERIMENT
    from tracking.sweep_run import SweepNotFound, sweep_not_found

    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if sweep is not None:
        chosen = next((e for e in experiments if e.name == sweep), None)
        if chosen is None:
            unknown = sweep_not_found(sweep, [e.name for e in experiments])
            raise SweepNotFound(f"--sweep: {unknown}")
    elif experiments:
        chosen = max(experiments, key=lambda e: e.creation_time or 0)
    else:
        return UiPage("#/experiments", "no sweep in this store yet")
    for key, value in TRAINING_EXPERIMENT.items():
        if chosen.tags.get(key) != value:
            client.set_experiment_tag(chosen.experiment_id, key, value)
    # the UI's mode (GenAI or model training) is a browser setting unless the address sets it
    path = f"#/experiments/{chosen.experiment_id}/runs?workflowType=machine_learning"
    return UiPage(path, f"the runs of {chosen.name!r}")


def die_with_parent() -> None:
    """For `Popen(preexec_fn=...)`: the kernel sends the child SIGTERM when the process that
    started it dies, SIGKILL included (Linux's PR_SET_PDEATHSIG), so a killed parent leaves no
    server behind holding its port. A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # from <sys/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_process_group(server: subprocess.Popen, grace_s: float = 30) -> int:
    """SIGTERM to the server's process group (MLflow's workers are in it), SIGKILL after
    `grace_s`; its exit status. The server must have been started in a session of its own."""
    import signal

    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        return server.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        return server.wait()


def wait_until_answers(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    """Return once `url`/health answers 200; a ServerError if the server exits first or stays
    silent for `timeout_s` (polled, so a slow machine only waits longer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerError(f"MLflow's UI exited with code {server.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise ServerError(f"MLflow's UI did not answer on {url} within {timeout_s:g} s")
