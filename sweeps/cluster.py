"""The Ray cluster a sweep runs on: connecting to it (or starting a local instance), and where
Ray keeps the sweep's experiment state."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from sweeps.preflight import storage_uri
from sweeps.spec import SweepSpec
from tracking.http_retry import retry_cut_off_responses
from tracking.runs import MLFLOW_QUIET_ENV

# Tune waits this long for a stopped trial's function thread before it reuses the worker for
# the next trial (its default, 2 s, fails that next trial with "Trainable runner reuse requires
# reset_config()..." whenever a stopped trial's cleanup, freeing memory and logging, runs longer,
# as it can on a loaded machine); the wait ends as soon as the thread does
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "120", **MLFLOW_QUIET_ENV}
# what every worker process of a sweep runs as it starts, before any trial or audit: MLflow's
# calls send a request again whose answer the tracking server cut off (tracking/http_retry.py)
WORKER_SETUP = f"{retry_cut_off_responses.__module__}.{retry_cut_off_responses.__name__}"


def connect_ray(address: str | None, verbose: bool = False) -> None:
    """Connect to a cluster (`auto`, `ray://host:port`, or RAY_ADDRESS), else start a new local
    instance without its dashboard (faster on small machines; nothing listens beyond Ray's own
    ports): `address="local"`, because with no address Ray joins whatever cluster `ray start`
    last left on this machine. Workers' own output reaches the console only when `verbose`."""
    retry_cut_off_responses()  # the driver's own MLflow calls, as its workers'
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR",
             "runtime_env": {"env_vars": WORKER_ENV,
                             "worker_process_setup_hook": WORKER_SETUP}}  # fmt: skip
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", include_dashboard=False, **quiet)


def experiment_path(spec: SweepSpec, storage_path: str) -> str:
    """Where Ray keeps this sweep's experiment state (what `Tuner.restore` reads); a URI's query
    (an S3 endpoint, say) stays at the end."""
    root = storage_uri(storage_path)
    if "://" not in root:
        return str(Path(root) / spec.folder_name)
    base, mark, query = root.partition("?")
    return f"{base.rstrip('/')}/{spec.folder_name}{mark}{query}"
