"""The gateway's long-lived resources, built from Settings, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging

import httpx

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.model import resolve_model
from gateway.serving import Serving
from gateway.settings import Settings
from gateway.store import Store, open_store
from gateway.supervisor import EngineState, EngineSupervisor, build_launch
from gateway.tenancy import Admin, Directory
from gateway.upstream import Backend, BackendPool, Upstream, make_client

log = logging.getLogger("loopgate")

HEALTH_INTERVAL_S = 5.0


class Gateway:
    """Store, directory, backend pool, upstream client and (embedded) engine supervisor."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        self.store: Store = open_store(settings.store_url)
        self.directory = Directory(self.store, settings.auth_cache_ttl_s)
        self.admin = Admin(self.store, settings.default_alias)
        self._transport = transport
        self.client = self._make_client()
        self.upstream = Upstream(self.client)
        self.pool = BackendPool([])
        self.serving = Serving(self.directory, self.pool, self.upstream, settings.base_model_name)
        self.supervisor: EngineSupervisor | None = None
        self.draining = False
        self._admin_hash = (
            hashlib.sha256(settings.admin_key.encode()).digest() if settings.admin_key else None
        )
        self._health_task: asyncio.Task[None] | None = None

    def _make_client(self) -> httpx.AsyncClient:
        s = self.settings
        if self._transport is not None:  # tests: a fake network edge
            timeout = httpx.Timeout(s.upstream_read_timeout_s, connect=s.upstream_connect_timeout_s)
            return httpx.AsyncClient(transport=self._transport, timeout=timeout)
        return make_client(
            s.upstream_connect_timeout_s, s.upstream_read_timeout_s, s.upstream_transport
        )

    async def start(self) -> None:
        await self.store.open()
        if self.settings.engine_mode == "embedded":
            await self._start_embedded()
        else:
            self.pool.backends[:] = [
                Backend(url.rstrip("/"), self.settings.engine_api_key, f"replica-{i}")
                for i, url in enumerate(self.settings.engine_urls)
            ]
            await self._check_health()
            self._health_task = asyncio.create_task(self._health_loop(), name="engine-health")

    async def _start_embedded(self) -> None:
        model = await asyncio.to_thread(resolve_model, self.settings)
        launch = build_launch(self.settings, model)
        backend = Backend(launch.url, launch.api_key, "embedded")
        self.pool.backends[:] = [backend]

        def on_state(state: EngineState) -> None:
            backend.ready = state is EngineState.READY

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
            if healthy != backend.ready:
                log.info("replica %s is now %s", backend.name, "ready" if healthy else "down")
            backend.ready = healthy

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._check_health()

    async def stop(self) -> None:
        self.draining = True
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.supervisor is not None:
            await self.supervisor.stop()
        await self.client.aclose()
        await self.store.close()

    def check_admin(self, authorization: str | None) -> None:
        if self._admin_hash is None:
            raise PermissionDenied("the admin API is disabled: set LOOPGATE_ADMIN_KEY")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "missing admin credential: send 'Authorization: Bearer <admin key>'"
            )
        digest = hashlib.sha256(token.strip().encode()).digest()
        if not hmac.compare_digest(digest, self._admin_hash):
            raise PermissionDenied("this credential may not use the admin API")
