from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.postgres import PostgresServer, postgres_server
from tests.unit.fake_engine import FakeEngine

ADMIN = {"Authorization": "Bearer admin-secret"}


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": tmp_path,
        "cache_dir": tmp_path / "cache",
        "engine_mode": "external",
        "engine_urls": ("http://engine.test",),
        "admin_key": "admin-secret",
        "auth_cache_ttl_s": 0.0,
        "training_worker": False,  # worker processes are exercised by the integration tier
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@dataclass
class Env:
    client: TestClient  # type: ignore[type-arg]
    engine: FakeEngine
    acme_key: str
    globex_key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.acme_key}"}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def overrides() -> dict[str, object]:
    """Settings changes for one test: parametrize `overrides` to use."""
    return {}


@pytest.fixture
def env(tmp_path: Path, engine: FakeEngine, overrides: dict[str, object]) -> Iterator[Env]:
    app = create_app(make_settings(tmp_path, **overrides), transport=engine.transport())
    with TestClient(app) as client:
        keys = []
        for name in ("acme", "globex"):
            assert (
                client.post("/admin/tenants", json={"name": name}, headers=ADMIN).status_code == 201
            )
            resp = client.post(f"/admin/tenants/{name}/keys", json={"name": "k"}, headers=ADMIN)
            assert resp.status_code == 201
            keys.append(resp.json()["key"])
        resp = client.put("/admin/tenants/globex/aliases/globex-private", json={}, headers=ADMIN)
        assert resp.status_code == 200
        yield Env(client, engine, keys[0], keys[1])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    started = time.monotonic()
    with postgres_server() as server:
        print(
            f"\nPostgreSQL {server.bin_dir.parent.name} ready in {time.monotonic() - started:.1f}s"
            f" (apt install {server.installed_in_s:.1f}s, start {server.started_in_s:.1f}s)"
        )
        yield server
