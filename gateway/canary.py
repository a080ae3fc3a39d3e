"""Canary releases: a sticky share of an alias's traffic on a candidate version, its live
signals against the normal target, and the monitor that rolls it back when they go bad.

Routing never awaits: the active canaries live in memory (loaded from the store at start,
changed by the admin API, re-synced with the store by the monitor for other gateways' changes).
Each arm's requests, errors and latency histogram are counted here and flushed to the store
every `flush_interval_s` (and on shutdown) as deltas that every gateway adds to the same rows;
the monitor's verdict and the report read those sums, so they cover every gateway's traffic.
The feedback read for an arm is of the completions this gateway sampled.

A user lands in the canary when `bucket(tenant, alias, user) < percent * 100` (of 10,000
buckets), so the same user always sees the same arm. Every decision is a canary row in the
store (status + reason + ended_at) and a log line; promotion goes through the Swapper, which
records its own alias event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from adapters.registry import Registry
from adapters.swap import Swapper, SwapReport
from store import (
    Alias,
    ArmCounts,
    Canary,
    CanaryArm,
    CanaryDelta,
    CanaryStatus,
    Feedback,
    Store,
    Tenant,
)
from store.errors import (
    Conflict,
    EngineError,
    EngineNotReady,
    NotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from store.latency import bucket_of, quantile_ms

log = logging.getLogger("loopgate.canary")

BUCKETS = 10_000
FLUSH_INTERVAL_S = 1.0  # how often this gateway adds its counts to the store
FEEDBACK_SAMPLES = 500  # per arm: the most recent stored completions whose feedback is read
MIN_LIVE_SAMPLES = 5  # the latency ratio needs a live p50 worth comparing against


class Thresholds(msgspec.Struct, forbid_unknown_fields=True):
    """When the monitor rolls a canary back (checked once it has `min_requests` requests)."""

    max_error_rate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.05
    max_negative_feedback_rate: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.3
    max_latency_ratio: Annotated[float, msgspec.Meta(ge=1.0)] = 2.0
    min_requests: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20


class CanarySpec(msgspec.Struct, forbid_unknown_fields=True):
    """A request to start a canary on an alias."""

    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    percent: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)]
    thresholds: Thresholds = msgspec.field(default_factory=Thresholds)
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class ArmSignals(msgspec.Struct):
    """One arm's live signals since the canary started (every gateway's requests, errors and
    latency as of their last flush; the feedback of this gateway's sampled completions)."""

    requests: int
    errors: int
    error_rate: float
    p50_latency_ms: float | None
    latency_samples: int
    feedback_sample: int  # stored completions whose feedback was last read
    negative_feedback: int
    negative_feedback_rate: float | None
    p95_latency_ms: float | None = None


class ActiveCanary(msgspec.Struct):
    canary: Canary
    thresholds: Thresholds
    canary_arm: ArmSignals
    live_arm: ArmSignals


class CanaryReport(msgspec.Struct):
    active: ActiveCanary | None
    history: list[Canary]


class CanaryPromotion(msgspec.Struct):
    canary: Canary
    swap: SwapReport


def bucket(tenant_id: str, alias: str, sticky_id: str) -> int:
    """A stable bucket in [0, BUCKETS) for one end-user of one alias."""
    key = f"{tenant_id}\x1f{alias}\x1f{sticky_id}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_canary(percent: float, bucket_no: int) -> bool:
    return bucket_no < percent * (BUCKETS / 100)


def counts_against_canary(exc: BaseException) -> bool:
    """A failure of the candidate (not of the request): retried on the normal target."""
    if isinstance(exc, EngineError):
        return exc.status_code >= 500 or exc.status_code == 404  # crashed / lost the adapter
    return isinstance(exc, UpstreamUnavailable | UpstreamTimeout | EngineNotReady | NotFound)


def is_negative(feedback: Feedback) -> bool:
    return feedback.rating == "down" or (feedback.score is not None and feedback.score < 0.5)


@dataclass
class ArmStats:
    """This gateway's counters of one arm: the deltas not yet flushed to the store, and the
    sample of stored completions whose feedback is read. Only touched from the event loop."""

    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)  # store.latency bucket -> answers
    completions: deque[str] = field(default_factory=lambda: deque(maxlen=FEEDBACK_SAMPLES))
    negative_ids: set[str] = field(default_factory=set)
    feedback_sample: int = 0

    def served(self, latency_s: float, completion_id: str | None) -> None:
        self.requests += 1
        bucket = bucket_of(latency_s * 1000)
        self.latency[bucket] = self.latency.get(bucket, 0) + 1
        if completion_id is not None:
            self.completions.append(completion_id)

    def failed(self) -> None:
        self.requests += 1
        self.errors += 1

    def take(self) -> ArmCounts | None:
        """The counts since the last take (None: nothing new), reset to zero."""
        if not self.requests:
            return None
        counts = ArmCounts(self.requests, self.errors, self.latency)
        self.requests, self.errors, self.latency = 0, 0, {}
        return counts

    def signals(self, total: ArmCounts) -> ArmSignals:
        """The arm's signals from every gateway's `total` and this gateway's feedback sample."""
        answered = sum(total.latency.values())
        p50, p95 = quantile_ms(total.latency, 0.5), quantile_ms(total.latency, 0.95)
        sample = self.feedback_sample
        negatives = len(self.negative_ids)
        return ArmSignals(
            requests=total.requests,
            errors=total.errors,
            error_rate=total.errors / total.requests if total.requests else 0.0,
            p50_latency_ms=p50,
            latency_samples=answered,
            feedback_sample=sample,
            negative_feedback=negatives,
            negative_feedback_rate=negatives / sample if sample else None,
            p95_latency_ms=p95,
        )

    async def read_feedback(self, store: Store, tenant_id: str) -> None:
        """Which of the sampled completions got negative feedback (a store read per id)."""
        ids = list(self.completions)
        negatives = self.negative_ids.intersection(ids)  # known ones need no second read
        for cid in ids:
            if cid not in negatives and any(
                is_negative(f) for f in await store.list_feedback(tenant_id, cid)
            ):
                negatives.add(cid)
        self.negative_ids, self.feedback_sample = negatives, len(ids)


def verdict(t: Thresholds, canary: ArmSignals, live: ArmSignals) -> str | None:
    """Why the canary must be rolled back now, or None while it may go on."""
    n = canary.requests
    if n < t.min_requests:
        return None
    if canary.error_rate > t.max_error_rate:
        return f"error rate {canary.error_rate:.2f} > {t.max_error_rate:.2f} after {n} requests"
    rate = canary.negative_feedback_rate
    sampled = canary.feedback_sample >= t.min_requests
    if rate is not None and sampled and rate > t.max_negative_feedback_rate:
        return (
            f"negative feedback rate {rate:.2f} > {t.max_negative_feedback_rate:.2f} "
            f"over {canary.feedback_sample} completions"
        )
    c50, l50 = canary.p50_latency_ms, live.p50_latency_ms
    if c50 is not None and l50 and live.latency_samples >= MIN_LIVE_SAMPLES:
        ratio = c50 / l50
        if ratio > t.max_latency_ratio:
            return (
                f"latency ratio {ratio:.2f} > {t.max_latency_ratio:.2f} (p50 {c50:.1f} ms vs "
                f"live {l50:.1f} ms) after {n} requests"
            )
    return None


@dataclass
class Running:
    """An active canary in this process: its row, thresholds and both arms' counters."""

    record: Canary
    thresholds: Thresholds
    canary: ArmStats = field(default_factory=ArmStats)
    live: ArmStats = field(default_factory=ArmStats)
    totals: dict[str, ArmCounts] = field(default_factory=dict)  # every gateway's, last read

    def signals(self) -> tuple[ArmSignals, ArmSignals]:
        """(canary arm, live arm) from the totals last read from the store."""
        return (
            self.canary.signals(self.totals.get("canary", ArmCounts())),
            self.live.signals(self.totals.get("live", ArmCounts())),
        )

    def report(self) -> ActiveCanary:
        return ActiveCanary(self.record, self.thresholds, *self.signals())

    def deltas(self) -> list[CanaryDelta]:
        """This gateway's counts since the last flush, taken (the arms start again at zero)."""
        arms: tuple[tuple[CanaryArm, ArmStats], ...] = (
            ("canary", self.canary),
            ("live", self.live),
        )
        return [
            CanaryDelta(self.record.id, arm, counts)
            for arm, stats in arms
            if (counts := stats.take()) is not None
        ]


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where one request goes: the canary version, or the alias's normal target."""

    running: Running
    to_canary: bool

    @property
    def stats(self) -> ArmStats:
        return self.running.canary if self.to_canary else self.running.live


def _thresholds_of(record: Canary) -> Thresholds:
    return msgspec.json.decode(record.thresholds, type=Thresholds)


class Canaries:
    """The active canaries: routing decisions, admin operations and the rollback monitor."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        swapper: Swapper,
        interval_s: float,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ):
        self.store = store
        self.registry = registry
        self.swapper = swapper
        self.interval_s = interval_s
        self.flush_interval_s = flush_interval_s
        self.running: dict[tuple[str, str], Running] = {}
        self._unflushed: list[CanaryDelta] = []  # of canaries ended here, or a failed flush
        self._ended: set[str] = set()  # ended here: a stale store read must not revive them
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[bool]] = set()

    # --- routing (hot path: no awaits) -----------------------------------------------------

    def assign(self, alias: Alias, sticky_id: str) -> Assignment | None:
        running = self.running.get((alias.tenant_id, alias.name))
        if running is None:
            return None
        chosen = in_canary(running.record.percent, bucket(alias.tenant_id, alias.name, sticky_id))
        return Assignment(running, chosen)

    # --- admin -----------------------------------------------------------------------------

    def _lock(self, tenant_id: str, alias: str) -> asyncio.Lock:
        return self._locks.setdefault((tenant_id, alias), asyncio.Lock())

    async def start(self, tenant: Tenant, alias: str, spec: CanarySpec, actor: str) -> Canary:
        async with self._lock(tenant.id, alias):
            existing = await self.store.get_alias(tenant.id, alias)
            if existing is None:
                raise NotFound(f"no alias '{alias}' for this tenant", param="alias")
            version = await self.registry.get(tenant, spec.version)
            if version.status == "retired":
                raise Conflict(
                    f"version {version.id} is retired; a canary needs a candidate or live version",
                    param="version",
                )
            if self.swapper.current(existing).adapter_version == version.id:
                raise Conflict(f"alias '{alias}' already serves {version.id}", param="version")
            history = await self.store.canaries_of(tenant.id, alias)
            if (tenant.id, alias) in self.running or any(c.status == "active" for c in history):
                raise Conflict(
                    f"alias '{alias}' already has an active canary; stop or promote it first"
                )
            record = Canary(
                id="cn_" + secrets.token_hex(8),
                tenant_id=tenant.id,
                alias=alias,
                version=version.id,
                percent=spec.percent,
                thresholds=msgspec.json.encode(spec.thresholds).decode(),
                status="active",
                actor=actor,
                started_at=time.time(),
                reason=spec.reason,
            )
            await self.store.add_canary(record)
            self.running[(tenant.id, alias)] = Running(record, spec.thresholds)
        log.info(
            "canary %s started on %s/%s: %s at %g%% by %s (%s)",
            record.id,
            tenant.name,
            alias,
            version.id,
            spec.percent,
            actor,
            spec.reason or "no reason given",
        )
        return record

    def active(self, tenant: Tenant, alias: str) -> Running:
        running = self.running.get((tenant.id, alias))
        if running is None:
            raise NotFound(f"alias '{alias}' has no active canary", param="alias")
        return running

    async def stop(self, tenant: Tenant, alias: str, actor: str, reason: str | None) -> Canary:
        async with self._lock(tenant.id, alias):
            running = self.active(tenant, alias)
            why = f"stopped by {actor}: {reason or 'no reason given'}"
            return await self._end(running, "stopped", why)

    async def promote(
        self, tenant: Tenant, alias: str, actor: str, reason: str | None, *, forced: bool = False
    ) -> CanaryPromotion:
        """Swap the canary's version onto the alias (zero failed requests), then end it.
        The caller has applied the promotion gate (or `forced` it, with a reason)."""
        async with self._lock(tenant.id, alias):
            running = self.active(tenant, alias)
            why = f"canary {running.record.id} promoted: {reason or 'no reason given'}"
            report = await self.swapper.promote(
                tenant, alias, running.record.version, actor=actor, reason=why, forced=forced
            )
            ended = await self._end(running, "promoted", f"promoted by {actor}: {reason or '-'}")
            return CanaryPromotion(ended, report)

    async def report(self, tenant: Tenant, alias: str) -> CanaryReport:
        if await self.store.get_alias(tenant.id, alias) is None:
            raise NotFound(f"no alias '{alias}' for this tenant", param="alias")
        running = self.running.get((tenant.id, alias))
        if running is not None:
            await self.flush()
            await self._refresh(running)
        history = await self.store.canaries_of(tenant.id, alias)
        return CanaryReport(running.report() if running else None, history)

    async def _end(self, running: Running, status: CanaryStatus, reason: str) -> Canary:
        """All traffic back on the normal target at once; the decision written to the row."""
        record = running.record
        key = (record.tenant_id, record.alias)
        if self.running.get(key) is running:
            del self.running[key]
        self._unflushed += running.deltas()
        self._ended.add(record.id)
        if not await self.store.end_canary(record.id, status, reason):
            log.info("canary %s had already been ended elsewhere", record.id)
        log.log(
            logging.WARNING if status == "rolled_back" else logging.INFO,
            "canary %s on %s/%s %s: %s",
            record.id,
            record.tenant_id,
            record.alias,
            status,
            reason,
        )
        if status != "promoted":
            self._unload_later(record.version)
        ended = msgspec.structs.replace(record, status=status, reason=reason, ended_at=time.time())
        return ended

    def _unload_later(self, version_id: str) -> None:
        """Drain and unload the candidate unless an alias or another canary still uses it."""
        if any(r.record.version == version_id for r in self.running.values()):
            return
        task = asyncio.create_task(self.swapper.retire_if_unused(version_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- monitor ---------------------------------------------------------------------------

    async def load(self) -> None:
        """The active canaries from the store (at start)."""
        for record in await self.store.active_canaries():
            self.running[(record.tenant_id, record.alias)] = Running(record, _thresholds_of(record))

    async def check(self) -> list[Canary]:
        """One pass: sync with the store, read feedback, roll back what crossed a threshold."""
        await self._sync()
        await self.flush()
        rolled_back = []
        for running in list(self.running.values()):
            await self._refresh(running)
            reason = verdict(running.thresholds, *running.signals())
            if reason is None:
                continue
            key = (running.record.tenant_id, running.record.alias)
            async with self._lock(*key):
                if self.running.get(key) is running:
                    rolled_back.append(await self._end(running, "rolled_back", reason))
        return rolled_back

    async def run(self) -> None:
        try:
            await asyncio.gather(self._monitor(), self._flusher())
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # the next pass tries again
                log.exception("canary check failed")

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Add this gateway's counts since the last flush to the store's (one transaction).
        A failed flush is tried again once with the next one, then its counts are dropped."""
        retry, self._unflushed = self._unflushed, []
        fresh = [d for running in self.running.values() for d in running.deltas()]
        try:
            await self.store.add_canary_counts([*retry, *fresh])
        except Exception:
            log.exception("could not flush canary counts; trying again at the next flush")
            self._unflushed = fresh  # the retried ones are dropped: a store down for long
            # must not grow this list without bound

    async def _refresh(self, running: Running) -> None:
        """Every gateway's counts from the store, and the feedback of this one's sample."""
        running.totals = await self.store.canary_counts(running.record.id)
        tenant_id = running.record.tenant_id
        await running.canary.read_feedback(self.store, tenant_id)
        await running.live.read_feedback(self.store, tenant_id)

    async def _sync(self) -> None:
        """Pick up canaries started, and drop those ended, by other gateways on this store."""
        known = {r.record.id for r in self.running.values()}
        active = {c.id: c for c in await self.store.active_canaries()}
        for key, running in list(self.running.items()):
            if running.record.id in known and running.record.id not in active:
                del self.running[key]
                self._unload_later(running.record.version)
        for record in active.values():
            key = (record.tenant_id, record.alias)
            if record.id not in self._ended and key not in self.running:
                self.running[key] = Running(record, _thresholds_of(record))
