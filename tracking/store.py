"""Is a tracking URI a usable MLflow store? Checked before anything is written to it, so that a
typo, a file that is not a store, or a server that is not MLflow gets one clear message and is
left byte-for-byte as it was."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import re
import socket
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

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


CREDENTIALS_HINT = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment (or "
    "MLFLOW_TRACKING_TOKEN, or write ~/.mlflow/credentials), never in the spec"
)


def check_server(uri: str) -> None:
    """An HTTP store must answer /health and MLflow's REST API within SERVER_TIMEOUT_S, with the
    credentials MLflow's own client would send (environment, then ~/.mlflow/credentials)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    shown = redact_uri(uri)
    creds = get_default_host_creds(uri.rstrip("/"))
    answers = {}
    try:
        for endpoint in ("/health", "/api/2.0/mlflow/experiments/search"):
            params = {"max_results": 1} if "search" in endpoint else None
            response = http_request(creds, endpoint, "GET", max_retries=0, timeout=SERVER_TIMEOUT_S,
                                    raise_on_status=False, params=params)  # fmt: skip
            answers[endpoint] = response.status_code
            if response.status_code == 200 and params:
                json.loads(response.text or "{}")
    except (OSError, ValueError, MlflowException) as err:
        raise StoreError(
            f"the MLflow server at {shown} does not answer ({_reason(err)}); start it "
            "(see README, 'Run on a cluster') or fix --tracking-uri"
        ) from None
    status = answers["/api/2.0/mlflow/experiments/search"]
    sent = bool(creds.username or creds.token)
    if status == 401:
        raise StoreError(
            f"the MLflow server at {shown} "
            + ("refused the credentials this process sent; check them: " if sent else
               "requires credentials: ")
            + CREDENTIALS_HINT
        )  # fmt: skip
    if status == 403:
        raise StoreError(
            f"the MLflow server at {shown} accepted the credentials but lets this account do "
            "nothing; use the account `satsweep server` was started with, or grant it EDIT"
        )
    if status != 200:
        raise StoreError(
            f"{shown} answers, but not as an MLflow tracking server (HTTP {status}); fix "
            "--tracking-uri or start one (`satsweep server`)"
        )
    if answers["/health"] != 200:
        raise StoreError(f"the MLflow server at {shown} is unhealthy")


def _reason(err: Exception) -> str:
    """The socket's own words ('[Errno 111] Connection refused', 'timed out'), not a page of
    urllib3's retry wrapper."""
    text = str(err)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return errno.group(0)
    return "timed out" if "timed out" in text.lower() else type(err).__name__


def is_loopback(uri: str) -> bool:
    """Does the URI's host name this machine itself (localhost, 127.0.0.0/8, ::1, 0.0.0.0), as every
    Ray node reads it: on a worker host it names that worker, not the head."""
    host = urlsplit(uri).hostname or ""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    return address.is_loopback or address.is_unspecified  # 0.0.0.0 as a destination is here


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
