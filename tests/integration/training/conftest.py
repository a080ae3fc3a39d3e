"""One real stack for the training tests: `loopgate serve` with its embedded vLLM-CPU engine and
its training worker process, one tenant, driven through the official openai SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import Stack, add_tenants, start_gateway, stop_gateway

TRAINING_ENV = {
    "LOOPGATE_TRAINING_WORKER": "true",
    "LOOPGATE_TRAINING_TORCH_THREADS": "2",
    "LOOPGATE_JOB_HEARTBEAT_S": "1",
    "LOOPGATE_ENGINE_CPU_KVCACHE_GB": "1",
}


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("training-stack")
    stack = start_gateway(data_dir, TRAINING_ENV)
    try:
        add_tenants(stack, "acme", "globex")
        yield stack
    finally:
        stop_gateway(stack)
