"""Pre-flight checks: everything outside the spec that can stop a sweep is checked before Ray
starts (or, for the cluster's shape, right after connecting), each failure one `PreflightError`
phrased for people: the dataset and every architecture on it, the storage path, the tracking
store, shared storage on a multi-host cluster."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import ray

from sweeps.spec import SweepSpec
from tracking.runs import redact_uri
from trainables.data import load_dataset
from trainables.models import SaturatingNet


class PreflightError(RuntimeError):
    """Something outside the spec stops the sweep before Ray starts: phrased for people."""


def check_storage(storage_path: str) -> None:
    """A local storage path must be a writable folder (remote URIs are checked by Ray)."""
    if "://" in storage_path:
        return
    folder = Path(storage_uri(storage_path))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".satsweep-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PreflightError(
            f"storage path {folder} is not writable ({err.strerror}); pass "
            "--storage-path with a folder you can write to"
        ) from err


def check_tracking(tracking_uri: str) -> None:
    """The tracking store must answer: an HTTP server's /health, or a writable SQLite folder."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError) as err:
            raise PreflightError(
                f"the MLflow server at {redact_uri(tracking_uri)} does not "
                f"answer ({err}); start it (see README, 'Run on a cluster') or "
                "fix --tracking-uri"
            ) from err
        raise PreflightError(f"the MLflow server at {redact_uri(tracking_uri)} is unhealthy")
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PreflightError(
                f"cannot create the MLflow store in {folder}; pass "
                "--tracking-uri sqlite:////a/writable/folder/mlflow.db"
            )


NETWORK_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "glusterfs",
    "fuse.",
)  # fuse.* covers s3fs, gcsfuse, ...


def on_network_filesystem(path: Path) -> bool:
    """Whether the mount holding `path` is a network filesystem (from /proc/mounts)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    best = max(
        (m for m in mounts if str(path).startswith(m[1])), key=lambda m: len(m[1]), default=None
    )
    return best is not None and best[2].startswith(NETWORK_FILESYSTEMS)


def check_shared_storage(storage_path: str) -> None:
    """On a cluster spanning several hosts, trials checkpoint from every node: a node-local
    folder would scatter checkpoints where resume and export cannot find them."""
    if "://" in storage_path:
        return
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    path = Path(storage_uri(storage_path))
    if len(hosts) > 1 and not on_network_filesystem(path):
        raise PreflightError(
            f"storage path {path} is local to this machine, but the Ray cluster spans "
            f"{len(hosts)} hosts; use shared storage: --storage-path s3://bucket/sweeps, "
            "gs://bucket/sweeps, or a folder on NFS mounted at the same path on every node"
        )


def check_data(spec: SweepSpec) -> None:
    """Load the dataset once in the driver and build each architecture on it, so a missing
    dataset or an impossible architecture fails before Ray starts (DatasetNotFoundError or
    ValueError, both phrased for people)."""
    d = spec.dataset
    data = load_dataset(d.name, d.data_dir, d.download)
    for arch in spec.architectures.values():
        for act in spec.grid.activations:
            SaturatingNet(arch, act, data.input_shape, data.num_classes)


def storage_uri(path: str) -> str:
    """Ray needs an absolute local path or a URI."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check_before_ray(spec: SweepSpec, storage_path: str, tracking_uri: str) -> None:
    """Every check that needs no Ray: data, storage, tracking store."""
    check_data(spec)
    check_storage(storage_path)
    check_tracking(tracking_uri)
