"""The Batch API through the official openai SDK against the in-process gateway, run by the real
evals worker code (tests/support/evals_worker) with vLLM faked at the network edge; plus the
batch store on both backends."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from evals.worker import EvalsWorker
from store import BatchRecord, BatchResult, Usage, open_store
from tests.support.evals_worker import evals_worker as running_evals_worker
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.fake_engine import chat_body
from tests.unit.sdk_client import sdk

MODEL = "smollm2"  # every tenant's default alias, on the base model
CHAT = "/v1/chat/completions"


def line(custom_id: str, text: str, model: str = MODEL, url: str = CHAT) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: list[dict[str, Any]] | list[str]) -> bytes:
    return b"".join(
        (ln if isinstance(ln, str) else json.dumps(ln)).encode() + b"\n" for ln in lines
    )


def upload(client: openai.OpenAI, data: bytes, purpose: str = "batch") -> str:
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose=purpose).id  # type: ignore[arg-type]


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def settled(client: openai.OpenAI, batch_id: str, status: str) -> openai.types.Batch:
    wait_for(lambda: client.batches.retrieve(batch_id).status == status)
    return client.batches.retrieve(batch_id)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    text = client.files.content(file_id).text
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def prompt_of(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def echo(request: httpx.Request) -> httpx.Response:
    """An engine that answers each prompt with itself upper-cased."""
    body = json.loads(request.content)
    return httpx.Response(200, json=chat_body(text=prompt_of(body).upper(), model=body["model"]))


def held_at(prompt: str, gate: threading.Event) -> Callable[[httpx.Request], Any]:
    """An engine whose answer to `prompt` waits until `gate` opens (others answer at once)."""

    def handle(request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        async def answer() -> httpx.Response:
            if prompt_of(json.loads(request.content)) == prompt:
                while not gate.is_set():
                    await asyncio.sleep(0.01)
            return echo(request)

        return answer()

    return handle


def engine_prompts(env: Env) -> list[str]:
    return [prompt_of(b) for b in env.engine.bodies()]


def test_a_batch_runs_to_completed_with_output_and_error_files(
    env: Env, evals_worker: EvalsWorker
) -> None:
    env.engine.custom = echo
    client = sdk(env)
    lines = [line("a", "one"), line("b", "two"), line("c", "three", model="no-such-model")]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.request_counts is not None
    assert batch.request_counts.total == 3 and batch.metadata == {"job": "nightly"}

    done = settled(client, batch.id, "completed")
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = read_lines(client, done.output_file_id)
    answers = {
        o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in output
    }
    assert answers == {"a": "ONE", "b": "TWO"}
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in output)
    errors = read_lines(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["c"]
    assert errors[0]["response"]["status_code"] == 404
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert client.files.retrieve(done.output_file_id or "").purpose == "batch_output"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)  # it already ended


def test_batch_lines_go_to_the_engine_at_a_lower_priority_than_live_traffic(
    env: Env, evals_worker: EvalsWorker
) -> None:
    client = sdk(env)
    file_id = upload(client, jsonl([line("a", "batched")]))
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    settled(client, batch.id, "completed")
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "live"}])

    by_prompt = {prompt_of(b): b for b in env.engine.bodies()}
    assert by_prompt["batched"]["priority"] == 10
    assert "priority" not in by_prompt["live"]
    # The batch's line was captured as the tenant's traffic, marked with the batch's id.
    stored = env.client.get("/v1/chat/completions", params={"limit": 10}, headers=env.auth())
    tagged = [c for c in stored.json()["data"] if c["metadata"].get("batch_id") == batch.id]
    assert len(tagged) == 1


def test_a_batch_of_responses_requests_answers_each_as_a_stored_response(
    env: Env, evals_worker: EvalsWorker
) -> None:
    env.engine.custom = echo
    client = sdk(env)
    lines = [
        {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": MODEL, "input": text, "instructions": "Shout.", "store": True},
        }
        for cid, text in (("x", "first"), ("y", "second"))
    ]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/responses",
        completion_window="24h",
    )
    done = settled(client, batch.id, "completed")
    assert done.request_counts is not None and done.request_counts.completed == 2
    output = {
        o["custom_id"]: o["response"]["body"] for o in read_lines(client, done.output_file_id)
    }
    texts = {cid: body["output"][0]["content"][0]["text"] for cid, body in output.items()}
    assert texts == {"x": "FIRST", "y": "SECOND"}
    assert all(body["object"] == "response" for body in output.values())
    # Each is a stored response of the tenant, continued like any other.
    assert client.responses.retrieve(output["x"]["id"]).output_text == "FIRST"
    batched = [b for b in env.engine.bodies() if b["messages"][-1]["content"] == "first"]
    assert batched[0]["priority"] == 10  # behind live traffic, as chat lines
    assert batched[0]["messages"][0] == {"role": "system", "content": "Shout."}
    bad = [{**lines[0], "body": {"model": MODEL, "input": "x", "background": True}}]
    with pytest.raises(openai.BadRequestError, match="line 1"):
        client.batches.create(
            input_file_id=upload(client, jsonl(bad)),
            endpoint="/v1/responses",
            completion_window="24h",
        )


@pytest.mark.parametrize("overrides", [{"engine_scheduling_policy": "fcfs"}])
def test_an_engine_scheduling_first_come_first_served_gets_no_priority(
    env: Env, evals_worker: EvalsWorker
) -> None:
    client = sdk(env)
    file_id = upload(client, jsonl([line("a", "batched")]))
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    settled(client, batch.id, "completed")
    assert "priority" not in env.engine.bodies()[-1]


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ([json.dumps(line("a", "x")), "{not json"], "line 2 of the input file is not a batch"),
        (
            [line("a", "x"), line("b", "y", url="/v1/completions")],
            "line 2 of the input file has url",
        ),
        ([line("a", "x"), line("a", "y")], "line 2 of the input file repeats custom_id 'a'"),
        ([{**line("a", "x"), "method": "GET"}], "line 1 of the input file has method 'GET'"),
        ([{**line("a", "x"), "body": {"model": MODEL}}], "line 1 of the input file has a body"),
        (
            [{**line("a", "x"), "body": {**line("a", "x")["body"], "stream": True}}],
            "line 1 of the input file asks for a stream",
        ),
        (
            [{**line("a", "x"), "body": {**line("a", "x")["body"], "priority": -5}}],
            "field 'priority' is not accepted",
        ),
    ],
)
def test_a_bad_input_file_is_refused_at_create_with_its_line(
    env: Env, lines: list[Any], says: str
) -> None:
    client = sdk(env)
    file_id = upload(client, jsonl(lines))
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert says in caught.value.message
    assert caught.value.body["param"] == "input_file_id"  # type: ignore[index]
    assert client.batches.list().data == []


def test_only_batch_files_of_the_tenant_itself_make_a_batch(env: Env) -> None:
    acme, globex = sdk(env), sdk(env, env.globex_key)
    training = json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    fine_tune = upload(acme, (training + "\n").encode(), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose 'fine-tune'"):
        acme.batches.create(input_file_id=fine_tune, endpoint=CHAT, completion_window="24h")
    acme_file = upload(acme, jsonl([line("a", "x")]))
    with pytest.raises(openai.NotFoundError):
        globex.batches.create(input_file_id=acme_file, endpoint=CHAT, completion_window="24h")
    resp = env.client.post(
        "/v1/batches",
        json={"input_file_id": acme_file, "endpoint": "/v1/embeddings", "completion_window": "24h"},
        headers=env.auth(),
    )
    assert resp.status_code == 400 and "$.endpoint" in resp.json()["error"]["message"]


def test_another_tenants_batch_is_not_found(env: Env) -> None:
    acme, globex = sdk(env), sdk(env, env.globex_key)
    file_id = upload(acme, jsonl([line("a", "x")]))
    batch = acme.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        globex.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        globex.files.content(file_id)
    assert globex.batches.list().data == []
    assert acme.batches.retrieve(batch.id).status == "validating"  # globex's cancel did nothing


def test_batches_list_newest_first_in_pages(env: Env) -> None:
    client = sdk(env)
    file_id = upload(client, jsonl([line("a", "x")]))
    made = [
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == [made[0]] and not rest.has_more


def test_quotas_bound_active_batches_and_lines_per_batch(env: Env) -> None:
    client = sdk(env)
    resp = env.client.put(
        "/admin/tenants/acme/quotas",
        json={"max_active_batches": 1, "max_batch_lines": 2},
        headers=ADMIN,
    )
    assert resp.status_code == 200 and resp.json()["in_force"]["max_batch_lines"] == 2
    three = upload(client, jsonl([line("a", "x"), line("b", "y"), line("c", "z")]))
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=three, endpoint=CHAT, completion_window="24h")
    assert caught.value.code == "bound_exceeded"
    one = upload(client, jsonl([line("a", "x")]))
    first = client.batches.create(input_file_id=one, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(input_file_id=one, endpoint=CHAT, completion_window="24h")
    assert refused.value.code == "quota_exceeded"
    assert refused.value.body["param"] == "max_active_batches"  # type: ignore[index]
    assert (
        env.client.get("/admin/tenants/acme/quotas", headers=ADMIN).json()["usage"][
            "active_batches"
        ]
        == 1
    )
    # globex has its own share
    other = sdk(env, env.globex_key)
    theirs = upload(other, jsonl([line("a", "x", model="globex-private")]))
    other.batches.create(input_file_id=theirs, endpoint=CHAT, completion_window="24h")
    assert client.batches.cancel(first.id).status == "cancelling"


@pytest.mark.parametrize("overrides", [{"batch_concurrency": 1}])
def test_cancel_mid_way_keeps_the_partial_output(env: Env, evals_worker: EvalsWorker) -> None:
    gate = threading.Event()
    env.engine.custom = held_at("two", gate)
    client = sdk(env)
    lines = [line(c, t) for c, t in [("a", "one"), ("b", "two"), ("c", "three"), ("d", "four")]]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint=CHAT, completion_window="24h"
    )
    wait_for(lambda: "two" in engine_prompts(env))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    gate.set()  # the line in flight finishes; no other is sent

    done = settled(client, batch.id, "cancelled")
    assert done.cancelled_at and done.request_counts is not None
    assert done.request_counts.completed == 2 and done.request_counts.total == 4
    assert [o["custom_id"] for o in read_lines(client, done.output_file_id)] == ["a", "b"]
    assert engine_prompts(env) == ["one", "two"]
    assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling again: as it is


@pytest.mark.parametrize("overrides", [{"batch_concurrency": 1}])
def test_a_stopped_worker_hands_its_batch_on_and_no_answered_line_is_sent_again(
    env: Env, tmp_path: Path
) -> None:
    gate = threading.Event()
    env.engine.custom = held_at("three", gate)
    client = sdk(env)
    prompts = ["one", "two", "three", "four"]
    lines = [line(p[0] + str(i), p) for i, p in enumerate(prompts)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)), endpoint=CHAT, completion_window="24h"
    )
    settings = make_settings(tmp_path, batch_concurrency=1)
    with running_evals_worker(env.client, settings):
        wait_for(lambda: "three" in engine_prompts(env))
    # The first worker stopped while "three" was in flight: it was not answered.
    stopped = client.batches.retrieve(batch.id)
    assert stopped.status == "in_progress" and stopped.request_counts is not None
    assert stopped.request_counts.completed == 2
    gate.set()
    with running_evals_worker(env.client, settings):
        done = settled(client, batch.id, "completed")
    output = read_lines(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == [ln["custom_id"] for ln in lines]
    seen = engine_prompts(env)
    assert seen.count("one") == 1 and seen.count("two") == 1  # answered before the stop
    assert seen.count("four") == 1


# -- the store, on both backends -------------------------------------------------------------


def a_batch(batch_id: str, tenant_id: str, at: float, total: int = 3) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        tenant_id=tenant_id,
        key_id="k",
        endpoint=CHAT,
        input_file_id="file-1",
        completion_window="24h",
        status="validating",
        metadata={"a": "b"},
        model=MODEL,
        total=total,
        created_at=at,
        expires_at=at + 86_400,
    )


def a_result(batch_id: str, n: int, status: int | None = 200) -> BatchResult:
    return BatchResult(batch_id, n, f"c{n}", status, "req", '{"ok": true}', created_at=1.0)


async def test_batch_store_claims_counts_and_finishes(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        t = await store.create_tenant("t1", "t1")
        other = await store.create_tenant("t2", "t2")
        await store.add_batch(a_batch("batch_1", t.id, 1.0))
        await store.add_batch(a_batch("batch_2", t.id, 2.0))
        assert await store.get_batch(other.id, "batch_1") is None
        assert (await store.get_batch(t.id, "batch_1")) == a_batch("batch_1", t.id, 1.0)

        claimed = await store.claim_batch("w1")
        assert claimed is not None and claimed.id == "batch_1"
        assert claimed.status == "in_progress" and claimed.worker == "w1"
        assert await store.heartbeat_batch("batch_1", "w2") is None
        assert await store.heartbeat_batch("batch_1", "w1") == "in_progress"

        assert await store.add_batch_result(a_result("batch_1", 1))
        assert not await store.add_batch_result(a_result("batch_1", 1, 500))  # first write wins
        assert await store.add_batch_result(a_result("batch_1", 3, 404))
        assert await store.batch_result_lines("batch_1") == {1, 3}
        assert [r.status_code for r in await store.batch_results("batch_1")] == [200, 404]
        got = await store.get_batch(t.id, "batch_1")
        assert got is not None and (got.completed, got.failed) == (1, 1)

        assert await store.batch_finalizing("batch_1", "w1")
        assert await store.finish_batch("batch_1", "w1", "completed", output_file_id="file-o")
        done = await store.get_batch(t.id, "batch_1")
        assert done is not None and done.status == "completed" and done.completed_at
        assert done.output_file_id == "file-o" and done.worker is None
        assert (await store.tenant_usage(t.id)).active_batches == 1  # batch_2 still queued
    finally:
        await store.close()


async def test_batch_store_cancels_releases_requeues_and_pages(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        t = await store.create_tenant("t1", "t1")
        for i in range(3):
            await store.add_batch(a_batch(f"batch_{i}", t.id, float(i + 1)))
        page, more = await store.list_batches(t.id, None, 2)
        assert [b.id for b in page] == ["batch_2", "batch_1"] and more
        page, more = await store.list_batches(t.id, "batch_1", 2)
        assert [b.id for b in page] == ["batch_0"] and not more
        assert (await store.list_batches("t2", "batch_1", 2))[0] == []

        cancelled = await store.cancel_batch(t.id, "batch_2")
        assert cancelled is not None and cancelled.status == "cancelling"
        assert await store.cancel_batch("nobody", "batch_2") is None

        first = await store.claim_batch("w1")
        assert first is not None and first.id == "batch_0"
        assert await store.release_batch("batch_0", "w1")
        again = await store.claim_batch("w2")
        assert again is not None and again.id == "batch_0" and again.attempts == 2
        assert await store.requeue_stale_batches(time.time() + 1, 5) == [("batch_0", "in_progress")]
        assert await store.requeue_stale_batches(time.time() + 1, 5) == []
        third = await store.claim_batch("w3")
        assert third is not None and third.id == "batch_0"
        failed = await store.requeue_stale_batches(time.time() + 1, 2)
        assert failed == [("batch_0", "failed")]
        gone = await store.get_batch(t.id, "batch_0")
        assert gone is not None and gone.failed_at and "went silent" in (gone.error or "")
        over = await store.add_batch(a_batch("batch_9", t.id, 9.0), store_limits(active=2))
        assert over == "active_batches"  # batch_1 (validating) and batch_2 (cancelling)
    finally:
        await store.close()


def store_limits(active: int) -> Usage:
    big = 10**9
    return Usage(
        files=big,
        file_bytes=big,
        datasets=big,
        queued_jobs=big,
        jobs_last_day=big,
        eval_runs_last_day=big,
        active_batches=active,
    )
