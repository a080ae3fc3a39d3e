"""PostgreSQL statements for erasure: the erase itself and the follow-through's bookkeeping."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from store import erasure_sql as q
from store import evals_sql
from store import training_sql as tq
from store.records import CaseSource, Dataset, DatasetErasure, Erasure, EvalRun

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

N = tq.numbered
# Taken (transaction-scoped) by an erase and by every write that could otherwise miss one under
# READ COMMITTED: a snapshot's sources, an adapter on a snapshot, an eval run's cases, answers.
ERASURE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('loopgate:erasure'))"


class ErasureMixinPG:
    """Needs `self.pool` (an asyncpg pool), which PostgresStore provides."""

    @property
    def pool(self) -> Pool:
        raise NotImplementedError

    async def erase(self, tenant_id: str, end_user: str | None, actor: str) -> Erasure:
        """Delete a tenant's (or one end user's) captured traffic and feedback, mark what was
        derived from it (see `erasure_sql`), and audit it; one transaction."""
        erased, args = q.erased_completions(end_user), q.erased_args(tenant_id, end_user)
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(ERASURE_LOCK)
            datasets = await _ids(conn, *q.bind(q.DATASETS, erased, [], args))
            runs = await _ids(conn, *q.bind(q.EVAL_RUNS, erased, [], args))
            for template, own in (
                (q.TAINT, [now, q.taint_reason(end_user)]),
                (q.PENDING, []),
                (q.MARK_SOURCES, []),
            ):
                await _execute(conn, *q.bind(template, erased, own, args))
            adapters = await _ids(conn, *q.bind(q.MARK_ADAPTERS, erased, [], args))
            await _execute(conn, *q.bind(q.BLANK_CASES, erased, [q.ERASED_ANSWER], args))
            legacy = [q.ERASED_ANSWER, q.TENANT_SUITE]
            await _execute(conn, *q.bind(q.BLANK_LEGACY, erased, legacy, args))
            await conn.executemany(N(q.MARK_RUN), [(now, run) for run in runs])
            await _execute(conn, *q.bind(q.DELETE_FEEDBACK, erased, [], args))
            status = await _execute(conn, *q.bind(q.DELETE_COMPLETIONS, erased, [], args))
            count = int(status.rsplit(" ", 1)[-1])
            await conn.execute(N(q.AUDIT), tenant_id, end_user, count, actor, now)
        return Erasure(count, tuple(datasets), tuple(sorted(adapters)), tuple(runs))

    async def datasets_to_erase(self) -> list[Dataset]:
        return [tq.dataset(r) for r in await self.pool.fetch(q.PENDING_DATASETS)]

    async def erased_sources(self, dataset_id: str) -> set[str]:
        rows = await self.pool.fetch(N(q.ERASED_SOURCES), dataset_id)
        return {str(r[0]) for r in rows}

    async def finish_dataset_erasure(
        self, dataset_id: str, outcome: DatasetErasure, sources: int
    ) -> bool:
        o = outcome
        total = o.train_count + o.eval_count + o.preference_count
        args = (o.state, total, o.train_count, o.eval_count, o.preference_count, o.stats)
        status: str = await self.pool.execute(
            N(q.FINISH_DATASET), *args, dataset_id, dataset_id, sources
        )
        return not status.endswith(" 0")

    async def eval_reports_to_erase(self) -> list[EvalRun]:
        return [evals_sql.run(r) for r in await self.pool.fetch(q.REPORTS_TO_DELETE)]

    async def clear_eval_report(self, run_id: str) -> None:
        await self.pool.execute(N(q.CLEAR_REPORT), run_id)


async def _ids(conn: Conn, sql: str, args: list[object]) -> list[str]:
    return [str(r[0]) for r in await conn.fetch(N(sql), *args)]


async def _execute(conn: Conn, sql: str, args: list[object]) -> str:
    status: str = await conn.execute(N(sql), *args)
    return status


async def add_sources(
    conn: Conn, dataset_id: str, examples: Collection[str], flagged: Collection[str]
) -> None:
    """A new snapshot's lineage, inside the caller's transaction; a source erased since the
    export is handled as erased (`erasure_sql.LATE_SOURCES`)."""
    await conn.execute(ERASURE_LOCK)
    await conn.executemany(N(q.INSERT_SOURCE), q.source_rows(dataset_id, examples, flagged))
    await conn.execute(N(q.LATE_SOURCES), dataset_id)
    await conn.execute(N(q.LATE_TAINT), time.time(), q.LATE_REASON, dataset_id, dataset_id)
    await conn.execute(N(q.LATE_PENDING), dataset_id, dataset_id)


async def add_case_sources(conn: Conn, run_id: str, sources: Sequence[CaseSource]) -> None:
    """An eval run's case lineage, inside the caller's transaction."""
    await conn.execute(ERASURE_LOCK)
    rows = [(run_id, s.suite, s.case_id, s.completion_id) for s in sources]
    await conn.executemany(N(q.INSERT_CASE_SOURCE), rows)


async def erased_while_running(conn: Conn, run_id: str) -> None:
    """A run whose cases' completions were erased while it ran: blank those answers and mark
    it (its report is deleted by the follow-through); inside the caller's transaction."""
    await conn.execute(ERASURE_LOCK)
    await conn.execute(N(q.BLANK_LATE_ANSWERS), q.ERASED_ANSWER, run_id, run_id)
    await conn.execute(N(q.MARK_LATE_RUN), time.time(), run_id, run_id)
