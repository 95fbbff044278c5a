"""How many concurrent trials one tracking server holds, on SQLite and on PostgreSQL, and whether
a single metric is ever lost or written twice.

Each writer is its own process and logs like a trial: one run, its params and tags in one
`log_batch`, a `log_batch` of METRICS metrics per epoch, ARTIFACTS small artifacts, then its end
status. All writers start logging at one instant (a barrier after their imports). Afterwards
the backend's own tables are counted (not the API, which could hide a duplicate): every
(run, metric, step) sent must be there exactly once, every param and tag, every artifact, and
every run FINISHED, for each writer that was never answered with an error (`lost`: silent
loss); writers that were (`failed_writers`) are counted apart. SQLite's server runs one
worker (SQLite takes one writer at a time); PostgreSQL's runs `satsweep server`'s default.

The SQLite limit is the first writer count whose errors are non-zero or whose p99 `log_batch`
latency is over SLOW times the p99 at the fewest writers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import result

METRICS = 40  # about what a trial logs per epoch
PARAMS = 60
TAGS = 10
ARTIFACTS = 3
SLOW = 3.0
WRITERS = (2, 8, 16, 32)
EPOCHS = 15


@dataclass(frozen=True)
class Load:
    """What the writers did and what the backend holds afterwards."""

    backend: str
    writers: int
    epochs: int
    seconds: float  # from the barrier to the last writer's end
    latencies: list[float]  # of every per-epoch log_batch, seconds
    errors: list[str]
    lost: int  # rows missing although their writer was told every call succeeded
    duplicated: int
    runs: list[str]  # of the writers that saw no error
    failed_writers: int  # writers answered with an error (the server refused: not silent)

    @property
    def metrics_per_second(self) -> float:
        return self.writers * self.epochs * METRICS / self.seconds

    def latency_ms(self, q: float) -> float:
        if len(self.latencies) < 2:
            return 1000 * (self.latencies[0] if self.latencies else 0.0)
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return 1000 * (statistics.median(self.latencies) if q == 50 else cuts[q - 1])


def write_like_a_trial(url: str, experiment_id: str, index: int, epochs: int, pause: float,
                       ready, start, out) -> None:  # fmt: skip
    """One writer: a run logged the way a trial logs it, timing each epoch's log_batch."""
    from tracking.http_retry import retry_cut_off_responses
    from tracking.runs import MLFLOW_QUIET_ENV

    os.environ.update(MLFLOW_QUIET_ENV)  # as in a trial's worker (sweeps/cluster.py, WORKER_ENV)
    retry_cut_off_responses()  # as every worker of a sweep does (sweeps/cluster.py)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (MLflow prints a "View run" line per run)
    client = MlflowClient(url)
    ready.put(index)  # imported: the seconds of a cold start are not the server's
    start.wait()
    latencies, errors, run_id = [], [], None
    try:
        run_id = client.create_run(experiment_id, run_name=f"writer{index}").info.run_id
        client.log_batch(
            run_id,
            params=[Param(f"load.param{i}", str(i)) for i in range(PARAMS)],
            tags=[RunTag(f"load.tag{i}", str(i)) for i in range(TAGS)],
        )
        for step in range(1, epochs + 1):
            # a fixed timestamp per step: a retried request sends exactly the same rows
            batch = [Metric(f"m{i}", float(i + step), step * 1000, step) for i in range(METRICS)]
            began = time.perf_counter()
            client.log_batch(run_id, metrics=batch)
            latencies.append(time.perf_counter() - began)
            time.sleep(pause)
        with tempfile.TemporaryDirectory() as folder:
            for i in range(ARTIFACTS):
                (Path(folder) / f"a{i}.json").write_text(f'{{"writer": {index}, "i": {i}}}')
            client.log_artifacts(run_id, folder, "load")
        client.set_terminated(run_id, "FINISHED")
    except Exception as err:  # the measurement: what failed, counted, not raised
        errors.append(f"{type(err).__name__}: {str(err)[:200]}")
    out.put((index, run_id, latencies, errors))


def drive(url: str, writers: int, epochs: int, pause: float = 0.0, during=None):
    """Start `writers` processes, release them together, call `during()` (if given) while they
    log, and collect (seconds, the runs of writers that saw no error, latencies, errors, how
    many writers saw one)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment_id = client.create_experiment(f"load-{writers}-{time.time_ns()}")
    ctx = mp.get_context("spawn")  # a clean interpreter per writer, as a trial's worker
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=write_like_a_trial,
                         args=(url, experiment_id, i, epochs, pause, ready, start, out))
             for i in range(writers)]  # fmt: skip
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=600)
    began = time.perf_counter()
    start.set()
    if during is not None:
        during()
    reports = [out.get(timeout=900) for _ in procs]
    seconds = time.perf_counter() - began
    for p in procs:
        p.join(timeout=60)
    latencies = [x for r in reports for x in r[2]]
    errors = [e for r in reports for e in r[3]]
    clean = [r[1] for r in reports if r[1] and not r[3]]  # runs whose writer saw no error
    return seconds, clean, latencies, errors, len(reports) - len(clean)


def counted(db_uri: str, url: str, run_ids: list[str], epochs: int) -> tuple[int, int]:
    """(lost, duplicated) rows: every (run, metric, step), param and tag sent, counted in the
    backend's own tables, and every artifact listed by the server; a run not FINISHED counts
    as one lost row."""
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    engine = sqlalchemy.create_engine(db_uri)
    ids = {"ids": tuple(run_ids)}
    expanding = sqlalchemy.bindparam("ids", expanding=True)
    lost = duplicated = 0
    with engine.connect() as db:
        rows = db.execute(
            sqlalchemy.text("SELECT run_uuid, key, step, COUNT(*) FROM metrics "
                            "WHERE run_uuid IN :ids GROUP BY run_uuid, key, step"
                            ).bindparams(expanding), ids).all()  # fmt: skip
        seen = {(r[0], r[1], r[2]): r[3] for r in rows}
        sent = {(run, f"m{i}", s) for run in run_ids for i in range(METRICS)
                for s in range(1, epochs + 1)}  # fmt: skip
        lost += len(sent - set(seen))
        duplicated += sum(n - 1 for n in seen.values())
        for table, prefix, expected in (("params", "load.param", PARAMS),
                                        ("tags", "load.tag", TAGS)):  # fmt: skip
            counts = db.execute(
                sqlalchemy.text(f"SELECT run_uuid, COUNT(*) FROM {table} WHERE run_uuid IN :ids "
                                f"AND key LIKE '{prefix}%' GROUP BY run_uuid"
                                ).bindparams(expanding), ids).all()  # fmt: skip
            found = dict(counts)
            lost += sum(max(0, expected - found.get(run, 0)) for run in run_ids)
            duplicated += sum(max(0, n - expected) for n in found.values())
        statuses = db.execute(
            sqlalchemy.text("SELECT status FROM runs WHERE run_uuid IN :ids").bindparams(expanding),
            ids,
        ).all()  # fmt: skip
        lost += sum(1 for (status,) in statuses if status != "FINISHED")
    engine.dispose()
    client = MlflowClient(url)
    for run in run_ids:
        files = [a.path for a in client.list_artifacts(run, "load")]
        lost += max(0, ARTIFACTS - len(files))
        duplicated += max(0, len(files) - ARTIFACTS)
    return lost, duplicated


def measure(backend: str, url: str, db_uri: str, writers: int, epochs: int = EPOCHS) -> Load:
    """A writer that was answered with an error knows its rows may be missing (`failed`);
    `lost` counts rows missing from writers every call of which succeeded: silent loss."""
    seconds, runs, latencies, errors, failed = drive(url, writers, epochs)
    lost, duplicated = counted(db_uri, url, runs, epochs) if runs else (0, 0)
    return Load(backend, writers, epochs, seconds, latencies, errors, lost, duplicated, runs,
                failed)  # fmt: skip


def sqlite_limit(loads: list[Load]) -> int | None:
    """The first writer count where SQLite errs or its p99 is over SLOW times the smallest
    count's; None if it held every count tried."""
    base = loads[0].latency_ms(99)
    for load in loads:
        if load.errors or load.latency_ms(99) > SLOW * base:
            return load.writers
    return None


def backends(folder: Path):
    """(name, server store flags, the backend's SQLAlchemy URI, a PostgreSQL handle or None)."""
    from tracking.postgres import mlflow_uri, start_postgres

    sqlite_db = folder / "sqlite" / "runs.db"
    sqlite_db.parent.mkdir(parents=True)
    yield "sqlite", ["--backend-store-uri", f"sqlite:///{sqlite_db}"], f"sqlite:///{sqlite_db}"
    postgres = start_postgres(folder / "postgres")  # held by this process while it measures
    yield "postgresql", ["--postgres", str(folder / "postgres")], mlflow_uri(postgres)


def run() -> list[dict]:
    from benchmarks.tracking_server import server

    rows, limit = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name, store, db_uri in backends(Path(tmp)):
            work = Path(tmp) / f"{name}-server"
            work.mkdir()
            with server(work, None, store) as url:
                loads = [measure(name, url, db_uri, w) for w in WRITERS]
            if name == "sqlite":
                limit = sqlite_limit(loads)
            rows += [row(load, loads[0]) for load in loads]
    for r in rows:
        r["sqlite_limit_writers"] = limit
    return rows


def row(load: Load, fewest: Load) -> dict:
    """A results.json row: p99 latency against the same backend's at the fewest writers."""
    return result(
        f"tracking load, {load.backend}: p99 log_batch latency with {load.writers} concurrent "
        f"writers vs {fewest.writers} ({load.epochs} epochs of {METRICS} metrics each)",
        load.latency_ms(99), "ms", fewest.latency_ms(99),
    ) | {
        "backend": load.backend,
        "writers": load.writers,
        "lost": load.lost,
        "duplicated": load.duplicated,
        "errors": len(load.errors),
        "failed_writers": load.failed_writers,
        "metrics_per_second": round(load.metrics_per_second, 1),
        "p50_ms": round(load.latency_ms(50), 1),
        "p99_ms": round(load.latency_ms(99), 1),
        "first_error": load.errors[0] if load.errors else None,
    }  # fmt: skip
