"""SQLite statements for captured traffic: completions, feedback, retention, export.

Erasure is `sqlite_erasure`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import aiosqlite

from store import rows as rowmap
from store.records import CaptureFinal, CaptureTransform, Completion, CompletionQuery, Feedback
from store.sqlite_busy import when_fresh

_INSERT = (
    "INSERT INTO completions (id, tenant_id, key_id, kind, alias, adapter_version, backend, "
    "stored, request, status, end_user, metadata, request_id, created_at, tool_calls, "
    "do_not_train) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_FINAL = (
    "UPDATE completions SET response = ?, finish_reason = ?, prompt_tokens = ?, "
    "completion_tokens = ?, latency_ms = ?, ttft_ms = ?, status = ?, error = ?, "
    "completed_at = ?, backend = COALESCE(?, backend), tool_calls = ? WHERE id = ?"
)


class SQLiteMixin:
    """What the statement mixins need from SQLiteStore (which provides each of these)."""

    @property
    def db(self) -> aiosqlite.Connection:
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def _write(self, sql: str, args: Sequence[object] = ()) -> aiosqlite.Cursor:
        raise NotImplementedError

    @property
    def tx_lock(self) -> asyncio.Lock:
        raise NotImplementedError

    def after_capture_batch(self) -> None:
        raise NotImplementedError


class CaptureMixin(SQLiteMixin):
    """SQLite statements for captured traffic."""

    async def set_tenant_policy(
        self, tenant_id: str, *, store_default: bool, redact_pii: bool, retention_days: int | None
    ) -> None:
        await self._write(
            "UPDATE tenants SET store_default = ?, redact_pii = ?, retention_days = ? WHERE id = ?",
            (int(store_default), int(redact_pii), retention_days, tenant_id),
        )

    async def capture_batch(
        self,
        inserts: list[Completion],
        finals: list[CaptureFinal],
        transform: CaptureTransform | None = None,
    ) -> None:
        """One transaction, one hop to the connection's thread (this is the hot write path):
        `transform` (redaction), the rows' parameters and the writes all run there."""

        def write(conn: sqlite3.Connection) -> None:
            rows, done = transform(inserts, finals) if transform else (inserts, finals)
            _write_batch(
                conn,
                [rowmap.completion_params(c) for c in rows],
                [rowmap.final_params(f) for f in done],
            )

        async with self.tx_lock:
            # aiosqlite's _execute runs a callable on its connection thread: the whole batch
            # costs one thread round trip instead of four.
            # A refused BEGIN (a stale read snapshot, sqlite_busy) changed nothing: try again.
            await when_fresh(
                lambda: self.db._execute(write, self.db._conn)  # type: ignore[no-untyped-call]
            )
        self.after_capture_batch()  # a WAL checkpoint now and then, off this path

    async def mark_incomplete(self, before: float) -> int:
        cur = await self._write(
            "UPDATE completions SET status = 'incomplete', completed_at = ? "
            "WHERE status = 'in_progress' AND created_at < ?",
            (time.time(), before),
        )
        return cur.rowcount

    async def get_completion(self, tenant_id: str, completion_id: str) -> Completion | None:
        async with self.db.execute(
            "SELECT * FROM completions WHERE tenant_id = ? AND id = ?", (tenant_id, completion_id)
        ) as cur:
            row = await cur.fetchone()
        return rowmap.completion(row) if row else None

    async def list_completions(self, query: CompletionQuery) -> tuple[list[Completion], bool]:
        sql = ["SELECT * FROM completions WHERE tenant_id = ? AND stored = 1"]
        args: list[object] = [query.tenant_id]
        if query.alias is not None:
            sql.append("AND alias = ?")
            args.append(query.alias)
        for key, value in query.metadata.items():
            sql.append("AND json_extract(metadata, ?) = ?")
            args += [f'$."{key}"', value]
        op, direction = (">", "ASC") if query.order == "asc" else ("<", "DESC")
        if query.after is not None:
            sql.append(
                f"AND (created_at, id) {op} "
                "(SELECT created_at, id FROM completions WHERE tenant_id = ? AND id = ?)"
            )
            args += [query.tenant_id, query.after]
        sql.append(f"ORDER BY created_at {direction}, id {direction} LIMIT ?")
        args.append(query.limit + 1)
        async with self.db.execute(" ".join(sql), args) as cur:
            rows = [rowmap.completion(r) for r in await cur.fetchall()]
        return rows[: query.limit], len(rows) > query.limit

    async def update_completion(
        self,
        tenant_id: str,
        completion_id: str,
        *,
        metadata: dict[str, str] | None = None,
        do_not_train: bool | None = None,
    ) -> Completion | None:
        if metadata is not None:
            await self._write(
                "UPDATE completions SET metadata = ? WHERE tenant_id = ? AND id = ?",
                (json.dumps(metadata), tenant_id, completion_id),
            )
        if do_not_train is not None:
            await self._write(
                "UPDATE completions SET do_not_train = ? WHERE tenant_id = ? AND id = ?",
                (int(do_not_train), tenant_id, completion_id),
            )
        return await self.get_completion(tenant_id, completion_id)

    async def delete_completion(self, tenant_id: str, completion_id: str) -> bool:
        cur = await self._write(
            "DELETE FROM completions WHERE tenant_id = ? AND id = ?", (tenant_id, completion_id)
        )
        return cur.rowcount > 0

    async def add_feedback(self, feedback: Feedback) -> None:
        f = feedback
        await self._write(
            "INSERT INTO feedback (id, completion_id, tenant_id, rating, score, correction, "
            "comment, tags, author, created_at, key_id, end_user) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
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
            ),
        )

    async def list_feedback(self, tenant_id: str, completion_id: str) -> list[Feedback]:
        async with self.db.execute(
            "SELECT * FROM feedback WHERE tenant_id = ? AND completion_id = ? ORDER BY created_at",
            (tenant_id, completion_id),
        ) as cur:
            return [rowmap.feedback(r) for r in await cur.fetchall()]

    async def purge_before(self, tenant_id: str, before: float) -> int:
        cur = await self._write(
            "DELETE FROM completions WHERE tenant_id = ? AND created_at < ? "
            "AND status != 'in_progress'",
            (tenant_id, before),
        )
        return cur.rowcount

    async def opt_out(self, tenant_id: str, end_user: str) -> int:
        """Never train on this end-user's data: flag their rows now; the opt-out list is kept
        for the dataset builder, which excludes the user's later traffic too."""
        async with self.transaction():
            await self.db.execute(
                "INSERT OR IGNORE INTO training_optouts VALUES (?, ?, ?)",
                (tenant_id, end_user, time.time()),
            )
            cur = await self.db.execute(
                "UPDATE completions SET do_not_train = 1 WHERE tenant_id = ? AND end_user = ?",
                (tenant_id, end_user),
            )
        return cur.rowcount

    async def export_completions(self, tenant_id: str) -> list[tuple[Completion, list[Feedback]]]:
        async with self.db.execute(
            "SELECT * FROM completions WHERE tenant_id = ? AND stored = 1 AND status = 'complete' "
            "ORDER BY created_at",
            (tenant_id,),
        ) as cur:
            rows = [rowmap.completion(r) for r in await cur.fetchall()]
        return [(c, await self.list_feedback(tenant_id, c.id)) for c in rows]


def _write_batch(
    conn: sqlite3.Connection, rows: list[tuple[object, ...]], updates: list[tuple[object, ...]]
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if rows:
            conn.executemany(_INSERT, rows)
        if updates:
            conn.executemany(_FINAL, updates)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
