"""Bad input, tried as a new user would: each gets one clear message, a non-zero exit (2 for bad
input), no traceback, no hang, and nothing written. Real files, a real SQLite MLflow store, a
real HTTP server that is not MLflow; no Ray is started by any of these."""

import contextlib
import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.spec import SpecError, parse_spec
from tests.unit.test_spec import GOOD, with_change
from tracking.store import SERVER_TIMEOUT_S

pytestmark = pytest.mark.faults


def satsweep(*args, cwd, timeout=60, stdin=None):
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=stdin,
    )  # fmt: skip
    out.seconds = time.monotonic() - start
    return out


@pytest.fixture(scope="module")
def startup_seconds(tmp_path_factory) -> float:
    """What `satsweep` takes to start and import everything on this machine right now: the
    fail-fast bounds below are this plus the command's own wait, so a loaded machine does
    not fail them."""
    return satsweep("best", "--help", cwd=tmp_path_factory.mktemp("startup")).seconds


def refused(out, *words) -> None:
    """Exit 2, one `satsweep: error:` line that says what was wrong, no traceback."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.startswith("satsweep: error:")
    for word in words:
        assert word in out.stderr, out.stderr


def nothing_written(folder: Path, before: set) -> None:
    assert set(os.listdir(folder)) == before


def run_spec(tmp_path, spec, *flags, raw: bytes | None = None):
    path = tmp_path / "spec.yaml"
    path.write_bytes(raw if raw is not None else yaml.safe_dump(spec).encode())
    before = set(os.listdir(tmp_path))
    real = satsweep("run", "spec.yaml", *flags, cwd=tmp_path)
    dry = satsweep("run", "spec.yaml", "--dry-run", *flags, cwd=tmp_path)
    nothing_written(tmp_path, before)
    return real, dry


# ---- spec files ------------------------------------------------------------------------------

SPEC_FILES = {
    "latin-1": ("name: caf\xe9\n".encode("latin-1"), "UTF-8"),
    "binary": (b"\x00\x01\x02name: x", "not a text file"),
    "duplicate key": (b"name: a\nname: b\ngrid: {}\n", "appears twice"),
    "not a mapping": (b"- 1\n- 2\n", "expected a mapping"),
    "bad yaml": (b"name: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", SPEC_FILES, ids=list(SPEC_FILES))
def test_spec_files_that_are_not_good_yaml(tmp_path, case):
    raw, words = SPEC_FILES[case]
    for out in run_spec(tmp_path, None, raw=raw):
        refused(out, words)


VALUES = [
    ("grid.lambdas", [float("nan")], "grid.lambdas[0]"),
    ("training.optimizer.lr", float("inf"), "training.optimizer.lr"),
    ("training.epochs", 10**12, "training.epochs"),
    ("grid.seeds", [2**40], "grid.seeds[0]"),
    ("grid.architectures.0.hidden", [10**9], "grid.architectures[0].hidden[0]"),
    ("grid.activations", [], "grid.activations"),
    ("evaluation.eps", [], "evaluation.eps"),
    ("grid.defences", [], "grid.defences"),
    ("evaluation.size", 0, "evaluation.size"),
    ("resources.gpu_missing", "maybe", "resources.gpu_missing"),
    ("name", "..", "name"),
    ("name", "../outside", "name"),
    ("name", "a/b", "name"),
    ("name", "x" * 300, "name"),
    ("grid.architectures.0.hidden", [1] * 120, "grid.architectures"),  # run names too long
]


@pytest.mark.parametrize(
    "path, value, field", VALUES, ids=[f"{v[0]}={v[1]!r}"[:40] for v in VALUES]
)
def test_values_out_of_range_are_refused_naming_the_field(path, value, field):
    with pytest.raises(SpecError) as err:
        parse_spec(with_change(path, value), source="bad.yaml")
    assert f"bad.yaml: {field}:" in str(err.value) and "Fix:" in str(err.value)


def test_a_spec_with_a_password_in_its_tracking_uri_is_refused_without_echoing_it(tmp_path):
    for out in run_spec(tmp_path, with_change("tracking_uri", "http://me:hunter2hunter2@h:5000")):
        refused(out, "tracking_uri", "MLFLOW_TRACKING_PASSWORD")
        assert "hunter2" not in out.stdout + out.stderr


@pytest.mark.parametrize("path, value", [("grid.lambdas", [float("nan")]), ("name", "../outside")])
def test_run_and_dry_run_refuse_them_alike_writing_nothing(tmp_path, path, value):
    for out in run_spec(tmp_path, with_change(path, value)):
        refused(out, path.split(".")[0], "Fix:")
    assert not (tmp_path.parent / "outside").exists()


# ---- resources, data, storage ----------------------------------------------------------------


def test_resources_this_machine_does_not_have(tmp_path):
    too_many = with_change("resources", {"cpus_per_trial": (os.cpu_count() or 1) + 1})
    for out in run_spec(tmp_path, too_many):
        refused(out, "resources.cpus_per_trial", "CPUs")
    import torch

    if torch.cuda.device_count() == 0:
        for out in run_spec(tmp_path, with_change("resources", {"gpus_per_trial": 1})):
            refused(out, "resources.gpus_per_trial", "GPUs")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_or_truncated_data_roots(tmp_path, damage):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        # a valid idx header promising 1,000 images, then too few bytes (or junk)
        header = b"\x00\x00\x08\x03" + (1000).to_bytes(4, "big") + b"\x00\x00\x00\x1c" * 2
        (raw / name).write_bytes(header + b"\x00" * 10 if damage == "truncated" else b"junk")
    spec = with_change("dataset", {"name": "mnist", "data_dir": str(tmp_path / "root")})
    for out in run_spec(tmp_path, spec):
        refused(out, "cannot be loaded", str(tmp_path / "root"))


def test_storage_under_a_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for out in run_spec(tmp_path, GOOD, "--storage-path", "a_file/results"):
        refused(out, "is a file")


# ---- tracking stores -------------------------------------------------------------------------


def test_a_plain_path_is_not_a_tracking_uri(tmp_path):
    for out in run_spec(tmp_path, GOOD, "--tracking-uri", "runs.db"):
        refused(out, "plain path", f"sqlite:///{tmp_path / 'runs.db'}")


@pytest.mark.parametrize("kind", ["text file", "other sqlite db", "empty file"])
def test_files_that_are_not_mlflow_stores_are_left_intact(tmp_path, kind):
    store = tmp_path / "store.db"
    if kind == "text file":
        store.write_text("my notes\n")
    elif kind == "other sqlite db":
        with sqlite3.connect(store) as db:
            db.execute("create table notes (text)")
    else:
        store.write_bytes(b"")
    before = store.read_bytes()
    for out in run_spec(tmp_path, GOOD, "--tracking-uri", f"sqlite:///{store}"):
        refused(out, "not")
    assert store.read_bytes() == before
    refused(satsweep("best", "t", "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path), "not")
    assert store.read_bytes() == before


@contextlib.contextmanager
def not_mlflow_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello" if self.path == "/health" else b"no"
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_an_http_endpoint_that_is_not_mlflow(tmp_path):
    with not_mlflow_server() as url:
        for out in run_spec(tmp_path, GOOD, "--tracking-uri", url):
            refused(out, "not as an MLflow tracking server")
        refused(satsweep("best", "t", "--tracking-uri", url, cwd=tmp_path), "not as an MLflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["best", "t"], ["report", "t"], ["ui"],
                                     ["export", "t", "--out", "x"]])  # fmt: skip
def test_read_commands_against_a_silent_server_fail_fast(tmp_path, command, startup_seconds):
    out = satsweep(*command, "--tracking-uri", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    refused(out, "does not answer")
    assert out.seconds < startup_seconds + 2 * SERVER_TIMEOUT_S


def test_an_experiment_deleted_in_the_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("t"))
    for out in run_spec(tmp_path, GOOD, "--tracking-uri", uri):
        refused(out, "was deleted", "restore")


# ---- Ray addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "nonsense"])
def test_ray_addresses_that_do_not_answer_fail_fast(tmp_path, address, startup_seconds):
    address = address.format(port=free_port())
    for out in run_spec(tmp_path, GOOD, "--address", address):
        refused(out)
        assert out.seconds < startup_seconds + 10  # preflight, then a 5 s connection timeout
        assert "Ray" in out.stderr


# ---- read commands on sweeps that are not there ----------------------------------------------


@pytest.fixture
def store_with_an_unfinished_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("idle", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"satsweep.role": "sweep"})
    client.create_run(exp, tags={"satsweep.role": "trial",
                                 "mlflow.parentRunId": parent.info.run_id})  # fmt: skip
    return uri


MISSING = [["best", "idle"], ["report", "idle"], ["export", "idle", "--out", "x"],
           ["best", "nope"], ["report", "nope"], ["export", "nope", "--out", "y"]]  # fmt: skip


@pytest.mark.parametrize("command", MISSING)
def test_sweeps_without_a_finished_trial_or_that_do_not_exist(
    tmp_path, store_with_an_unfinished_sweep, command
):
    out = satsweep(*command, "--tracking-uri", store_with_an_unfinished_sweep, cwd=tmp_path)
    refused(out)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_best_into_a_closed_pipe_ends_quietly(tmp_path, store_with_an_unfinished_sweep):
    uri = f"sqlite:///{tmp_path / 'synth.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("many", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={"satsweep.role": "sweep"})
    for i in range(40):
        run = client.create_run(exp, run_name=f"trial-{i}", tags={
            "satsweep.role": "trial", "mlflow.parentRunId": parent.info.run_id,
            "satsweep.status": "finished", "masking.masking_suspected": "false"})  # fmt: skip
        client.log_param(run.info.run_id, "lam", str(i))  # each its own configuration
        client.log_metric(run.info.run_id, "clean_acc", 0.95)
        client.log_metric(run.info.run_id, "worst_case_acc/eps_0.1", i / 100)
        client.set_terminated(run.info.run_id)
    done = subprocess.run(
        f"{sys.executable} -m sweeps.cli best many --all --tracking-uri {uri} | head -n 2",
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert len(done.stdout.splitlines()) == 2
    shown = satsweep("best", "many", "--tracking-uri", uri, cwd=tmp_path)
    assert "showing 10 of 40 configurations (--all for the rest)" in shown.stdout
    listed = satsweep("best", "many", "--json", "--tracking-uri", uri, cwd=tmp_path)
    ranking = json.loads(listed.stdout)
    assert len(ranking["configurations"]) == 40
    assert ranking["configurations"][0]["configuration"] == "trial-39"


@pytest.mark.parametrize("where", ["onto a file", "under a file"])
def test_export_onto_or_under_a_file(tmp_path, where):
    (tmp_path / "taken").write_text("mine")
    out_dir = "taken" if where == "onto a file" else "taken/inside"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("t")
    out = satsweep("export", "0123456789abcdef0123456789abcdef", "--out", out_dir,
                   "--tracking-uri", uri, cwd=tmp_path)  # fmt: skip
    refused(out)
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_huge_grid_is_a_dry_run_in_seconds_and_needs_yes_to_run(tmp_path):
    big = with_change("grid.lambdas", [i / 10 for i in range(2500)])
    big = with_change_in(big, "grid.seeds", [0, 1, 2, 3])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(big))
    dry = satsweep("run", "spec.yaml", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "10000 trials" in dry.stdout and dry.seconds < 30
    assert len(dry.stdout.splitlines()) < 60  # not 10,000 lines
    refused(satsweep("run", "spec.yaml", cwd=tmp_path, stdin=subprocess.DEVNULL), "--yes")
    assert not (tmp_path / "mlflow.db").exists()


def test_the_confirmation_size_is_the_specs_to_set(tmp_path):
    small = with_change("grid.lambdas", [0.0, 1.0, 2.0])
    small["confirm_above"] = 2
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(small))
    out = satsweep("run", "spec.yaml", cwd=tmp_path, stdin=subprocess.DEVNULL)
    refused(out, "confirm_above, 2")
    assert not (tmp_path / "mlflow.db").exists()


def with_change_in(spec: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[key]
    node[last] = value
    return spec


def test_object_storage_that_does_not_answer(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(GOOD))
    out = satsweep("run", "spec.yaml", "--dry-run", "--storage-path", "s3://satsweep-nowhere/x",
                   cwd=tmp_path)  # fmt: skip
    refused(out, "object storage s3://satsweep-nowhere/x")
    assert out.seconds < 25  # the check gives up after 15 s; Python and imports take the rest
