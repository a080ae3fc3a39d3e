"""The PostgreSQL backend of the store (asyncpg pool), shared by many gateway instances."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from store import rows as rowmap
from store.errors import Conflict, NotFound
from store.postgres_batches import BatchesMixinPG
from store.postgres_builds import BuildsMixinPG
from store.postgres_checkpoints import CheckpointsMixinPG
from store.postgres_erasure import ERASURE_LOCK, ErasureMixinPG
from store.postgres_evals import EvalsMixinPG
from store.postgres_judges import JudgesMixinPG
from store.postgres_limits import LimitsMixinPG
from store.postgres_overview import OverviewMixinPG
from store.postgres_responses import ResponsesMixinPG
from store.postgres_review import ReviewMixinPG
from store.postgres_rollouts import RolloutsMixinPG
from store.postgres_shadow import ShadowMixinPG
from store.postgres_training import TrainingMixinPG
from store.records import (
    AdapterStatus,
    AdapterVersion,
    Alias,
    AliasEvent,
    AliasTarget,
    ApiKey,
    CaptureFinal,
    CaptureTransform,
    Completion,
    CompletionQuery,
    Feedback,
    Tenant,
)
from store.schema_postgres import MIGRATIONS_PG

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]
Row: TypeAlias = asyncpg.Record

# Held (transaction-scoped) while migrating: gateways starting together migrate exactly once.
_MIGRATION_LOCK = 0x6C6F6F7067617465  # "loopgate"

_UPSERT_ALIAS = (
    "INSERT INTO aliases (tenant_id, name, target_kind, adapter_version, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (tenant_id, name) DO UPDATE SET "
    "target_kind = excluded.target_kind, adapter_version = excluded.adapter_version, "
    "updated_at = excluded.updated_at"
)
# SQLite answers these unordered queries in rowid order, i.e. creation order, which an upsert
# keeps; PostgreSQL moves an updated row, so it says the order outright.
_CREATION_ORDER = "ORDER BY created_at, tenant_id, name"
_INSERT = (
    "INSERT INTO completions (id, tenant_id, key_id, kind, alias, adapter_version, backend, "
    "stored, request, status, end_user, metadata, request_id, created_at, tool_calls, "
    "do_not_train) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
)
_FINAL = (
    "UPDATE completions SET response = $1, finish_reason = $2, prompt_tokens = $3, "
    "completion_tokens = $4, latency_ms = $5, ttft_ms = $6, status = $7, error = $8, "
    "completed_at = $9, backend = COALESCE($10, backend), tool_calls = $11 WHERE id = $12"
)


def _pool_sizes(url: str) -> tuple[str, int, int]:
    """Split loopgate's own `pool_min`/`pool_max` query parameters off a PostgreSQL URL."""
    parts = urlsplit(url)
    sizes = {"pool_min": 1, "pool_max": 10}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in sizes:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{key} must be a positive integer in {url!r}")
            sizes[key] = int(value)
        else:
            rest.append((key, value))
    sizes["pool_min"] = min(sizes["pool_min"], sizes["pool_max"])
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return dsn, sizes["pool_min"], sizes["pool_max"]


def _count(status: str) -> int:
    """The row count of a command status such as 'DELETE 3' or 'INSERT 0 1'."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore(
    TrainingMixinPG,
    BuildsMixinPG,
    EvalsMixinPG,
    LimitsMixinPG,
    ErasureMixinPG,
    OverviewMixinPG,
    ReviewMixinPG,
    RolloutsMixinPG,
    CheckpointsMixinPG,
    ResponsesMixinPG,
    BatchesMixinPG,
    JudgesMixinPG,
    ShadowMixinPG,
):
    """PostgreSQL through an asyncpg connection pool; the same records and errors as SQLite."""

    def __init__(self, url: str):
        self.url = url
        self.dsn, self.pool_min, self.pool_max = _pool_sizes(url)
        self._pool: Pool | None = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=self.pool_min, max_size=self.pool_max
        )
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn:
            while True:
                async with conn.transaction():
                    # The lock first: even creating schema_migrations must not race.
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations "
                        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
                    )
                    current = await self._version(conn)
                    if current >= len(MIGRATIONS_PG):
                        return
                    await conn.execute(MIGRATIONS_PG[current])  # a script: simple protocol
                    await conn.execute(
                        "INSERT INTO schema_migrations VALUES ($1, $2)", current + 1, time.time()
                    )

    @staticmethod
    async def _version(conn: Conn) -> int:
        value = await conn.fetchval("SELECT MAX(version) FROM schema_migrations")
        return int(value or 0)

    async def schema_version(self) -> int:
        async with self.pool.acquire() as conn:
            return await self._version(conn)

    # -- tenants and keys ---------------------------------------------------------------------

    async def create_tenant(self, tenant_id: str, name: str) -> Tenant:
        tenant = Tenant(tenant_id, name, time.time())
        try:
            await self.pool.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
                tenant.id,
                tenant.name,
                tenant.created_at,
            )
        except asyncpg.IntegrityConstraintViolationError:
            raise Conflict(f"tenant '{name}' already exists", param="name") from None
        return tenant

    async def get_tenant(self, id_or_name: str) -> Tenant | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM tenants WHERE id = $1 OR name = $1 LIMIT 1", id_or_name
        )
        return rowmap.tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        return [
            rowmap.tenant(r)
            for r in await self.pool.fetch("SELECT * FROM tenants ORDER BY created_at")
        ]

    async def set_tenant_policy(
        self, tenant_id: str, *, store_default: bool, redact_pii: bool, retention_days: int | None
    ) -> None:
        await self.pool.execute(
            "UPDATE tenants SET store_default = $1, redact_pii = $2, retention_days = $3 "
            "WHERE id = $4",
            bool(store_default),
            bool(redact_pii),
            retention_days,
            tenant_id,
        )

    async def add_key(self, key: ApiKey) -> None:
        await self.pool.execute(
            "INSERT INTO api_keys (id, tenant_id, name, key_hash, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            key.id,
            key.tenant_id,
            key.name,
            key.key_hash,
            key.created_at,
        )

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self.pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
        return rowmap.key(row) if row else None

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        rows = await self.pool.fetch(
            "SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at", tenant_id
        )
        return [rowmap.key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> ApiKey:
        await self.pool.execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            time.time(),
            key_id,
        )
        key = await self.get_key(key_id)
        if key is None:
            raise NotFound(f"no API key with id '{key_id}'", param="key_id")
        return key

    # -- aliases --------------------------------------------------------------------------------

    async def set_alias(self, tenant_id: str, name: str, target: AliasTarget) -> Alias:
        row = await self.pool.fetchrow(
            _UPSERT_ALIAS + " RETURNING *",
            tenant_id,
            name,
            target.kind,
            target.adapter_version,
            time.time(),
        )
        assert row is not None
        return rowmap.alias(row)

    async def get_alias(self, tenant_id: str, name: str) -> Alias | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM aliases WHERE tenant_id = $1 AND name = $2", tenant_id, name
        )
        return rowmap.alias(row) if row else None

    async def list_aliases(self, tenant_id: str) -> list[Alias]:
        rows = await self.pool.fetch(
            "SELECT * FROM aliases WHERE tenant_id = $1 ORDER BY name", tenant_id
        )
        return [rowmap.alias(r) for r in rows]

    async def delete_alias(self, tenant_id: str, name: str) -> None:
        status = await self.pool.execute(
            "DELETE FROM aliases WHERE tenant_id = $1 AND name = $2", tenant_id, name
        )
        if _count(status) == 0:
            raise NotFound(f"no alias '{name}' for this tenant", param="name")

    async def flip_alias(
        self, tenant_id: str, name: str, target: AliasTarget, event: AliasEvent
    ) -> AliasTarget | None:
        """Point an alias at a new target and record why, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            # One flip of this alias at a time, even while the alias row does not exist yet
            # (FOR UPDATE alone locks nothing then); the two-key lock space is not the
            # migration lock's.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", tenant_id, name
            )
            row = await conn.fetchrow(
                "SELECT target_kind, adapter_version FROM aliases "
                "WHERE tenant_id = $1 AND name = $2 FOR UPDATE",
                tenant_id,
                name,
            )
            previous = AliasTarget(row[0], row[1]) if row else None
            now = time.time()
            await conn.execute(
                _UPSERT_ALIAS, tenant_id, name, target.kind, target.adapter_version, now
            )
            await conn.execute(
                "INSERT INTO alias_events (tenant_id, alias, action, from_version, to_version, "
                "actor, reason, forced, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                tenant_id,
                name,
                event.action,
                event.from_version,
                event.to_version,
                event.actor,
                event.reason,
                bool(event.forced),
                now,
            )
        return previous

    async def alias_events(self, tenant_id: str, name: str) -> list[AliasEvent]:
        rows = await self.pool.fetch(
            "SELECT * FROM alias_events WHERE tenant_id = $1 AND alias = $2 ORDER BY seq",
            tenant_id,
            name,
        )
        return [rowmap.event(r) for r in rows]

    async def aliases_to(self, version_id: str) -> list[Alias]:
        rows = await self.pool.fetch(
            f"SELECT * FROM aliases WHERE adapter_version = $1 {_CREATION_ORDER}", version_id
        )
        return [rowmap.alias(r) for r in rows]

    async def live_aliases(self) -> list[Alias]:
        rows = await self.pool.fetch(
            f"SELECT * FROM aliases WHERE target_kind = 'adapter' {_CREATION_ORDER}"
        )
        return [rowmap.alias(r) for r in rows]

    # -- adapter versions -----------------------------------------------------------------------

    async def add_adapter(self, version: AdapterVersion) -> None:
        v = version
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(ERASURE_LOCK)  # an erase marks it, or it sees the erase
            await conn.execute(
                "INSERT INTO adapter_versions (id, tenant_id, name, content_hash, base_model, "
                "base_hash, rank, alpha, target_modules, created_by, dataset_id, eval_report_ids, "
                "status, path, size_bytes, created_at, trained_on_erased) VALUES ($1, $2, $3, $4, "
                "$5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 OR EXISTS "
                "(SELECT 1 FROM datasets WHERE id = $18 AND tainted_at IS NOT NULL))",
                *rowmap.adapter_params(v),
                v.trained_on_erased,
                v.dataset_id,
            )

    async def get_adapter(self, version_id: str) -> AdapterVersion | None:
        row = await self.pool.fetchrow("SELECT * FROM adapter_versions WHERE id = $1", version_id)
        return rowmap.adapter(row) if row else None

    async def find_adapter(self, tenant_id: str, content_hash: str) -> AdapterVersion | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM adapter_versions WHERE tenant_id = $1 AND content_hash = $2",
            tenant_id,
            content_hash,
        )
        return rowmap.adapter(row) if row else None

    async def list_adapters(self, tenant_id: str | None = None) -> list[AdapterVersion]:
        if tenant_id is None:
            rows = await self.pool.fetch("SELECT * FROM adapter_versions ORDER BY created_at")
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM adapter_versions WHERE tenant_id = $1 ORDER BY created_at",
                tenant_id,
            )
        return [rowmap.adapter(r) for r in rows]

    async def set_adapter_status(self, version_id: str, status: AdapterStatus) -> None:
        await self.pool.execute(
            "UPDATE adapter_versions SET status = $1 WHERE id = $2", status, version_id
        )

    async def delete_adapter(self, version_id: str) -> None:
        await self.pool.execute("DELETE FROM adapter_versions WHERE id = $1", version_id)

    # -- captured traffic -----------------------------------------------------------------------

    async def capture_batch(
        self,
        inserts: list[Completion],
        finals: list[CaptureFinal],
        transform: CaptureTransform | None = None,
    ) -> None:
        if transform is not None:  # redaction, in a worker thread
            inserts, finals = await asyncio.to_thread(transform, inserts, finals)
        async with self.pool.acquire() as conn, conn.transaction():
            if inserts:
                await conn.executemany(_INSERT, [rowmap.completion_params(c) for c in inserts])
            if finals:
                await conn.executemany(_FINAL, [rowmap.final_params(f) for f in finals])

    async def mark_incomplete(self, before: float) -> int:
        status = await self.pool.execute(
            "UPDATE completions SET status = 'incomplete', completed_at = $1 "
            "WHERE status = 'in_progress' AND created_at < $2",
            time.time(),
            before,
        )
        return _count(status)

    async def get_completion(self, tenant_id: str, completion_id: str) -> Completion | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM completions WHERE tenant_id = $1 AND id = $2", tenant_id, completion_id
        )
        return rowmap.completion(row) if row else None

    async def list_completions(self, query: CompletionQuery) -> tuple[list[Completion], bool]:
        args: list[object] = [query.tenant_id]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        sql = ["SELECT * FROM completions WHERE tenant_id = $1 AND stored"]
        if query.alias is not None:
            sql.append(f"AND alias = {arg(query.alias)}")
        for key, value in query.metadata.items():
            sql.append(f"AND (metadata::jsonb ->> {arg(key)}::text) = {arg(value)}::text")
        op, direction = (">", "ASC") if query.order == "asc" else ("<", "DESC")
        if query.after is not None:
            sql.append(
                f"AND (created_at, id) {op} (SELECT created_at, id FROM completions "
                f"WHERE tenant_id = $1 AND id = {arg(query.after)})"
            )
        sql.append(f"ORDER BY created_at {direction}, id {direction} LIMIT {arg(query.limit + 1)}")
        rows = [rowmap.completion(r) for r in await self.pool.fetch(" ".join(sql), *args)]
        return rows[: query.limit], len(rows) > query.limit

    async def update_completion(
        self,
        tenant_id: str,
        completion_id: str,
        *,
        metadata: dict[str, str] | None = None,
        do_not_train: bool | None = None,
    ) -> Completion | None:
        async with self.pool.acquire() as conn, conn.transaction():
            if metadata is not None:
                await conn.execute(
                    "UPDATE completions SET metadata = $1 WHERE tenant_id = $2 AND id = $3",
                    json.dumps(metadata),
                    tenant_id,
                    completion_id,
                )
            if do_not_train is not None:
                await conn.execute(
                    "UPDATE completions SET do_not_train = $1 WHERE tenant_id = $2 AND id = $3",
                    bool(do_not_train),
                    tenant_id,
                    completion_id,
                )
            row = await conn.fetchrow(
                "SELECT * FROM completions WHERE tenant_id = $1 AND id = $2",
                tenant_id,
                completion_id,
            )
        return rowmap.completion(row) if row else None

    async def delete_completion(self, tenant_id: str, completion_id: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM completions WHERE tenant_id = $1 AND id = $2", tenant_id, completion_id
        )
        return _count(status) > 0

    async def add_feedback(self, feedback: Feedback) -> None:
        f = feedback
        await self.pool.execute(
            "INSERT INTO feedback (id, completion_id, tenant_id, rating, score, correction, "
            "comment, tags, author, created_at, key_id, end_user) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            f.id,
            f.completion_id,
            f.tenant_id,
            f.rating,
            f.score,
            f.correction,
            f.comment,
            json.dumps(list(f.tags)),
            f.author,
            f.created_at,
            f.key_id,
            f.end_user,
        )

    async def list_feedback(self, tenant_id: str, completion_id: str) -> list[Feedback]:
        rows = await self.pool.fetch(
            "SELECT * FROM feedback WHERE tenant_id = $1 AND completion_id = $2 "
            "ORDER BY created_at",
            tenant_id,
            completion_id,
        )
        return [rowmap.feedback(r) for r in rows]

    async def purge_before(self, tenant_id: str, before: float) -> int:
        status = await self.pool.execute(
            "DELETE FROM completions WHERE tenant_id = $1 AND created_at < $2 "
            "AND status != 'in_progress'",
            tenant_id,
            before,
        )
        return _count(status)

    async def opt_out(self, tenant_id: str, end_user: str) -> int:
        """Never train on this end-user's data: flag their rows, remember them for new ones."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO training_optouts (tenant_id, end_user, at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                tenant_id,
                end_user,
                time.time(),
            )
            status = await conn.execute(
                "UPDATE completions SET do_not_train = TRUE WHERE tenant_id = $1 AND end_user = $2",
                tenant_id,
                end_user,
            )
        return _count(status)

    async def export_completions(self, tenant_id: str) -> list[tuple[Completion, list[Feedback]]]:
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await conn.fetch(
                "SELECT * FROM completions WHERE tenant_id = $1 AND stored "
                "AND status = 'complete' ORDER BY created_at",
                tenant_id,
            )
            feedback = await conn.fetch(
                "SELECT * FROM feedback WHERE tenant_id = $1 AND completion_id = ANY($2::text[]) "
                "ORDER BY created_at",
                tenant_id,
                [r["id"] for r in rows],
            )
        by_completion: dict[str, list[Feedback]] = {}
        for r in feedback:
            by_completion.setdefault(r["completion_id"], []).append(rowmap.feedback(r))
        return [(rowmap.completion(r), by_completion.get(r["id"], [])) for r in rows]
