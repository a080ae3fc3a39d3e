"""Which adapter version is loaded on which replica, under which engine name; leases on them.

Every load gets a fresh engine name (`lg-<run>-<n>-<version>`), never reused: vLLM keeps
prefix-cache entries per name, so reloading under an old name could serve stale state.
A request holds a `Lease` on one placement from routing until its last byte; a placement that
is draining takes no new leases and is unloaded once its leases are gone. Each replica holds
at most `capacity` adapters; when full, the least recently used unpinned idle one is evicted.
`reconcile` compares what a replica really serves (`GET /v1/models`) with what we believe.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import httpx

from replicas.pool import Backend, BackendPool
from store import AdapterVersion, AliasTarget
from store.errors import EngineNotReady, UpstreamUnavailable

log = logging.getLogger("loopgate.adapters")

ENGINE_PREFIX = "lg-"


class LoadState(enum.Enum):
    PROBING = "probing"  # loaded by a swap; takes no lease until its probe answers (`admit`)
    READY = "ready"
    DRAINING = "draining"
    GONE = "gone"


@dataclass(eq=False)
class Placement:
    version_id: str
    engine_name: str
    backend: Backend
    pinned: bool
    state: LoadState = LoadState.READY
    inflight: int = 0
    served: int = 0
    last_used: float = field(default_factory=time.monotonic)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass(eq=False)
class Lease:
    """The right to send one request to one placement (or to the base on one backend)."""

    backend: Backend
    engine_name: str
    version_id: str | None
    placement: Placement | None = None
    released: bool = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.placement is not None:
            self.placement.inflight -= 1
            if self.placement.inflight == 0:
                self.placement.idle.set()


class AdapterLoadError(UpstreamUnavailable):
    """The engine refused or failed to load an adapter."""


class AdapterPool:
    def __init__(
        self,
        pool: BackendPool,
        client: httpx.AsyncClient,
        capacity: int,
        admin_timeout_s: float = 120.0,
    ):
        self.pool = pool
        self.client = client
        self.capacity = capacity
        # A replica that is stuck (a CPU engine can stall for minutes) must not hold a swap or
        # a reconcile pass hostage: every admin call toward it is bounded.
        self.admin_timeout_s = admin_timeout_s
        self.placements: dict[Backend, dict[str, Placement]] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}
        self._run = secrets.token_hex(2)
        self._counter = itertools.count(1)
        self.loads = 0
        self.unloads = 0

    def on(self, backend: Backend) -> dict[str, Placement]:
        return self.placements.setdefault(backend, {})

    # --- routing -------------------------------------------------------------------------

    def try_lease(self, version_id: str, exclude: Collection[Backend] = ()) -> Lease | None:
        """A lease on a ready placement of the version (fewest in flight), without awaiting."""
        best: Placement | None = None
        for backend in self.pool.backends:
            p = self.on(backend).get(version_id)
            if p is None or p.state is not LoadState.READY:
                continue
            if backend in exclude or not backend.available:
                continue
            if best is None or _load(p) < _load(best):
                best = p
        if best is None:
            return None
        best.inflight += 1
        best.served += 1
        best.last_used = time.monotonic()
        best.idle.clear()
        return Lease(best.backend, best.engine_name, version_id, best)

    async def lease(self, version: AdapterVersion, exclude: Collection[Backend] = ()) -> Lease:
        """Lease a placement, loading the version on the best replica first if need be."""
        for _ in range(3):
            found = self.try_lease(version.id, exclude)
            if found is not None:
                return found
            await self.load(self._choose_backend(exclude), version, pinned=False)
        raise EngineNotReady("could not place the adapter on any replica; retry shortly")

    def _choose_backend(self, exclude: Collection[Backend] = ()) -> Backend:
        ready = [b for b in self.pool.backends if b.available and b not in exclude]
        if not ready:
            raise EngineNotReady("the inference engine is not ready yet; retry shortly")
        with_room = [b for b in ready if len(self._live(b)) < self.capacity]
        candidates = with_room or [b for b in ready if self._evictable(b)]
        if not candidates:
            raise EngineNotReady("every replica is full of adapters in use; retry shortly")
        return min(candidates, key=lambda b: (b.inflight, len(self._live(b))))

    def _live(self, backend: Backend) -> list[Placement]:
        return [p for p in self.on(backend).values() if p.state is not LoadState.GONE]

    def _evictable(self, backend: Backend) -> list[Placement]:
        idle = [
            p
            for p in self.on(backend).values()
            if p.state is LoadState.READY and not p.pinned and p.inflight == 0
        ]
        return sorted(idle, key=lambda p: p.last_used)

    # --- load / unload -------------------------------------------------------------------

    async def load(self, backend: Backend, version: AdapterVersion, *, pinned: bool) -> Placement:
        """Load `version` on `backend` under a new engine name (no-op when already loaded)."""
        return await self._load(backend, version, pinned, LoadState.READY)

    async def stage(self, backend: Backend, version: AdapterVersion) -> Placement:
        """Load `version` pinned but leased by no one until `admit` (a swap probes it first)."""
        return await self._load(backend, version, True, LoadState.PROBING)

    def admit(self, placement: Placement) -> None:
        """The staged placement's probe answered: it takes leases from now on."""
        if placement.state is LoadState.PROBING:
            placement.state = LoadState.READY

    async def _load(
        self, backend: Backend, version: AdapterVersion, pinned: bool, state: LoadState
    ) -> Placement:
        lock = self._locks.setdefault((id(backend), version.id), asyncio.Lock())
        async with lock:
            existing = self.on(backend).get(version.id)
            if existing is not None and existing.state in (LoadState.READY, LoadState.PROBING):
                existing.pinned = existing.pinned or pinned
                return existing
            if len(self._live(backend)) >= self.capacity:
                victims = self._evictable(backend)
                if not victims:
                    raise EngineNotReady(f"replica {backend.name} is full of adapters in use")
                await self.unload(victims[0])
            name = f"{ENGINE_PREFIX}{self._run}-{next(self._counter)}-{version.id}"
            await self._call(
                backend, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": version.path}
            )
            placement = Placement(version.id, name, backend, pinned, state)
            self.on(backend)[version.id] = placement
            self.loads += 1
            log.info("loaded %s on %s as %s", version.id, backend.name, name)
            return placement

    async def unload(self, placement: Placement, drain_timeout_s: float = 300.0) -> bool:
        """Stop new leases, wait for in-flight requests, unload. False: the drain timed out."""
        if placement.state is LoadState.GONE:
            return True
        placement.state = LoadState.DRAINING
        try:
            await asyncio.wait_for(placement.idle.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning(
                "drain of %s timed out with %d in flight", placement.engine_name, placement.inflight
            )
            placement.state = LoadState.READY
            return False
        if placement.state is LoadState.GONE:
            return True  # another caller drained and unloaded it meanwhile
        placement.state = LoadState.GONE
        if self.on(placement.backend).get(placement.version_id) is placement:
            del self.on(placement.backend)[placement.version_id]
        with contextlib.suppress(UpstreamUnavailable):  # a dead replica has nothing to unload
            await self._call(
                placement.backend, "/v1/unload_lora_adapter", {"lora_name": placement.engine_name}
            )
        self.unloads += 1
        log.info("unloaded %s from %s", placement.engine_name, placement.backend.name)
        return True

    async def retire(self, version_id: str, drain_timeout_s: float = 300.0) -> bool:
        """Unload a version from every replica (after its aliases moved away)."""
        placements = [b[version_id] for b in self.placements.values() if version_id in b]
        results = await asyncio.gather(*(self.unload(p, drain_timeout_s) for p in placements))
        return all(results)

    def placements_of(self, version_id: str) -> list[Placement]:
        return [b[version_id] for b in self.placements.values() if version_id in b]

    async def _call(self, backend: Backend, path: str, body: dict[str, str]) -> None:
        try:
            async with asyncio.timeout(self.admin_timeout_s):
                resp = await self.client.post(
                    backend.url + path, json=body, headers=backend.headers
                )
        except TimeoutError:
            raise AdapterLoadError(
                f"replica {backend.name} did not answer {path} within {self.admin_timeout_s:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise AdapterLoadError(
                f"replica {backend.name} unreachable for {path}: {exc}"
            ) from None
        if resp.status_code >= 400:
            raise AdapterLoadError(f"replica {backend.name} refused {path}: {resp.text[:300]}")

    # --- reconciliation ------------------------------------------------------------------

    async def engine_loras(self, backend: Backend) -> set[str]:
        async with asyncio.timeout(self.admin_timeout_s):
            resp = await self.client.get(backend.url + "/v1/models", headers=backend.headers)
        resp.raise_for_status()
        data = resp.json().get("data", [])
        return {m["id"] for m in data if isinstance(m, dict) and m.get("parent")}

    async def reconcile(
        self, backend: Backend, desired: Callable[[], Awaitable[Collection[AdapterVersion]]]
    ) -> None:
        """Make a replica serve what we believe it does, and the pinned versions it should.

        `desired` is asked after the engine answered (that can take long under load) and again
        after every load: an alias can move and retire its old version meanwhile, and a version
        restored for a stale wish would otherwise stay pinned on the replica for good.
        """
        try:
            actual = await self.engine_loras(backend)
        except (httpx.HTTPError, TimeoutError):
            return  # not reachable now; the next pass will do it
        mine = self.on(backend)
        for version_id, p in list(mine.items()):
            if p.engine_name not in actual:  # the replica restarted or lost it
                log.warning("replica %s lost %s; forgetting it", backend.name, p.engine_name)
                p.state = LoadState.GONE
                p.idle.set()
                del mine[version_id]
        known = {p.engine_name for p in mine.values()}
        for stale in actual - known:
            if stale.startswith(ENGINE_PREFIX):
                with contextlib.suppress(UpstreamUnavailable):
                    await self._call(backend, "/v1/unload_lora_adapter", {"lora_name": stale})
        for version in await desired():
            held = mine.get(version.id)
            if held is not None and held.state is LoadState.DRAINING:
                continue  # being retired right now; the next pass sees what is wanted then
            try:
                placement = await self.load(backend, version, pinned=True)
            except (UpstreamUnavailable, EngineNotReady) as exc:
                log.warning("could not restore %s on %s: %s", version.id, backend.name, exc)
                continue
            if placement is not held and version.id not in {v.id for v in await desired()}:
                log.info("%s was retired while being restored; unloading it", version.id)
                await self.unload(placement)

    def forget(self, backend: Backend) -> None:
        """The replica is gone (stopped or restarting): everything on it is gone too."""
        for p in self.on(backend).values():
            p.state = LoadState.GONE
            p.idle.set()
        self.on(backend).clear()


def _load(p: Placement) -> tuple[int, int]:
    """Fewest requests in flight first; among equals, the one that served least (round robin)."""
    return (p.backend.inflight, p.served)


def current_version(target: AliasTarget) -> str | None:
    return target.adapter_version if target.kind == "adapter" else None
