"""Admin routes for limits: a tenant's, and one key's (PUT replaces the set; null = unlimited)."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from gateway.admin_api import admin_guard
from gateway.runtime import Gateway
from store import BudgetPeriod, LimitSet
from store.errors import NotFound

GW = NamedDependency[Gateway]
Limit = Annotated[int, msgspec.Meta(ge=1, le=2**62)] | None


class LimitsBody(msgspec.Struct, forbid_unknown_fields=True):
    requests_per_minute: Limit = None
    tokens_per_minute: Limit = None
    max_concurrent: Limit = None
    max_tokens_per_request: Limit = None
    token_budget: Limit = None
    budget_period: BudgetPeriod = "month"


async def _scope(gw: Gateway, tenant: str, key_id: str | None) -> tuple[str, str]:
    """(tenant id, key id or ""): a key must belong to the tenant named in the path."""
    found = await gw.admin.tenant(tenant)
    if key_id is None:
        return found.id, ""
    key = await gw.store.get_key(key_id)
    if key is None or key.tenant_id != found.id:
        raise NotFound(f"tenant '{tenant}' has no API key with id '{key_id}'", param="key_id")
    return found.id, key.id


async def _save(gw: Gateway, tenant: str, key_id: str | None, data: LimitsBody) -> LimitSet:
    tenant_id, key = await _scope(gw, tenant, key_id)
    limits = LimitSet(tenant_id, key, **msgspec.structs.asdict(data), updated_at=time.time())
    await gw.store.set_limits(limits)
    gw.limits.invalidate()
    return limits


async def _load(gw: Gateway, tenant: str, key_id: str | None) -> LimitSet:
    tenant_id, key = await _scope(gw, tenant, key_id)
    return await gw.store.get_limits(tenant_id, key) or LimitSet(tenant_id, key)


class LimitsController(Controller):
    path = "/admin/tenants/{tenant:str}"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute

    @put("/limits")
    async def set_tenant_limits(
        self, tenant: FromPath[str], data: JSONBody[LimitsBody], gw: GW
    ) -> LimitSet:
        return await _save(gw, tenant, None, data)

    @get("/limits")
    async def tenant_limits(self, tenant: FromPath[str], gw: GW) -> LimitSet:
        return await _load(gw, tenant, None)

    @put("/keys/{key_id:str}/limits")
    async def set_key_limits(
        self, tenant: FromPath[str], key_id: FromPath[str], data: JSONBody[LimitsBody], gw: GW
    ) -> LimitSet:
        return await _save(gw, tenant, key_id, data)

    @get("/keys/{key_id:str}/limits")
    async def key_limits(self, tenant: FromPath[str], key_id: FromPath[str], gw: GW) -> LimitSet:
        return await _load(gw, tenant, key_id)
