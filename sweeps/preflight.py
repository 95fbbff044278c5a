"""Pre-flight checks: everything outside the spec that can stop a sweep is checked before Ray
starts (or, for the cluster's shape, right after connecting), each failure one `PreflightError`
phrased for people: the dataset and every architecture on it, the storage path, the tracking
store and experiment, the machine's resources, the Ray address, shared storage and node sizes
on a cluster. The checks before Ray write nothing, and the cheap ones come first: a mistyped URI is
refused before torch, MLflow or Ray is imported."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path

from sweeps.spec import SweepSpec
from tracking.runs import redact_uri
from tracking.store import StoreError, check_store, is_loopback, store_lock
from trainables.worker_memory import GIB, trial_budget_bytes


class PreflightError(RuntimeError):
    """Something outside the spec stops the sweep before Ray starts: phrased for people."""


def check_storage(storage_path: str) -> None:
    """A local storage path must be, or be creatable as, a folder this user can write to. Only
    looks: nothing is created, so a dry run checks the same. Remote URIs must answer."""
    if "://" in storage_path:
        check_object_storage(storage_path)
        return
    folder = Path(storage_uri(storage_path))
    existing = folder
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise PreflightError(
            f"storage path {folder} cannot be used ({problem}); pass --storage-path with a "
            "folder you can write to"
        )


def check_object_storage(uri: str, timeout_s: float = 15) -> None:
    """s3:// or gs:// storage must answer within `timeout_s` (pyarrow's clients would retry
    for minutes on an unreachable endpoint)."""
    import pyarrow.fs

    def probe():
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        filesystem.get_file_info(path)

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(probe)
    try:
        future.result(timeout=timeout_s)
    except FutureTimeout:
        raise PreflightError(
            f"object storage {uri} did not answer in {timeout_s:g} s; check the network and "
            "credentials, or pass --storage-path with a local or NFS folder"
        ) from None
    except Exception as err:  # pyarrow raises OSError, ArrowInvalid, ... for a bad bucket
        raise PreflightError(f"object storage {uri} cannot be used ({err})") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def check_resources(spec: SweepSpec, address: str | None) -> None:
    """On this machine (no cluster address), a trial must fit: Ray would otherwise wait for
    CPUs or GPUs that never come."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    r = spec.resources
    cpus = os.cpu_count() or 1
    if r.cpus_per_trial > cpus:
        raise PreflightError(
            f"resources.cpus_per_trial is {r.cpus_per_trial:g} but this machine has {cpus} "
            f"CPUs; ask for at most {cpus}, or run on a cluster (--address)"
        )
    if r.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if r.gpus_per_trial > gpus:
            raise PreflightError(
                f"resources.gpus_per_trial is {r.gpus_per_trial:g} but this machine has "
                f"{gpus} GPUs; set it to 0 for CPU trials, or run on a cluster with GPUs"
            )


def trial_memory_bytes(spec: SweepSpec) -> int:
    """What one trial (or audit) may peak at: resources.memory_per_trial_gb, else the estimate
    from the dataset and evaluation.attack_batch_size (`worker_memory.trial_budget_bytes`)."""
    from trainables.data import load_dataset

    if spec.resources.memory_per_trial_gb is not None:
        return int(spec.resources.memory_per_trial_gb * GIB)
    d = spec.dataset
    data = load_dataset(d.name, d.data_dir, d.download)  # read once per process: cached
    points = len(data.y_train) + len(data.y_test)
    return trial_budget_bytes(data.input_shape, points, spec.evaluation.attack_batch_size)


def ray_memory_reservation(spec: SweepSpec) -> dict:
    """The `memory` Ray reserves per trial and audit: only what the user set. Ray's own
    `memory` resource is the memory free when the node started minus the object store's
    reservation, so reserving the estimate by default would halve a sweep started beside other
    work; preflight compares the estimate with the nodes instead."""
    gb = spec.resources.memory_per_trial_gb
    return {} if gb is None else {"memory": int(gb * GIB)}


def node_memory(resources: dict) -> float:
    """What a node offered Ray when it started: its `memory` resource plus the object store's
    (shared memory, allocated only as objects are stored: the trials here store almost none)."""
    return resources.get("memory", 0) + resources.get("object_store_memory", 0)


def trials_a_node_holds(resources: dict, spec: SweepSpec, memory: int) -> tuple[int, int]:
    """(trials that fit on the node by its CPUs and GPUs, and by its memory)."""
    r = spec.resources
    by_cores = int(resources.get("CPU", 0) // r.cpus_per_trial)
    if r.gpus_per_trial > 0:
        by_cores = min(by_cores, int(resources.get("GPU", 0) // r.gpus_per_trial))
    offered = resources.get("memory", 0) if r.memory_per_trial_gb else node_memory(resources)
    return by_cores, int(offered // memory)


def check_cluster_fits(spec: SweepSpec) -> None:
    """After connecting: some node must hold one trial (its CPUs, GPUs and memory), or Ray
    waits forever (or its memory monitor kills every attempt); where memory, not cores, limits
    how many trials a node can run at once, say so."""
    import ray

    from sweeps.console import warn

    r = spec.resources
    memory = trial_memory_bytes(spec)
    fits = [(n["NodeManagerAddress"], n["Resources"],
             *trials_a_node_holds(n["Resources"], spec, memory))
            for n in ray.nodes() if n["Alive"]]  # fmt: skip
    if not any(cores >= 1 for _, _, cores, _ in fits):
        raise PreflightError(
            f"no node of the Ray cluster has {r.cpus_per_trial:g} CPUs and "
            f"{r.gpus_per_trial:g} GPUs for one trial; lower resources.cpus_per_trial or "
            "resources.gpus_per_trial, or add such a node"
        )
    if not any(min(cores, mem) >= 1 for _, _, cores, mem in fits):
        largest = max(node_memory(res) for _, res, _, _ in fits)
        raise PreflightError(
            f"no node of the Ray cluster has the {memory / GIB:.1f} GB one trial needs (the "
            f"most any node offers Ray is {largest / GIB:.1f} GB); lower "
            "evaluation.attack_batch_size, or set resources.memory_per_trial_gb to what a trial "
            "needs (make bench measures it), or add nodes with more memory"
        )
    at_once = sum(min(cores, mem) for _, _, cores, mem in fits)
    if at_once < r.max_concurrent_trials and at_once < sum(c for _, _, c, _ in fits):
        limited = [f"{ip}: {mem} of {cores}" for ip, _, cores, mem in fits if mem < cores]
        warn(
            f"memory holds {at_once} trials at once, fewer than max_concurrent_trials "
            f"({r.max_concurrent_trials}): each needs up to {memory / GIB:.1f} GB (trials by "
            f"memory of those by cores, per node: {'; '.join(limited)}). "
            + ("Ray reserves that, so the rest wait" if r.memory_per_trial_gb else
               "Ray's memory monitor may kill trials; lower max_concurrent_trials or "
               "evaluation.attack_batch_size")
            + "; set resources.memory_per_trial_gb if the estimate is too high for your trials"
        )  # fmt: skip


def check_address(address: str | None, timeout_s: float = 5) -> None:
    """A Ray address must answer before `ray.init` (which would retry it for minutes), and a
    `ray://` address needs Ray's client libraries."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    target = address
    if address.startswith("ray://"):
        if importlib.util.find_spec("grpc") is None:
            raise PreflightError(
                f"{address} is a Ray client address, which needs Ray's client libraries: "
                "pip install 'ray[client]' (or submit from the head node with --address auto)"
            )
        target = address[len("ray://") :]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise PreflightError(
            f"Ray address {address!r} is not HOST:PORT; use e.g. ray://head:10001, "
            "head:6379 or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise PreflightError(
            f"the Ray cluster at {address} does not answer ({err.strerror or err}); start it "
            "(`ray up ray_cluster.yaml`) or fix --address"
        ) from None


def check_experiment(spec: SweepSpec, tracking_uri: str, resume: bool) -> None:
    """The sweep's experiment must not be in MLflow's trash (runs cannot be added there).
    Looked up only in a store that already exists, so a new SQLite file is not created here."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).exists():
        return
    from mlflow.tracking import MlflowClient

    with store_lock(tracking_uri):  # another sweep may be creating this store's schema now
        exp = MlflowClient(tracking_uri).get_experiment_by_name(spec.name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise PreflightError(
            f"experiment {spec.name!r} was deleted in this store (id {exp.experiment_id}); "
            f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
            "or give the sweep another name"
        )


def check_tracking(tracking_uri: str) -> None:
    """The tracking store must be usable (`tracking.store.check_store`), and a new SQLite
    store creatable in a writable folder."""
    try:
        with store_lock(tracking_uri):  # a store being created now is not yet a whole one
            check_store(tracking_uri, must_exist=False)
    except StoreError as err:
        raise PreflightError(str(err)) from None
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
    import ray

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


def cluster_hosts() -> set[str]:
    """The distinct addresses of the cluster's live nodes: one per host, however many Ray nodes
    a host runs (`ray.cluster_utils` runs several on one address)."""
    import ray

    return {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


def check_tracking_from_every_host(tracking_uri: str, timeout_s: float = 60) -> None:
    """On a cluster of several hosts every trial logs from its own host, so the tracking store
    must be one every host reaches: not a SQLite file on this host, not a loopback address
    (127.0.0.1 on a worker host is that worker). Then each node is asked itself, with its own
    credentials, before any trial starts (the driver's check only speaks for the head)."""
    import ray

    hosts = cluster_hosts()
    if len(hosts) < 2:
        return
    shown, here = redact_uri(tracking_uri), ray.util.get_node_ip_address()
    server = f"--tracking-uri http://{here}:5000 (`satsweep server` on this host binds it)"
    if tracking_uri.startswith("sqlite:///"):
        raise PreflightError(
            f"the tracking store {shown} is a file on this host, but the Ray cluster spans "
            f"{len(hosts)} hosts and trials elsewhere cannot write it; start a tracking server "
            f"(README, 'Run on a cluster') and pass {server}"
        )
    if is_loopback(tracking_uri):
        raise PreflightError(
            f"tracking URI {shown} names each node's own loopback, but the Ray cluster spans "
            f"{len(hosts)} hosts: trials on the other hosts would log nowhere; pass the "
            f"address the workers reach the server at, e.g. {server}"
        )
    problems = ask_every_node(tracking_uri, timeout_s)
    if problems:
        raise PreflightError(
            f"the tracking server {shown} is not usable from every node: "
            + "; ".join(f"from {ip}: {why}" for ip, why in problems)
            + ". Fix: make the server reachable at that address from every host, and give "
            "every node the same credentials in the environment `ray start` runs in (README, "
            "'Run on a cluster')"
        )  # fmt: skip


def _store_problem(tracking_uri: str) -> str | None:
    """Runs on one node: why its trials could not log there, or None."""
    try:
        check_store(tracking_uri, must_exist=False)
    except StoreError as err:
        return str(err)
    return None


def ask_every_node(tracking_uri: str, timeout_s: float) -> list[tuple[str, str]]:
    """[(node address, problem)] for the nodes whose own check of the store fails (a task on
    each node, needing no CPU, so busy nodes answer too)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_store_problem)
    refs = {}
    for node in (n for n in ray.nodes() if n["Alive"]):
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ref = probe.options(scheduling_strategy=strategy).remote(tracking_uri)
        refs[ref] = node["NodeManagerAddress"]
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    problems = [(refs[r], why) for r in ready if (why := ray.get(r)) is not None]
    return problems + [(refs[r], f"no answer within {timeout_s:g} s") for r in late]


def check_data(spec: SweepSpec) -> None:
    """Load the dataset once in the driver and build each architecture on it, so a missing
    dataset (a PreflightError) or an impossible architecture (a ValueError) fails before Ray
    starts, both phrased for people."""
    from trainables.data import DatasetNotFoundError, load_dataset
    from trainables.models import SaturatingNet

    d = spec.dataset
    try:
        data = load_dataset(d.name, d.data_dir, d.download)
    except DatasetNotFoundError as err:
        raise PreflightError(str(err)) from None
    for arch in spec.architectures.values():
        for act in spec.grid.activations or _sampled_activations(spec):
            SaturatingNet(arch, act, data.input_shape, data.num_classes)


def _sampled_activations(spec) -> list[str]:
    return list(spec.search.space["activation"].choice)


def storage_uri(path: str) -> str:
    """Ray needs an absolute local path or a URI."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check_before_ray(
    spec: SweepSpec,
    storage_path: str,
    tracking_uri: str,
    address: str | None = None,
    resume: bool = False,
) -> None:
    """Every check that needs no Ray, and writes nothing (a dry run makes the same checks):
    data and architectures, storage, tracking store and experiment, resources, Ray address."""
    check_storage(storage_path)
    check_tracking(tracking_uri)
    check_address(address)
    check_data(spec)
    check_experiment(spec, tracking_uri, resume)
    check_resources(spec, address)


@contextmanager
def sweep_lock(storage_path: str, name: str):
    """Held while a sweep runs: a second launch of the same sweep on the same storage is
    refused instead of sharing (and corrupting) Ray's experiment state. Remote storage
    (s3://, gs://) cannot be locked from here; the lock is then skipped."""
    if "://" in storage_path:
        yield
        return
    folder = Path(storage_uri(storage_path))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PreflightError(
                f"sweep {name!r} is already running from {folder} ({holder}); wait for it, "
                "or give this one another name or --storage-path"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
