"""Is a tracking URI a usable MLflow store? Checked before anything is written to it, so that a
typo, a file that is not a store, or a server that is not MLflow gets one clear message and is
left byte-for-byte as it was."""

from __future__ import annotations

import fcntl
import hashlib
import json
import sqlite3
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tracking.runs import redact_uri

SERVER_TIMEOUT_S = 5  # per request: a command never waits long on a silent server
SQLITE_MAGIC = b"SQLite format 3\x00"
SCHEMES = ("sqlite:///", "http://", "https://", "file://", "postgresql", "mysql", "mssql")


class StoreError(ValueError):
    """The tracking URI does not lead to a usable MLflow store: phrased for people."""


def check_uri(uri: str) -> None:
    """The URI's form: a scheme MLflow knows, not a bare path."""
    if "://" not in uri:
        hint = f"sqlite:///{Path(uri).expanduser().resolve()}"
        raise StoreError(
            f"tracking URI {uri!r} is a plain path; write {hint} for a SQLite store, or "
            "http://HOST:PORT for a tracking server"
        )
    if not uri.startswith(SCHEMES):
        raise StoreError(
            f"tracking URI {redact_uri(uri)!r} has a scheme satsweep does not use; write "
            "sqlite:////abs/path/mlflow.db or http://HOST:PORT"
        )


def check_sqlite(uri: str, must_exist: bool) -> None:
    """A SQLite store is either absent (a sweep may create it) or an MLflow database: never
    another file or another program's database, which MLflow would add its tables to."""
    path = Path(uri[len("sqlite:///") :])
    if not path.exists():
        if must_exist:
            raise StoreError(
                f"no MLflow store at {uri}; run a sweep first, or pass --tracking-uri "
                "(or set MLFLOW_TRACKING_URI)"
            )
        return
    if not path.is_file():
        raise StoreError(f"{path} is a folder, not an MLflow store; give the database file")
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise StoreError(
                f"{path} is not an SQLite database, so not an MLflow store; give another "
                "--tracking-uri (the file was left as it is)"
            )
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master")}
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path} is a damaged SQLite database ({err})") from None
    if not {"experiments", "runs", "alembic_version"} <= tables:
        raise StoreError(
            f"{path} is an SQLite database but not an MLflow store; give another "
            "--tracking-uri (the file was left as it is)"
        )


def check_server(uri: str) -> None:
    """An HTTP store must answer /health and MLflow's REST API within SERVER_TIMEOUT_S."""
    base = uri.rstrip("/")
    shown = redact_uri(uri)
    try:
        with urllib.request.urlopen(base + "/health", timeout=SERVER_TIMEOUT_S) as response:
            healthy = response.status == 200
        search = base + "/api/2.0/mlflow/experiments/search?max_results=1"
        with urllib.request.urlopen(search, timeout=SERVER_TIMEOUT_S) as response:
            json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise StoreError(
            f"{shown} answers, but not as an MLflow tracking server (HTTP {err.code}); fix "
            "--tracking-uri or start one (`satsweep server`)"
        ) from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise StoreError(
            f"the MLflow server at {shown} does not answer ({reason}); start it (see README, "
            "'Run on a cluster') or fix --tracking-uri"
        ) from None
    if not healthy:
        raise StoreError(f"the MLflow server at {shown} is unhealthy")


def check_store(uri: str, must_exist: bool) -> None:
    """Every check that applies to this URI."""
    check_uri(uri)
    if uri.startswith("sqlite:///"):
        check_sqlite(uri, must_exist)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)


@contextmanager
def store_lock(tracking_uri: str):
    """Serialise every process's first touch of a SQLite store (MLflow creates or checks its
    schema then: the sweep drivers and their Ray workers), so sweeps started together on a new
    store do not race on it. Servers serialise themselves.
    The lock file lives in the temp folder, so nothing appears beside the user's store."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    digest = hashlib.sha1(tracking_uri.encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"satsweep-store-{digest}.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
