"""An ASGI app served by uvicorn on a free loopback port, in a thread: the
real HTTP server the web tests talk to; and the small helpers of tests (and
benchmarks) that start servers: a free port, waiting for a condition."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, seconds: float, what: str, every: float = 0.1, error: type[BaseException] = AssertionError):
    """The first true value of ``predicate()``, asked every ``every`` seconds
    for up to ``seconds``; else ``error`` saying what it waited for."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise error(f"timed out after {seconds} s waiting for {what}")


@contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
