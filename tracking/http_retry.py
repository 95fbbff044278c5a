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
    off mid-body. Idempotent: call it wherever a process starts logging."""
    import requests
    from mlflow.utils import rest_utils

    send = rest_utils._get_http_response_with_retries
    if getattr(send, "retries_cut_off_responses", False):
        return

    @functools.wraps(send)
    def send_until_whole(*args, **kwargs):
        for attempt in range(ATTEMPTS):
            try:
                return send(*args, **kwargs)
            except requests.exceptions.ChunkedEncodingError:
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    send_until_whole.retries_cut_off_responses = True
    rest_utils._get_http_response_with_retries = send_until_whole
