"""The live-swap protocol: load and probe on each replica → flip → drain and unload the old.

Each replica loads the new version and answers a one-token probe at its own pace (the probe runs
ahead of live traffic under vLLM's priority scheduling); the alias flips as soon as one replica
is ready, and the others take leases as their own probes answer. The old version's drain and
unload run in the background while requests on it are still streaming.

The flip is the only moment a request's version is decided differently: `Swapper.current`
answers, without awaiting, which target an alias has right now in this process, and routing
takes its lease in the same step, so a request either leased the old version before the flip
(and finishes on it: the drain waits for it) or sees the new one. Operations on one alias are
serialised by a lock; concurrent promotes end in one consistent state.

A version trained on data that was later erased (`AdapterVersion.trained_on_erased`, set by the
erase: gateway.erasure) is refused by every promote and rollback unless forced with a reason;
the alias history records the forced event and a reason that names the erased dataset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field

import httpx
import msgspec

from adapters.placement import AdapterPool, LoadState, Placement
from adapters.registry import Registry, Transition, check_alias_name, next_status
from replicas.pool import Backend
from store import AdapterVersion, Alias, AliasEvent, AliasTarget, Store, Tenant
from store.errors import Conflict, EngineNotReady, NotFound, Unprocessable, UpstreamUnavailable

log = logging.getLogger("loopgate.swap")

# The probe: one token from a one-token raw prompt (/v1/completions). It proves the adapter
# went into a slot and serves; without a chat template its prefill is one token, not the ~36 of
# a templated chat, which on a busy CPU engine made its step the longest of the swap.
PROBE_PROMPT = "Hello"
PROBE_TOKENS = 1  # one engine step proves the adapter serves; every more token is one more step
PROBE_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
CHANGE_PROBE_TOKENS = 8  # `require_change` compares this much greedy chat with the base's
# Probes go ahead of live traffic (vLLM's default 0; lower runs first) under priority scheduling.
PROBE_PRIORITY = -10


class SwapReport(msgspec.Struct):
    alias: str
    action: str
    from_version: str | None
    to_version: str | None
    load_s: float
    probe_s: float
    flip_s: float
    drain_s: float
    drained: bool
    probe_output: str
    at: float
    replicas: list[str] = []  # where the new version was loaded and probed
    left_out: list[str] = []  # replicas that missed the swap, with why (reconciliation follows)
    flipped_after_s: float = 0.0  # from the call's start until routing served the new version


@dataclass
class Ready:
    """The version staged, probed and taking leases on one replica."""

    placement: Placement
    output: str
    load_s: float
    probe_s: float


REPLICA_FAULTS = (UpstreamUnavailable, EngineNotReady, Unprocessable)


class Rollout:
    """The per-replica load-and-probe tasks of one swap, read as they finish: the alias flips
    at the first replica ready; the others join (or are left out, with why) afterwards."""

    def __init__(self, tasks: dict[asyncio.Task[Ready], Backend]):
        self.pending = tasks
        self.ready: list[Ready] = []
        self.left_out: list[str] = []
        self._faults: list[Exception] = []

    async def first_ready(self) -> Ready:
        """The first replica ready; when none gets there, the first replica's fault."""
        while self.pending:
            done, _ = await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self._take(task)
            if self.ready:
                return self.ready[0]
        raise self._faults[0]

    async def settle(self) -> None:
        """Wait for the replicas still loading or probing (each bounded by the admin timeout)."""
        if self.pending:
            await asyncio.wait(self.pending)
        for task in list(self.pending):
            self._take(task)

    async def abandon(self) -> None:
        """The swap failed: wait for the replicas still at work, their outcomes unread."""
        if self.pending:
            await asyncio.wait(self.pending)
        for task in self.pending:
            if not task.cancelled():
                task.exception()  # read: asyncio would log it as never retrieved
        self.pending.clear()

    def _take(self, task: asyncio.Task[Ready]) -> None:
        backend = self.pending.pop(task)
        exc = task.exception()
        if exc is None:
            self.ready.append(task.result())
        elif isinstance(exc, REPLICA_FAULTS):
            self._faults.append(exc)
            self.left_out.append(f"{backend.name}: {exc}")
            log.warning("swap goes ahead without %s: %s", backend.name, exc)
        else:
            raise exc  # not a replica's fault (a bug, or the swap was cancelled)


def probe_priority(scheduling_policy: str) -> int | None:
    """The probe's vLLM priority: ahead of live traffic, when the engine schedules by priority
    (vLLM documents refusing a priority otherwise)."""
    return PROBE_PRIORITY if scheduling_policy == "priority" else None


def erasure_reason(version: AdapterVersion, *, forced: bool, reason: str | None) -> str | None:
    """A version trained on data that was later erased (`trained_on_erased`) goes live only
    when forced with a reason (a 409 `trained_on_erased` otherwise, rollbacks included); the
    reason the alias history records then says so."""
    if not version.trained_on_erased:
        return reason
    if not forced or not (reason or "").strip():
        raise Conflict(
            f"{version.id} was trained on dataset {version.dataset_id}, which held data that was "
            "later erased: promote it with force and a reason to serve it anyway, or train a "
            "new version on a fresh dataset",
            param="version",
            code="trained_on_erased",
        )
    return f"{reason} [trained on erased data: dataset {version.dataset_id}]"


@dataclass
class Swapper:
    store: Store
    registry: Registry
    adapters: AdapterPool
    client: httpx.AsyncClient
    base_engine_name: str
    drain_timeout_s: float = 300.0
    store_fresh_after_s: float = 6.0  # the alias cache's TTL and a margin (see `current`)
    probe_priority: int | None = None  # vLLM's priority for probes; None: the engine is fcfs
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    _current: dict[tuple[str, str], tuple[AliasTarget, float]] = field(default_factory=dict)
    _background: set[asyncio.Task[bool]] = field(default_factory=set)

    def current(self, alias: Alias) -> AliasTarget:
        """The alias's target as this process knows it now. Right after a swap of ours that is
        newer than a cached read of the alias; once the cache's TTL has passed every read is
        newer than our flip, and the store is the truth again (another gateway on the same
        store may have moved the alias since)."""
        key = (alias.tenant_id, alias.name)
        mine = self._current.get(key)
        if mine is None:
            return alias.target
        target, flipped = mine
        if time.monotonic() - flipped > self.store_fresh_after_s:
            del self._current[key]
            return alias.target
        return target

    def forget(self, tenant_id: str, alias: str) -> None:
        """The alias was changed outside a swap (admin set/delete): the store is the truth."""
        self._current.pop((tenant_id, alias), None)

    def lock(self, tenant_id: str, alias: str) -> asyncio.Lock:
        return self._locks.setdefault((tenant_id, alias), asyncio.Lock())

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
        async with self.lock(tenant.id, alias):
            version = await self.registry.get(tenant, version_ref)
            next_status(version.status, Transition.PROMOTE)
            reason = erasure_reason(version, forced=forced, reason=reason)
            existing = await self.store.get_alias(tenant.id, alias)
            if existing is None:
                check_alias_name(alias)  # a promote creates the alias: same rules as a set
            old = self.current(existing) if existing else AliasTarget()
            if old.adapter_version == version.id:
                raise Conflict(f"alias '{alias}' already serves {version.id}")
            return await self._swap(
                tenant, alias, old, version, actor, reason, require_change, action, forced
            )

    async def rollback(
        self, tenant: Tenant, alias: str, *, actor: str, reason: str | None
    ) -> SwapReport:
        """Return the alias to what it served before its last promote or rollback."""
        events = [
            e
            for e in await self.store.alias_events(tenant.id, alias)
            if e.action in ("promote", "rollback")
        ]
        if not events:
            raise NotFound(f"alias '{alias}' has no earlier version to roll back to", param="alias")
        previous = events[-1].from_version
        if previous is None:
            return await self.to_base(tenant, alias, actor=actor, reason=reason)
        return await self.promote(
            tenant, alias, previous, actor=actor, reason=reason, action="rollback"
        )

    async def to_base(
        self, tenant: Tenant, alias: str, *, actor: str, reason: str | None
    ) -> SwapReport:
        async with self.lock(tenant.id, alias):
            existing = await self.store.get_alias(tenant.id, alias)
            if existing is None:
                raise NotFound(f"no alias '{alias}' for this tenant", param="alias")
            old = self.current(existing)
            started = time.monotonic()
            await self._flip(tenant.id, alias, old, AliasTarget(), actor, reason, "rollback")
            flipped = time.monotonic()
            drained = await self._retire_after_flip(old.adapter_version)
            return SwapReport(
                alias,
                "rollback",
                old.adapter_version,
                None,
                0.0,
                0.0,
                flipped - started,
                time.monotonic() - flipped,
                drained,
                "",
                time.time(),
            )

    async def _swap(
        self,
        tenant: Tenant,
        alias: str,
        old: AliasTarget,
        version: AdapterVersion,
        actor: str,
        reason: str | None,
        require_change: bool,
        action: str,
        forced: bool = False,
    ) -> SwapReport:
        t0 = time.monotonic()
        rollout = Rollout(self._start_rollout(version))
        try:
            first = await rollout.first_ready()
            if require_change:
                await self._differs_from_base(first)
        except BaseException:
            await rollout.abandon()  # every load has answered: nothing lands after the retire
            if not await self.store.aliases_to(version.id):
                await self.adapters.retire(version.id)
            raise
        t1 = time.monotonic()
        target = AliasTarget("adapter", version.id)
        await self._flip(tenant.id, alias, old, target, actor, reason, action, forced)
        await self.store.set_adapter_status(
            version.id, next_status(version.status, Transition.PROMOTE)
        )
        t2 = time.monotonic()
        await rollout.settle()  # the other replicas join once their own probes answer
        t3 = time.monotonic()
        drained = await self._retire_after_flip(old.adapter_version)
        t4 = time.monotonic()
        log.info(
            "%s %s/%s: %s -> %s (load %.2fs probe %.2fs drain %.2fs; flipped at %.2fs, "
            "every replica at %.2fs, old version %s)",
            action,
            tenant.name,
            alias,
            old.adapter_version or "base",
            version.id,
            first.load_s,
            first.probe_s,
            t4 - t3,
            t2 - t0,
            t3 - t0,
            "unloaded" if drained else "draining in the background",
        )
        return SwapReport(
            alias,
            action,
            old.adapter_version,
            version.id,
            first.load_s,
            first.probe_s,
            t2 - t1,
            t4 - t3,
            drained,
            first.output,
            time.time(),
            replicas=[r.placement.backend.name for r in rollout.ready],
            left_out=rollout.left_out,
            flipped_after_s=t2 - t0,
        )

    def _start_rollout(self, version: AdapterVersion) -> dict[asyncio.Task[Ready], Backend]:
        """Load and probe on every ready replica at once, each at its own pace."""
        backends = [b for b in self.adapters.pool.backends if b.ready]
        if not backends:
            raise EngineNotReady("no replica is ready to load the adapter")
        return {asyncio.create_task(self._ready_on(b, version)): b for b in backends}

    async def _ready_on(self, backend: Backend, version: AdapterVersion) -> Ready:
        """Stage the version on one replica, probe it there, and let it take leases. A failed
        probe drains the placement in the background (a stuck replica must not hold the swap)."""
        t0 = time.monotonic()
        placement = await self.adapters.stage(backend, version)
        t1 = time.monotonic()
        try:
            output = await self._probe(backend, placement.engine_name)
        except Unprocessable:
            placement.state = LoadState.DRAINING  # no lease reaches it from now on
            self._in_background(self.adapters.unload(placement, self.drain_timeout_s))
            raise
        self.adapters.admit(placement)
        return Ready(placement, output, t1 - t0, time.monotonic() - t1)

    async def _differs_from_base(self, first: Ready) -> None:
        """`require_change`: a longer greedy answer from the adapter, unlike the base's."""
        backend, name = first.placement.backend, first.placement.engine_name
        tuned = await self._chat(backend, name)
        base = await self._chat(backend, self.base_engine_name)
        if base == tuned:
            raise Unprocessable(
                "probe: the adapter answers exactly like the base model; refusing to promote",
                param="require_change",
            )

    async def _retire_after_flip(self, version_id: str | None) -> bool:
        """Retire the version the alias left. Idle placements are unloaded before the call
        answers; ones still streaming drain in the background (the flip is what clients see).
        True: nothing of it is left loaded."""
        if not await self._mark_replaced(version_id):
            return True
        assert version_id is not None
        placements = self.adapters.placements_of(version_id)
        if all(p.inflight == 0 for p in placements):
            return await self.adapters.retire(version_id, self.drain_timeout_s)
        for p in placements:
            if p.state is LoadState.READY:
                p.state = LoadState.DRAINING  # from the answer on, as the unload would
        self._in_background(self.adapters.retire(version_id, self.drain_timeout_s))
        return False

    def _in_background(self, work: Coroutine[object, object, bool]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[bool]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background unload failed", exc_info=exc)

    async def _probe(self, backend: Backend, model: str) -> str:
        body = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": PROBE_TOKENS}
        choice = await self._ask(backend, "/v1/completions", body)
        return str(choice.get("text") or "")

    async def _chat(self, backend: Backend, model: str) -> str:
        body = {"model": model, "messages": PROBE_MESSAGES, "max_tokens": CHANGE_PROBE_TOKENS}
        choice = await self._ask(backend, "/v1/chat/completions", body)
        message = choice.get("message")
        return str((message.get("content") if isinstance(message, dict) else None) or "")

    async def _ask(self, backend: Backend, path: str, body: dict[str, object]) -> dict[str, object]:
        """One greedy request to `backend`, ahead of live traffic; its first choice."""
        body["temperature"] = 0
        if self.probe_priority is not None:
            body["priority"] = self.probe_priority
        timeout_s = self.adapters.admin_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self.client.post(
                    backend.url + path, json=body, headers=backend.headers
                )
        except TimeoutError:
            raise Unprocessable(
                f"probe on replica {backend.name} got no answer within {timeout_s:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise Unprocessable(f"probe request to replica {backend.name} failed: {exc}") from None
        if resp.status_code != 200:
            raise Unprocessable(
                f"probe on replica {backend.name} answered {resp.status_code}: {resp.text[:300]}"
            )
        try:
            choice = resp.json()["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            choice = None
        if not isinstance(choice, dict):
            raise Unprocessable(
                f"probe on replica {backend.name} answered without a choice: {resp.text[:300]}"
            )
        return choice

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
        event = AliasEvent(
            0,
            tenant_id,
            alias,
            action,
            old.adapter_version,
            new.adapter_version,
            actor,
            reason,
            forced,
            0.0,
        )
        await self.store.flip_alias(tenant_id, alias, new, event)
        self._current[(tenant_id, alias)] = (new, time.monotonic())  # routing sees it now

    async def retire_if_unused(self, version_id: str | None) -> bool:
        """Retire a version no alias serves any more, waiting for its drain."""
        if not await self._mark_replaced(version_id):
            return True
        assert version_id is not None
        return await self.adapters.retire(version_id, self.drain_timeout_s)

    async def _mark_replaced(self, version_id: str | None) -> bool:
        """A live version no alias serves any more becomes replaced. False: nothing to retire
        (no version, or another alias still serves it)."""
        if version_id is None:
            return False
        if any(
            self.current(a).adapter_version == version_id
            for a in await self.store.aliases_to(version_id)
        ):
            return False  # still served by another alias
        old = await self.store.get_adapter(version_id)
        if old is not None and old.status == "live":
            await self.store.set_adapter_status(
                version_id, next_status(old.status, Transition.REPLACE)
            )
        return True

    async def pinned_versions(self) -> list[AdapterVersion]:
        """Versions some alias serves now: what every replica should hold."""
        versions = []
        for alias in await self.store.live_aliases():
            version_id = self.current(alias).adapter_version
            if version_id and (v := await self.store.get_adapter(version_id)) is not None:
                versions.append(v)
        return versions
