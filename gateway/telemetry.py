"""Per-request telemetry: OpenTelemetry spans (OTLP export, off by default) and metrics.

Each completion request gets a SERVER span (the gateway's work, to the last byte) and, per try
toward the engine, a CLIENT child span, both with GenAI semantic-convention attributes. Spans
carry names, ids, versions and counts only: never keys, prompts or completions. With no
exporter endpoint there is no tracer at all, so the request path does no tracing work.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar, Token
from types import TracebackType

import msgspec
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from adapters.placement import Lease
from gateway.metrics import Metrics
from gateway.relay import Outcome, Tap, has_token
from store.errors import EngineError, LoopgateError

OPERATION = {"chat": "chat", "completion": "text_completion"}
ROUTE = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
DONE = b"data: [DONE]"
_current: ContextVar[RequestTelemetry | None] = ContextVar("loopgate_request", default=None)


def traces_url(endpoint: str) -> str:
    """An OTLP/HTTP base URL (http://collector:4318) as the traces URL; a full one is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    """The gateway's own TracerProvider (never the global one): created in start, flushed and
    shut down in stop. No endpoint: no provider, no tracer."""

    def __init__(self, endpoint: str, service_name: str, export_timeout_s: float = 10.0):
        self.url = traces_url(endpoint) if endpoint else ""
        self.service_name = service_name
        self.export_timeout_s = export_timeout_s
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None

    def start(self) -> None:
        if not self.url or self.provider is not None:
            return
        provider = TracerProvider(
            resource=Resource({"service.name": self.service_name}), shutdown_on_exit=False
        )
        exporter = OTLPSpanExporter(endpoint=self.url, timeout=self.export_timeout_s)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self.provider, self.tracer = provider, provider.get_tracer("loopgate")

    async def stop(self) -> None:
        """Export every finished span, then shut the provider down."""
        provider, self.provider, self.tracer = self.provider, None, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)


class Telemetry:
    """What the gateway records about its requests: metrics (when on) and traces (when on)."""

    def __init__(self, metrics: Metrics | None, tracing: Tracing):
        self.metrics = metrics
        self.tracing = tracing

    def request(self, kind: str, tenant: str, request_id: str) -> RequestTelemetry:
        """One request's record; use it as `with ...:` around serving the request."""
        return RequestTelemetry(self.metrics, self.tracing.tracer, kind, tenant, request_id)


def current_request() -> RequestTelemetry | None:
    """The record of the request being served in this context (None when telemetry is off)."""
    return _current.get()


def note_alias(alias: str) -> None:
    """The caller's model name resolved to this alias."""
    obs = _current.get()
    if obs is not None:
        obs.alias = alias
        if obs.span is not None:
            obs.span.set_attribute("gen_ai.request.model", alias)


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


_usage = msgspec.json.Decoder(_WithUsage)


class RequestTelemetry:
    """One request: its labels, timings and token counts, its spans, and its metrics at the end.

    The request ends once: when `with` exits for a plain response, when the relay ends for a
    stream (see `watch`), or on the first failure."""

    __slots__ = (
        "_token",
        "alias",
        "completion_tokens",
        "done",
        "ended",
        "engine_model",
        "error_type",
        "first_token",
        "kind",
        "metrics",
        "prompt_tokens",
        "request_id",
        "span",
        "started",
        "streaming",
        "tenant",
        "tracer",
        "upstream",
        "version",
    )

    def __init__(
        self, metrics: Metrics | None, tracer: Tracer | None, kind: str, tenant: str, rid: str
    ):
        self.started = time.perf_counter()
        self.metrics, self.tracer = metrics, tracer
        self.kind, self.tenant, self.request_id = kind, tenant, rid
        self.alias = self.version = self.engine_model = ""
        self.first_token: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.error_type: str | None = None
        self.streaming = self.done = self.ended = False
        self.span: Span | None = None
        self.upstream: Span | None = None
        self._token: Token[RequestTelemetry | None] | None = None

    def __enter__(self) -> RequestTelemetry:
        self._token = _current.set(self)
        if self.metrics is not None:
            self.metrics.tenant_in_flight(self.tenant).inc()
        if self.tracer is not None:
            self.span = self.tracer.start_span(
                OPERATION[self.kind],
                kind=SpanKind.SERVER,
                attributes={
                    "gen_ai.operation.name": OPERATION[self.kind],
                    "http.request.method": "POST",
                    "http.route": ROUTE[self.kind],
                    "loopgate.tenant": self.tenant,
                    "loopgate.request_id": self.request_id,
                },
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)
        if exc is not None:
            self.failed(exc)
        elif not self.streaming:  # a stream ends when its relay does
            self._end("2xx")

    def sending(self, alias: str, lease: Lease) -> None:
        """A try toward the engine begins (a failed canary try is followed by another)."""
        self.alias, self.version = alias, lease.version_id or "base"
        self.engine_model = lease.engine_name
        if self.tracer is None or self.span is None:
            return
        if self.upstream is not None:  # the earlier try failed before its first byte
            _end_span(self.upstream, "retried", None)
        op = OPERATION[self.kind]
        self.span.update_name(f"{op} {alias}")
        self.span.set_attribute("loopgate.adapter_version", self.version)
        self.upstream = self.tracer.start_span(
            f"{op} {alias}",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": op,
                "gen_ai.provider.name": "vllm",
                "gen_ai.request.model": alias,
                "gen_ai.request.stream": False,
                "loopgate.adapter_version": self.version,
                "loopgate.backend": lease.backend.name,
            },
        )

    def received(self, content: bytes) -> None:
        """A non-streaming answer came back from the engine."""
        try:
            usage = _usage.decode(content).usage
        except msgspec.DecodeError:
            usage = None
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens
            self.completion_tokens = usage.completion_tokens
        if not self.streaming and self.upstream is not None:  # the engine's part is over
            self.upstream.set_attributes(self._span_attributes())
            _end_span(self.upstream, "2xx", None)
            self.upstream = None

    def watch(self) -> Tap:
        """The tap that watches this request's stream: its first token, usage and errors; the
        request ends with the stream."""
        self.streaming = True
        if self.upstream is not None:
            self.upstream.set_attribute("gen_ai.request.stream", True)
        return _StreamWatch(self)

    def _read(self, events: bytes) -> None:
        if self.first_token is None and has_token(events):
            self.first_token = time.perf_counter()
        if events.find(b'"usage"') >= 0:  # find: `in` tries the bytes as an int first (a raise)
            for line in events.split(b"\n"):
                if line.startswith(b"data: {") and _has_usage(line):
                    self.received(line[6:])
        if events.find(b'data: {"error"') >= 0:
            self.error_type = "stream_error"
        if events.find(DONE) >= 0:
            self.done = True

    def failed(self, exc: BaseException) -> None:
        status, self.error_type, code = _outcome(exc)
        if self.span is not None and code is not None:
            self.span.set_attribute("http.response.status_code", code)
        self._end(status)

    def _end(self, status: str) -> None:
        if self.ended:
            return
        self.ended = True
        now = time.perf_counter()
        m = self.metrics
        if m is not None:
            series = m.series(self.tenant, self.alias, self.version, self.kind)
            series.request(m, status).inc()
            series.latency.observe(now - self.started)
            if self.first_token is not None:
                series.ttft.observe(self.first_token - self.started)
            if self.prompt_tokens:
                series.prompt_tokens.inc(self.prompt_tokens)
            if self.completion_tokens:
                series.completion_tokens.inc(self.completion_tokens)
            if self.error_type is not None:
                m.errors.labels(self.tenant, self.alias, self.kind, self.error_type).inc()
            m.tenant_in_flight(self.tenant).dec()
        if self.span is not None:
            self._end_spans(status)

    def _end_spans(self, status: str) -> None:
        attributes = self._span_attributes()
        if status == "2xx" and self.span is not None:
            self.span.set_attribute("http.response.status_code", 200)
        if self.upstream is not None:
            self.upstream.set_attributes(attributes)
            _end_span(self.upstream, status, self.error_type)
            self.upstream = None
        if self.span is not None:
            self.span.set_attributes(attributes)
            _end_span(self.span, status, self.error_type)

    def _span_attributes(self) -> dict[str, str | int | float]:
        attributes: dict[str, str | int | float] = {}
        if self.engine_model:
            attributes["gen_ai.response.model"] = self.engine_model
        if self.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = self.prompt_tokens
        if self.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = self.completion_tokens
        if self.first_token is not None:
            attributes["loopgate.ttft_ms"] = (self.first_token - self.started) * 1000
        return attributes


def _end_span(span: Span, status: str, error_type: str | None) -> None:
    if status == "cancelled":
        span.set_attribute("error.type", "cancelled")
    elif status != "2xx":
        span.set_attribute("error.type", error_type or status)
        span.set_status(Status(StatusCode.ERROR, error_type or status))
    span.end()


def _outcome(exc: BaseException) -> tuple[str, str | None, int | None]:
    """(status class, error type label, HTTP status) of a request that raised `exc`."""
    if isinstance(exc, EngineError):  # vLLM's own answer; its 5xx reach the client as 502
        code = exc.status_code if exc.status_code < 500 else 502
        return f"{code // 100}xx", "engine_error", code
    if isinstance(exc, LoopgateError):
        return f"{exc.status // 100}xx", exc.type, exc.status
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled", None, None  # the client went away: no error of ours
    return "5xx", "internal_error", 500


def _has_usage(line: bytes) -> bool:
    """Whether an event line carries a usage object (not absent, not null)."""
    at = line.find(b'"usage"')
    return at >= 0 and line[at + 7 : at + 16].lstrip(b": ").startswith(b"{")


class _StreamWatch(Tap):
    """A stream's telemetry (RequestTelemetry.watch)."""

    __slots__ = ("request",)

    def __init__(self, request: RequestTelemetry):
        self.request = request

    def see(self, events: bytes) -> bytes:
        self.request._read(events)
        return events

    async def end(self, outcome: Outcome) -> None:
        request = self.request
        if request.error_type is not None:
            status = "5xx"
        elif request.done or outcome != "cancelled":  # the client had everything
            status = "2xx"
        else:
            status = "cancelled"
        request._end(status)
