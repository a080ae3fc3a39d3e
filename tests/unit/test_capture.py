"""Capture and stored completions against the fake engine: rows, versions, store=false,
streams cut short, OpenAI-shaped list/get/messages/update/delete, feedback, isolation, PII."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.capture import _PARSE_EVERY, CaptureTap, CaptureWriter, Exchange, exchange_id
from store import Completion, open_store
from tests.unit.conftest import Env

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Capital of France?"}]}


def rows(env: Env) -> list[dict[str, object]]:
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("SELECT * FROM completions ORDER BY created_at")]


def test_non_streaming_row_is_complete_before_the_response(env: Env) -> None:
    resp = env.client.post(
        "/v1/chat/completions",
        json={**CHAT, "user": "u-1", "metadata": {"topic": "geo"}},
        headers=env.auth(),
    )
    cid = resp.json()["id"]
    (row,) = rows(env)  # the response is back: the row is final already
    assert row["id"] == cid and row["status"] == "complete"
    assert (
        row["alias"] == "smollm2"
        and row["adapter_version"] is None
        and row["backend"] == "replica-0"
    )
    assert row["response"] == "Paris." and row["finish_reason"] == "stop"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 2)
    assert row["end_user"] == "u-1" and json.loads(str(row["metadata"])) == {"topic": "geo"}
    assert json.loads(str(row["request"]))["messages"] == CHAT["messages"]
    assert row["latency_ms"] is not None and row["request_id"] == resp.headers["x-request-id"]


def test_stream_is_reassembled_and_final_before_done(env: Env) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with env.client.stream("POST", "/v1/chat/completions", json=body, headers=env.auth()) as resp:
        data = b"".join(resp.iter_bytes())
    assert data.endswith(b"data: [DONE]\n\n")
    (row,) = rows(env)
    assert row["status"] == "complete" and row["response"] == "The capital is Paris."
    assert row["ttft_ms"] is not None
    assert row["id"] == json.loads(data.split(b"\n\n")[0][6:])["id"]


@pytest.mark.parametrize("mode", ["break", "truncate"])
def test_stream_cut_by_the_engine_is_incomplete_with_partial_text(env: Env, mode: str) -> None:
    env.engine.mode = mode
    with env.client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=env.auth()
    ) as resp:
        b"".join(resp.iter_bytes())
    (row,) = rows(env)
    assert row["status"] == "incomplete" and row["response"] == "The capital"


def test_upstream_failure_is_recorded_as_error(env: Env) -> None:
    env.engine.mode = "refuse"
    assert env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth()).status_code == 502
    (row,) = rows(env)
    assert row["status"] == "error" and "unreachable" in str(row["error"])


def test_store_false_keeps_accounting_only(env: Env) -> None:
    resp = env.client.post(
        "/v1/chat/completions",
        json={**CHAT, "store": False, "metadata": {"a": "b"}},
        headers=env.auth(),
    )
    (row,) = rows(env)
    assert row["stored"] == 0 and row["request"] is None and row["response"] is None
    assert row["metadata"] == "{}" and row["completion_tokens"] == 2 and row["status"] == "complete"
    assert (
        env.client.get(f"/v1/chat/completions/{resp.json()['id']}", headers=env.auth()).status_code
        == 404
    )
    assert env.client.get("/v1/chat/completions", headers=env.auth()).json()["data"] == []


def test_list_get_messages_update_delete(env: Env) -> None:
    ids = []
    for i in range(5):
        body = {**CHAT, "model": "smollm2", "metadata": {"n": str(i), "even": str(i % 2 == 0)}}
        ids.append(
            env.client.post("/v1/chat/completions", json=body, headers=env.auth()).json()["id"]
        )
    page = env.client.get("/v1/chat/completions", params={"limit": 2}, headers=env.auth()).json()
    assert (
        [c["id"] for c in page["data"]] == ids[:2]
        and page["has_more"]
        and page["last_id"] == ids[1]
    )
    rest = env.client.get(
        "/v1/chat/completions", params={"after": ids[1], "limit": 10}, headers=env.auth()
    ).json()
    assert [c["id"] for c in rest["data"]] == ids[2:] and not rest["has_more"]
    desc = env.client.get(
        "/v1/chat/completions", params={"order": "desc", "limit": 1}, headers=env.auth()
    ).json()
    assert desc["data"][0]["id"] == ids[-1]
    even = env.client.get(
        "/v1/chat/completions", params={"metadata[even]": "True"}, headers=env.auth()
    ).json()
    assert [c["id"] for c in even["data"]] == ids[0::2]
    assert (
        env.client.get("/v1/chat/completions", params={"model": "nope"}, headers=env.auth()).json()[
            "data"
        ]
        == []
    )
    one = env.client.get(f"/v1/chat/completions/{ids[0]}", headers=env.auth()).json()
    assert (
        one["object"] == "chat.completion" and one["choices"][0]["message"]["content"] == "Paris."
    )
    assert one["usage"]["total_tokens"] == 7 and one["model"] == "smollm2"
    msgs = env.client.get(f"/v1/chat/completions/{ids[0]}/messages", headers=env.auth()).json()
    assert [m["content"] for m in msgs["data"]] == ["Capital of France?"]
    upd = env.client.post(
        f"/v1/chat/completions/{ids[0]}", json={"metadata": {"k": "v"}}, headers=env.auth()
    )
    assert upd.json()["metadata"] == {"k": "v"}
    gone = env.client.delete(f"/v1/chat/completions/{ids[0]}", headers=env.auth()).json()
    assert gone == {"object": "chat.completion.deleted", "id": ids[0], "deleted": True}
    assert env.client.get(f"/v1/chat/completions/{ids[0]}", headers=env.auth()).status_code == 404
    for bad in ({"limit": 0}, {"limit": "x"}, {"order": "up"}):
        assert (
            env.client.get("/v1/chat/completions", params=bad, headers=env.auth()).status_code
            == 400
        )


def test_feedback_entries_with_authors(env: Env) -> None:
    cid = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth()).json()["id"]
    first = env.client.post(
        f"/v1/chat/completions/{cid}/feedback",
        json={
            "rating": "down",
            "correction": "Paris is the capital.",
            "tags": ["tone"],
            "user": "u-9",
        },
        headers=env.auth(),
    )
    assert first.status_code == 201 and first.json()["author"] == "user:u-9"
    second = env.client.post(
        f"/v1/chat/completions/{cid}/feedback",
        json={"score": 0.9, "comment": "ok"},
        headers=env.auth(),
    )
    assert second.json()["author"].startswith("key:")
    listed = env.client.get(f"/v1/chat/completions/{cid}/feedback", headers=env.auth()).json()[
        "data"
    ]
    assert [f["rating"] for f in listed] == ["down", None] and listed[0]["tags"] == ["tone"]
    for bad in ({}, {"score": 3}, {"rating": "meh"}, {"tags": [""]}, {"rating": "up", "extra": 1}):
        resp = env.client.post(f"/v1/chat/completions/{cid}/feedback", json=bad, headers=env.auth())
        assert resp.status_code == 400, bad


def test_other_tenants_get_404_everywhere(env: Env) -> None:
    cid = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth()).json()["id"]
    other = env.auth(env.globex_key)
    assert env.client.get(f"/v1/chat/completions/{cid}", headers=other).status_code == 404
    assert env.client.get(f"/v1/chat/completions/{cid}/messages", headers=other).status_code == 404
    assert (
        env.client.post(
            f"/v1/chat/completions/{cid}", json={"metadata": {}}, headers=other
        ).status_code
        == 404
    )
    assert env.client.delete(f"/v1/chat/completions/{cid}", headers=other).status_code == 404
    assert (
        env.client.post(
            f"/v1/chat/completions/{cid}/feedback", json={"rating": "up"}, headers=other
        ).status_code
        == 404
    )
    assert env.client.get(f"/v1/chat/completions/{cid}/feedback", headers=other).status_code == 404
    assert env.client.get("/v1/chat/completions", headers=other).json()["data"] == []
    assert env.client.get("/v1/chat/completions").status_code == 401
    assert env.client.get(f"/v1/chat/completions/{cid}", headers=env.auth()).status_code == 200


def test_pii_never_reaches_the_database_files(env: Env) -> None:
    canary = "canary.person.7731@example.org"
    env.engine.reply = f"Write to {canary} or call +44 20 7946 0958."
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": f"I am {canary}, card 4111 1111 1111 1111"}],
    }
    cid = env.client.post("/v1/chat/completions", json=body, headers=env.auth()).json()["id"]
    env.client.post(
        f"/v1/chat/completions/{cid}/feedback",
        json={"rating": "up", "correction": f"mail {canary}"},
        headers=env.auth(),
    )
    with env.client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=env.auth()
    ) as r:
        b"".join(r.iter_bytes())
    (row, _) = rows(env)
    assert "[EMAIL]" in str(row["request"]) and "[CARD]" in str(row["request"])
    assert "[EMAIL]" in str(row["response"]) and "[PHONE]" in str(row["response"])
    data_dir = Path(env.client.app.state.gateway.settings.data_dir)
    raw = b"".join(p.read_bytes() for p in data_dir.glob("loopgate.db*"))
    assert canary.encode() not in raw and b"4111 1111 1111 1111" not in raw


def test_in_progress_rows_of_a_dead_process_become_incomplete(tmp_path: Path, engine) -> None:  # type: ignore[no-untyped-def]
    from litestar.testing import TestClient

    from gateway.app import create_app
    from tests.unit.conftest import make_settings

    db = tmp_path / "loopgate.db"
    with TestClient(create_app(make_settings(tmp_path), transport=engine.transport())):
        pass  # creates the schema
    con = sqlite3.connect(db)
    con.execute("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', 0)")
    con.execute(
        "INSERT INTO completions (id, tenant_id, key_id, kind, alias, backend, stored, status, "
        "created_at) VALUES ('chatcmpl-x', 't', 'k', 'chat', 'a', 'b', 1, 'in_progress', 1)"
    )
    con.commit()
    with TestClient(create_app(make_settings(tmp_path), transport=engine.transport())):
        status = sqlite3.connect(db).execute("SELECT status FROM completions").fetchone()[0]
    assert status == "incomplete"


def in_progress(tenant_id: str, completion_id: str, request: str) -> Completion:
    """A write-ahead row as the gateway begins it (alias a, replica r0)."""
    return Completion(
        id=completion_id, tenant_id=tenant_id, key_id="k", kind="chat", alias="a",
        adapter_version=None, backend="r0", stored=True, request=request, response=None,
        finish_reason=None, prompt_tokens=None, completion_tokens=None, latency_ms=None,
        ttft_ms=None, status="in_progress", error=None, end_user=None, metadata={},
        do_not_train=False, request_id="r", created_at=time.time(), completed_at=None,
    )  # fmt: skip


def test_a_long_stream_is_parsed_as_it_goes_and_stored_whole(tmp_path: Path) -> None:
    """A stream's tap keeps raw blocks only up to a batch, then parses them: a long answer is
    not held as all its raw events, and the stored text is every token, in order."""

    async def main() -> tuple[object, int]:
        store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        await store.open()
        tenant = await store.create_tenant("t-long", "long")
        writer = CaptureWriter(store)
        await writer.start()
        record = in_progress(tenant.id, "chatcmpl-long", "{}")
        await writer.begin(record)
        exchange = Exchange(record.id, time.monotonic(), True, redact=False)
        tap, most = CaptureTap(exchange, writer), 0
        for i in range(3 * _PARSE_EVERY + 5):
            tap.see(b'data: {"choices":[{"delta":{"content":"t%d "}}]}\n\n' % i)
            most = max(most, len(exchange.blocks))
        await tap.before_done()
        await writer.stop()
        row = await store.get_completion(tenant.id, record.id)
        await store.close()
        return row, most

    row, most = asyncio.run(main())
    assert most < _PARSE_EVERY
    assert row is not None and row.status == "complete"  # type: ignore[attr-defined]
    assert row.response == "".join(f"t{i} " for i in range(3 * _PARSE_EVERY + 5))  # type: ignore[attr-defined]


def test_exchange_ids_grow_with_time_and_stay_unguessable() -> None:
    # Ids that grow with time append to the completions table's key index (a random id dirtied
    # a random page of it per captured row).
    earlier = [exchange_id() for _ in range(50)]
    time.sleep(0.002)
    later = [exchange_id() for _ in range(50)]
    assert max(earlier) < min(later)
    assert len(set(earlier + later)) == 100
    assert all(len(i) == 36 and int(i, 16) >= 0 for i in earlier + later)
    assert len({i[12:] for i in earlier}) == 50  # the 96 random bits after the 48 of time


def test_wal_checkpoints_run_off_the_capture_commits(tmp_path: Path) -> None:
    """Capture batches never pay for a WAL checkpoint in their commit (the inline one is only a
    safety net, at INLINE_CHECKPOINT_PAGES); every CHECKPOINT_EVERY_BATCHES batches a passive
    checkpoint runs in a worker thread on its own connection, and every row is intact."""
    from store.sqlite import CHECKPOINT_EVERY_BATCHES, INLINE_CHECKPOINT_PAGES, SQLiteStore

    path = tmp_path / "db.sqlite"
    batches = 2 * CHECKPOINT_EVERY_BATCHES + 10

    def record(tenant_id: str, n: int, i: int) -> Completion:
        request = json.dumps({"n": n, "i": i, "text": "x" * 2000})
        return in_progress(tenant_id, f"chatcmpl-{exchange_id()}", request)

    async def main() -> tuple[int, int, int]:
        store = open_store(f"sqlite:///{path}")
        assert isinstance(store, SQLiteStore)
        await store.open()
        tenant = await store.create_tenant("t-wal", "wal")
        async with store.db.execute("PRAGMA wal_autocheckpoint") as cur:
            inline = (await cur.fetchone())[0]  # type: ignore[index]
        for n in range(batches):
            await store.capture_batch([record(tenant.id, n, i) for i in range(8)], [])
        await store.close()  # waits for a checkpoint in flight
        checkpoints = store.wal_checkpoints
        with sqlite3.connect(path) as db:
            count = db.execute("SELECT count(*) FROM completions").fetchone()[0]
        return inline, checkpoints, count

    inline, checkpoints, count = asyncio.run(main())
    assert inline == INLINE_CHECKPOINT_PAGES
    assert checkpoints >= 2  # one per CHECKPOINT_EVERY_BATCHES batches
    assert count == batches * 8
