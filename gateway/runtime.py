"""The gateway's long-lived resources, built from Settings, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from adapters.placement import AdapterPool
from adapters.registry import Registry
from adapters.swap import probe_priority
from adapters.validation import BaseModelInfo, Limits, base_model_info
from gateway.cache_salt import CacheSalts
from gateway.capture import CaptureWriter
from gateway.erasure import DataErasure
from gateway.evaluations import Evaluations, evals_worker_process
from gateway.files import Files
from gateway.finetuning import FineTuning, training_worker_process
from gateway.limits import Limiter, SharedInflight
from gateway.loop import Loops
from gateway.metrics import MeteredCanaries, MeteredSwapper, Metrics
from gateway.quotas import Quotas
from gateway.rollout import Rollouts
from gateway.rollout_evidence import StoreCanaryEvidence
from gateway.serving import CHARS_PER_TOKEN_CEILING, Serving
from gateway.shadow import SHADOW_PRIORITY, RolloutShadows, Shadows
from gateway.telemetry import Telemetry, Tracing
from gateway.tenancy import Admin, Directory, bearer_token
from gateway.upstream import Upstream
from gateway.worker_placements import (
    FollowerPool,
    PrimaryPool,
    SharedSwapper,
    TableFile,
    bind,
    primary_client,
)
from replicas.base_model import ModelError, prepare_in_child, resolve_model
from replicas.breaker import CircuitBreaker
from replicas.engine_http import EngineHTTP
from replicas.pool import Backend, BackendPool, make_clients
from replicas.supervisor import EngineState, EngineSupervisor, build_launch, engine_socket
from store import Store, open_store
from store.errors import AuthenticationFailed, PermissionDenied
from store.settings import Settings

if TYPE_CHECKING:
    from gateway.workers import WorkerRole

log = logging.getLogger("loopgate")


class Lifecycle:
    """Whether the gateway is shutting down (readiness says so before the engines stop)."""

    def __init__(self) -> None:
        self.draining = False


class Gateway:
    """Store, directory, backend pool, upstream client and (embedded) engine supervisor."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        role: WorkerRole | None = None,
    ):
        self.settings = settings
        self.role = role  # one of `loopgate serve --workers N` (gateway.workers); None: alone
        self.shared = role.attach() if role is not None else None
        self.store: Store = open_store(settings.store_url)
        self.directory = Directory(self.store, settings.auth_cache_ttl_s)
        self.admin = Admin(self.store, settings.default_alias)
        self._transport = transport
        self.client, direct = self._make_clients()
        self.upstream = Upstream(
            self.client,
            settings.upstream_first_token_timeout_s,
            settings.upstream_total_timeout_s,
            direct=direct,
        )
        self.pool = BackendPool([])
        self.adapters = self._adapter_pool()
        self.registry = Registry(
            self.store,
            settings.adapters_path,
            BaseModelInfo(settings.base_model_name, frozenset({settings.base_model_name}), ""),
            Limits(settings.adapter_max_bytes, settings.engine_max_lora_rank),
        )
        self.metrics = Metrics()
        self.tracing = Tracing(settings.otel_exporter_endpoint, settings.otel_service_name)
        self.swapper = (MeteredSwapper if role is None else SharedSwapper)(
            self.store,
            self.registry,
            self.adapters,
            self.client,
            settings.base_model_name,
            drain_timeout_s=settings.swap_drain_timeout_s,
            store_fresh_after_s=settings.auth_cache_ttl_s + 1.0,
            probe_priority=probe_priority(settings.engine_scheduling_policy),
            metrics=self.metrics,
        )
        if isinstance(self.swapper, SharedSwapper):
            bind(self.adapters, self.swapper)
        self.capture = CaptureWriter(self.store) if settings.capture_enabled else None
        self.salts = CacheSalts.for_data_dir(settings.cache_salt_secret, settings.data_dir)
        self.quotas = Quotas(settings, self.store)
        self.files = Files(settings, self.store, self.quotas)
        self.finetuning = FineTuning(
            settings,
            self.store,
            self.registry,
            self.adapters,
            self.swapper,
            self.pool,
            self.client,
            self.quotas,
        )
        control_plane = role is None or role.primary  # the other workers only serve
        self.worker = (
            training_worker_process(settings)
            if settings.training_worker and control_plane
            else None
        )
        self.erasure = DataErasure(
            self.store, settings.training_path / "datasets", settings.data_dir / "evals"
        )
        self.evaluations = Evaluations(
            self.store,
            self.registry,
            self.adapters,
            self.swapper,
            self.client,
            settings.base_model_name,
            settings.data_dir / "evals",
            self.salts,
            quotas=self.quotas,
        )
        self.evals_worker = (
            evals_worker_process(settings) if settings.evals_worker and control_plane else None
        )
        self.canaries = MeteredCanaries(
            self.store,
            self.registry,
            self.swapper,
            settings.canary_check_interval_s,
            self.metrics,
        )
        self.shadows = Shadows(
            self.store,
            self.registry,
            self.adapters,
            self.swapper,
            self.upstream,
            self.salts,
            self.canaries,
            priority=SHADOW_PRIORITY if settings.engine_scheduling_policy == "priority" else None,
        )
        self.rollouts = Rollouts(
            self.store,
            self.registry,
            self.swapper,
            self.canaries,
            self.evaluations,
            self.directory,
            StoreCanaryEvidence(self.store, self.canaries),
            shadows=RolloutShadows(self.shadows),
            tick_s=settings.rollout_tick_s,
            lease_s=settings.rollout_lease_s,
        )
        self.loops = Loops(self.store, self.finetuning, self.rollouts)
        inflight = SharedInflight(self.shared) if self.shared is not None else None
        self.limits = Limiter(self.store, settings.auth_cache_ttl_s, inflight)
        self.serving = Serving(
            self.directory,
            self.pool,
            self.upstream,
            self.adapters,
            self.swapper,
            settings.base_model_name,
            self.capture,
            canaries=self.canaries,
            telemetry=self._telemetry(),
            limits=self.limits,
            retries=settings.upstream_retries,
            ready_wait_s=settings.engine_ready_wait_s,
            salts=self.salts,
            max_prompt_chars=settings.engine_max_model_len * CHARS_PER_TOKEN_CEILING,
            shadows=self.shadows,
        )
        self.supervisor: EngineSupervisor | None = None
        self.lifecycle = Lifecycle()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciling: set[Backend] = set()  # one pass per replica at a time
        self._admin_hash = (
            hashlib.sha256(settings.admin_key.encode()).digest() if settings.admin_key else None
        )
        self._health_task: asyncio.Task[None] | None = None

    def _adapter_pool(self) -> AdapterPool:
        """Alone: the AdapterPool. As a worker: the primary's publishes, the others follow."""
        s, role = self.settings, self.role
        if role is None or self.shared is None:
            return AdapterPool(
                self.pool,
                self.client,
                capacity=s.engine_max_loras,
                admin_timeout_s=s.adapter_admin_timeout_s,
            )
        table = TableFile(role.table_path, self.shared)
        if role.primary:
            return PrimaryPool(
                self.pool, self.client, s.engine_max_loras, s.adapter_admin_timeout_s, table
            )
        primary = primary_client(role.internal_socket)
        return FollowerPool(
            self.pool, self.client, s.engine_max_loras, table, self._backend, primary
        )

    def _telemetry(self) -> Telemetry | None:
        """Per-request telemetry; none at all when both metrics and tracing are off."""
        if not (self.settings.metrics_enabled or self.tracing.url):
            return None
        return Telemetry(self.metrics if self.settings.metrics_enabled else None, self.tracing)

    def _make_clients(self) -> tuple[httpx.AsyncClient, EngineHTTP | None]:
        s = self.settings
        if self._transport is not None:  # tests: a fake network edge
            timeout = httpx.Timeout(s.upstream_read_timeout_s, connect=s.upstream_connect_timeout_s)
            return httpx.AsyncClient(transport=self._transport, timeout=timeout), None
        # The embedded engine is reached over its Unix socket (replicas.supervisor).
        sock = engine_socket(s) if s.engine_mode == "embedded" else None
        return make_clients(
            s.upstream_connect_timeout_s,
            s.upstream_read_timeout_s,
            s.upstream_transport,
            uds=str(sock) if sock is not None else None,
        )

    async def start(self) -> None:
        self.tracing.start()
        await self.store.open()
        if isinstance(self.adapters, FollowerPool):
            await self._start_follower(self.adapters)
            return
        if self.role is None or not self.role.first_start:
            await self._mark_lost()
        if self.capture is not None:
            await self.capture.start()
        await self.canaries.load()
        await self._start_engines()
        if isinstance(self.adapters, PrimaryPool):
            self._spawn(self.adapters.publish_loop())
        self._health_task = asyncio.create_task(self._health_loop(), name="engine-health")
        self._spawn(self._retention_loop())
        self._spawn(self.erasure.run(self.settings.erasure_check_interval_s))
        self._spawn(self.canaries.run())
        self._spawn(self.shadows.run())
        self._spawn(self.rollouts.run())  # advances the rollouts whose lease it holds
        self._spawn(self.finetuning.registration_loop())
        if self.worker is not None:
            self.worker.start()
        if self.evals_worker is not None:
            self.evals_worker.start()

    async def _start_follower(self, adapters: FollowerPool) -> None:
        """A worker that only serves: the primary's replicas and placements, followed."""
        if self.capture is not None:
            await self.capture.start()
        await self.canaries.load()
        adapters.follow()
        self._spawn(adapters.follow_loop())

    async def _mark_lost(self) -> None:
        # Rows left in_progress by a process that died never finished: say so. A shared
        # (PostgreSQL) store may hold other live gateways' requests: only rows older than any
        # request can live are theirs to close.
        shared = not self.settings.store_url.startswith("sqlite:") or self.role is not None
        grace = self.settings.upstream_total_timeout_s + 60 if shared else 0.0
        lost = await self.store.mark_incomplete(before=time.time() - grace)
        if lost:
            log.warning("marked %d captured requests from an earlier run as incomplete", lost)

    async def _start_engines(self) -> None:
        if self.settings.engine_mode == "embedded":
            # Prepared (or verified) once, in a child: this process never imports torch.
            model = await asyncio.to_thread(prepare_in_child, self.settings)
            self.registry.base = await asyncio.to_thread(self._base_info, model)
            await self._start_embedded(model)
        else:
            self.registry.base = await asyncio.to_thread(self._base_info, None)
            self.pool.backends[:] = [
                self._backend(url.rstrip("/"), self.settings.engine_api_key, f"replica-{i}")
                for i, url in enumerate(self.settings.engine_urls)
            ]
            await self._check_health()

    def _base_info(self, model: str | None) -> BaseModelInfo:
        """The served base's identity and module shapes, when its files are on this host
        (`model`: the embedded engine's prepared folder; None: look for a prepared one)."""
        s = self.settings
        try:
            folder: Path | None = Path(model or resolve_model(s, prepare=False))
        except ModelError:  # external replicas serve a base whose files are not here
            folder = None
        if folder is not None and folder.is_dir():
            return base_model_info(folder, s.base_model_name, (s.base_model, *s.base_model_aliases))
        log.warning("base model files are not local: adapters get config-level checks only")
        names = frozenset({s.base_model_name, s.base_model, *s.base_model_aliases})
        return BaseModelInfo(s.base_model_name, names, "")

    def _backend(self, url: str, api_key: str, name: str) -> Backend:
        s = self.settings
        breaker = CircuitBreaker(threshold=s.breaker_failures, cooldown_s=s.breaker_cooldown_s)
        return Backend(url, api_key, name, breaker=breaker)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_ready(self, backend: Backend, ready: bool) -> None:
        """Readiness changes: a replica that (re)appears is reconciled; a lost one forgotten."""
        if ready == backend.ready:
            return
        if not ready:
            self.adapters.forget(backend)
        backend.ready = ready
        if ready:
            backend.breaker.succeeded()  # a replica that (re)appears starts with a closed circuit
        self.pool.readiness_changed()
        log.info("replica %s is now %s", backend.name, "ready" if ready else "down")
        if ready:
            self._spawn(self._reconcile(backend))

    async def _reconcile(self, backend: Backend) -> None:
        if backend in self._reconciling:
            return
        self._reconciling.add(backend)
        try:
            await self.adapters.reconcile(backend, self.swapper.pinned_versions)
        except Exception:  # a failed pass is retried by the next one
            log.exception("reconciling %s failed", backend.name)
        finally:
            self._reconciling.discard(backend)

    async def _start_embedded(self, model: str) -> None:
        launch = build_launch(self.settings, model)
        backend = self._backend(launch.url, launch.api_key, "embedded")
        self.pool.backends[:] = [backend]

        def on_state(state: EngineState) -> None:
            self._set_ready(backend, state is EngineState.READY)

        self.supervisor = EngineSupervisor(
            launch,
            start_timeout_s=self.settings.engine_start_timeout_s,
            max_backoff_s=self.settings.engine_restart_max_backoff_s,
            on_state=on_state,
        )
        await self.supervisor.start()

    async def _check_health(self) -> None:
        for backend in self.pool.backends:
            try:
                resp = await self.client.get(backend.url + "/health", headers=backend.headers)
                healthy = resp.status_code == 200
            except httpx.HTTPError:
                healthy = False
            self._set_ready(backend, healthy)

    async def _health_loop(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.engine_health_interval_s)
            if self.supervisor is None:  # the supervisor reports the embedded engine itself
                await self._check_health()
            if time.monotonic() - last_reconcile >= self.settings.reconcile_interval_s:
                last_reconcile = time.monotonic()
                for backend in self.pool.backends:
                    if backend.ready:  # in the background: a stuck replica delays no check
                        self._spawn(self._reconcile(backend))

    async def purge_expired(self) -> int:
        """Delete captured traffic older than each tenant's retention period."""
        purged = 0
        for tenant in await self.store.list_tenants():
            if tenant.retention_days:
                cutoff = time.time() - tenant.retention_days * 86400
                purged += await self.store.purge_before(tenant.id, cutoff)
        if purged:
            log.info("retention: purged %d captured requests", purged)
        return purged

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.purge_expired()
            except Exception:
                log.exception("retention purge failed; retrying next interval")
            await asyncio.sleep(self.settings.retention_interval_s)

    async def stop(self) -> None:
        self.lifecycle.draining = True
        for task in list(self._tasks):
            task.cancel()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.worker is not None:
            await self.worker.stop()  # its job (if any) goes back to the queue
        if self.evals_worker is not None:
            await self.evals_worker.stop()
        if self.capture is not None:
            await self.capture.stop()  # flush every queued row before the store closes
        await self.rollouts.release()  # another gateway takes its rollouts over at once
        await self.canaries.flush()  # this gateway's last canary counts, for the others
        await self.shadows.close()  # shadow requests in flight dropped, skips flushed
        if self.supervisor is not None:
            await self.supervisor.stop()
        await self.client.aclose()
        if self.upstream.direct is not None:
            self.upstream.direct.close()
        if isinstance(self.adapters, FollowerPool):
            await self.adapters.primary.aclose()
        await self.store.close()
        await self.tracing.stop()  # exports the spans of every finished request

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    def check_admin(self, authorization: str | None) -> None:
        if self._admin_hash is None:
            raise PermissionDenied("the admin API is disabled: set LOOPGATE_ADMIN_KEY")
        token = bearer_token(authorization)
        if not token:
            raise AuthenticationFailed(
                "missing admin credential: send 'Authorization: Bearer <admin key>'"
            )
        digest = hashlib.sha256(token.encode()).digest()
        if not hmac.compare_digest(digest, self._admin_hash):
            raise PermissionDenied("this credential may not use the admin API")
