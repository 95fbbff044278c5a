"""One tracking server, many writers: real `satsweep server` processes on SQLite and on a real
PostgreSQL (the `pgserver` wheel the project installs), real writer processes logging like
trials, and the backend's own tables counted afterwards: nothing lost, nothing written twice,
also when the server is SIGKILLed and restarted mid-sweep, and when PostgreSQL behind a running
server is. The full sizes run in `make bench` (benchmarks/tracking_load.py)."""

import contextlib
import os
import signal
import socket
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from benchmarks.tracking_load import METRICS, counted, drive
from benchmarks.tracking_server import start_server, wait_healthy
from tracking.postgres import mlflow_uri, start_postgres
from tracking.server import stop_process_group

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL for this module, stopped at its end: pgserver stops it when its last
    holder exits, and a SIGKILLed server never says it left."""
    from pgserver._commands import pg_ctl

    folder = tmp_path_factory.mktemp("pg") / "data"
    pg = start_postgres(folder)
    yield folder, pg
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=pg.system_user, timeout=120)


def stores(tmp_path, postgres):
    folder, pg = postgres
    db = tmp_path / "runs.db"
    return {
        "sqlite": (["--backend-store-uri", f"sqlite:///{db}"], f"sqlite:///{db}"),
        "postgresql": (["--postgres", str(folder)], mlflow_uri(pg)),
    }


def wait_for_more_metrics(db_uri: str, more: int, timeout: float = 300) -> None:
    """Until the backend holds `more` metric rows than now: the writers are mid-way when the
    kill comes (the module's tests share one PostgreSQL database)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_uri)
    count = sqlalchemy.text("SELECT COUNT(*) FROM metrics")
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as db:
            target = db.execute(count).scalar() + more
        while time.monotonic() < deadline:
            with engine.connect() as db:
                if db.execute(count).scalar() >= target:
                    return
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError(f"the writers never logged {more} more metrics")


EPOCHS, WRITERS, PAUSE = 20, 6, 0.3  # about 6 s of logging per writer, unbroken


def restart_postgres_abruptly(pg) -> None:
    """`pg_ctl restart -m immediate`: PostgreSQL's crash stop (every connection cut, no
    shutdown checkpoint, crash recovery on start), then a start. pg_ctl waits on PostgreSQL's
    own lock file; a SIGKILLed postmaster nobody reaps would look alive to pgserver's check.
    Then the handle reads the new postmaster, so that it stops this one when the module ends."""
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "immediate", "restart"], pgdata=pg.pgdata, user=pg.system_user,
           timeout=120)  # fmt: skip
    pg.ensure_postgres_running()


@pytest.mark.faults
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_many_writers_and_restarts_lose_nothing(tmp_path, postgres, backend):
    """One server, six writers at once, and a restart while they log: on SQLite the MLflow
    server itself (its whole process group SIGKILLed, started again on the same port and
    store); on PostgreSQL the database behind the running server (crash-stopped and started).
    MLflow's client retries each request meanwhile. No error, and the backend's tables hold
    each row sent exactly once."""
    store, db_uri = stores(tmp_path, postgres)[backend]
    proc, url = start_server(tmp_path, None, store)
    servers = [proc]
    restarted = []

    def kill_and_restart_server():
        os.killpg(servers[-1].pid, signal.SIGKILL)
        servers[-1].wait()
        again, _ = start_server(tmp_path, None, store, port=int(url.rsplit(":", 1)[1]))
        servers.append(again)
        wait_healthy(again, url)

    def restart_postgres():
        pg = postgres[1]
        before = pg.get_pid()
        restart_postgres_abruptly(pg)
        assert pg.get_pid() != before

    def restart_while_they_log():
        wait_for_more_metrics(db_uri, WRITERS * METRICS * 3)  # three epochs in
        (kill_and_restart_server if backend == "sqlite" else restart_postgres)()
        restarted.append(True)

    try:
        wait_healthy(proc, url)
        _, runs, _, errors, _ = drive(url, WRITERS, EPOCHS, PAUSE, during=restart_while_they_log)
        assert restarted, "nothing was restarted: the test proves nothing"
        assert errors == [] and len(runs) == WRITERS
        assert counted(db_uri, url, runs, EPOCHS) == (0, 0)  # (lost, duplicated)
    finally:
        for p in servers:
            if p.poll() is None:
                stop_process_group(p, grace_s=60)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.faults
def test_a_killed_postgres_server_takes_its_mlflow_server_along(tmp_path, postgres):
    """SIGKILL to the `satsweep server --postgres` process alone (not its group, as `kill PID`
    would): its MLflow server stops too, freeing the port, and a new `satsweep server` on the
    same folder and port joins the PostgreSQL still running and serves what was logged."""
    store, _ = stores(tmp_path, postgres)["postgresql"]
    first, url = start_server(tmp_path, None, store)
    port = int(url.rsplit(":", 1)[1])
    servers, children = [first], []
    try:
        wait_healthy(first, url)
        experiment = MlflowClient(url).create_experiment(f"kept-{port}")
        children = [c for c in psutil.Process(first.pid).children(recursive=True)
                    if "postgres" not in c.name()]  # the module's PostgreSQL stays  # fmt: skip
        first.send_signal(signal.SIGKILL)
        first.wait()
        deadline = time.monotonic() + 120
        while not port_is_free(port):
            assert time.monotonic() < deadline, "the MLflow server outlived its killed parent"
            time.sleep(0.2)
        again, _ = start_server(tmp_path, None, store, port=port)
        servers.append(again)
        wait_healthy(again, url)
        assert MlflowClient(url).get_experiment(experiment).name == f"kept-{port}"
    finally:
        for p in servers:
            if p.poll() is None:
                stop_process_group(p, grace_s=60)
        for child in children:  # left only when the MLflow server outlived its parent
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
