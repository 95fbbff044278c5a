"""A PostgreSQL on this machine for the tracking server: the backend a cluster's many writers need.

Why PostgreSQL: a SQLite file takes one writer at a time, so a server on SQLite must run one
worker and queue every trial's writes behind each other (`make bench` finds where that starts
to fail); MLflow's documented route for shared tracking is a database server, which takes
concurrent writers and lets the MLflow server run several workers.

Why the `pgserver` wheel and not Debian's `postgresql` package: the wheel carries PostgreSQL's
own binaries, so the project's `pip install` brings up a real PostgreSQL with no system
package, no service manager and no network, on any machine the install runs on (as root it runs
the server as a system user of its own, `pgserver`). It listens only on a Unix socket in its
data folder: the MLflow server beside it is its only client and nothing on the network reaches
it. A PostgreSQL run elsewhere is used with `--backend-store-uri postgresql://...` instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

DATABASE = "mlflow"


class PostgresError(RuntimeError):
    """The local PostgreSQL could not be started: phrased for people."""


def start_postgres(data_dir: Path):
    """The running PostgreSQL whose data lives in `data_dir` (initialised on first use, reused
    if it already runs), with the `mlflow` database made; it stops when the last process that
    started or joined it exits. Returns pgserver's handle (`get_uri`, `get_pid`)."""
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set", on import
        warnings.simplefilter("ignore")
        import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        if DATABASE not in server.psql("SELECT datname FROM pg_database;").split():
            server.psql(f"CREATE DATABASE {DATABASE};")
    except Exception as err:  # initdb, pg_ctl and psql report through several error types
        log = data_dir / "log"
        raise PostgresError(
            f"PostgreSQL in {data_dir} did not start ({err}); its log is {log}. Use an empty or "
            "earlier --postgres folder, or give --backend-store-uri postgresql://..."
        ) from None
    return server


def mlflow_uri(server) -> str:
    """The SQLAlchemy URI MLflow opens: the `mlflow` database over the server's Unix socket."""
    return server.get_uri(DATABASE)
