"""The whole gateway (admin, serving, capture, stored completions, feedback, erasure) on a
PostgreSQL store, against the fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from tests.support.postgres import PostgresServer
from tests.unit.conftest import ADMIN, make_settings
from tests.unit.fake_engine import FakeEngine


@pytest.fixture
def pg_client(pg_server: PostgresServer, tmp_path: Path) -> Iterator[TestClient]:  # type: ignore[type-arg]
    url = asyncio.run(pg_server.create_database())
    app = create_app(make_settings(tmp_path, database_url=url), transport=FakeEngine().transport())
    with TestClient(app) as client:
        yield client
    asyncio.run(pg_server.drop_database(url))


def test_serving_and_capture_on_postgres(pg_client: TestClient) -> None:  # type: ignore[type-arg]
    c = pg_client
    assert c.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN).status_code == 201
    key = c.post("/admin/tenants/acme/keys", headers=ADMIN).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "hi from a@b.com"}],
        "metadata": {"k": "v"},
        "user": "u1",
    }
    cid = c.post("/v1/chat/completions", json=body, headers=auth).json()["id"]
    with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=auth) as r:
        assert b"".join(r.iter_bytes()).endswith(b"data: [DONE]\n\n")
    listed = c.get("/v1/chat/completions", params={"metadata[k]": "v"}, headers=auth).json()["data"]
    assert [x["loopgate"]["status"] for x in listed] == ["complete", "complete"]
    assert (
        listed[0]["id"] == cid
        and listed[1]["choices"][0]["message"]["content"] == "The capital is Paris."
    )
    msgs = c.get(f"/v1/chat/completions/{cid}/messages", headers=auth).json()["data"]
    assert msgs[0]["content"] == "hi from [EMAIL]"
    fb = c.post(f"/v1/chat/completions/{cid}/feedback", json={"rating": "up"}, headers=auth)
    assert fb.status_code == 201
    assert (
        c.post("/admin/tenants/acme/erase", json={"end_user": "u1"}, headers=ADMIN).json()["erased"]
        == 2
    )
    assert c.get(f"/v1/chat/completions/{cid}", headers=auth).status_code == 404
