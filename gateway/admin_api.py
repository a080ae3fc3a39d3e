"""The admin API (its own credential): tenants, their API keys and their model aliases."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, patch, post, put
from litestar.params import FromPath, JSONBody

from adapters.swap import Swapper
from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.erasure import DataErasure
from gateway.responses import Erased, ListOf, OptedOut
from gateway.tenancy import Admin, Directory, IssuedKey
from store import Alias, AliasTarget, Store, Tenant


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

    @classmethod
    def of(cls, k: object) -> KeyInfo:
        return msgspec.convert(k, cls, from_attributes=True)


async def create_tenant(admin: Admin, directory: Directory, name: str) -> Tenant:
    """A new tenant (the admin API's and the console's)."""
    tenant = await admin.create_tenant(name)
    directory.invalidate()
    return tenant


async def set_tenant_policy(
    admin: Admin, store: Store, directory: Directory, tenant: str, data: TenantPolicy
) -> Tenant:
    """Change a tenant's capture policy; a field left out (None) keeps its value."""
    found = await admin.tenant(tenant)
    retention = None if data.keep_forever else (data.retention_days or found.retention_days)
    await store.set_tenant_policy(
        found.id,
        store_default=found.store_default if data.store_default is None else data.store_default,
        redact_pii=found.redact_pii if data.redact_pii is None else data.redact_pii,
        retention_days=retention,
    )
    directory.invalidate()
    return await admin.tenant(found.id)


async def revoke_key(store: Store, directory: Directory, key_id: str) -> KeyInfo:
    """Revoke a key now (the directory forgets its cached callers)."""
    key = await store.revoke_key(key_id)
    directory.invalidate()
    return KeyInfo.of(key)


T = "/tenants/{tenant:str}"
E = apidoc.admin


class AdminController(Controller):
    path = "/admin"

    @post(
        "/tenants",
        status_code=201,
        summary="Create a tenant",
        dto=Json[CreateTenant],
        return_dto=None,
        responses=E(409, 413, 503),
    )
    async def create_tenant(
        self,
        data: JSONBody[CreateTenant],
        admin: Injected[Admin],
        directory: Injected[Directory],
    ) -> Tenant:
        return await create_tenant(admin, directory, data.name)

    @get("/tenants", summary="List tenants", responses=E())
    async def list_tenants(self, store: Injected[Store]) -> ListOf[Tenant]:
        return ListOf(data=list(await store.list_tenants()))

    @get(T, summary="Get a tenant", responses=E(404))
    async def get_tenant(self, tenant: FromPath[str], admin: Injected[Admin]) -> Tenant:
        return await admin.tenant(tenant)

    @patch(
        T,
        summary="Set a tenant's capture policy",
        dto=Json[TenantPolicy],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def set_policy(
        self,
        tenant: FromPath[str],
        data: JSONBody[TenantPolicy],
        admin: Injected[Admin],
        store: Injected[Store],
        directory: Injected[Directory],
    ) -> Tenant:
        """Capture policy: default `store`, PII redaction, retention in days."""
        return await set_tenant_policy(admin, store, directory, tenant, data)

    @post(
        T + "/erase",
        status_code=200,
        summary="Erase captured traffic (all, or one end-user's)",
        dto=Json[Erase],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def erase(
        self,
        tenant: FromPath[str],
        data: JSONBody[Erase],
        admin: Injected[Admin],
        erasure: Injected[DataErasure],
        actor: Injected[str],
    ) -> Erased:
        """Delete a tenant's captured traffic and feedback (all, or one end-user's), and what
        was derived from it: snapshot files, eval answers and reports (gateway.erasure)."""
        found = await admin.tenant(tenant)
        report = await erasure.erase(found.id, data.end_user, actor)
        return Erased.of(report)

    @post(
        T + "/opt-out",
        status_code=200,
        summary="Never train on an end-user's data",
        dto=Json[OptOut],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def opt_out(
        self,
        tenant: FromPath[str],
        data: JSONBody[OptOut],
        admin: Injected[Admin],
        store: Injected[Store],
    ) -> OptedOut:
        """Never train on this end-user's data (existing and future)."""
        found = await admin.tenant(tenant)
        return OptedOut(await store.opt_out(found.id, data.end_user), data.end_user)

    @post(
        T + "/keys",
        status_code=201,
        summary="Issue an API key (its plaintext is shown once)",
        dto=Json[CreateKey],
        return_dto=None,
        responses=E(404, 413, 503),
    )
    async def create_key(
        self, tenant: FromPath[str], admin: Injected[Admin], data: JSONBody[CreateKey | None] = None
    ) -> IssuedKey:
        return await admin.issue_key(tenant, (data or CreateKey()).name)

    @get(T + "/keys", summary="List a tenant's keys", responses=E(404))
    async def list_keys(
        self, tenant: FromPath[str], admin: Injected[Admin], store: Injected[Store]
    ) -> ListOf[KeyInfo]:
        found = await admin.tenant(tenant)
        return ListOf(data=[KeyInfo.of(k) for k in await store.list_keys(found.id)])

    @delete("/keys/{key_id:str}", status_code=200, summary="Revoke a key", responses=E(404, 503))
    async def revoke_key(
        self,
        key_id: FromPath[str],
        store: Injected[Store],
        directory: Injected[Directory],
    ) -> KeyInfo:
        return await revoke_key(store, directory, key_id)

    @get(T + "/aliases", summary="List a tenant's aliases", responses=E(404))
    async def list_aliases(
        self, tenant: FromPath[str], admin: Injected[Admin], store: Injected[Store]
    ) -> ListOf[Alias]:
        found = await admin.tenant(tenant)
        return ListOf(data=list(await store.list_aliases(found.id)))

    @put(
        T + "/aliases/{name:str}",
        summary="Create an alias, or set it to the base",
        dto=Json[SetAlias],
        return_dto=None,
        responses=E(404, 413, 422, 503),
    )
    async def set_alias(
        self,
        tenant: FromPath[str],
        name: FromPath[str],
        admin: Injected[Admin],
        store: Injected[Store],
        swapper: Injected[Swapper],
        directory: Injected[Directory],
        data: JSONBody[SetAlias | None] = None,
    ) -> Alias:
        found = await admin.tenant(tenant)
        existing = await store.get_alias(found.id, name)
        if existing is not None and swapper.current(existing).kind == "adapter":
            await swapper.to_base(found, name, actor="admin", reason="set to base")
            alias = await store.get_alias(found.id, name)
            assert alias is not None
        else:
            alias = await admin.set_alias(tenant, name, (data or SetAlias()).target)
        directory.invalidate()
        return alias

    @delete(
        T + "/aliases/{name:str}", status_code=204, summary="Delete an alias", responses=E(404, 503)
    )
    async def delete_alias(
        self,
        tenant: FromPath[str],
        name: FromPath[str],
        admin: Injected[Admin],
        store: Injected[Store],
        swapper: Injected[Swapper],
        directory: Injected[Directory],
    ) -> None:
        found = await admin.tenant(tenant)
        async with swapper.lock(found.id, name):
            existing = await store.get_alias(found.id, name)
            await store.delete_alias(found.id, name)
            swapper.forget(found.id, name)
            directory.invalidate()
        if existing is not None and existing.target.adapter_version:
            await swapper.retire_if_unused(existing.target.adapter_version)
