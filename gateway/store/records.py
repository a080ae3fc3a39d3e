"""The records the store keeps: tenants, keys, aliases and their targets, adapter versions."""

from __future__ import annotations

from typing import Literal

import msgspec

TargetKind = Literal["base", "adapter"]


class Tenant(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: float
    disabled: bool = False


class ApiKey(msgspec.Struct, frozen=True):
    id: str
    tenant_id: str
    name: str
    key_hash: str
    created_at: float
    revoked_at: float | None = None


class AliasTarget(msgspec.Struct, frozen=True):
    """What an alias serves: the base model, or one immutable adapter version."""

    kind: TargetKind = "base"
    adapter_version: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "base") != (self.adapter_version is None):
            raise ValueError("a base target has no adapter_version; an adapter target needs one")


AdapterStatus = Literal["candidate", "live", "retired"]


class AdapterVersion(msgspec.Struct, frozen=True):
    """One immutable, content-addressed adapter version and its lineage."""

    id: str
    tenant_id: str
    name: str
    content_hash: str
    base_model: str
    base_hash: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    created_by: str
    status: AdapterStatus
    path: str
    size_bytes: int
    created_at: float
    dataset_id: str | None = None
    eval_report_ids: tuple[str, ...] = ()


class AliasEvent(msgspec.Struct, frozen=True):
    """An audited change of what an alias serves (promote, rollback, set)."""

    seq: int
    tenant_id: str
    alias: str
    action: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str | None
    forced: bool
    at: float


class Alias(msgspec.Struct, frozen=True):
    tenant_id: str
    name: str
    target: AliasTarget
    created_at: float
    updated_at: float


# Each entry is applied once, in order, inside one transaction; never edit a shipped one.
