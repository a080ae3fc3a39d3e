"""/metrics: parsed with Prometheus's own text parser, moving as traffic flows."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import ScrapeAuth, is_loopback
from store.errors import PermissionDenied
from store.settings import Settings
from tests.unit.conftest import ADMIN, Env
from tests.unit.fake_engine import ChunkStream, sse_chunks
from tests.unit.test_adapters_api import promote, upload
from tests.unit.test_finetuning_api import GOOD
from tests.unit.test_finetuning_api import upload as upload_file

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Capital of France?"}]}
BASE = {"tenant": "acme", "alias": "smollm2", "version": "base"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(env: Env, headers: dict[str, str] | None = None) -> tuple[str, Samples]:
    resp = env.client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return resp.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(env: Env, stream: bool = False, **extra: object) -> httpx.Response:
    body = {**CHAT, "stream": stream, **extra}
    return env.client.post("/v1/chat/completions", json=body, headers=env.auth())


def test_counters_and_histograms_move_with_traffic(env: Env) -> None:
    _, before = scrape(env)
    assert value(before, "loopgate_requests_total", **BASE, kind="chat", status="2xx") == 0
    assert chat(env).status_code == 200
    assert chat(env, stream=True).status_code == 200
    text, after = scrape(env)

    assert value(after, "loopgate_requests_total", **BASE, kind="chat", status="2xx") == 2
    assert value(after, "loopgate_request_duration_seconds_count", **BASE, kind="chat") == 2
    assert value(after, "loopgate_request_duration_seconds_sum", **BASE, kind="chat") > 0
    # Only the stream has a first token; the fake's first chunk already carries text.
    assert value(after, "loopgate_time_to_first_token_seconds_count", **BASE) == 1
    assert value(after, "loopgate_time_to_first_token_seconds_bucket", **BASE, le="+Inf") == 1
    # Usage of the non-streaming answer (5 prompt, 2 completion); the fake stream has none.
    assert value(after, "loopgate_tokens_total", **BASE, type="prompt") == 5
    assert value(after, "loopgate_tokens_total", **BASE, type="completion") == 2
    assert value(after, "loopgate_requests_in_flight", tenant="acme") == 0
    assert value(after, "loopgate_replica_up", backend="replica-0") == 1
    assert value(after, "loopgate_capture_queue_depth") == 0
    assert env.acme_key not in text and env.acme_key.split("-")[1] not in text

    assert chat(env).status_code == 200
    _, again = scrape(env)
    assert value(again, "loopgate_requests_total", **BASE, kind="chat", status="2xx") == 3
    assert value(again, "loopgate_tokens_total", **BASE, type="prompt") == 10


def test_stream_usage_is_counted_when_the_engine_reports_it(env: Env) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    final = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "x",
        "choices": [],
        "usage": usage,
    }

    def with_usage(request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        chunks = sse_chunks(["Hi", "!"], model=model, done=False)
        chunks += [b"data: " + json.dumps(final).encode() + b"\n\n", b"data: [DONE]\n\n"]
        return httpx.Response(200, stream=ChunkStream(chunks))

    env.engine.custom = with_usage
    resp = chat(env, stream=True, stream_options={"include_usage": True})
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    _, samples = scrape(env)
    assert value(samples, "loopgate_tokens_total", **BASE, type="prompt") == 7
    assert value(samples, "loopgate_tokens_total", **BASE, type="completion") == 3


def test_failures_are_counted_by_status_class_and_error_type(env: Env) -> None:
    env.engine.mode = "engine500"
    assert chat(env).status_code == 502
    env.engine.mode = "break"
    assert "error" in chat(env, stream=True).text  # failed after its first byte
    env.engine.mode = "ok"
    unknown = env.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "no-such-model-xyz"}, headers=env.auth()
    )
    assert unknown.status_code == 404
    text, samples = scrape(env)
    assert value(samples, "loopgate_requests_total", **BASE, kind="chat", status="5xx") == 2
    errors = "loopgate_request_errors_total"
    common = {"tenant": "acme", "alias": "smollm2", "kind": "chat"}
    assert value(samples, errors, **common, type="engine_error") == 1
    assert value(samples, errors, **common, type="stream_error") == 1
    # A model name the caller made up never becomes a label: unresolved requests have alias "".
    assert "no-such-model-xyz" not in text
    unresolved = {"tenant": "acme", "alias": "", "kind": "chat"}
    assert value(samples, errors, **unresolved, type="not_found_error") == 1
    assert value(samples, "loopgate_requests_in_flight", tenant="acme") == 0


def test_swaps_and_training_jobs_are_exported(env: Env, tmp_path: Path) -> None:
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, str(v1["id"]))
    promote(env, str(v2["id"]))
    back = env.client.post(
        "/admin/tenants/acme/aliases/support/rollback", json={"reason": "bad"}, headers=ADMIN
    )
    assert back.status_code == 200
    file_id = upload_file(env, GOOD)["id"]
    job = {"model": "smollm2", "training_file": file_id, "suffix": "style"}
    assert env.client.post("/v1/fine_tuning/jobs", json=job, headers=env.auth()).status_code == 200
    resp = env.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "support"}, headers=env.auth()
    )
    assert resp.status_code == 200

    _, samples = scrape(env)
    swaps = "loopgate_adapter_swaps_total"
    assert value(samples, swaps, tenant="acme", alias="support", action="promote") == 2
    assert value(samples, swaps, tenant="acme", alias="support", action="rollback") == 1
    assert value(samples, "loopgate_training_jobs", status="queued") == 1
    assert value(samples, "loopgate_training_jobs", status="succeeded") == 0
    served = {"tenant": "acme", "alias": "support", "version": str(v1["id"])}
    assert value(samples, "loopgate_requests_total", **served, kind="chat", status="2xx") == 1


@pytest.mark.parametrize("overrides", [{"metrics_require_admin": True}])
def test_metrics_can_require_the_admin_key(env: Env) -> None:
    assert env.client.get("/metrics").status_code == 401
    assert env.client.get("/metrics", headers=env.auth()).status_code == 403  # a tenant key
    scrape(env, headers=ADMIN)


@pytest.mark.parametrize("overrides", [{"host": "0.0.0.0"}])
def test_metrics_off_loopback_want_the_admin_key(env: Env) -> None:
    resp = env.client.get("/metrics")
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
    assert "loopgate_" not in resp.text
    assert env.client.get("/metrics", headers=env.auth()).status_code == 403  # a tenant key
    scrape(env, headers=ADMIN)


@pytest.mark.parametrize("overrides", [{"host": "0.0.0.0", "metrics_key": "scrape-secret"}])
def test_a_scrape_key_reads_metrics_and_nothing_else(env: Env) -> None:
    scrape_only = {"Authorization": "Bearer scrape-secret"}
    assert env.client.get("/metrics").status_code == 401
    assert env.client.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 403
    scrape(env, headers=scrape_only)
    scrape(env, headers=ADMIN)
    assert env.client.get("/admin/tenants", headers=scrape_only).status_code == 403


@pytest.mark.parametrize("overrides", [{"host": "127.0.0.1"}])
def test_metrics_on_loopback_stay_open(env: Env) -> None:
    scrape(env)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("gateway.internal", False),
    ],
)
def test_which_listen_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_metrics_off_loopback_with_no_credential_configured_say_what_to_set() -> None:
    with pytest.raises(PermissionDenied, match="LOOPGATE_METRICS_KEY"):
        ScrapeAuth(Settings(host="0.0.0.0")).check("Bearer anything")


@pytest.mark.parametrize("overrides", [{"metrics_enabled": False}])
def test_metrics_can_be_switched_off(env: Env) -> None:
    assert chat(env).status_code == 200
    assert env.client.get("/metrics").status_code == 404
