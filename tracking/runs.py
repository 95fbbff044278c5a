"""The MLflow store and a sweep's trial runs: where the store is, one experiment per sweep name,
one child run per trial (reopened on retry), reading every run of a sweep page by page.
The sweep's parent run has its own room (`sweep_run.py`). All calls go through an explicit
MlflowClient (no fluent-API global state), so the same code works in the driver and inside Ray
workers."""

from __future__ import annotations

import os
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tracking.metric_names import masking_tag

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# MLflow in every satsweep process, quiet: usage telemetry off (its client thread sets and
# unsets an environment variable while a request reads the environment, requests' proxy lookup,
# and the request then fails with KeyError '_MLFLOW_TELEMETRY_SESSION_ID', unretried: seen in 2
# of 16 writers at once, benchmarks/tracking_load.py; it would also call out from nodes that
# have no network), and no progress bars
MLFLOW_QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # a progress bar per artifact download, drawn once tqdm is installed (Optuna brings it)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow 3's server and `mlflow ui` otherwise start a pool of job-runner processes (GenAI
    # scorers and trace rollups, which satsweep never asks for): seven Python processes per
    # server, each importing MLflow, CPU taken from the trials on a small machine
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}

# MLflow's own tag names, spelled out: importing mlflow (a second) only to name two tags would
# slow every command that merely resolves a URI (`satsweep --help`, a refused spec)
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"

ROLE_TAG = "satsweep.role"
TRIAL_ID_TAG = "satsweep.ray_trial_id"
STATUS_TAG = "satsweep.status"
RESTARTS_TAG = "satsweep.restarts"  # times Ray restarted the trial (retries and resumes)
LAUNCHES_TAG = "satsweep.launches"  # on the sweep run: its first launch and every --resume
AUDITED_TAG = "satsweep.audited"  # "true" once the audit tier's results are merged in
# its value for a trial the cheap tier left nothing standing on: no attack can lower a 0
NOTHING_STANDING = "nothing standing"
COLLAPSED_TAG = "satsweep.collapsed"  # "true": a constant or chance-level classifier
# how a training-time defence failed, in words: "catastrophic overfitting at epoch N: ..." (a fall
# after a robust epoch) or "never robust: ..." (no robust epoch at all)
DEFENCE_FAILURE_TAG = "satsweep.defence_failure"
# MLflow 3's UI opens an experiment without this tag as a GenAI one (traces, an overview): ours
# hold model training runs, so they say so and the UI opens on the runs list
TRAINING_EXPERIMENT = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
WEIGHTS_TAG = "satsweep.final_weights"  # "true" once model/state_dict.pt holds the trained model
TWIN_TAG = "satsweep.twin_trained"  # this run trained the named lambda = 0 twin and logged it
TWIN_CLAIM_TAG = "satsweep.training_twin"  # this run is training the named lambda = 0 twin now
MODEL_WEIGHTS = "model/state_dict.pt"
TWIN_WEIGHTS = "transfer_source/state_dict.pt"
DEFAULT_DB = "mlflow.db"  # MLflow's own default store name, in the working directory
_BATCH = 100  # MLflow's limit of params per log_batch call
PAGE = 1000  # runs per search request; every reader pages until the store has no more


def resolve_tracking_uri(cli_uri: str | None = None, spec_uri: str | None = None) -> str:
    """--tracking-uri, then MLFLOW_TRACKING_URI, then the spec, then ./mlflow.db; always absolute,
    because Ray workers run in other directories (and on other machines)."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or spec_uri
    return absolute_uri(uri or f"sqlite:///{DEFAULT_DB}")


def absolute_uri(uri: str) -> str:
    """Make sqlite URIs absolute; leave http(s), other schemes and plain paths alone (a plain
    path is refused by `store.check_uri`, with the sqlite URI it probably meant)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        return f"sqlite:///{Path(path).expanduser().resolve()}" if not path.startswith("/") else uri
    return uri


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database file, as an absolute location."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def redact_uri(uri: str) -> str:
    """The URI without a password, for logs and params: http://user:pw@host -> http://user:***@host."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment for a sweep name, created (with a local artifact root) on first use."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(
        name, artifact_location=local_artifact_root(tracking_uri), tags=TRAINING_EXPERIMENT
    )


def code_version() -> str:
    """The git commit of the satsweep checkout, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def version_tags() -> dict[str, str]:
    tags = {}
    for pkg in ("torch", "ray", "mlflow", "satsweep"):
        try:
            tags[f"satsweep.version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            tags[f"satsweep.version.{pkg}"] = "not installed"
    return tags


def search_all(client: MlflowClient, experiment_id: str, filter_string: str, **kw) -> list[Run]:
    """Every run matching the filter, page by page: MLflow answers at most one page per call,
    so a sweep of more than PAGE trials would otherwise be silently cut."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=PAGE, page_token=token, **kw
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every trial run of one launch of a sweep (all pages)."""
    return search_all(
        client,
        experiment_id,
        f"tags.`{ROLE_TAG}` = 'trial' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
    )


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i : i + _BATCH])


def find_trial_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, ray_trial_id: str
) -> str | None:
    """The run id of a Ray trial's run under this sweep, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TRIAL_ID_TAG}` = '{ray_trial_id}' "
        f"and tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def finished_run_metrics(
    client: MlflowClient, experiment_id: str, parent_run_id: str, ray_trial_id: str
) -> dict[str, float] | None:
    """The latest metrics of the trial's run if it already ended FINISHED, else None."""
    run_id = find_trial_run(client, experiment_id, parent_run_id, ray_trial_id)
    if run_id is None:
        return None
    run = client.get_run(run_id)
    return dict(run.data.metrics) if run.info.status == "FINISHED" else None


def open_trial_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    ray_trial_id: str,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
) -> str:
    """The trial's one run: reused when Ray restarts or restores the trial, created otherwise.
    `params` are flat (dotted names, string values)."""
    run_id = find_trial_run(client, experiment_id, parent_run_id, ray_trial_id)
    if run_id is not None:  # Ray restarted the trial (a retry after a failure, or a resume)
        restarts = int(client.get_run(run_id).data.tags.get(RESTARTS_TAG, "0")) + 1
        client.set_tag(run_id, RESTARTS_TAG, str(restarts))
        client.update_run(run_id, status="RUNNING")
        return run_id
    all_tags = {
        ROLE_TAG: "trial",
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        MLFLOW_RUN_NAME: run_name,
        TRIAL_ID_TAG: ray_trial_id,
        **tags,
    }
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_epoch(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    """All of one epoch's metrics in one request, at `step=epoch`."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=batch)


def finish_run(client: MlflowClient, run_id: str, status: str, note: str | None = None) -> None:
    """End a run FINISHED or FAILED, recording why in `satsweep.status` when given."""
    if note:
        client.set_tag(run_id, STATUS_TAG, note)
    client.set_terminated(run_id, status=status)


def record_defence_failure(client: MlflowClient, run_id: str, note: str) -> None:
    """The failure as a searchable tag and as the run's description, where the UI shows it."""
    client.set_tag(run_id, DEFENCE_FAILURE_TAG, note)
    client.set_tag(run_id, DESCRIPTION_TAG, f"Defence failed: {note}.")


def log_masking_tags(client: MlflowClient, run_id: str, flags: dict[str, bool]) -> None:
    """One `masking.<name>` tag per diagnostic, 'true' or 'false', searchable in the UI."""
    for name, flag in flags.items():
        client.set_tag(run_id, masking_tag(name), "true" if flag else "false")
