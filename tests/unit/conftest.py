from __future__ import annotations

import gzip
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from litestar.testing import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from evals.worker import EvalsWorker
from gateway.app import create_app
from store.settings import Settings
from tests.support.dataset_worker import dataset_worker
from tests.support.evals_worker import evals_worker as running_evals_worker
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
        "evals_worker": False,  # the `evals_worker` fixture runs one in the app's event loop
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

    def stop(self) -> None:
        """Shut the app down now (spans flushed, store closed); the fixture's exit is a no-op."""
        self.client.__exit__(None, None, None)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def overrides() -> dict[str, object]:
    """Settings changes for one test: parametrize `overrides` to use."""
    return {}


@pytest.fixture
def env(tmp_path: Path, engine: FakeEngine, overrides: dict[str, object]) -> Iterator[Env]:
    settings = make_settings(tmp_path, **overrides)
    app = create_app(settings, transport=engine.transport())
    # Dataset builds run in the worker's code path (training.dataset_builds), in a thread here.
    with TestClient(app) as client, dataset_worker(settings):
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


@pytest.fixture
def evals_worker(env: Env, tmp_path: Path, overrides: dict[str, object]) -> Iterator[EvalsWorker]:
    """An evals worker on the env's app (eval runs, loop steps): tests/support/evals_worker."""
    with running_evals_worker(env.client, make_settings(tmp_path, **overrides)) as worker:
        yield worker


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    started = time.monotonic()
    with postgres_server() as server:
        print(
            f"\nPostgreSQL {server.bin_dir.parent.name} ready in {time.monotonic() - started:.1f}s"
            f" (apt install {server.installed_in_s:.1f}s, start {server.started_in_s:.1f}s)"
        )
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty store URL of each backend (PostgreSQL: a new database per
    test on the session's server); the store tests of every module run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    db = await server.create_database()
    yield db
    await server.drop_database(db)


@dataclass
class Collector:
    """Accepts OTLP/HTTP protobuf at POST /v1/traces and keeps what it got."""

    url: str = ""
    raw: list[bytes] = field(default_factory=list)
    resources: list[dict[str, object]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, path: str, body: bytes) -> int:
        if path != "/v1/traces":
            return 404
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            self.raw.append(body)
            for rs in request.resource_spans:
                self.resources.append(attrs(rs.resource.attributes))
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        return 200


@pytest.fixture
def collector() -> Iterator[Collector]:
    got = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            status = got.accept(self.path, body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield got
    server.shutdown()
    server.server_close()


def attrs(kvs: Iterable[KeyValue]) -> dict[str, object]:
    return {kv.key: getattr(kv.value, str(kv.value.WhichOneof("value"))) for kv in kvs}


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    yield out
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
