"""Two real vLLM-CPU replicas with a `loopgate serve` gateway in front (external mode), and
LoRA adapters trained on the bundled model for the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from replicas.base_model import resolve_model
from replicas.supervisor import build_launch, free_port
from store.settings import Settings
from tests.integration.conftest import Stack, add_tenants, start_gateway, stop_gateway
from tests.support.lora_factory import cached_style_adapter

ENGINE_KEY = "replica-key-for-tests"
AHOY = "Ahoy! Loopgate adapter speaking."
BEEP = "Beep boop, robot mode engaged."


@dataclass
class Replica:
    port: int
    model: str
    log_path: Path
    index: int
    proc: subprocess.Popen[bytes] | None = None
    dtype: str = "auto"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        settings = Settings(
            engine_cpu_kvcache_gb=1,
            engine_max_model_len=1024,
            engine_device="cpu",
            engine_dtype=self.dtype,  # type: ignore[arg-type]
        )
        launch = build_launch(settings, self.model, port=self.port)
        # Each replica computes on its own core. Left to vLLM's automatic binding, every
        # replica on one host binds its compute thread to the same core (core 0 of a 2-core
        # machine), and the replicas slow each other down for no reason.
        core = self.index % (os.cpu_count() or 1)
        env = {**launch.env, "VLLM_API_KEY": ENGINE_KEY, "VLLM_CPU_OMP_THREADS_BIND": str(core)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                launch.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def wait_healthy(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[
                -3000:
            ]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(1)
        pytest.fail(f"replica on {self.port} not healthy:\n{self.log_path.read_text()[-3000:]}")


@pytest.fixture(scope="package")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    model = resolve_model(Settings())
    logs = tmp_path_factory.mktemp("replicas")
    pair = [Replica(free_port(), model, logs / f"replica-{i}.log", i) for i in range(2)]
    try:
        for replica in pair:
            replica.start()
        for replica in pair:
            replica.wait_healthy()
        yield pair
    finally:
        for replica in pair:
            replica.stop()


@pytest.fixture(scope="package")
def fleet(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "LOOPGATE_ENGINE_MODE": "external",
        "LOOPGATE_ENGINE_URLS": ",".join(r.url for r in replicas),
        "LOOPGATE_ENGINE_API_KEY": ENGINE_KEY,
        "LOOPGATE_ENGINE_HEALTH_INTERVAL_S": "0.5",
        "LOOPGATE_RECONCILE_INTERVAL_S": "5",
    }
    stack = start_gateway(tmp_path_factory.mktemp("fleet"), env)
    try:
        add_tenants(stack, "acme", "globex")
        yield stack
    finally:
        stop_gateway(stack)


@pytest.fixture(scope="package")
def style_adapters() -> dict[str, Path]:
    """Two adapters trained on the bundled model (cached across sessions by their settings)."""
    return {
        "ahoy": cached_style_adapter(reply=AHOY, seed=0),
        "beep": cached_style_adapter(reply=BEEP, seed=1),
    }
