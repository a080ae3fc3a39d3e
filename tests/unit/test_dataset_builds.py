"""Dataset builds as queued work: the store's queue (SQLite and PostgreSQL), the worker's build
path (training.dataset_builds) and what a client sees when a build fails or no worker runs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from store import DatasetBuild, Store, open_store
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.fake_engine import FakeEngine

T0 = 1_700_000_000.0


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    await s.create_tenant("t1", "acme")
    await s.create_tenant("t2", "globex")
    yield s
    await s.close()


def build(build_id: str, tenant: str = "t1", at: float = T0) -> DatasetBuild:
    return DatasetBuild(
        id=build_id,
        tenant_id=tenant,
        created_by="key:k1",
        source="traffic",
        file_id=None,
        config="{}",
        override=None,
        limits=None,
        status="queued",
        created_at=at,
    )


async def test_a_build_is_claimed_once_and_only_its_worker_finishes_it(url: str) -> None:
    stores = [open_store(url) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        await stores[0].create_tenant("t1", "acme")
        for i in range(3):
            await stores[0].add_dataset_build(build(f"dsb-{i}", at=T0 + i))
        claims = await asyncio.gather(
            *(s.claim_dataset_build(f"w{n}") for n in range(4) for s in stores)
        )
        won = [c for c in claims if c is not None]
        assert sorted(c.id for c in won) == ["dsb-0", "dsb-1", "dsb-2"]  # each exactly once
        first = next(c for c in won if c.id == "dsb-0")
        assert (first.status, first.attempts) == ("building", 1) and first.worker is not None
        s = stores[0]
        assert not await s.heartbeat_dataset_build("dsb-0", "intruder")
        assert await s.heartbeat_dataset_build("dsb-0", first.worker)
        assert not await s.finish_dataset_build("dsb-0", "intruder", "ready", dataset_id="ds-x")
        assert await s.finish_dataset_build("dsb-0", first.worker, "ready", dataset_id="ds-1")
        done = await s.get_dataset_build("t1", "dsb-0")
        assert done is not None and (done.status, done.dataset_id) == ("ready", "ds-1")
        assert done.finished_at is not None
        assert await s.get_dataset_build("t2", "dsb-0") is None  # another tenant's: not found
        # Finished: no second outcome, even from its worker.
        assert not await s.finish_dataset_build("dsb-0", first.worker, "failed", error="{}")
    finally:
        for s in stores:
            await s.close()


async def test_claims_are_fair_across_tenants(store: Store) -> None:
    """A tenant that queued many builds first does not make another tenant wait behind them."""
    for i in range(3):
        await store.add_dataset_build(build(f"dsb-a{i}", "t1", T0 + i))
    await store.add_dataset_build(build("dsb-b0", "t2", T0 + 10))
    order = []
    for n in range(4):
        claimed = await store.claim_dataset_build(f"w{n}")
        assert claimed is not None
        order.append(claimed.id)
    assert order[:2] == ["dsb-a0", "dsb-b0"]  # t2 is served before t1's second build
    assert await store.claim_dataset_build("w9") is None


async def test_a_build_whose_worker_went_silent_is_requeued_then_failed(store: Store) -> None:
    await store.add_dataset_build(build("dsb-1"))
    claimed = await store.claim_dataset_build("w1")
    assert claimed is not None
    assert await store.requeue_stale_builds(before=0, max_requeues=1) == []  # still beating
    assert await store.requeue_stale_builds(before=2e10, max_requeues=1) == [("dsb-1", "queued")]
    again = await store.claim_dataset_build("w2")
    assert again is not None and again.attempts == 2
    assert not await store.finish_dataset_build("dsb-1", "w1", "ready")  # the lost worker's
    assert await store.requeue_stale_builds(before=2e10, max_requeues=1) == [("dsb-1", "failed")]
    failed = await store.get_dataset_build("t1", "dsb-1")
    assert failed is not None and failed.status == "failed" and failed.error is not None
    assert json.loads(failed.error)["code"] == "worker_lost"
    # Finished builds are purged once their caller had time to read them.
    assert await store.purge_dataset_builds(before=0) == 0
    assert await store.purge_dataset_builds(before=time.time() + 1) == 1
    assert await store.get_dataset_build("t1", "dsb-1") is None


def upload(env: Env, content: bytes) -> str:
    files = {"file": ("train.jsonl", content, "application/jsonl")}
    resp = env.client.post(
        "/v1/files", files=files, data={"purpose": "fine-tune"}, headers=env.auth()
    )
    assert resp.status_code == 200, resp.text
    file_id: str = resp.json()["id"]
    return file_id


def chat_line(question: str, answer: str) -> bytes:
    line = {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }
    return json.dumps(line).encode() + b"\n"


def create_job(env: Env, file_id: str) -> httpx.Response:
    body = {"model": "smollm2", "training_file": file_id}
    return env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth())


def test_a_file_built_by_the_worker_backs_a_job(env: Env) -> None:
    file_id = upload(env, chat_line("What colour is the sky?", "Blue, on a clear day."))
    resp = create_job(env, file_id)
    assert resp.status_code == 200, resp.text
    dataset_id = resp.json()["loopgate"]["dataset_id"]
    got = env.client.get(f"/v1/datasets/{dataset_id}", headers=env.auth()).json()
    assert (got["source"], got["source_file_id"]) == ("file", file_id)
    assert got["train_examples"] + got["eval_examples"] == 1
    assert got["report"]["stats"]["counts"]["kept"] == 1  # the builder's own report


def test_a_failed_build_is_a_clean_error(env: Env, tmp_path: Path) -> None:
    # The worker's refusal (nothing usable) comes back as the request's 422.
    empty = upload(env, chat_line("Anything?", "..."))
    resp = create_job(env, empty)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "empty_dataset"
    # An unexpected failure in the worker (the file's bytes are gone): a 500 body, no trace.
    gone = upload(env, chat_line("What colour is grass?", "Green, mostly."))
    (path,) = tmp_path.glob(f"**/{gone}.jsonl")
    path.unlink()
    resp = create_job(env, gone)
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error["code"] == "dataset_build_failed" and "FileNotFoundError" in error["message"]
    assert "Traceback" not in resp.text


def test_without_a_worker_a_build_answers_504_and_stays_queued(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, dataset_build_timeout_s=0.3)
    with TestClient(create_app(settings, transport=FakeEngine().transport())) as client:
        assert client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN).is_success
        key = client.post("/admin/tenants/acme/keys", json={"name": "k"}, headers=ADMIN)
        auth = {"Authorization": f"Bearer {key.json()['key']}"}
        started = time.monotonic()
        resp = client.post("/v1/datasets", json={}, headers=auth)
        assert time.monotonic() - started < 10
    assert resp.status_code == 504
    error = resp.json()["error"]
    assert error["code"] == "dataset_build_timeout"
    assert "LOOPGATE_DATASET_BUILD_TIMEOUT_S" in error["message"]
    assert "Traceback" not in resp.text
