"""Admin routes for limits: a tenant's, and one key's (PUT replaces the set; null = unlimited)."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from litestar import Controller, get, put
from litestar.params import FromPath, JSONBody

from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.limits import Limiter
from gateway.tenancy import Admin
from store import BudgetPeriod, LimitSet, Store
from store.errors import NotFound

E = apidoc.admin
Limit = Annotated[int, msgspec.Meta(ge=1, le=2**62)] | None


class LimitsBody(msgspec.Struct, forbid_unknown_fields=True):
    requests_per_minute: Limit = None
    tokens_per_minute: Limit = None
    max_concurrent: Limit = None
    max_tokens_per_request: Limit = None
    token_budget: Limit = None
    budget_period: BudgetPeriod = "month"


class LimitSets:
    """A tenant's limits and its keys' limits, read and replaced (the limiter forgets its cache)."""

    def __init__(self, admin: Admin, store: Store, limiter: Limiter):
        self.admin = admin
        self.store = store
        self.limiter = limiter

    async def scope(self, tenant: str, key_id: str | None) -> tuple[str, str]:
        """(tenant id, key id or ""): a key must belong to the tenant named in the path."""
        found = await self.admin.tenant(tenant)
        if key_id is None:
            return found.id, ""
        key = await self.store.get_key(key_id)
        if key is None or key.tenant_id != found.id:
            raise NotFound(f"tenant '{tenant}' has no API key with id '{key_id}'", param="key_id")
        return found.id, key.id

    async def save(self, tenant: str, key_id: str | None, data: LimitsBody) -> LimitSet:
        tenant_id, key = await self.scope(tenant, key_id)
        limits = LimitSet(tenant_id, key, **msgspec.structs.asdict(data), updated_at=time.time())
        await self.store.set_limits(limits)
        self.limiter.invalidate()
        return limits

    async def load(self, tenant: str, key_id: str | None) -> LimitSet:
        tenant_id, key = await self.scope(tenant, key_id)
        return await self.store.get_limits(tenant_id, key) or LimitSet(tenant_id, key)


class LimitsController(Controller):
    path = "/admin/tenants/{tenant:str}"

    @put(
        "/limits",
        summary="Replace a tenant's limits",
        dto=Json[LimitsBody],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def set_tenant_limits(
        self, tenant: FromPath[str], data: JSONBody[LimitsBody], limit_sets: Injected[LimitSets]
    ) -> LimitSet:
        return await limit_sets.save(tenant, None, data)

    @get("/limits", summary="A tenant's limits", responses=E(404))
    async def tenant_limits(
        self, tenant: FromPath[str], limit_sets: Injected[LimitSets]
    ) -> LimitSet:
        return await limit_sets.load(tenant, None)

    @put(
        "/keys/{key_id:str}/limits",
        summary="Replace one key's limits",
        dto=Json[LimitsBody],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def set_key_limits(
        self,
        tenant: FromPath[str],
        key_id: FromPath[str],
        data: JSONBody[LimitsBody],
        limit_sets: Injected[LimitSets],
    ) -> LimitSet:
        return await limit_sets.save(tenant, key_id, data)

    @get("/keys/{key_id:str}/limits", summary="One key's limits", responses=E(404))
    async def key_limits(
        self, tenant: FromPath[str], key_id: FromPath[str], limit_sets: Injected[LimitSets]
    ) -> LimitSet:
        return await limit_sets.load(tenant, key_id)
