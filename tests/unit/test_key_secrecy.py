"""Canary credentials (a real tenant key, a near miss of it, the admin key) used on requests
that succeed and fail in every way the fake engine allows; afterwards none of them, nor their
secret parts, is found in a response (body or header), a JSON log line, an exported span, the
store's files (database and WAL, read as bytes once the app stopped) or an engine request's
headers."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest

from gateway.logs import configure_logging
from tests.unit.conftest import ADMIN, Collector, Env

ADMIN_KEY = ADMIN["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def overrides(collector: Collector, log_output: io.StringIO) -> dict[str, object]:
    """Settings for `env`: traces exported to the collector, every log line as JSON (debug)."""
    configure_logging("debug", "json", log_output)  # before the app starts: its whole life
    return {"otel_exporter_endpoint": collector.url, "otel_service_name": "canary"}


def near_miss(key: str) -> str:
    last = "A" if key[-1] != "A" else "B"
    return key[:-1] + last


def secrets_of(*keys: str) -> list[bytes]:
    """Each key, and the secret part of tenant keys (what follows `lg-<key id>-`)."""
    out = [k.encode() for k in keys]
    out += [k.split("-", 2)[2].encode() for k in keys if k.startswith("lg-")]
    return out


def exercise(env: Env, key: str, wrong: str) -> list[httpx.Response]:
    """Every kind of answer, with the canary credentials on the requests."""
    c, auth = env.client, {"Authorization": f"Bearer {key}"}
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Capital?"}]}
    out = [
        c.get("/v1/models", headers=auth),
        c.post("/v1/chat/completions", json={**chat, "store": True}, headers=auth),
        c.post("/v1/chat/completions", json={**chat, "stream": True}, headers=auth),
        c.post("/v1/completions", json={"model": "smollm2", "prompt": "Hi"}, headers=auth),
        c.post("/v1/chat/completions", content=b"{not json", headers=auth),
        c.post("/v1/chat/completions", json={**chat, "model": "nope"}, headers=auth),
        c.post("/v1/chat/completions", json={**chat, "max_tokens": -1}, headers=auth),
        c.get("/v1/chat/completions/chatcmpl-missing", headers=auth),
        c.get("/v1/files/file-missing", headers=auth),
        c.post("/v1/fine_tuning/jobs", json={"model": "smollm2"}, headers=auth),
        # The key pasted into captured text: redacted before it is stored.
        c.post(
            "/v1/chat/completions",
            json={**chat, "store": True, "messages": [{"role": "user", "content": f"key {key}"}]},
            headers=auth,
        ),
        # The key where a request id goes (a client mixing up headers).
        c.post("/v1/chat/completions", json=chat, headers={**auth, "x-request-id": key}),
    ]
    stored = c.get("/v1/chat/completions", headers=auth).json()["data"][0]["id"]
    feedback = {"rating": "down", "comment": f"leaked {key}", "correction": key}
    out.append(c.post(f"/v1/chat/completions/{stored}/feedback", json=feedback, headers=auth))
    for mode in ("engine400", "engine500", "refuse", "timeout", "break", "truncate"):
        for body in (chat, {**chat, "stream": True}):
            env.engine.mode = mode
            out.append(c.post("/v1/chat/completions", json=body, headers=auth))
            env.engine.mode = "ok"  # one success after each failure: no circuit opens
            out.append(c.post("/v1/chat/completions", json=chat, headers=auth))
    for bad in (wrong, f"{key}x", key[:-8], key.upper()):
        out.append(c.post("/v1/chat/completions", json=chat, headers={"Authorization": bad}))
        out.append(c.post("/v1/chat/completions", json=chat, headers=env.auth(bad)))
        out.append(c.get("/v1/models", headers={"Authorization": f"Basic {bad}"}))
    out += [
        c.get("/admin/tenants", headers=auth),  # a tenant key on the admin API: 403
        c.get("/v1/models", headers=ADMIN),  # the admin key on a tenant route: 401
        c.get("/admin/tenants/nope", headers=ADMIN),
        c.post("/admin/tenants", json={"name": "Not Valid"}, headers=ADMIN),
        c.get("/admin/tenants", headers={"Authorization": f"Bearer {ADMIN_KEY}x"}),
        c.get("/admin/tenants", headers={"Authorization": f"Bearer {ADMIN_KEY[:-1]}"}),
        c.get("/metrics"),
    ]
    return out


def test_canary_credentials_are_nowhere(
    env: Env, tmp_path: Path, collector: Collector, log_output: io.StringIO
) -> None:
    key, wrong = env.acme_key, near_miss(env.acme_key)
    responses = exercise(env, key, wrong)
    assert {r.status_code for r in responses} >= {200, 400, 401, 403, 404, 502, 504}
    serving = data_files(tmp_path)  # the WAL holds the latest pages while the store is open
    env.stop()  # spans exported, capture flushed, store checkpointed and closed
    stopped = data_files(tmp_path)

    logs = log_output.getvalue().encode()
    spans = b"".join(collector.raw)
    assert logs and collector.spans  # the places searched hold what they should
    assert any(p.name.endswith("-wal") for p in serving), sorted(serving)
    files = [*serving.items(), *stopped.items()]
    assert b"Capital?" in b"".join(data for _, data in files)  # stored prompts are readable
    engine_headers = b"".join(
        b"".join(k + b": " + v for k, v in r.headers.raw) for r in env.engine.requests
    )
    for secret in secrets_of(key, wrong, ADMIN_KEY):
        for r in responses:
            assert secret not in r.content, (r.request.url, r.text[:300])
            assert all(secret not in v.encode() for v in r.headers.values()), r.headers
        assert secret not in logs
        assert secret not in spans
        assert secret not in engine_headers
        for path, data in files:
            assert secret not in data, path
    print(
        f"\n{len(responses)} responses, {len(logs)} log bytes, {len(collector.spans)} spans, "
        f"data files {sorted(p.name for p in serving)} while serving, "
        f"{sorted(p.name for p in stopped)} after: no canary found"
    )


def data_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
