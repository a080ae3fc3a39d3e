"""Adapters across the workers of one gateway: the primary owns every load and unload and
publishes what is where; the other workers follow that table and lease through shared counters.

The primary writes the whole table (replicas, placements, fresh alias flips) to a file and then
raises the generation word of the shared counters (gateway.shared_counters). A follower reads
the word on each routing decision (one memory read) and the file again only when it moved.

Why no request fails on a drain: a follower counts its lease in the shared slot of the engine
name while holding that slot's lock, and only if its copy of the table is still the newest; the
primary marks a placement draining and publishes under the same lock, then waits until the slot
sums to zero before unloading. Either the follower's lease came first (the drain waits for it)
or the follower sees the draining table and routes elsewhere. A follower that finds no placement
asks the primary to load one over the primary's private socket and reads the table again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from adapters.placement import AdapterPool, Lease, LoadState, Placement
from gateway.metrics import MeteredSwapper
from gateway.shared_counters import SharedCounters
from replicas.pool import Backend, BackendPool
from store import AdapterVersion, Alias, AliasTarget
from store.errors import EngineNotReady

log = logging.getLogger("loopgate.workers")

_SHARED_STATES = (LoadState.READY, LoadState.DRAINING)
PLACE_PATH = "/_loopgate/placements"  # the primary's private route (its Unix socket only)
PUBLISH_EVERY_S = 0.25  # replica readiness and expired flips reach the followers this late
DRAIN_POLL_S = 0.02


class SharedBackend(msgspec.Struct, frozen=True):
    name: str
    url: str
    api_key: str
    ready: bool


class SharedPlacement(msgspec.Struct, frozen=True):
    backend: str
    version_id: str
    engine_name: str
    draining: bool


class SharedFlip(msgspec.Struct, frozen=True):
    tenant_id: str
    alias: str
    target: AliasTarget
    at: float  # time.monotonic() of the flip: one clock for every process of the host


class Table(msgspec.Struct):
    generation: int = 0
    backends: list[SharedBackend] = []
    placements: list[SharedPlacement] = []
    flips: list[SharedFlip] = []


class PlaceRequest(msgspec.Struct, frozen=True):
    version_id: str


class TableFile:
    """The published table: written whole (then renamed) by the primary, read by followers."""

    def __init__(self, path: Path, counters: SharedCounters):
        self.path, self.counters = path, counters
        self._decoder = msgspec.json.Decoder(Table)

    def publish(self, table: Table) -> None:
        table.generation = self.counters.generation + 1
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.encode(table))
        tmp.replace(self.path)
        self.counters.bump_generation()  # after the file: a reader never sees a newer word

    def read(self) -> Table:
        try:
            return self._decoder.decode(self.path.read_bytes())
        except FileNotFoundError:
            return Table()


@dataclass(eq=False)
class SharedLease(Lease):
    """A follower's lease: also counted in the shared slot of its engine name."""

    counters: SharedCounters | None = None
    slot: int = 0

    def release(self) -> None:
        if not self.released and self.counters is not None:
            self.counters.add(self.slot, -1)
        super().release()


def _nothing() -> None:
    return None


@dataclass
class SharedSwapper(MeteredSwapper):
    """The swapper of a worker: the primary publishes each flip at once; a follower reads the
    primary's flips before it answers which target an alias has."""

    follow: Callable[[], None] = _nothing
    published: Callable[[], None] = _nothing

    def current(self, alias: Alias) -> AliasTarget:
        self.follow()
        return super().current(alias)

    async def _flip(
        self,
        tenant_id: str,
        alias: str,
        old: AliasTarget,
        new: AliasTarget,
        actor: str,
        reason: str | None,
        action: str,
        forced: bool = False,
    ) -> None:
        await super()._flip(tenant_id, alias, old, new, actor, reason, action, forced)
        self.published()

    def flips(self) -> list[SharedFlip]:
        now = time.monotonic()
        return [
            SharedFlip(tenant_id, alias, target, at)
            for (tenant_id, alias), (target, at) in self._current.items()
            if now - at <= self.store_fresh_after_s
        ]

    def adopt(self, flips: list[SharedFlip]) -> None:
        self._current = {(f.tenant_id, f.alias): (f.target, f.at) for f in flips}


class PrimaryPool(AdapterPool):
    """The primary's AdapterPool: publishes every change; a drain also waits for followers."""

    def __init__(
        self,
        pool: BackendPool,
        client: httpx.AsyncClient,
        capacity: int,
        admin_timeout_s: float,
        table: TableFile,
    ):
        super().__init__(pool, client, capacity, admin_timeout_s)
        self.table = table
        self.counters = table.counters
        self.flips: Callable[[], list[SharedFlip]] = list
        self._last: bytes = b""

    def snapshot(self) -> Table:
        backends = [SharedBackend(b.name, b.url, b.api_key, b.ready) for b in self.pool.backends]
        placements = [
            SharedPlacement(b.name, p.version_id, p.engine_name, p.state is LoadState.DRAINING)
            for b, on in self.placements.items()
            for p in on.values()
            if p.state in _SHARED_STATES  # a swap's staged placement waits for its probe
        ]
        return Table(0, backends, placements, self.flips())

    def publish(self, *, if_changed: bool = False) -> None:
        table = self.snapshot()
        encoded = msgspec.json.encode(table)
        if if_changed and encoded == self._last:
            return
        self._last = encoded
        self.table.publish(table)

    async def publish_loop(self) -> None:
        """Replica readiness and flips that expired reach the followers within a moment."""
        while True:
            self.publish(if_changed=True)
            await asyncio.sleep(PUBLISH_EVERY_S)

    async def load(self, backend: Backend, version: AdapterVersion, *, pinned: bool) -> Placement:
        placement = await super().load(backend, version, pinned=pinned)
        self.publish()
        return placement

    async def unload(self, placement: Placement, drain_timeout_s: float = 300.0) -> bool:
        """Draining is published under the slot's lock, then every worker's leases end."""
        if placement.state is LoadState.GONE:
            return True
        slot = self.counters.slot(placement.engine_name)
        with self.counters.locked([slot]):
            placement.state = LoadState.DRAINING
            self.publish()
        started = time.monotonic()
        if not await self._followers_drained(slot, drain_timeout_s):
            log.warning("drain of %s timed out on other workers", placement.engine_name)
            placement.state = LoadState.READY
            self.publish()
            return False
        left = max(drain_timeout_s - (time.monotonic() - started), 0.1)
        done = await super().unload(placement, left)
        self.publish()
        return done

    async def _followers_drained(self, slot: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.counters.total(slot) > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True

    def _evictable(self, backend: Backend) -> list[Placement]:
        idle = super()._evictable(backend)
        return [p for p in idle if self.counters.total(self.counters.slot(p.engine_name)) == 0]

    def forget(self, backend: Backend) -> None:
        super().forget(backend)
        self.publish()

    async def reconcile(
        self, backend: Backend, desired: Callable[[], Awaitable[Collection[AdapterVersion]]]
    ) -> None:
        await super().reconcile(backend, desired)
        self.publish()

    async def place(self, version: AdapterVersion) -> None:
        """A follower found no placement of `version`: make one (LRU, unpinned)."""
        lease = await self.lease(version)
        lease.release()


class FollowerPool(AdapterPool):
    """A follower's AdapterPool: a mirror of the primary's table; never loads by itself."""

    def __init__(
        self,
        pool: BackendPool,
        client: httpx.AsyncClient,
        capacity: int,
        table: TableFile,
        make_backend: Callable[[str, str, str], Backend],
        primary: httpx.AsyncClient,
    ):
        super().__init__(pool, client, capacity)
        self.table = table
        self.counters = table.counters
        self.make_backend = make_backend
        self.primary = primary  # over the primary's private Unix socket
        self.on_flips: Callable[[list[SharedFlip]], None] = lambda _: None
        self.seen = -1

    def follow(self) -> None:
        if self.counters.generation > self.seen:
            self.refresh()

    async def follow_loop(self) -> None:
        while True:
            self.follow()
            await asyncio.sleep(PUBLISH_EVERY_S)

    def refresh(self) -> None:
        table = self.table.read()
        self.seen = table.generation
        self._mirror_backends(table.backends)
        self._mirror_placements(table.placements)
        self.on_flips(table.flips)

    def _mirror_backends(self, shared: list[SharedBackend]) -> None:
        known = {b.name: b for b in self.pool.backends}
        backends, changed = [], len(shared) != len(known)
        for s in shared:
            b = known.get(s.name)
            if b is None or (b.url, b.api_key) != (s.url, s.api_key):
                b, changed = self.make_backend(s.url, s.api_key, s.name), True
            if b.ready != s.ready:
                b.ready, changed = s.ready, True
                if s.ready:
                    b.breaker.succeeded()
            backends.append(b)
        if changed:
            self.pool.backends[:] = backends
            self.pool.readiness_changed()

    def _mirror_placements(self, shared: list[SharedPlacement]) -> None:
        old = {p.engine_name: p for on in self.placements.values() for p in on.values()}
        backends = {b.name: b for b in self.pool.backends}
        placements: dict[Backend, dict[str, Placement]] = {}
        for s in shared:
            backend = backends.get(s.backend)
            if backend is None:
                continue
            p = old.pop(s.engine_name, None)
            if p is None or p.backend is not backend:
                p = Placement(s.version_id, s.engine_name, backend, pinned=False)
            p.state = LoadState.DRAINING if s.draining else LoadState.READY
            placements.setdefault(backend, {})[s.version_id] = p
        for p in old.values():
            p.state = LoadState.GONE
        self.placements = placements

    def try_lease(self, version_id: str, exclude: Collection[Backend] = ()) -> Lease | None:
        for _ in range(3):
            self.follow()
            local = super().try_lease(version_id, exclude)
            if local is None:
                return None
            slot = self.counters.slot(local.engine_name)
            with self.counters.locked([slot]):
                fresh = self.counters.generation <= self.seen
                if fresh:
                    self.counters.add(slot, 1)
            if fresh:
                return SharedLease(
                    local.backend,
                    local.engine_name,
                    local.version_id,
                    local.placement,
                    counters=self.counters,
                    slot=slot,
                )
            local.release()  # the table moved meanwhile: read it and choose again
        return None

    async def lease(self, version: AdapterVersion, exclude: Collection[Backend] = ()) -> Lease:
        for _ in range(3):
            found = self.try_lease(version.id, exclude)
            if found is not None:
                return found
            await self._ask_primary(version.id)
        raise EngineNotReady("could not place the adapter on any replica; retry shortly")

    async def _ask_primary(self, version_id: str) -> None:
        body = msgspec.json.encode(PlaceRequest(version_id))
        try:
            resp = await self.primary.post(f"http://primary{PLACE_PATH}", content=body)
        except httpx.HTTPError:
            raise EngineNotReady("the gateway's primary worker is not reachable; retry") from None
        if resp.status_code != 204:
            raise EngineNotReady(f"the gateway's primary worker could not load: {resp.text}")

    async def load(self, backend: Backend, version: AdapterVersion, *, pinned: bool) -> Placement:
        raise EngineNotReady("only the primary worker loads adapters")


def bind(adapters: AdapterPool, swapper: SharedSwapper) -> None:
    """Connect a worker's pool and swapper (flips travel with the placement table)."""
    if isinstance(adapters, PrimaryPool):
        adapters.flips = swapper.flips
        swapper.published = adapters.publish
    elif isinstance(adapters, FollowerPool):
        adapters.on_flips = swapper.adopt
        swapper.follow = adapters.follow


def primary_client(socket: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None, connect=5.0))
