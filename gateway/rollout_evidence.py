"""Where a rollout's live evidence comes from: the shadow of a candidate (its graded pairs) and
the canary (both arms' requests, errors, latency and negative feedback), behind two small
protocols. The shadow's is gateway.shadow's `RolloutShadows`; the canary's is here:

`StoreCanaryEvidence` reads the canary's counts that every gateway process adds to the store
(store.canary_counts, after flushing this process's own), and the negative feedback of the
completions this process sampled for each arm (gateway.canary).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from gateway.canary import ArmSignals, ArmStats, Canaries
from store import ArmCounts, Canary, Store, Tenant
from store.records import ShadowSummary


class CanaryReading(msgspec.Struct):
    canary: ArmSignals
    live: ArmSignals


class CanaryEvidence(Protocol):
    async def read(self, canary: Canary) -> CanaryReading:
        """Both arms of this canary now."""
        ...


class ShadowEvidence(Protocol):
    """Mirrors a share of an alias's traffic to a candidate and grades the pairs."""

    async def start(
        self, tenant: Tenant, alias: str, version: str, share: float, actor: str
    ) -> str: ...
    async def summary(self, tenant: Tenant, alias: str, version: str) -> ShadowSummary: ...
    async def stop(self, tenant: Tenant, alias: str, shadow_id: str, reason: str) -> None: ...


class StoreCanaryEvidence:
    """Every gateway's counts of the canary (see the module docstring)."""

    def __init__(self, store: Store, canaries: Canaries):
        self.store = store
        self.canaries = canaries

    async def read(self, canary: Canary) -> CanaryReading:
        await self.canaries.flush()
        totals = await self.store.canary_counts(canary.id)
        running = self.canaries.running.get((canary.tenant_id, canary.alias))
        arms = (ArmStats(), ArmStats())  # no feedback sample here: none read
        if running is not None and running.record.id == canary.id:
            arms = (running.canary, running.live)
            for arm in arms:
                await arm.read_feedback(self.store, canary.tenant_id)
        return CanaryReading(
            arms[0].signals(totals.get("canary", ArmCounts())),
            arms[1].signals(totals.get("live", ArmCounts())),
        )
