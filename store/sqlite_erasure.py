"""SQLite statements for erasure: the erase itself and the follow-through's bookkeeping."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import aiosqlite

from store import erasure_sql as q
from store import evals_sql
from store import training_sql as tq
from store.records import CaseSource, Dataset, DatasetErasure, Erasure, EvalRun
from store.sqlite_capture import SQLiteMixin


class ErasureMixin(SQLiteMixin):
    async def erase(self, tenant_id: str, end_user: str | None, actor: str) -> Erasure:
        """Delete a tenant's (or one end user's) captured traffic and feedback, mark what was
        derived from it (see `erasure_sql`), and audit it; one transaction."""
        erased, args = q.erased_completions(end_user), q.erased_args(tenant_id, end_user)
        now = time.time()
        async with self.transaction():
            datasets = await self._select_ids(*q.bind(q.DATASETS, erased, [], args))
            runs = await self._select_ids(*q.bind(q.EVAL_RUNS, erased, [], args))
            for template, own in (
                (q.TAINT, [now, q.taint_reason(end_user)]),
                (q.PENDING, []),
                (q.MARK_SOURCES, []),
            ):
                await self.db.execute(*q.bind(template, erased, own, args))
            adapters = await self._select_ids(*q.bind(q.MARK_ADAPTERS, erased, [], args))
            await self.db.execute(*q.bind(q.BLANK_CASES, erased, [q.ERASED_ANSWER], args))
            legacy = [q.ERASED_ANSWER, q.TENANT_SUITE]
            await self.db.execute(*q.bind(q.BLANK_LEGACY, erased, legacy, args))
            await self.db.executemany(q.MARK_RUN, [(now, run) for run in runs])
            await self.db.execute(*q.bind(q.DELETE_FEEDBACK, erased, [], args))
            cur = await self.db.execute(*q.bind(q.DELETE_COMPLETIONS, erased, [], args))
            count = cur.rowcount
            await self.db.execute(q.AUDIT, (tenant_id, end_user, count, actor, now))
        return Erasure(count, tuple(datasets), tuple(sorted(adapters)), tuple(runs))

    async def _select_ids(self, sql: str, args: list[object]) -> list[str]:
        async with self.db.execute(sql, args) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    async def datasets_to_erase(self) -> list[Dataset]:
        async with self.db.execute(q.PENDING_DATASETS) as cur:
            return [tq.dataset(r) for r in await cur.fetchall()]

    async def erased_sources(self, dataset_id: str) -> set[str]:
        return set(await self._select_ids(q.ERASED_SOURCES, [dataset_id]))

    async def finish_dataset_erasure(
        self, dataset_id: str, outcome: DatasetErasure, sources: int
    ) -> bool:
        o = outcome
        total = o.train_count + o.eval_count + o.preference_count
        args = (o.state, total, o.train_count, o.eval_count, o.preference_count, o.stats)
        cur = await self._write(q.FINISH_DATASET, (*args, dataset_id, dataset_id, sources))
        return cur.rowcount > 0

    async def eval_reports_to_erase(self) -> list[EvalRun]:
        async with self.db.execute(q.REPORTS_TO_DELETE) as cur:
            return [evals_sql.run(r) for r in await cur.fetchall()]

    async def clear_eval_report(self, run_id: str) -> None:
        await self._write(q.CLEAR_REPORT, (run_id,))


async def add_sources(
    db: aiosqlite.Connection,
    dataset_id: str,
    examples: Collection[str],
    flagged: Collection[str],
) -> None:
    """A new snapshot's lineage, inside the caller's transaction; a source erased since the
    export is handled as erased (`erasure_sql.LATE_SOURCES`)."""
    await db.executemany(q.INSERT_SOURCE, q.source_rows(dataset_id, examples, flagged))
    await db.execute(q.LATE_SOURCES, (dataset_id,))
    await db.execute(q.LATE_TAINT, (time.time(), q.LATE_REASON, dataset_id, dataset_id))
    await db.execute(q.LATE_PENDING, (dataset_id, dataset_id))


async def add_case_sources(
    db: aiosqlite.Connection, run_id: str, sources: Sequence[CaseSource]
) -> None:
    """An eval run's case lineage, inside the caller's transaction."""
    rows = [(run_id, s.suite, s.case_id, s.completion_id) for s in sources]
    await db.executemany(q.INSERT_CASE_SOURCE, rows)


async def erased_while_running(db: aiosqlite.Connection, run_id: str) -> None:
    """A run whose cases' completions were erased while it ran: blank those answers and mark
    it (its report is deleted by the follow-through); inside the caller's transaction."""
    await db.execute(q.BLANK_LATE_ANSWERS, (q.ERASED_ANSWER, run_id, run_id))
    await db.execute(q.MARK_LATE_RUN, (time.time(), run_id, run_id))
