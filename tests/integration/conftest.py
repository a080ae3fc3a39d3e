"""Real-process helpers for the integration tiers: a running `loopgate serve` and its logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from replicas.supervisor import free_port

ADMIN_KEY = "lg-admin-integration-tests"
READY_TIMEOUT_S = 900


@dataclass
class Stack:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    keys: dict[str, str]

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def client(self, tenant: str = "acme", **kw: object) -> OpenAI:
        return OpenAI(base_url=self.api, api_key=self.keys[tenant], max_retries=0, **kw)  # type: ignore[arg-type]

    def aclient(self, tenant: str = "acme") -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.api, api_key=self.keys[tenant], max_retries=0)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=600
        )

    def engine(self) -> dict[str, object]:
        return dict(json.loads((self.data_dir / "run" / "engine.json").read_text()))

    def engine_metrics(self) -> str:
        """The embedded engine's own Prometheus text, read over its Unix socket."""
        engine = self.engine()
        transport = httpx.HTTPTransport(uds=str(engine["socket"]))
        with httpx.Client(transport=transport, timeout=30) as client:
            return client.get(f"{engine['url']}/metrics").text

    def log_tail(self, n: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        engine_log = self.data_dir / "logs" / "engine.log"
        if engine_log.exists():
            text += "\n--- engine.log ---\n" + engine_log.read_text(errors="replace")[-n:]
        return text[-2 * n :]

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        pytest.fail(f"stack not ready within {timeout_s} s:\n{self.log_tail()}")


def cli(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, check=True)


def start_gateway(data_dir: Path, extra_env: dict[str, str]) -> Stack:
    """`loopgate serve` as a real process; returns once /ready answers 200."""
    env = {
        **os.environ,
        "LOOPGATE_DATA_DIR": str(data_dir),
        "LOOPGATE_PORT": str(free_port()),
        "LOOPGATE_ADMIN_KEY": ADMIN_KEY,
        "LOOPGATE_AUTH_CACHE_TTL_S": "0",
        "PYTHONUNBUFFERED": "1",
        "LOOPGATE_TRAINING_WORKER": "false",  # the training tier turns it on
        **extra_env,
    }
    cli("model", "prepare", env=env)  # idempotent; the cache dir is shared between runs
    log_path = data_dir / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    stack = Stack(f"http://127.0.0.1:{env['LOOPGATE_PORT']}", data_dir, proc, log_path, {})
    try:
        stack.wait_ready()
    except BaseException:
        stop_gateway(stack)
        raise
    return stack


def mock_engine_env(engine_url: str) -> dict[str, str]:
    """A one-process gateway in front of the mock engine (tests.support.mock_engine)."""
    return {
        "LOOPGATE_ENGINE_MODE": "external",
        "LOOPGATE_ENGINE_URLS": engine_url,
        "LOOPGATE_SERVED_MODEL_NAME": "mock",
        "LOOPGATE_LOG_LEVEL": "warning",
        "LOOPGATE_EVALS_WORKER": "false",
    }


def add_tenants(stack: Stack, *names: str) -> None:
    with stack.admin() as admin:
        for tenant in names:
            admin.post("/admin/tenants", json={"name": tenant}).raise_for_status()
            stack.keys[tenant] = admin.post(f"/admin/tenants/{tenant}/keys", json={}).json()["key"]


def stop_gateway(stack: Stack) -> None:
    """SIGTERM, and the gateway must be gone within 90 s (its engine with it)."""
    stack.proc.send_signal(signal.SIGTERM)
    try:
        stack.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        stack.proc.kill()
        pytest.fail("gateway did not stop within 90 s of SIGTERM")
