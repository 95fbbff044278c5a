"""A request whose response the tracking server cut off is sent again.

MLflow's client retries through urllib3: connection errors, HTTP 429 and 5xx, for every method,
for about four minutes. But requests reads a response's body after urllib3 has handed it the
headers, so a server killed between the two (a `log-batch` whose two-byte `{}` never came:
`IncompleteRead(0 bytes read, 2 more expected)`, seen once in `tests/integration/
test_tracking_load.py`) raises `requests.exceptions.ChunkedEncodingError` outside every retry,
and the trial's MLflow call fails. Sending it again is what MLflow's own policy already does for
a request cut off before its headers. A repeated request writes nothing twice: MLflow's store
skips a metric it holds with the same key, step, timestamp and value (the resent body carries
the same ones), and params and tags are set to the values they already have.
"""

from __future__ import annotations

import functools

ATTEMPTS = 3  # each one itself waits through MLflow's retries while the server is away


def retry_cut_off_responses() -> None:
    """Make this process's MLflow REST calls send a request again when its response was cut
    off mid-body. Idempotent. The driver calls it as it connects to Ray, and every Ray worker
    of the sweep runs it as it starts (`sweeps.cluster`, the job's `worker_process_setup_hook`),
    so a trial or an audit never logs without it."""
    import requests
    from mlflow.utils import rest_utils

    send = rest_utils._get_http_response_with_retries
    if getattr(send, "retries_cut_off_responses", False):
        return

    @functools.wraps(send)
    def send_until_whole(*args, **kwargs):
        for _ in range(ATTEMPTS - 1):
            try:
                return send(*args, **kwargs)
            except requests.exceptions.ChunkedEncodingError:
                pass
        return send(*args, **kwargs)  # the last attempt's error is the call's

    send_until_whole.retries_cut_off_responses = True
    rest_utils._get_http_response_with_retries = send_until_whole
