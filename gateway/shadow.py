"""Shadow evaluation: a share of an alias's live traffic mirrored to a candidate version.

The client never sees the candidate's answer and never waits for it: `offer` (called by the
serving path once a live answer is in hand: a dict lookup when the alias has no shadow) only
attaches a background task to the response, which runs after the response's last byte was
sent and only starts the shadow request in a task of its own. A sample is taken when
`sampled(completion id, share)` (a hash, so every gateway decides alike) and the live answer
completed and was stored (its captured completion is the pair's request ref, and erasing it
erases the pair). The engine load is bounded per gateway: at most `max_inflight` shadow
requests of the alias at once and `per_minute` started in any minute; samples past the
budget are skipped and counted. Shadow requests are sent with the same body, sampling
parameters and cache salt as the live one (non-streamed), at a worse engine priority than
live traffic when the engine schedules by priority, and never captured, metered or counted
in the tenant's usage. Each pair is stored for an evals worker to grade
(evals.shadow_grading); `summary` is what the gate and the promotion controller read.

Configuration is in the store; each gateway re-reads the active shadows every
`interval_s`, flushes its skipped counts then, and loads a started shadow's candidate as
an unpinned placement (unloaded again when the shadow stops).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
from litestar import Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from msgspec import UNSET

from adapters.placement import AdapterPool
from adapters.registry import Registry
from adapters.swap import Swapper
from evals.checks import Check
from evals.policy import PolicyIn
from gateway.cache_salt import CacheSalts
from gateway.canary import Canaries
from gateway.capture import Exchange, redact_final
from gateway.protocol import ChatCompletionRequest, CompletionRequest, encode_for_engine
from gateway.relay import RelayedStream, Tap
from gateway.tenancy import Caller
from gateway.upstream import Upstream
from store import Alias, CaptureFinal, Shadow, ShadowPair, ShadowSummary, Store, Tenant
from store.errors import Conflict, InvalidRequest, LoopgateError, NotFound

log = logging.getLogger("loopgate.shadow")

# Live requests run at vLLM's default priority 0 and batch lines at 10 (gateway.batches);
# a shadow request is the least urgent of all (a higher value is served later).
SHADOW_PRIORITY = 20
_PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_SCALE = 2**64

Request = ChatCompletionRequest | CompletionRequest


class ShadowSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A request to mirror a share of an alias's live traffic to a candidate version."""

    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    share: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.1
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4  # per gateway
    per_minute: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 60  # per gateway
    # The suite its pairs are graded with: checks that need no reference answer (regex, json,
    # length, judge); None: the reference-free checks of the tenant's gate policy.
    checks: Annotated[list[Check], msgspec.Meta(min_length=1, max_length=32)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class ShadowReport(msgspec.Struct):
    """An alias's active shadow (if any), the summary of its (or the latest) candidate, and
    every shadow the alias had, newest first."""

    active: Shadow | None
    summary: ShadowSummary | None
    history: list[Shadow]


def sampled(completion_id: str, share: float) -> bool:
    """Whether this completion is mirrored: the same answer on every gateway."""
    digest = hashlib.blake2b(completion_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * _SCALE


def grading_checks(asked: Sequence[Check] | None, policy: PolicyIn) -> list[Check]:
    """The checks a shadow's pairs are graded with: live traffic has no reference answer."""
    checks = list(asked if asked is not None else policy.tenant_checks)
    if asked is None:
        checks = [c for c in checks if not c.needs_reference]
    needing = sorted({str(c.__struct_config__.tag) for c in checks if c.needs_reference})
    if needing:
        raise InvalidRequest(
            f"checks {needing} need a reference answer, which live traffic has none of: use "
            "regex, json, length or judge checks",
            param="checks",
        )
    if not checks:
        raise InvalidRequest(
            "no checks to grade the pairs with: give 'checks' (regex, json, length or judge), "
            "or set reference-free tenant_checks in the tenant's gate policy",
            param="checks",
        )
    return checks


def _check_budget(share: float, max_inflight: int, per_minute: int) -> None:
    """The same bounds as ShadowSpec's, for callers that do not come through the API."""
    for name, ok in (
        ("share", 0.0 < share <= 1.0),
        ("max_inflight", 1 <= max_inflight <= 1024),
        ("per_minute", 1 <= per_minute <= 1_000_000),
    ):
        if not ok:
            raise InvalidRequest(f"{name} is out of range (see ShadowSpec)", param=name)


def answer_of(final: CaptureFinal) -> str:
    """An answer as graded and kept: its text, or its tool calls (JSON) when it has no text;
    PII-redacted when the tenant's captures are."""
    if final.redact:
        final = redact_final(final)
    return final.response or final.tool_calls or ""


@dataclass
class Mirror:
    """An active shadow in this gateway: its row and its budget's state."""

    record: Shadow
    inflight: int = 0
    started: deque[float] = field(default_factory=deque)  # monotonic starts, last minute
    skipped: int = 0  # skipped for the budget since the last flush

    def admit(self, now: float) -> bool:
        """Take one shadow request from the budget, or count a skip."""
        while self.started and now - self.started[0] >= 60.0:
            self.started.popleft()
        if self.inflight >= self.record.max_inflight or (
            len(self.started) >= self.record.per_minute
        ):
            self.skipped += 1
            return False
        self.inflight += 1
        self.started.append(now)
        return True


@dataclass
class Sample:
    """One live exchange chosen for mirroring, as the serving path saw it."""

    mirror: Mirror
    caller: Caller
    req: Request
    kind: str
    live_version: str | None
    exchange: Exchange
    request_id: str
    complete: bool = False  # the whole answer went out (a stream: up to its [DONE])


class _Completed(Tap):
    """Notes that a live stream reached its `[DONE]` (a tap on the relay: gateway.relay)."""

    __slots__ = ("sample",)

    def __init__(self, sample: Sample):
        self.sample = sample

    async def before_done(self) -> None:
        self.sample.complete = True


class Shadows:
    """The active shadows: sampling on the serving path, the mirror requests, admin operations."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        adapters: AdapterPool,
        swapper: Swapper,
        upstream: Upstream,
        salts: CacheSalts,
        canaries: Canaries,
        *,
        priority: int | None,
        interval_s: float = 1.0,
    ):
        self.store = store
        self.registry = registry
        self.adapters = adapters
        self.swapper = swapper
        self.upstream = upstream
        self.salts = salts
        self.canaries = canaries
        self.priority = priority
        self.interval_s = interval_s
        self.mirrors: dict[tuple[str, str], Mirror] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._gone: list[Mirror] = []  # stopped here: their skips still to flush

    # --- the serving path (no awaits) ---------------------------------------------------------

    def offer(
        self,
        caller: Caller,
        req: Request,
        kind: str,
        alias: Alias,
        live_version: str | None,
        exchange: Exchange | None,
        response: Response[bytes] | Stream,
        request_id: str,
    ) -> None:
        """Mirror this exchange once its response was sent, if the alias's shadow samples it."""
        mirror = self.mirrors.get((alias.tenant_id, alias.name))
        if mirror is None or exchange is None or not exchange.stored:
            return
        if req.priority is not UNSET or live_version == mirror.record.version:
            return  # a batch line (not live traffic), or the candidate answered live already
        if response.background is not None or not sampled(exchange.id, mirror.record.share):
            return
        sample = Sample(mirror, caller, req, kind, live_version, exchange, request_id)
        if isinstance(response, RelayedStream):
            response.taps.append(_Completed(sample))
        elif not isinstance(response, Stream):
            sample.complete = True
        response.background = BackgroundTask(self._after_response, sample)

    async def _after_response(self, sample: Sample) -> None:
        """Runs once the client has the whole answer: start the shadow request, never wait."""
        ex = sample.exchange
        if ex.error is not None or not sample.complete:
            return  # the live answer did not complete
        if self.mirrors.get(_key(sample.mirror.record)) is not sample.mirror:
            return  # stopped meanwhile
        if not sample.mirror.admit(time.monotonic()):
            return
        task = asyncio.create_task(self._mirror(sample), name=f"shadow-{ex.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _mirror(self, sample: Sample) -> None:
        try:
            answer, error, latency_ms = await self._ask_candidate(sample)
            await self._record(sample, answer, error, latency_ms)
        except Exception:  # a shadow must never disturb anything else
            log.exception("shadow request for %s failed", sample.exchange.id)
        finally:
            sample.mirror.inflight -= 1

    async def _ask_candidate(self, sample: Sample) -> tuple[str | None, str | None, float | None]:
        """(answer, None, latency) from the candidate, or (None, error, None)."""
        version = sample.mirror.record.version
        started = time.monotonic()
        try:
            lease = self.adapters.try_lease(version)
            if lease is None:
                record = await self.store.get_adapter(version)
                if record is None or record.tenant_id != sample.caller.tenant_id:
                    raise NotFound(f"version {version} is gone")
                lease = await self.adapters.lease(record)
            try:
                body = self._body(sample, lease.engine_name)
                path = _PATHS[sample.kind]
                content = await self.upstream.post(lease.backend, path, body, secrets.token_hex(12))
            finally:
                lease.release()
        except LoopgateError as exc:
            return None, exc.message[:500], None
        latency_ms = (time.monotonic() - started) * 1000
        answer = Exchange(sample.exchange.id, started, True, redact=sample.exchange.redact)
        answer.read_body(content)
        return answer_of(answer.final("complete")), None, latency_ms

    def _body(self, sample: Sample, engine_name: str) -> bytes:
        """The live request's body as the candidate gets it: not streamed, least priority."""
        priority = UNSET if self.priority is None else self.priority
        req = msgspec.structs.replace(
            sample.req, stream=False, stream_options=UNSET, priority=priority
        )
        return encode_for_engine(req, engine_name, self.salts.of(sample.caller.tenant_id))

    async def _record(
        self, sample: Sample, answer: str | None, error: str | None, latency_ms: float | None
    ) -> None:
        record = sample.mirror.record
        pair = ShadowPair(
            id="shp_" + secrets.token_hex(8),
            shadow_id=record.id,
            tenant_id=record.tenant_id,
            alias=record.alias,
            live_completion_id=sample.exchange.id,
            request_id=sample.request_id,
            live_version=sample.live_version,
            candidate_version=record.version,
            live_answer=answer_of(sample.exchange.final("complete")),
            candidate_answer=answer,
            candidate_error=error,
            candidate_latency_ms=latency_ms,
            created_at=time.time(),
        )
        await self.store.add_shadow_pair(pair)

    # --- admin (the promotion controller calls these too) -------------------------------------

    async def start(
        self,
        tenant: Tenant,
        alias: str,
        version: str,
        *,
        share: float = 0.1,
        max_inflight: int = 4,
        per_minute: int = 60,
        checks: Sequence[Check] | None = None,
        actor: str = "admin",
        reason: str | None = None,
    ) -> Shadow:
        """Mirror `share` of the alias's live traffic to `version` (loaded now, unpinned)."""
        _check_budget(share, max_inflight, per_minute)
        found = await self.store.get_alias(tenant.id, alias)
        if found is None:
            raise NotFound(f"no alias '{alias}' for this tenant", param="alias")
        candidate = await self.registry.get(tenant, version)
        if candidate.status == "retired":
            raise Conflict(f"version {candidate.id} is retired", param="version")
        if self.swapper.current(found).adapter_version == candidate.id:
            raise Conflict(f"alias '{alias}' already serves {candidate.id}", param="version")
        graded_by = grading_checks(checks, await self._policy(tenant.id))
        record = Shadow(
            id="sh_" + secrets.token_hex(8),
            tenant_id=tenant.id,
            alias=alias,
            version=candidate.id,
            share=share,
            max_inflight=max_inflight,
            per_minute=per_minute,
            checks=msgspec.json.encode(graded_by).decode(),
            status="active",
            actor=actor,
            started_at=time.time(),
            reason=reason,
        )
        await self.store.add_shadow(record)  # Conflict: the alias has one (on any gateway)
        try:
            (await self.adapters.lease(candidate)).release()  # loaded before traffic comes
        except BaseException:
            await self.store.end_shadow(record.id, "the candidate could not be loaded")
            raise
        self.mirrors[(tenant.id, alias)] = Mirror(record)
        log.info(
            "shadow %s on %s/%s: %s at %g by %s",
            record.id,
            tenant.name,
            alias,
            version,
            share,
            actor,
        )
        return record

    async def stop(
        self,
        tenant: Tenant,
        alias: str,
        actor: str,
        reason: str | None,
        shadow_id: str | None = None,
    ) -> Shadow:
        """End the alias's active shadow (404 when it has none, or `shadow_id` is not it); its
        candidate is unloaded unless something else uses it."""
        active = await self._active(tenant, alias)
        if shadow_id is not None and active.id != shadow_id:
            raise NotFound(f"shadow {shadow_id} is not active on alias '{alias}'", param="alias")
        why = f"stopped by {actor}: {reason or 'no reason given'}"
        await self.store.end_shadow(active.id, why)
        self._forget(_key(active))
        self._unload_later(active.version)
        log.info("shadow %s on %s/%s %s", active.id, tenant.name, alias, why)
        return msgspec.structs.replace(active, status="stopped", reason=why, ended_at=time.time())

    async def summary(
        self, tenant: Tenant, alias: str, version: str | None = None
    ) -> ShadowSummary:
        """Every pair of the alias's shadow of `version` (default: the active shadow's)."""
        if version is None:
            version = (await self._active(tenant, alias)).version
        return await self.store.shadow_summary(tenant.id, alias, version)

    async def report(self, tenant: Tenant, alias: str) -> ShadowReport:
        if await self.store.get_alias(tenant.id, alias) is None:
            raise NotFound(f"no alias '{alias}' for this tenant", param="alias")
        await self.flush()
        history = await self.store.shadows_of(tenant.id, alias)
        active = next((s for s in history if s.status == "active"), None)
        latest = active or (history[0] if history else None)
        summary = None
        if latest is not None:
            summary = await self.store.shadow_summary(tenant.id, alias, latest.version)
        return ShadowReport(active, summary, history)

    async def _active(self, tenant: Tenant, alias: str) -> Shadow:
        for shadow in await self.store.shadows_of(tenant.id, alias):
            if shadow.status == "active":
                return shadow
        raise NotFound(f"alias '{alias}' has no active shadow", param="alias")

    async def _policy(self, tenant_id: str) -> PolicyIn:
        raw = await self.store.get_gate_policy(tenant_id)
        return PolicyIn() if raw is None else msgspec.json.decode(raw, type=PolicyIn)

    def _forget(self, key: tuple[str, str]) -> None:
        mirror = self.mirrors.pop(key, None)
        if mirror is not None:
            self._gone.append(mirror)

    def _unload_later(self, version_id: str) -> None:
        """Drain and unload the candidate unless an alias, a canary or a shadow still uses it."""
        if any(m.record.version == version_id for m in self.mirrors.values()) or any(
            r.record.version == version_id for r in self.canaries.running.values()
        ):
            return
        task = asyncio.create_task(self._retire(version_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _retire(self, version_id: str) -> None:
        try:
            await self.swapper.retire_if_unused(version_id)
        except Exception:
            log.exception("could not unload shadow candidate %s", version_id)

    # --- every gateway: the store's configuration, skipped counts ----------------------------

    async def sync(self) -> None:
        """Pick up shadows started, and drop those stopped, by any gateway on this store."""
        active = {_key(s): s for s in await self.store.active_shadows()}
        for key, mirror in list(self.mirrors.items()):
            if active.get(key) is None or active[key].id != mirror.record.id:
                self._forget(key)
        for key, record in active.items():
            if key not in self.mirrors:
                self.mirrors[key] = Mirror(record)

    async def flush(self) -> None:
        """Add this gateway's skipped counts to the store's."""
        mirrors, self._gone = [*self.mirrors.values(), *self._gone], []
        skipped: dict[str, int] = {}
        for mirror in mirrors:
            if mirror.skipped:
                skipped[mirror.record.id] = skipped.get(mirror.record.id, 0) + mirror.skipped
                mirror.skipped = 0
        if skipped:
            await self.store.add_shadow_skips(skipped)

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
                await self.flush()
            except Exception:  # the next pass tries again
                log.exception("shadow sync failed")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        """Stop the shadow requests in flight (nothing waits on them) and flush the skips."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            await self.flush()
        except Exception:
            log.exception("could not flush shadow skips at shutdown")


def _key(shadow: Shadow) -> tuple[str, str]:
    return shadow.tenant_id, shadow.alias


class RolloutShadows:
    """The shadow stage as the promotion controller calls it (gateway.rollout_evidence's
    ShadowEvidence): pairs graded with the tenant policy's reference-free checks."""

    def __init__(self, shadows: Shadows):
        self.shadows = shadows

    async def start(
        self, tenant: Tenant, alias: str, version: str, share: float, actor: str
    ) -> str:
        reason = "the promotion controller's shadow stage"
        started = await self.shadows.start(
            tenant, alias, version, share=share, actor=actor, reason=reason
        )
        return started.id

    async def summary(self, tenant: Tenant, alias: str, version: str) -> ShadowSummary:
        return await self.shadows.summary(tenant, alias, version)

    async def stop(self, tenant: Tenant, alias: str, shadow_id: str, reason: str) -> None:
        await self.shadows.stop(tenant, alias, "rollout", reason, shadow_id)
