"""Serve a test client's running app on a real loopback port (uvicorn in the app's own event
loop, its lifespan already run by the test client), for a real browser to reach."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import uvicorn
from litestar.testing import TestClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def served(client: TestClient) -> Iterator[str]:  # type: ignore[type-arg]
    """The base URL while the block runs."""
    port = _free_port()
    config = uvicorn.Config(
        client.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    done = client.blocking_portal.start_task_soon(server.serve)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if done.done() or time.monotonic() > deadline:
            raise RuntimeError(f"the app did not start serving on {base}")
        time.sleep(0.02)
    try:
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        yield base
    finally:
        server.should_exit = True
        done.result(timeout=30)
