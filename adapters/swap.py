"""The live-swap protocol: load everywhere → probe → flip the alias → drain → unload the old.

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
from dataclasses import dataclass, field

import httpx
import msgspec

from adapters.placement import AdapterPool, LoadState, Placement
from adapters.registry import Registry, Transition, check_alias_name, next_status
from replicas.pool import Backend
from store import AdapterVersion, Alias, AliasEvent, AliasTarget, Store, Tenant
from store.errors import Conflict, EngineNotReady, NotFound, Unprocessable, UpstreamUnavailable

log = logging.getLogger("loopgate.swap")

PROBE_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]


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
            drained = await self.retire_if_unused(old.adapter_version)
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
        placements, left_out = await self._load_everywhere(version)
        t1 = time.monotonic()
        try:
            output, placements, probe_left_out = await self._probe(placements, require_change)
        except BaseException:
            if not await self.store.aliases_to(version.id):
                await self.adapters.retire(version.id)
            raise
        left_out += probe_left_out
        t2 = time.monotonic()
        target = AliasTarget("adapter", version.id)
        await self._flip(tenant.id, alias, old, target, actor, reason, action, forced)
        await self.store.set_adapter_status(
            version.id, next_status(version.status, Transition.PROMOTE)
        )
        t3 = time.monotonic()
        drained = await self.retire_if_unused(old.adapter_version)
        t4 = time.monotonic()
        log.info(
            "%s %s/%s: %s -> %s (load %.2fs probe %.2fs drain %.2fs)",
            action,
            tenant.name,
            alias,
            old.adapter_version or "base",
            version.id,
            t1 - t0,
            t2 - t1,
            t4 - t3,
        )
        return SwapReport(
            alias,
            action,
            old.adapter_version,
            version.id,
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3,
            drained,
            output,
            time.time(),
            replicas=[p.backend.name for p in placements],
            left_out=left_out,
        )

    async def _load_everywhere(self, version: AdapterVersion) -> tuple[list[Placement], list[str]]:
        """Load on every ready replica. One that fails or is stuck is left out (reconciliation
        loads the version there once the alias serves it); only when none loads, the swap fails.
        """
        backends = [b for b in self.adapters.pool.backends if b.ready]
        if not backends:
            raise EngineNotReady("no replica is ready to load the adapter")
        results = await asyncio.gather(
            *(self.adapters.load(b, version, pinned=True) for b in backends),
            return_exceptions=True,
        )
        placements: list[Placement] = []
        left_out: list[str] = []
        errors: list[Exception] = []
        for backend, result in zip(backends, results, strict=True):
            if isinstance(result, Placement):
                placements.append(result)
            elif isinstance(result, UpstreamUnavailable | EngineNotReady):
                errors.append(result)
                left_out.append(f"{backend.name}: {result}")
            else:
                raise result  # not a replica's fault (a bug, or the swap was cancelled)
        if not placements:
            raise errors[0]
        for note in left_out:
            log.warning("swap of %s goes ahead without %s", version.id, note)
        return placements, left_out

    async def _probe(
        self, placements: list[Placement], require_change: bool
    ) -> tuple[str, list[Placement], list[str]]:
        """One short greedy request per replica (and, with `require_change`, an answer unlike
        the base's). Replicas whose probe fails are left out and their placement unloaded, as
        long as one replica probed well; when none did, the swap fails."""
        results = await asyncio.gather(
            *(self._complete(p.backend, p.engine_name) for p in placements),
            return_exceptions=True,
        )
        good: list[tuple[Placement, str]] = []
        failed: list[tuple[Placement, Unprocessable]] = []
        for p, result in zip(placements, results, strict=True):
            if isinstance(result, str):
                good.append((p, result))
            elif isinstance(result, Unprocessable):
                failed.append((p, result))
            else:
                raise result
        if not good:
            raise failed[0][1]
        first, output = good[0]
        if require_change:
            base = await self._complete(first.backend, self.base_engine_name)
            if base == output:
                raise Unprocessable(
                    "probe: the adapter answers exactly like the base model; refusing to promote",
                    param="require_change",
                )
        for p, exc in failed:
            log.warning("swap goes ahead without %s: %s", p.backend.name, exc)
            p.state = LoadState.DRAINING  # no lease reaches it from now on
            task = asyncio.create_task(self.adapters.unload(p, self.drain_timeout_s))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return output, [p for p, _ in good], [f"{p.backend.name}: {exc}" for p, exc in failed]

    async def _complete(self, backend: Backend, model: str) -> str:
        body = {"model": model, "messages": PROBE_MESSAGES, "max_tokens": 4, "temperature": 0}
        url = backend.url + "/v1/chat/completions"
        timeout_s = self.adapters.admin_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self.client.post(url, json=body, headers=backend.headers)
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
        return str(resp.json()["choices"][0]["message"]["content"] or "")

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
        if version_id is None:
            return True
        if any(
            self.current(a).adapter_version == version_id
            for a in await self.store.aliases_to(version_id)
        ):
            return True  # still served by another alias
        old = await self.store.get_adapter(version_id)
        if old is not None and old.status == "live":
            await self.store.set_adapter_status(
                version_id, next_status(old.status, Transition.REPLACE)
            )
        return await self.adapters.retire(version_id, self.drain_timeout_s)

    async def pinned_versions(self) -> list[AdapterVersion]:
        """Versions some alias serves now: what every replica should hold."""
        versions = []
        for alias in await self.store.live_aliases():
            version_id = self.current(alias).adapter_version
            if version_id and (v := await self.store.get_adapter(version_id)) is not None:
                versions.append(v)
        return versions
