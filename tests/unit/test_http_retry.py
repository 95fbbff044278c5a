"""A tracking request whose response is cut off mid-body is sent again (tracking/http_retry.py).

A real HTTP server on 127.0.0.1 sends the headers of its answer to the first requests and hangs
up before the body, as a server SIGKILLed at that moment does; MLflow's own REST call is made
against it, with and without the retry installed. And a sweep's Ray workers have it installed
before any trial runs: a real local Ray, started as a sweep starts it."""

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils import rest_utils

from tracking.http_retry import ATTEMPTS, retry_cut_off_responses


@contextlib.contextmanager
def cutting_server(cut: int):
    """A server that cuts off its first `cut` answers after their headers; yields (url, the
    number of requests it has seen so far, as a one-item list)."""
    seen = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            if seen[0] <= cut:
                self.close_connection = True  # the body never comes
            else:
                self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def log_batch(url: str):
    creds = rest_utils.MlflowHostCreds(url)
    return rest_utils.http_request(creds, "/api/2.0/mlflow/runs/log-batch", "POST",
                                   json={"run_id": "r", "metrics": []}, max_retries=0)  # fmt: skip


@pytest.fixture
def unpatched(monkeypatch):
    """MLflow's own sending function for this test, whatever ran before in this process; the
    monkeypatch puts back what was there afterwards."""
    send = rest_utils._get_http_response_with_retries
    monkeypatch.setattr(rest_utils, "_get_http_response_with_retries",
                        getattr(send, "__wrapped__", send))  # fmt: skip


def test_without_the_retry_a_cut_off_response_fails_the_call(unpatched):
    with cutting_server(cut=1) as (url, seen):
        with pytest.raises(MlflowException, match="IncompleteRead"):
            log_batch(url)
        assert seen[0] == 1


def test_a_cut_off_response_is_sent_again_and_the_call_succeeds(unpatched):
    retry_cut_off_responses()
    retry_cut_off_responses()  # a second install does not wrap twice
    with cutting_server(cut=ATTEMPTS - 1) as (url, seen):
        assert log_batch(url).status_code == 200
        assert seen[0] == ATTEMPTS


def test_a_server_that_always_cuts_off_fails_the_call_after_the_attempts(unpatched):
    retry_cut_off_responses()
    with cutting_server(cut=10 * ATTEMPTS) as (url, seen):
        with pytest.raises(MlflowException, match="IncompleteRead"):
            log_batch(url)
        assert seen[0] == ATTEMPTS


def test_every_worker_of_a_sweeps_ray_has_the_retry_installed():
    import ray

    from sweeps.cluster import connect_ray

    @ray.remote
    def installed() -> bool:
        from mlflow.utils import rest_utils as worker_rest_utils

        send = worker_rest_utils._get_http_response_with_retries
        return getattr(send, "retries_cut_off_responses", False)

    if ray.is_initialized():  # another test's Ray, not started as a sweep starts it
        ray.shutdown()
    connect_ray(None)
    try:
        assert ray.get([installed.remote() for _ in range(2)]) == [True, True]
    finally:
        ray.shutdown()
