"""Traces exported to an in-process OTLP/HTTP collector, and JSON log lines with request ids."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.app import create_app
from gateway.logs import configure_logging, scrub
from gateway.telemetry import traces_url
from store.settings import ConfigError
from tests.unit.conftest import ADMIN, Collector, attrs, make_settings
from tests.unit.fake_engine import ENGINE_MODEL, FakeEngine

PROMPT = "Capital of France? secret-prompt-words"
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}]}


def serve(
    tmp_path: Path, engine: FakeEngine, collector: Collector, calls: list[dict[str, object]]
) -> tuple[list[httpx.Response], str]:
    """Run a gateway exporting to the collector, make `calls`, stop it (which flushes spans)."""
    settings = make_settings(
        tmp_path, otel_exporter_endpoint=collector.url, otel_service_name="loopgate-test"
    )
    responses: list[httpx.Response] = []
    with TestClient(create_app(settings, transport=engine.transport())) as client:
        assert client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN).is_success
        key = client.post("/admin/tenants/acme/keys", json={}, headers=ADMIN).json()["key"]
        for call in calls:
            extra = call.pop("headers", {})
            assert isinstance(extra, dict)
            headers = {"Authorization": f"Bearer {key}", **extra}
            responses.append(client.post("/v1/chat/completions", json=call, headers=headers))
        assert collector.spans == []  # nothing is exported before the batch is flushed
    return responses, str(key)


def test_request_and_upstream_spans_with_genai_attributes(
    tmp_path: Path, collector: Collector
) -> None:
    engine = FakeEngine(reply="Paris-completion-text")
    (plain, streamed), key = serve(
        tmp_path,
        engine,
        collector,
        [
            {**CHAT, "headers": {"x-request-id": "req-plain-1"}},
            {**CHAT, "stream": True, "headers": {"x-request-id": "req-stream-1"}},
        ],
    )
    assert plain.status_code == 200 and streamed.status_code == 200
    assert collector.resources[0]["service.name"] == "loopgate-test"
    servers = {
        attrs(s.attributes)["loopgate.request_id"]: s
        for s in collector.spans
        if s.kind == Span.SPAN_KIND_SERVER
    }
    clients = [s for s in collector.spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert set(servers) == {"req-plain-1", "req-stream-1"} and len(clients) == 2
    for client in clients:  # each upstream span is a child of one request span
        (parent,) = [s for s in servers.values() if s.span_id == client.parent_span_id]
        assert client.trace_id == parent.trace_id
        assert parent.start_time_unix_nano <= client.start_time_unix_nano
        assert client.end_time_unix_nano <= parent.end_time_unix_nano
        a = attrs(client.attributes)
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "smollm2"
        assert a["gen_ai.response.model"] == ENGINE_MODEL and a["loopgate.backend"] == "replica-0"

    plain_span = attrs(servers["req-plain-1"].attributes)
    assert plain_span == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "smollm2",
        "gen_ai.response.model": ENGINE_MODEL,
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 2,
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "loopgate.tenant": "acme",
        "loopgate.adapter_version": "base",
        "loopgate.request_id": "req-plain-1",
    }
    assert servers["req-plain-1"].name == "chat smollm2"
    stream_span = attrs(servers["req-stream-1"].attributes)
    assert (
        isinstance(stream_span["loopgate.ttft_ms"], float) and stream_span["loopgate.ttft_ms"] > 0
    )
    assert servers["req-stream-1"].status.code != Status.STATUS_CODE_ERROR
    # Never keys, prompts or completions, in any exported byte.
    exported = b"".join(collector.raw)
    for secret in (key, key.split("-", 2)[2], PROMPT, "Paris-completion-text", " capital"):
        assert secret.encode() not in exported


def test_failed_requests_end_their_spans_with_an_error(
    tmp_path: Path, collector: Collector
) -> None:
    engine = FakeEngine(mode="engine500")
    (failed,), _ = serve(tmp_path, engine, collector, [dict(CHAT)])
    assert failed.status_code == 502
    (server,) = [s for s in collector.spans if s.kind == Span.SPAN_KIND_SERVER]
    (client,) = [s for s in collector.spans if s.kind == Span.SPAN_KIND_CLIENT]
    for span in (server, client):
        assert span.status.code == Status.STATUS_CODE_ERROR
        assert attrs(span.attributes)["error.type"] == "engine_error"
    assert attrs(server.attributes)["http.response.status_code"] == 502


def test_no_endpoint_means_no_tracer(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), transport=FakeEngine().transport())
    with TestClient(app) as client:
        assert app.state.gateway.tracing.tracer is None
        assert client.get("/health").status_code == 200


def test_exporter_endpoint_is_validated() -> None:
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_ENDPOINT"):
        make_settings(Path("/tmp"), otel_exporter_endpoint="collector:4318")
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        make_settings(Path("/tmp"), log_format="xml")


def test_json_logs_carry_request_ids_and_never_keys(
    tmp_path: Path, log_output: io.StringIO
) -> None:
    configure_logging("info", "json", log_output)
    engine = FakeEngine(mode="refuse")  # the upstream client logs the transport error
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, transport=engine.transport())) as client:
        assert client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN).is_success
        key = client.post("/admin/tenants/acme/keys", json={}, headers=ADMIN).json()["key"]
        headers = {"Authorization": f"Bearer {key}", "x-request-id": "req-log-1"}
        assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 502
    logging.getLogger("loopgate.test").warning("a key %s in a message", key)

    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (transport,) = [line for line in lines if line["logger"] == "loopgate.upstream"]
    assert transport["request_id"] == "req-log-1" and transport["level"] == "WARNING"
    assert transport["time"].endswith("+00:00")
    outside = lines[-1]
    assert "request_id" not in outside and outside["logger"] == "loopgate.test"
    assert key not in log_output.getvalue() and key.split("-", 2)[2] not in log_output.getvalue()
    assert outside["message"] == f"a key lg-{key.split('-')[1]}-*** in a message"


def test_text_logs_tag_request_ids(tmp_path: Path, log_output: io.StringIO) -> None:
    configure_logging("info", "text", log_output)
    engine = FakeEngine(mode="refuse")
    with TestClient(create_app(make_settings(tmp_path), transport=engine.transport())) as client:
        client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        key = client.post("/admin/tenants/acme/keys", json={}, headers=ADMIN).json()["key"]
        headers = {"Authorization": f"Bearer {key}", "x-request-id": "req-log-2"}
        client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert " WARNING loopgate.upstream [req-log-2]: engine replica-0" in log_output.getvalue()


def test_scrub_removes_every_credential_form() -> None:
    key = "lg-0123456789abcdef-" + "A" * 43
    assert scrub(f"x {key} y") == "x lg-0123456789abcdef-*** y"
    assert scrub("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert scrub("admin lg-admin-XYZ_123") == "admin lg-admin-***"
    assert scrub("nothing here") == "nothing here"
