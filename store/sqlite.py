"""The SQLite backend of the store (WAL mode, one aiosqlite connection on its own thread)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from store import rows as rowmap
from store.errors import Conflict, NotFound
from store.records import (
    AdapterStatus,
    AdapterVersion,
    Alias,
    AliasEvent,
    AliasTarget,
    ApiKey,
    Tenant,
)
from store.schema import MIGRATIONS
from store.sqlite_batches import BatchesMixin
from store.sqlite_builds import BuildsMixin
from store.sqlite_busy import when_fresh
from store.sqlite_capture import CaptureMixin, SQLiteMixin
from store.sqlite_checkpoints import CheckpointsMixin
from store.sqlite_erasure import ErasureMixin
from store.sqlite_evals import EvalsMixin
from store.sqlite_judges import JudgesMixin
from store.sqlite_limits import LimitsMixin
from store.sqlite_overview import OverviewMixin
from store.sqlite_responses import ResponsesMixin
from store.sqlite_review import ReviewMixin
from store.sqlite_rollouts import RolloutsMixin
from store.sqlite_shadow import ShadowMixin
from store.sqlite_training import TrainingMixin

BUSY_TIMEOUT_MS = 30_000
# WAL checkpoints run off the capture path. SQLite's automatic checkpoint runs inside the commit
# that fills the WAL past 1,000 pages, and that commit took 5-7 ms instead of 0.3 (measured:
# 39 of 2,500 capture commits), holding every request waiting on it. Instead, a passive
# checkpoint (it never blocks a writer) runs in a worker thread on its own connection after every
# CHECKPOINT_EVERY_BATCHES capture batches; the automatic one stays as a safety net at
# INLINE_CHECKPOINT_PAGES (40 MB of WAL).
CHECKPOINT_EVERY_BATCHES = 100
INLINE_CHECKPOINT_PAGES = 10_000
log = logging.getLogger("loopgate.store")


class _AdapterMixin(SQLiteMixin):
    """SQLite statements for adapter versions and alias history."""

    async def flip_alias(
        self, tenant_id: str, name: str, target: AliasTarget, event: AliasEvent
    ) -> AliasTarget | None:
        """Point an alias at a new target and record why, in one transaction."""
        async with self.transaction():
            async with self.db.execute(
                "SELECT target_kind, adapter_version FROM aliases WHERE tenant_id = ? AND name = ?",
                (tenant_id, name),
            ) as cur:
                row = await cur.fetchone()
            previous = AliasTarget(row[0], row[1]) if row else None
            now = time.time()
            await self.db.execute(
                "INSERT INTO aliases VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, name) DO "
                "UPDATE SET target_kind = excluded.target_kind, "
                "adapter_version = excluded.adapter_version, updated_at = excluded.updated_at",
                (tenant_id, name, target.kind, target.adapter_version, now, now),
            )
            await self.db.execute(
                "INSERT INTO alias_events (tenant_id, alias, action, from_version, to_version, "
                "actor, reason, forced, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tenant_id,
                    name,
                    event.action,
                    event.from_version,
                    event.to_version,
                    event.actor,
                    event.reason,
                    int(event.forced),
                    now,
                ),
            )
        return previous

    async def alias_events(self, tenant_id: str, name: str) -> list[AliasEvent]:
        async with self.db.execute(
            "SELECT * FROM alias_events WHERE tenant_id = ? AND alias = ? ORDER BY seq",
            (tenant_id, name),
        ) as cur:
            return [rowmap.event(r) for r in await cur.fetchall()]

    async def add_adapter(self, v: AdapterVersion) -> None:
        """Marked `trained_on_erased` at once when its dataset is already tainted."""
        await self._write(
            "INSERT INTO adapter_versions (id, tenant_id, name, content_hash, base_model, "
            "base_hash, rank, alpha, target_modules, created_by, dataset_id, eval_report_ids, "
            "status, path, size_bytes, created_at, trained_on_erased) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?, ? OR EXISTS "
            "(SELECT 1 FROM datasets WHERE id = ? AND tainted_at IS NOT NULL))",
            (*rowmap.adapter_params(v), v.trained_on_erased, v.dataset_id),
        )

    async def get_adapter(self, version_id: str) -> AdapterVersion | None:
        async with self.db.execute(
            "SELECT * FROM adapter_versions WHERE id = ?", (version_id,)
        ) as cur:
            row = await cur.fetchone()
        return rowmap.adapter(row) if row else None

    async def find_adapter(self, tenant_id: str, content_hash: str) -> AdapterVersion | None:
        async with self.db.execute(
            "SELECT * FROM adapter_versions WHERE tenant_id = ? AND content_hash = ?",
            (tenant_id, content_hash),
        ) as cur:
            row = await cur.fetchone()
        return rowmap.adapter(row) if row else None

    async def list_adapters(self, tenant_id: str | None = None) -> list[AdapterVersion]:
        sql = "SELECT * FROM adapter_versions"
        args: tuple[str, ...] = ()
        if tenant_id is not None:
            sql, args = sql + " WHERE tenant_id = ?", (tenant_id,)
        async with self.db.execute(sql + " ORDER BY created_at", args) as cur:
            return [rowmap.adapter(r) for r in await cur.fetchall()]

    async def set_adapter_status(self, version_id: str, status: AdapterStatus) -> None:
        await self._write(
            "UPDATE adapter_versions SET status = ? WHERE id = ?", (status, version_id)
        )

    async def delete_adapter(self, version_id: str) -> None:
        await self._write("DELETE FROM adapter_versions WHERE id = ?", (version_id,))

    async def aliases_to(self, version_id: str) -> list[Alias]:
        async with self.db.execute(
            "SELECT * FROM aliases WHERE adapter_version = ?", (version_id,)
        ) as cur:
            return [rowmap.alias(r) for r in await cur.fetchall()]

    async def live_aliases(self) -> list[Alias]:
        async with self.db.execute("SELECT * FROM aliases WHERE target_kind = 'adapter'") as cur:
            return [rowmap.alias(r) for r in await cur.fetchall()]


class SQLiteStore(
    _AdapterMixin,
    CaptureMixin,
    TrainingMixin,
    BuildsMixin,
    EvalsMixin,
    LimitsMixin,
    ErasureMixin,
    OverviewMixin,
    ReviewMixin,
    RolloutsMixin,
    CheckpointsMixin,
    ResponsesMixin,
    BatchesMixin,
    JudgesMixin,
    ShadowMixin,
):
    """SQLite in WAL mode through one aiosqlite connection (its own thread)."""

    def __init__(self, path: Path, synchronous: str = "NORMAL"):
        self.path = path
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._tx_lock = asyncio.Lock()
        self._batches_since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self.wal_checkpoints = 0  # passive checkpoints run off the capture path

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # Other processes write too (the training worker, other gateways); a write waits up to
        # BUSY_TIMEOUT_MS for their lock (measured: 5 s was once not enough on a loaded 2-core
        # host), then fails as a retryable 503 (`errors.handle_sqlite_error`).
        await self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        await self._enable_wal()
        await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        await self._db.execute(f"PRAGMA wal_autocheckpoint={INLINE_CHECKPOINT_PAGES}")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._migrate()

    async def _enable_wal(self) -> None:
        """Switching a new file to WAL needs a moment alone with it; SQLite does not apply the
        busy timeout to that switch, so processes opening it together retry here."""
        for attempt in range(50):
            try:
                await self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))

    @property
    def tx_lock(self) -> asyncio.Lock:
        return self._tx_lock

    async def _write(self, sql: str, args: Sequence[object] = ()) -> aiosqlite.Cursor:
        """A single-statement write, never inside someone else's open transaction."""
        async with self._tx_lock:
            return await when_fresh(lambda: self.db.execute(sql, args), BUSY_TIMEOUT_MS / 1000)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One write transaction at a time on the shared connection (BEGIN IMMEDIATE)."""
        async with self._tx_lock:
            await when_fresh(lambda: self.db.execute("BEGIN IMMEDIATE"), BUSY_TIMEOUT_MS / 1000)
            try:
                yield
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    def after_capture_batch(self) -> None:
        """Count a committed capture batch; every CHECKPOINT_EVERY_BATCHES, checkpoint the WAL
        in a worker thread (one at a time)."""
        self._batches_since_checkpoint += 1
        if self._batches_since_checkpoint < CHECKPOINT_EVERY_BATCHES:
            return
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        self._batches_since_checkpoint = 0
        self._checkpointing = asyncio.ensure_future(asyncio.to_thread(self._checkpoint_wal))

    def _checkpoint_wal(self) -> None:
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.wal_checkpoints += 1
        except sqlite3.Error as exc:  # the safety net checkpoints instead; nothing is lost
            log.warning("WAL checkpoint failed: %s", exc)

    async def close(self) -> None:
        if self._checkpointing is not None:
            await self._checkpointing
            self._checkpointing = None
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None
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
                await self._write(
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
            await self._write(
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
        return rowmap.tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        async with self.db.execute("SELECT * FROM tenants ORDER BY created_at") as cur:
            return [rowmap.tenant(r) for r in await cur.fetchall()]

    async def add_key(self, key: ApiKey) -> None:
        await self._write(
            "INSERT INTO api_keys (id, tenant_id, name, key_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key.id, key.tenant_id, key.name, key.key_hash, key.created_at),
        )

    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self.db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)) as cur:
            row = await cur.fetchone()
        return rowmap.key(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        async with self.db.execute(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at", (tenant_id,)
        ) as cur:
            return [rowmap.key(r) for r in await cur.fetchall()]

    async def revoke_key(self, key_id: str) -> ApiKey:
        await self._write(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        key = await self.get_key(key_id)
        if key is None:
            raise NotFound(f"no API key with id '{key_id}'", param="key_id")
        return key

    async def set_alias(self, tenant_id: str, name: str, target: AliasTarget) -> Alias:
        now = time.time()
        await self._write(
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
        return rowmap.alias(row) if row else None

    async def list_aliases(self, tenant_id: str) -> list[Alias]:
        async with self.db.execute(
            "SELECT * FROM aliases WHERE tenant_id = ? ORDER BY name", (tenant_id,)
        ) as cur:
            return [rowmap.alias(r) for r in await cur.fetchall()]

    async def delete_alias(self, tenant_id: str, name: str) -> None:
        cur = await self._write(
            "DELETE FROM aliases WHERE tenant_id = ? AND name = ?", (tenant_id, name)
        )
        if cur.rowcount == 0:
            raise NotFound(f"no alias '{name}' for this tenant", param="name")
