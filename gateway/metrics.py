"""Prometheus metrics: one registry per app, what it measures, and the `/metrics` route.

Labels stay bounded: tenant *names*, alias names, adapter version ids, kinds, status classes and
error types — never keys, request ids or anything a client can make up (an unresolved model
name is labelled "", not with what the client sent).

The route is open only on a gateway that listens on a loopback address: anywhere else (0.0.0.0,
a LAN address, a host name) it wants `Authorization: Bearer` with the admin key or the separate
scrape credential LOOPGATE_METRICS_KEY, since tenant names, aliases and traffic volumes are not
for everyone on the network. LOOPGATE_METRICS_REQUIRE_ADMIN (or setting a metrics key) asks for
the credential on loopback too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from adapters.registry import Registry
from adapters.swap import Swapper, SwapReport
from gateway import apidoc
from gateway.access import Injected
from gateway.canary import Canaries
from gateway.capture import CaptureWriter
from gateway.tenancy import bearer_token
from replicas.breaker import BreakerState
from replicas.pool import Backend, BackendPool
from store import Canary, JobStage, Store, Tenant
from store.errors import AuthenticationFailed, PermissionDenied
from store.settings import Settings

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
_JOB_STAGES: tuple[JobStage, ...] = ("queued", "training", "registering", "done")
_SERIES = ("tenant", "alias", "version")
_CIRCUIT = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 0.5, BreakerState.OPEN: 1.0}


class Series:
    """The labelled children of one (tenant, alias, version, kind), bound once and reused."""

    __slots__ = ("_requests", "completion_tokens", "labels", "latency", "prompt_tokens", "ttft")

    def __init__(self, m: Metrics, tenant: str, alias: str, version: str, kind: str):
        self.labels = (tenant, alias, version, kind)
        self._requests: dict[str, Counter] = {}
        self.latency = m.latency.labels(tenant, alias, version, kind)
        self.ttft = m.ttft.labels(tenant, alias, version)
        self.prompt_tokens = m.tokens.labels(tenant, alias, version, "prompt")
        self.completion_tokens = m.tokens.labels(tenant, alias, version, "completion")

    def request(self, m: Metrics, status: str) -> Counter:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = m.requests.labels(*self.labels, status)
        return child


class Metrics:
    """Every metric the gateway exports, in its own registry (no state shared between apps)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        GCCollector(registry=r)  # python_gc_*: collections by generation (see gateway.heap)
        self.requests = Counter(
            "loopgate_requests",
            "Completion requests answered, by outcome (status: 2xx, 4xx, 5xx or cancelled).",
            [*_SERIES, "kind", "status"],
            registry=r,
        )
        self.errors = Counter(
            "loopgate_request_errors",
            "Failed completion requests by OpenAI error type (stream_error: failed mid-stream).",
            ["tenant", "alias", "kind", "type"],
            registry=r,
        )
        self.latency = Histogram(
            "loopgate_request_duration_seconds",
            "Time from the gateway accepting the request to its last byte (streams: to [DONE]).",
            [*_SERIES, "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "loopgate_time_to_first_token_seconds",
            "Streams: time from the gateway accepting the request to the first generated token.",
            list(_SERIES),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "loopgate_tokens",
            "Tokens as the engine counted them (type: prompt or completion).",
            [*_SERIES, "type"],
            registry=r,
        )
        self.in_flight = Gauge(
            "loopgate_requests_in_flight",
            "Completion requests being served.",
            ["tenant"],
            registry=r,
        )
        self.replica_up = Gauge(
            "loopgate_replica_up",
            "1 when the engine replica is ready, else 0.",
            ["backend"],
            registry=r,
        )
        self.replica_in_flight = Gauge(
            "loopgate_replica_requests_in_flight",
            "Requests in flight on each engine replica.",
            ["backend"],
            registry=r,
        )
        self.replica_circuit = Gauge(
            "loopgate_replica_circuit_open",
            "The replica's circuit breaker: 0 closed, 0.5 half-open (probing), 1 open.",
            ["backend"],
            registry=r,
        )
        self.swaps = Counter(
            "loopgate_adapter_swaps",
            "Completed alias swaps by action (promote or rollback).",
            ["tenant", "alias", "action"],
            registry=r,
        )
        self.canary_rollbacks = Counter(
            "loopgate_canary_rollbacks",
            "Canaries rolled back by the monitor (a threshold was crossed).",
            ["tenant", "alias"],
            registry=r,
        )
        self.capture_depth = Gauge(
            "loopgate_capture_queue_depth", "Capture rows waiting for their commit.", registry=r
        )
        self.training_jobs = Gauge(
            "loopgate_training_jobs",
            "Fine-tuning jobs in the store by status.",
            ["status"],
            registry=r,
        )
        self._series: dict[tuple[str, str, str, str], Series] = {}
        self._in_flight: dict[str, Gauge] = {}

    def series(self, tenant: str, alias: str, version: str, kind: str) -> Series:
        key = (tenant, alias, version, kind)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = Series(self, tenant, alias, version, kind)
        return found

    def tenant_in_flight(self, tenant: str) -> Gauge:
        child = self._in_flight.get(tenant)
        if child is None:
            child = self._in_flight[tenant] = self.in_flight.labels(tenant)
        return child

    async def refresh(self, backends: Sequence[Backend], capture_depth: int, store: Store) -> None:
        """Bring the scraped-state gauges up to date (called by each scrape)."""
        for backend in backends:
            self.replica_up.labels(backend.name).set(1 if backend.ready else 0)
            self.replica_in_flight.labels(backend.name).set(backend.inflight)
            self.replica_circuit.labels(backend.name).set(_CIRCUIT[backend.breaker.state])
        self.capture_depth.set(capture_depth)
        counts: Tally[str] = Tally()
        for stage in _JOB_STAGES:
            counts.update(job.status for job in await store.jobs_in_stage(stage))
        for status in JOB_STATUSES:
            self.training_jobs.labels(status).set(counts[status])

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class MeteredSwapper(Swapper):
    """The Swapper, counting each completed promote and rollback."""

    metrics: Metrics | None = None

    async def promote(
        self,
        tenant: Tenant,
        alias: str,
        version_ref: str,
        *,
        actor: str,
        reason: str | None = None,
        require_change: bool = False,
        action: str = "promote",
        forced: bool = False,
    ) -> SwapReport:
        report = await super().promote(
            tenant,
            alias,
            version_ref,
            actor=actor,
            reason=reason,
            require_change=require_change,
            action=action,
            forced=forced,
        )
        self._count(tenant, report)
        return report

    async def to_base(
        self, tenant: Tenant, alias: str, *, actor: str, reason: str | None
    ) -> SwapReport:
        report = await super().to_base(tenant, alias, actor=actor, reason=reason)
        self._count(tenant, report)
        return report

    def _count(self, tenant: Tenant, report: SwapReport) -> None:
        if self.metrics is not None:
            self.metrics.swaps.labels(tenant.name, report.alias, report.action).inc()


class MeteredCanaries(Canaries):
    """The canaries, counting the monitor's rollbacks."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        swapper: Swapper,
        interval_s: float,
        metrics: Metrics,
    ):
        super().__init__(store, registry, swapper, interval_s)
        self.metrics = metrics

    async def check(self) -> list[Canary]:
        rolled_back = await super().check()
        for canary in rolled_back:
            tenant = await self.store.get_tenant(canary.tenant_id)
            name = tenant.name if tenant is not None else ""
            self.metrics.canary_rollbacks.labels(name, canary.alias).inc()
        return rolled_back


def is_loopback(host: str) -> bool:
    """Is `host` (a listen address) reachable from this machine only? Names other than
    localhost are not trusted to be: they may resolve to anything."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(credential: str) -> bytes:
    return hashlib.sha256(credential.encode()).digest()


class ScrapeAuth:
    """Who may read /metrics: anyone on a gateway listening on loopback only (unless
    metrics_require_admin or metrics_key ask for a credential); elsewhere the bearer of the
    admin key or of metrics_key, compared in constant time."""

    def __init__(self, settings: Settings):
        self.host = settings.host
        self.required = (
            settings.metrics_require_admin
            or bool(settings.metrics_key)
            or not is_loopback(settings.host)
        )
        credentials = (settings.admin_key, settings.metrics_key)
        self._digests = tuple(_digest(c) for c in credentials if c)

    def check(self, authorization: str | None) -> None:
        if not self.required:
            return
        if not self._digests:
            raise PermissionDenied(
                f"/metrics needs a credential on a gateway listening on {self.host}: "
                "set LOOPGATE_METRICS_KEY (or LOOPGATE_ADMIN_KEY)"
            )
        token = bearer_token(authorization)
        if not token:
            raise AuthenticationFailed(
                "missing credential: send 'Authorization: Bearer <metrics key or admin key>'"
            )
        digest = _digest(token)
        # Every credential is compared (no early exit), each in constant time.
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        if not any(matches):
            raise PermissionDenied("this credential may not read /metrics")


def route(settings: Settings) -> HTTPRouteHandler:
    """GET /metrics, guarded by the settings' `ScrapeAuth`."""
    auth = ScrapeAuth(settings)
    text = {"text/plain": apidoc.schema({"type": "string"})}

    @get(
        "/metrics",
        summary="Prometheus metrics",
        media_type="text/plain",
        operation_class=apidoc.answers(200, text),
        responses=apidoc.errors(401, 403),
    )
    async def metrics_endpoint(
        request: Request[object, object, State],
        metrics: Injected[Metrics],
        pool: Injected[BackendPool],
        capture: Injected[CaptureWriter | None],
        store: Injected[Store],
    ) -> Response[bytes]:
        """Prometheus scrape target."""
        auth.check(request.headers.get("authorization"))
        await metrics.refresh(pool.backends, capture.depth if capture is not None else 0, store)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return metrics_endpoint
