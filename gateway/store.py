"""The store: tenants, API keys and model aliases behind one interface, with migrations.

The schema is the contract between gateway/, adapters/, training/ and evals/. SQLite (WAL)
is the embedded default; other backends implement the same `Store` protocol.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal, Protocol

import aiosqlite
import msgspec

from gateway.errors import Conflict, NotFound

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


class Alias(msgspec.Struct, frozen=True):
    tenant_id: str
    name: str
    target: AliasTarget
    created_at: float
    updated_at: float


# Each entry is applied once, in order, inside one transaction; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
    CREATE TABLE aliases (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        target_kind TEXT NOT NULL CHECK (target_kind IN ('base', 'adapter')),
        adapter_version TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, name),
        CHECK ((target_kind = 'base') = (adapter_version IS NULL))
    );
    """,
)


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...
    async def create_tenant(self, tenant_id: str, name: str) -> Tenant: ...
    async def get_tenant(self, id_or_name: str) -> Tenant | None: ...
    async def list_tenants(self) -> list[Tenant]: ...
    async def add_key(self, key: ApiKey) -> None: ...
    async def get_key(self, key_id: str) -> ApiKey | None: ...
    async def list_keys(self, tenant_id: str) -> list[ApiKey]: ...
    async def revoke_key(self, key_id: str) -> ApiKey: ...
    async def set_alias(self, tenant_id: str, name: str, target: AliasTarget) -> Alias: ...
    async def get_alias(self, tenant_id: str, name: str) -> Alias | None: ...
    async def list_aliases(self, tenant_id: str) -> list[Alias]: ...
    async def delete_alias(self, tenant_id: str, name: str) -> None: ...


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")))
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///<path> (PostgreSQL: issue 4)")


class SQLiteStore:
    """SQLite in WAL mode through one aiosqlite connection (its own thread)."""

    def __init__(self, path: Path):
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self) -> None:
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = await self.schema_version()
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            # BEGIN IMMEDIATE: two processes opening the same fresh file migrate once.
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                if await self.schema_version() >= version:
                    await self.db.execute("ROLLBACK")
                    continue
                for statement in filter(str.strip, script.split(";")):
                    await self.db.execute(statement)
                await self.db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time())
                )
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        async with self.db.execute("SELECT MAX(version) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        return int(row[0] or 0) if row else 0

    async def create_tenant(self, tenant_id: str, name: str) -> Tenant:
        tenant = Tenant(tenant_id, name, time.time())
        try:
            await self.db.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)",
                (tenant.id, tenant.name, tenant.created_at),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"tenant '{name}' already exists", param="name") from None
        return tenant

    async def get_tenant(self, id_or_name: str) -> Tenant | None:
        async with self.db.execute(
            "SELECT * FROM tenants WHERE id = ? OR name = ?", (id_or_name, id_or_name)
        ) as cur:
            row = await cur.fetchone()
        return _tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        async with self.db.execute("SELECT * FROM tenants ORDER BY created_at") as cur:
            return [_tenant(r) for r in await cur.fetchall()]

    async def add_key(self, key: ApiKey) -> None:
        await self.db.execute(
            "INSERT INTO api_keys (id, tenant_id, name, key_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key.id, key.tenant_id, key.name, key.key_hash, key.created_at),
        )

    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self.db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)) as cur:
            row = await cur.fetchone()
        return _key(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        async with self.db.execute(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at", (tenant_id,)
        ) as cur:
            return [_key(r) for r in await cur.fetchall()]

    async def revoke_key(self, key_id: str) -> ApiKey:
        await self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        key = await self.get_key(key_id)
        if key is None:
            raise NotFound(f"no API key with id '{key_id}'", param="key_id")
        return key

    async def set_alias(self, tenant_id: str, name: str, target: AliasTarget) -> Alias:
        now = time.time()
        await self.db.execute(
            "INSERT INTO aliases VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, name) DO "
            "UPDATE SET target_kind = excluded.target_kind, "
            "adapter_version = excluded.adapter_version, updated_at = excluded.updated_at",
            (tenant_id, name, target.kind, target.adapter_version, now, now),
        )
        alias = await self.get_alias(tenant_id, name)
        assert alias is not None
        return alias

    async def get_alias(self, tenant_id: str, name: str) -> Alias | None:
        async with self.db.execute(
            "SELECT * FROM aliases WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        ) as cur:
            row = await cur.fetchone()
        return _alias(row) if row else None

    async def list_aliases(self, tenant_id: str) -> list[Alias]:
        async with self.db.execute(
            "SELECT * FROM aliases WHERE tenant_id = ? ORDER BY name", (tenant_id,)
        ) as cur:
            return [_alias(r) for r in await cur.fetchall()]

    async def delete_alias(self, tenant_id: str, name: str) -> None:
        cur = await self.db.execute(
            "DELETE FROM aliases WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        )
        if cur.rowcount == 0:
            raise NotFound(f"no alias '{name}' for this tenant", param="name")


def _tenant(row: sqlite3.Row) -> Tenant:
    return Tenant(row["id"], row["name"], row["created_at"], bool(row["disabled"]))


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        row["id"],
        row["tenant_id"],
        row["name"],
        row["key_hash"],
        row["created_at"],
        row["revoked_at"],
    )


def _alias(row: sqlite3.Row) -> Alias:
    target = AliasTarget(row["target_kind"], row["adapter_version"])
    return Alias(row["tenant_id"], row["name"], target, row["created_at"], row["updated_at"])
