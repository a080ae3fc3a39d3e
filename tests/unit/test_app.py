"""The gateway's HTTP behaviour against a fake engine at the network edge."""

from __future__ import annotations

import json

import httpx
import pytest

from store.settings import Settings
from tests.unit.conftest import ADMIN, Env
from tests.unit.fake_engine import ENGINE_MODEL

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Capital of France?"}]}


def assert_openai_error(resp: httpx.Response, status: int, kind: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == kind
    assert "Traceback" not in resp.text
    return dict(body["error"])


def test_chat_is_forwarded_with_engine_name_and_answered_with_alias(env: Env) -> None:
    resp = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    assert resp.status_code == 200
    assert resp.json()["model"] == "smollm2"
    assert resp.json()["choices"][0]["message"]["content"] == "Paris."
    (sent,) = env.engine.bodies()
    assert sent["model"] == ENGINE_MODEL
    assert env.engine.requests[0].headers.get("authorization") is None  # external engine had no key


def test_only_allowlisted_fields_reach_the_engine(env: Env) -> None:
    body = {
        **CHAT,
        "temperature": 0,
        "max_tokens": 5,
        "some_vendor_extra": {"x": 1},
        "store": True,
        "metadata": {"topic": "geo"},
        "top_k": 3,
        "user": "u1",
    }
    assert env.client.post("/v1/chat/completions", json=body, headers=env.auth()).status_code == 200
    (sent,) = env.engine.bodies()
    assert sent == {
        "model": ENGINE_MODEL,
        "messages": CHAT["messages"],
        "stream": False,
        "temperature": 0,
        "max_tokens": 5,
        "top_k": 3,
        "user": "u1",
        "cache_salt": sent["cache_salt"],  # the tenant's, checked below
    }


def test_every_engine_request_carries_its_tenant_s_own_cache_salt(env: Env) -> None:
    for key in (env.acme_key, env.acme_key, env.globex_key):
        resp = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth(key))
        assert resp.status_code == 200, resp.text
    first, again, other = (str(b["cache_salt"]) for b in env.engine.bodies())
    assert first == again != other
    assert len(first) == 64 and int(first, 16) >= 0  # HMAC-SHA256, hex


@pytest.mark.parametrize(
    "field", ["chat_template", "chat_template_kwargs", "kv_transfer_params", "request_id"]
)
def test_engine_internal_fields_are_refused(env: Env, field: str) -> None:
    resp = env.client.post("/v1/chat/completions", json={**CHAT, field: "x"}, headers=env.auth())
    err = assert_openai_error(resp, 400, "invalid_request_error")
    assert err["param"] == field
    assert env.engine.bodies() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (json.dumps({"model": "smollm2", "messages": []}).encode(), "messages"),
        (json.dumps({**CHAT, "max_tokens": -1}).encode(), "max_tokens"),
        (json.dumps({**CHAT, "temperature": 9}).encode(), "temperature"),
        (json.dumps({"messages": CHAT["messages"]}).encode(), None),
        (
            json.dumps({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            "messages[0].role",
        ),
    ],
)
def test_bad_requests_are_400_with_openai_body(env: Env, body: bytes, param: str | None) -> None:
    headers = {**env.auth(), "content-type": "application/json"}
    resp = env.client.post("/v1/chat/completions", content=body, headers=headers)
    err = assert_openai_error(resp, 400, "invalid_request_error")
    if param:
        assert err["param"] == param
    assert env.engine.bodies() == []


def test_missing_wrong_and_revoked_keys_are_401(env: Env) -> None:
    assert_openai_error(
        env.client.post("/v1/chat/completions", json=CHAT), 401, "authentication_error"
    )
    wrong = env.acme_key[:-4] + "AAAA"
    assert_openai_error(
        env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth(wrong)),
        401,
        "authentication_error",
    )
    assert_openai_error(
        env.client.get("/v1/models", headers=env.auth("garbage")), 401, "authentication_error"
    )
    key_id = env.acme_key.split("-")[1]
    assert env.client.delete(f"/admin/keys/{key_id}", headers=ADMIN).status_code == 200
    resp = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    assert_openai_error(resp, 401, "authentication_error")
    assert env.acme_key not in resp.text


def test_models_list_is_per_tenant(env: Env) -> None:
    acme = env.client.get("/v1/models", headers=env.auth()).json()
    globex = env.client.get("/v1/models", headers=env.auth(env.globex_key)).json()
    assert [m["id"] for m in acme["data"]] == ["smollm2"]
    assert [m["id"] for m in globex["data"]] == ["globex-private", "smollm2"]
    assert acme["data"][0]["owned_by"] == "acme"
    assert env.client.get("/v1/models/smollm2", headers=env.auth()).json()["id"] == "smollm2"


def test_other_tenants_alias_and_unknown_models_are_404(env: Env) -> None:
    for model in ("globex-private", "nope", ENGINE_MODEL):
        resp = env.client.post(
            "/v1/chat/completions", json={**CHAT, "model": model}, headers=env.auth()
        )
        assert_openai_error(resp, 404, "not_found_error")
        assert_openai_error(
            env.client.get(f"/v1/models/{model}", headers=env.auth()), 404, "not_found_error"
        )
    assert env.engine.bodies() == []


def test_streaming_relays_whole_events_and_renames_model(env: Env) -> None:
    with env.client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=env.auth()
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        data = b"".join(resp.iter_bytes())
    events = [e for e in data.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {"smollm2"}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "The capital is Paris."


@pytest.mark.parametrize("mode", ["break", "truncate"])
def test_stream_failure_after_first_byte_ends_with_one_error_event(env: Env, mode: str) -> None:
    env.engine.mode = mode
    with env.client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=env.auth()
    ) as resp:
        assert resp.status_code == 200
        data = b"".join(resp.iter_bytes())
    events = [e for e in data.split(b"\n\n") if e]
    assert b"[DONE]" not in data
    last = json.loads(events[-1][len(b"data: ") :])
    assert last["error"]["type"] == "upstream_error"
    assert sum(b'"error"' in e for e in events) == 1


@pytest.mark.parametrize(
    ("mode", "status", "kind"),
    [
        ("refuse", 502, "upstream_error"),
        ("timeout", 504, "timeout_error"),
        ("engine500", 502, "upstream_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_before_first_byte(
    env: Env, mode: str, status: int, kind: str, stream: bool
) -> None:
    env.engine.mode = mode
    resp = env.client.post(
        "/v1/chat/completions", json={**CHAT, "stream": stream}, headers=env.auth()
    )
    assert_openai_error(resp, status, kind)


def test_engine_4xx_is_passed_through_once(env: Env) -> None:
    env.engine.mode = "engine400"
    resp = env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    assert resp.status_code == 400
    assert resp.json() == {
        "error": {
            "message": "engine says no",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }


def test_legacy_completions(env: Env) -> None:
    body = {"model": "smollm2", "prompt": "Once upon", "max_tokens": 3}
    assert env.client.post("/v1/completions", json=body, headers=env.auth()).status_code == 200
    assert env.engine.requests[-1].url.path == "/v1/completions"
    assert env.engine.bodies()[-1]["prompt"] == "Once upon"
    resp = env.client.post("/v1/completions", json={**body, "prompt": ""}, headers=env.auth())
    assert_openai_error(resp, 400, "invalid_request_error")


def test_every_response_has_a_request_id(env: Env) -> None:
    responses = [
        env.client.get("/health"),
        env.client.get("/no/such/route"),
        env.client.post("/v1/chat/completions", json=CHAT),
        env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth()),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    echoed = env.client.get("/health", headers={"x-request-id": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    assert (
        env.client.get("/health", headers={"x-request-id": "bad id\x01"}).headers["x-request-id"]
        != "bad id\x01"
    )


def test_unknown_route_and_wrong_method_are_openai_shaped(env: Env) -> None:
    assert_openai_error(env.client.get("/v1/nothing"), 404, "not_found_error")
    wrong_method = env.client.put("/v1/chat/completions", headers=env.auth())
    assert_openai_error(wrong_method, 405, "invalid_request_error")
    allowed = {m.strip() for m in wrong_method.headers["allow"].split(",")}
    assert allowed == {"GET", "POST", "OPTIONS"}  # HTTP requires Allow on a 405


@pytest.mark.parametrize("overrides", [{"max_body_bytes": 2048}])
def test_oversized_body_is_413(env: Env) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    resp = env.client.post("/v1/chat/completions", json=big, headers=env.auth())
    assert_openai_error(resp, 413, "invalid_request_error")
    assert env.engine.bodies() == []


def test_ready_follows_engine_health(env: Env) -> None:
    assert env.client.get("/ready").status_code == 200
    assert env.client.get("/health").json() == {"status": "ok"}


def test_admin_api_needs_the_admin_credential(env: Env) -> None:
    assert_openai_error(env.client.get("/admin/tenants"), 401, "authentication_error")
    assert_openai_error(
        env.client.get("/admin/tenants", headers=env.auth()), 403, "permission_error"
    )
    tenants = env.client.get("/admin/tenants", headers=ADMIN).json()["data"]
    assert [t["name"] for t in tenants] == ["acme", "globex"]


def test_admin_key_listing_never_shows_secrets(env: Env) -> None:
    resp = env.client.get("/admin/tenants/acme/keys", headers=ADMIN)
    assert resp.status_code == 200
    assert env.acme_key not in resp.text
    assert "hash" not in resp.text
    (key,) = resp.json()["data"]
    assert key["id"] == env.acme_key.split("-")[1]


def test_admin_validation_errors(env: Env) -> None:
    assert_openai_error(
        env.client.post("/admin/tenants", json={"name": "Bad Name!"}, headers=ADMIN),
        400,
        "invalid_request_error",
    )
    assert_openai_error(
        env.client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN),
        409,
        "conflict_error",
    )
    assert_openai_error(
        env.client.post("/admin/tenants", content=b"[", headers=ADMIN), 400, "invalid_request_error"
    )
    assert_openai_error(
        env.client.post("/admin/tenants/nobody/keys", headers=ADMIN), 404, "not_found_error"
    )
    resp = env.client.put(
        "/admin/tenants/acme/aliases/x",
        json={"target": {"kind": "adapter", "adapter_version": "v1"}},
        headers=ADMIN,
    )
    assert_openai_error(resp, 400, "invalid_request_error")
    assert (
        env.client.delete("/admin/tenants/acme/aliases/smollm2", headers=ADMIN).status_code == 204
    )
    assert_openai_error(
        env.client.delete("/admin/tenants/acme/aliases/smollm2", headers=ADMIN),
        404,
        "not_found_error",
    )


def test_a_prompt_the_engine_s_context_cannot_hold_is_refused_before_the_engine(env: Env) -> None:
    context = Settings().engine_max_model_len  # the unit env runs on the default
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (context * 16 + 1)}]}
    resp = env.client.post("/v1/chat/completions", json=huge, headers=env.auth())
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert env.engine.bodies() == []  # the engine never saw it
    prompts = {"model": "smollm2", "prompt": ["y" * (context * 16 - 10)] * 2, "max_tokens": 1}
    # the bound is per prompt: two prompts each within it pass the gateway
    assert env.client.post("/v1/completions", json=prompts, headers=env.auth()).status_code == 200
