"""The admin API (its own credential): tenants, their API keys and their model aliases."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody

from gateway.runtime import Gateway
from gateway.tenancy import IssuedKey
from store import Alias, AliasTarget, Tenant
from store.errors import InvalidRequest

GW = NamedDependency[Gateway]


class CreateTenant(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "default"


class SetAlias(msgspec.Struct, forbid_unknown_fields=True):
    target: AliasTarget = msgspec.field(default_factory=AliasTarget)


class TenantPolicy(msgspec.Struct, forbid_unknown_fields=True):
    store_default: bool | None = None
    redact_pii: bool | None = None
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=36500)] | None = None
    keep_forever: bool = False  # clears retention_days


class Erase(msgspec.Struct, forbid_unknown_fields=True):
    end_user: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


class OptOut(msgspec.Struct, forbid_unknown_fields=True):
    end_user: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class KeyInfo(msgspec.Struct):
    """A key as listed: never its hash, never its plaintext."""

    id: str
    tenant_id: str
    name: str
    created_at: float
    revoked_at: float | None


def admin_guard(
    connection: ASGIConnection[object, object, object, State], _: BaseRouteHandler
) -> None:
    gw: GW = connection.app.state.gateway
    gw.check_admin(connection.headers.get("authorization"))


class AdminController(Controller):
    path = "/admin"
    guards = [admin_guard]  # noqa: RUF012 - Litestar's declared attribute

    @post("/tenants", status_code=201)
    async def create_tenant(self, data: JSONBody[CreateTenant], gw: GW) -> Tenant:
        tenant = await gw.admin.create_tenant(data.name)
        gw.directory.invalidate()
        return tenant

    @get("/tenants")
    async def list_tenants(self, gw: GW) -> dict[str, object]:
        return {"object": "list", "data": await gw.store.list_tenants()}

    @get("/tenants/{tenant:str}")
    async def get_tenant(self, tenant: FromPath[str], gw: GW) -> Tenant:
        return await gw.admin.tenant(tenant)

    @patch("/tenants/{tenant:str}")
    async def set_policy(
        self, tenant: FromPath[str], data: JSONBody[TenantPolicy], gw: GW
    ) -> Tenant:
        """Capture policy: default `store`, PII redaction, retention in days."""
        found = await gw.admin.tenant(tenant)
        retention = None if data.keep_forever else (data.retention_days or found.retention_days)
        await gw.store.set_tenant_policy(
            found.id,
            store_default=found.store_default if data.store_default is None else data.store_default,
            redact_pii=found.redact_pii if data.redact_pii is None else data.redact_pii,
            retention_days=retention,
        )
        gw.directory.invalidate()
        return await gw.admin.tenant(found.id)

    @post("/tenants/{tenant:str}/erase", status_code=200)
    async def erase(
        self,
        tenant: FromPath[str],
        data: JSONBody[Erase],
        gw: GW,
        request: Request[object, object, State],
    ) -> dict[str, object]:
        """Delete a tenant's captured traffic and feedback (all, or one end-user's), and what
        was derived from it: snapshot files, eval answers and reports (gateway.erasure)."""
        found = await gw.admin.tenant(tenant)
        actor = request.headers.get("x-loopgate-actor") or "admin"
        return (await gw.erasure.erase(found.id, data.end_user, actor[:128])).to_json()

    @post("/tenants/{tenant:str}/opt-out", status_code=200)
    async def opt_out(
        self, tenant: FromPath[str], data: JSONBody[OptOut], gw: GW
    ) -> dict[str, object]:
        """Never train on this end-user's data (existing and future)."""
        found = await gw.admin.tenant(tenant)
        return {
            "flagged": await gw.store.opt_out(found.id, data.end_user),
            "end_user": data.end_user,
        }

    @post("/tenants/{tenant:str}/keys", status_code=201)
    async def create_key(
        self, tenant: FromPath[str], gw: GW, request: Request[object, object, State]
    ) -> IssuedKey:
        raw = await request.body()
        try:
            data = msgspec.json.decode(raw, type=CreateKey) if raw.strip() else CreateKey()
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise InvalidRequest(f"invalid request: {exc}") from None
        return await gw.admin.issue_key(tenant, data.name)

    @get("/tenants/{tenant:str}/keys")
    async def list_keys(self, tenant: FromPath[str], gw: GW) -> dict[str, object]:
        found = await gw.admin.tenant(tenant)
        keys = await gw.store.list_keys(found.id)
        data = [KeyInfo(k.id, k.tenant_id, k.name, k.created_at, k.revoked_at) for k in keys]
        return {"object": "list", "data": data}

    @delete("/keys/{key_id:str}", status_code=200)
    async def revoke_key(self, key_id: FromPath[str], gw: GW) -> KeyInfo:
        key = await gw.store.revoke_key(key_id)
        gw.directory.invalidate()
        return KeyInfo(key.id, key.tenant_id, key.name, key.created_at, key.revoked_at)

    @get("/tenants/{tenant:str}/aliases")
    async def list_aliases(self, tenant: FromPath[str], gw: GW) -> dict[str, object]:
        found = await gw.admin.tenant(tenant)
        return {"object": "list", "data": await gw.store.list_aliases(found.id)}

    @put("/tenants/{tenant:str}/aliases/{name:str}")
    async def set_alias(
        self, tenant: FromPath[str], name: FromPath[str], data: JSONBody[SetAlias], gw: GW
    ) -> Alias:
        found = await gw.admin.tenant(tenant)
        existing = await gw.store.get_alias(found.id, name)
        if existing is not None and gw.swapper.current(existing).kind == "adapter":
            await gw.swapper.to_base(found, name, actor="admin", reason="set to base")
            alias = await gw.store.get_alias(found.id, name)
            assert alias is not None
        else:
            alias = await gw.admin.set_alias(tenant, name, data.target)
        gw.directory.invalidate()
        return alias

    @delete("/tenants/{tenant:str}/aliases/{name:str}", status_code=204)
    async def delete_alias(self, tenant: FromPath[str], name: FromPath[str], gw: GW) -> None:
        found = await gw.admin.tenant(tenant)
        async with gw.swapper.lock(found.id, name):
            existing = await gw.store.get_alias(found.id, name)
            await gw.store.delete_alias(found.id, name)
            gw.swapper.forget(found.id, name)
            gw.directory.invalidate()
        if existing is not None and existing.target.adapter_version:
            await gw.swapper.retire_if_unused(existing.target.adapter_version)
