"""Tenant and key limits through the gateway (fake engine): admin API, RPM, TPM with settlement,
concurrency, max tokens per request, budgets, rate-limit headers, isolation between tenants, and
50 simultaneous requests against a budget for 5 (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient, TestClient

from gateway.app import create_app
from gateway.limits import budget_window, estimate_tokens, format_reset, read_usage
from gateway.protocol import decode_chat, decode_completion
from tests.support.postgres import PostgresServer
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.fake_engine import ENGINE_MODEL, ChunkStream, FakeEngine, chat_body, sse_chunks

HI = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
HI_ESTIMATE = 11  # '"hi"' is 4 characters -> 1 token, plus max_tokens 10
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)

Client = TestClient[Litestar]


@pytest.fixture(autouse=True)
def fresh_window() -> None:
    """Counters use fixed one-minute (and UTC-day) windows: when the current minute is nearly
    over, start right after the boundary so no window can turn over inside a test."""
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.05)


def put_limits(client: Client, path: str, **limits: object) -> httpx.Response:
    resp = client.put(f"/admin/tenants/{path}/limits", json=limits, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return resp


def chat(env: Env, key: str | None = None, **body: object) -> httpx.Response:
    return env.client.post("/v1/chat/completions", json={**HI, **body}, headers=env.auth(key))


def assert_limited(resp: httpx.Response, code: str) -> dict[str, object]:
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    error: dict[str, object] = resp.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == code
    return error


# -- pure parts ---------------------------------------------------------------------------------


def test_estimate_is_prompt_characters_over_four_plus_the_completion_allowance() -> None:
    assert estimate_tokens(decode_chat(json.dumps(HI).encode())) == HI_ESTIMATE
    unbounded = decode_chat(json.dumps({**HI, "max_tokens": None, "n": 2}).encode())
    assert estimate_tokens(unbounded) == 1 + 2 * 256


def test_every_prompt_and_every_sequence_is_counted() -> None:
    many = {"model": "m", "prompt": ["abcd"] * 8, "n": 2, "best_of": 3, "max_tokens": 10}
    # 8 prompts x max(n, best_of) sequences x 10 tokens, plus 57 characters of JSON prompt / 4
    assert estimate_tokens(decode_completion(json.dumps(many).encode())) == 8 * 3 * 10 + 15
    flat_ids = {"model": "m", "prompt": [1, 2, 3], "max_tokens": 10}  # one prompt of token ids
    assert estimate_tokens(decode_completion(json.dumps(flat_ids).encode())) == 10 + 2


def test_reset_durations_read_like_openai() -> None:
    assert [format_reset(s) for s in (0.2, 12, 360, 3723)] == ["1s", "12s", "6m0s", "1h2m3s"]


def test_budget_windows_are_utc_days_and_months() -> None:
    feb_10 = 1_707_566_400.0  # 2024-02-10 12:00 UTC
    assert budget_window("day", feb_10) == (19763, 19764 * 86400.0)
    month, ends = budget_window("month", feb_10)
    assert month == 2024 * 12 + 1 and ends == 1_709_251_200.0  # 2024-03-01 00:00 UTC
    assert budget_window("month", 1_735_689_599.0)[1] == 1_735_689_600.0  # Dec -> next year


def test_the_usage_chunk_is_read_and_dropped_only_when_the_client_did_not_ask() -> None:
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    events = sse_chunks(["a"], done=False)[0] + usage + b"\n\ndata: [DONE]\n\n"
    assert read_usage(events, strip=True) == (
        7,
        sse_chunks(["a"], done=False)[0] + b"data: [DONE]\n\n",
    )
    assert read_usage(events, strip=False) == (7, events)
    assert read_usage(b"data: [DONE]\n\n", strip=True) == (None, b"data: [DONE]\n\n")


# -- admin API ------------------------------------------------------------------------------------


def test_limits_are_set_and_read_per_tenant_and_per_key(env: Env) -> None:
    c = env.client
    empty = c.get("/admin/tenants/acme/limits", headers=ADMIN).json()
    assert empty["requests_per_minute"] is None and empty["key_id"] == ""
    put_limits(c, "acme", requests_per_minute=5, token_budget=1000, budget_period="day")
    got = c.get("/admin/tenants/acme/limits", headers=ADMIN).json()
    assert (got["requests_per_minute"], got["token_budget"], got["budget_period"]) == (
        5,
        1000,
        "day",
    )
    key_id = env.acme_key.split("-")[1]
    put_limits(c, f"acme/keys/{key_id}", max_concurrent=2)
    assert (
        c.get(f"/admin/tenants/acme/keys/{key_id}/limits", headers=ADMIN).json()["max_concurrent"]
        == 2
    )
    # A key of another tenant, a zero limit, an unknown field: clear 4xx, nothing stored.
    other = c.put(f"/admin/tenants/globex/keys/{key_id}/limits", json={}, headers=ADMIN)
    assert other.status_code == 404 and other.json()["error"]["param"] == "key_id"
    zero = c.put("/admin/tenants/acme/limits", json={"tokens_per_minute": 0}, headers=ADMIN)
    assert zero.status_code == 400
    typo = c.put("/admin/tenants/acme/limits", json={"rpm": 3}, headers=ADMIN)
    assert typo.status_code == 400
    assert c.put("/admin/tenants/acme/limits", json={}, headers={}).status_code in (401, 403)


# -- enforcement ----------------------------------------------------------------------------------


def test_requests_per_minute_limit_with_headers_and_other_tenants_unaffected(env: Env) -> None:
    put_limits(env.client, "acme", requests_per_minute=3)
    remaining = []
    for _ in range(3):
        ok = chat(env)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(ok.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    denied = chat(env)
    error = assert_limited(denied, "rate_limit_exceeded")
    assert "requests per minute limit 3" in str(error["message"])
    assert denied.headers["x-ratelimit-remaining-requests"] == "0"
    assert denied.headers["x-ratelimit-reset-requests"].endswith("s")
    # The noisy tenant is refused; the other one is served as if nothing happened.
    for _ in range(5):
        assert chat(env, env.globex_key).status_code == 200
    assert "x-ratelimit-limit-requests" not in chat(env, env.globex_key).headers


def test_key_limits_apply_to_that_key_only(env: Env) -> None:
    second = env.client.post("/admin/tenants/acme/keys", json={}, headers=ADMIN).json()["key"]
    put_limits(env.client, f"acme/keys/{env.acme_key.split('-')[1]}", requests_per_minute=1)
    assert chat(env).status_code == 200
    assert_limited(chat(env), "rate_limit_exceeded")
    assert chat(env, second).status_code == 200


def test_tokens_per_minute_reserve_the_estimate_and_settle_the_engines_usage(env: Env) -> None:
    put_limits(env.client, "acme", tokens_per_minute=20)
    first = chat(env)  # reserves 11, the engine reports 7 used: settled to 7
    assert first.status_code == 200
    assert first.headers["x-ratelimit-remaining-tokens"] == "9"  # at reservation time
    second = chat(env)  # 7 + 11 = 18 <= 20
    assert second.status_code == 200, second.text
    assert second.headers["x-ratelimit-remaining-tokens"] == "2"
    denied = chat(env)  # 14 + 11 > 20
    error = assert_limited(denied, "rate_limit_exceeded")
    assert "tokens per minute limit 20, used 14, requested 11" in str(error["message"])
    assert all(denied.headers[h] for h in RATE_HEADERS if h.endswith("tokens"))


def test_a_stream_is_settled_with_the_usage_chunk_the_client_never_sees(env: Env) -> None:
    def engine(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream_options"] == {"include_usage": True}
        usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
        data = b"".join(sse_chunks(["Paris"], model=body["model"], done=False))
        data += b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, stream=ChunkStream([data]), headers=headers)

    env.engine.custom = engine
    put_limits(env.client, "acme", tokens_per_minute=1000)
    with env.client.stream(
        "POST", "/v1/chat/completions", json={**HI, "stream": True}, headers=env.auth()
    ) as resp:
        data = b"".join(resp.iter_bytes())
        assert resp.headers["x-ratelimit-remaining-tokens"] == str(1000 - HI_ESTIMATE)
    assert b"usage" not in data and data.endswith(b"data: [DONE]\n\n")
    env.engine.custom = None
    after = chat(env)  # 3 used by the stream (its usage chunk), 11 reserved now
    assert after.headers["x-ratelimit-remaining-tokens"] == str(1000 - 3 - HI_ESTIMATE)


def test_max_tokens_per_request_refuses_more_and_caps_requests_that_do_not_say(env: Env) -> None:
    put_limits(env.client, "acme", max_tokens_per_request=16)
    too_many = chat(env, max_tokens=32)
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "max_tokens"
    assert "limit of 16 tokens per request" in too_many.json()["error"]["message"]
    assert chat(env, max_tokens=None).status_code == 200
    assert env.engine.bodies()[-1]["max_tokens"] == 16
    assert chat(env, env.globex_key, max_tokens=32).status_code == 200


def test_a_failed_request_counts_but_gives_its_tokens_back(env: Env) -> None:
    put_limits(env.client, "acme", tokens_per_minute=15, requests_per_minute=100)
    env.engine.mode = "engine500"
    assert chat(env).status_code == 502
    env.engine.mode = "ok"
    ok = chat(env)  # would not fit (11 + 11 > 15) had the failed request kept its tokens
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-ratelimit-remaining-requests"] == "98"


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Client, threading.Event, threading.Event, str]]:
    """A gateway whose engine holds each chat request until `release` is set."""
    engine, entered, release = FakeEngine(), threading.Event(), threading.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            entered.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
        return engine.handle(request)

    app = create_app(make_settings(tmp_path), transport=httpx.MockTransport(handler))
    with TestClient(app) as client:
        client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        key = client.post("/admin/tenants/acme/keys", headers=ADMIN).json()["key"]
        yield client, entered, release, key
        release.set()


def test_concurrent_requests_beyond_the_limit_are_refused(
    gated: tuple[Client, threading.Event, threading.Event, str],
) -> None:
    client, entered, release, key = gated
    auth = {"Authorization": f"Bearer {key}"}
    put_limits(client, "acme", max_concurrent=1, requests_per_minute=1000)
    results: list[int] = []
    first = threading.Thread(
        target=lambda: results.append(
            client.post("/v1/chat/completions", json=HI, headers=auth).status_code
        )
    )
    first.start()
    assert entered.wait(30)
    second = client.post("/v1/chat/completions", json=HI, headers=auth)
    error = assert_limited(second, "rate_limit_exceeded")
    assert "concurrent" in str(error["message"])
    assert second.headers["x-ratelimit-limit-requests"] == "1000"
    release.set()
    first.join(30)
    assert results == [200]
    assert client.post("/v1/chat/completions", json=HI, headers=auth).status_code == 200


# -- 50 simultaneous requests against a budget for 5 -------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = await server.create_database()
    yield url
    await server.drop_database(url)


async def test_50_simultaneous_requests_against_a_budget_for_5_admit_exactly_5(
    tmp_path: Path, store_url: str
) -> None:
    engine = FakeEngine()
    # The engine uses exactly the estimate, so settlement frees nothing for the others.
    usage = {"prompt_tokens": 1, "completion_tokens": 10, "total_tokens": HI_ESTIMATE}
    engine.custom = lambda _: httpx.Response(
        200, json={**chat_body(model=ENGINE_MODEL), "usage": usage}
    )
    settings = make_settings(tmp_path, database_url=store_url)
    async with AsyncTestClient(create_app(settings, transport=engine.transport())) as client:
        await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        await client.post("/admin/tenants", json={"name": "globex"}, headers=ADMIN)
        keys = [
            (await client.post(f"/admin/tenants/{t}/keys", headers=ADMIN)).json()["key"]
            for t in ("acme", "globex")
        ]
        limits = {"token_budget": 5 * HI_ESTIMATE, "budget_period": "day"}
        resp = await client.put("/admin/tenants/acme/limits", json=limits, headers=ADMIN)
        assert resp.status_code == 200
        started = time.time()
        results = await asyncio.gather(
            *(
                client.post(
                    "/v1/chat/completions", json=HI, headers={"Authorization": f"Bearer {keys[0]}"}
                )
                for _ in range(50)
            )
        )
        assert budget_window("day", started) == budget_window("day", time.time())
        assert sorted(r.status_code for r in results) == [200] * 5 + [429] * 45
        for denied in (r for r in results if r.status_code == 429):
            assert_limited(denied, "insufficient_quota")
            assert denied.headers["x-ratelimit-remaining-tokens"] == "0"
            assert denied.headers["x-ratelimit-limit-tokens"] == str(5 * HI_ESTIMATE)
        other = await client.post(
            "/v1/chat/completions", json=HI, headers={"Authorization": f"Bearer {keys[1]}"}
        )
        assert other.status_code == 200
    assert len(engine.requests) == 6
