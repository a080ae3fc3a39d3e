"""The fair-shares part of the store contract, on SQLite and a real PostgreSQL: per-tenant quota
rows, the usage they count, admissions that never take a tenant past a quota (also from several
store instances at once), round-robin job claims across tenants, and the requeue limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from store import (
    EvalRun,
    FileObject,
    FineTuningJob,
    JobChanges,
    Store,
    TenantQuotas,
    Usage,
    open_store,
    postgres_quotas,
    postgres_training,
    sqlite_quotas,
    sqlite_training,
)
from tests.unit.test_store_contract import T0, Clock, dataset, job

ROOMY = Usage(
    files=100,
    file_bytes=10**12,
    datasets=100,
    queued_jobs=100,
    jobs_last_day=100,
    eval_runs_last_day=100,
)


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    for module in (
        sqlite_training,
        postgres_training,
        sqlite_quotas,
        postgres_quotas,
    ):
        monkeypatch.setattr(module, "time", c)
    return c


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    await s.create_tenant("t1", "acme")
    await s.create_tenant("t2", "globex")
    yield s
    await s.close()


def file(fid: str, tenant: str = "t1", size: int = 100, at: float = T0) -> FileObject:
    return FileObject(fid, tenant, "fine-tune", "a.jsonl", size, 3, f"/f/{fid}", "k1", at)


def run(rid: str, tenant: str = "t1", at: float = T0) -> EvalRun:
    return EvalRun(rid, tenant, "support", "av-1", None, "running", "admin", at)


async def test_quota_rows_round_trip_and_unset_deletes(store: Store) -> None:
    assert await store.get_quotas("t1") is None
    own = TenantQuotas("t1", max_epochs=2, max_file_bytes=5_000_000_000, updated_at=T0)
    await store.set_quotas(own)
    assert await store.get_quotas("t1") == own
    assert await store.get_quotas("t2") is None
    changed = TenantQuotas("t1", max_queued_jobs=1, updated_at=T0 + 1)
    await store.set_quotas(changed)
    assert await store.get_quotas("t1") == changed  # replaced, not merged
    await store.set_quotas(TenantQuotas("t1", updated_at=T0 + 2))
    assert await store.get_quotas("t1") is None


async def test_usage_counts_what_a_tenant_keeps_and_started_in_the_last_day(
    store: Store,
) -> None:
    assert await store.tenant_usage("t1", T0) == Usage()
    await store.add_file(file("file-1", size=5_000_000_000))
    await store.add_file(file("file-2", size=7))
    await store.add_file(file("file-x", "t2"))
    await store.add_dataset(dataset("ds-1"), [])
    await store.create_job(job("ftjob-old", created_at=T0 - 90_000))  # queued, a day ago
    await store.create_job(job("ftjob-1", created_at=T0 - 10))
    await store.create_job(job("ftjob-done", created_at=T0 - 5, status="cancelled", stage="done"))
    await store.add_eval_run(run("ev-old", at=T0 - 90_000))
    await store.add_eval_run(run("ev-1", at=T0 - 1))
    assert await store.tenant_usage("t1", T0) == Usage(
        files=2,
        file_bytes=5_000_000_007,
        datasets=1,
        queued_jobs=2,
        jobs_last_day=2,
        eval_runs_last_day=1,
    )
    assert await store.tenant_usage("t2", T0) == Usage(files=1, file_bytes=100)
    await store.delete_file("t1", "file-1")
    assert (await store.tenant_usage("t1", T0)).file_bytes == 7


async def test_admissions_stop_at_each_quota_and_add_nothing(store: Store) -> None:
    limits = msgspec_replace(ROOMY, files=2, file_bytes=250)
    assert await store.add_file(file("file-1"), limits) is None
    assert await store.add_file(file("file-2", size=200), limits) == "file_bytes"  # 300 > 250
    assert await store.add_file(file("file-2", size=150), limits) is None  # exactly 250
    assert await store.add_file(file("file-3", size=1), limits) == "files"
    assert [f.id for f in await store.list_files("t1")] == ["file-2", "file-1"]
    assert await store.add_file(file("file-y", "t2"), limits) is None  # its own usage
    one_dataset = msgspec_replace(ROOMY, datasets=1)
    assert await store.add_dataset(dataset("ds-1"), ["c-1"], one_dataset) is None
    assert await store.add_dataset(dataset("ds-2"), ["c-1"], one_dataset) == "datasets"
    assert await store.get_dataset("t1", "ds-2") is None
    # At the file quota, a job still fits: only the counts a row grows are checked.
    jobs = msgspec_replace(ROOMY, files=2, queued_jobs=2, jobs_last_day=3)
    assert await store.create_job(job("ftjob-1", created_at=T0), jobs) is None
    assert await store.create_job(job("ftjob-2", created_at=T0 + 1), jobs) is None
    assert await store.create_job(job("ftjob-3", created_at=T0 + 2), jobs) == "queued_jobs"
    assert await store.get_job("ftjob-3") is None
    await store.request_cancel("t1", "ftjob-1")  # no longer queued: room in the queue again
    assert await store.create_job(job("ftjob-3", created_at=T0 + 3), jobs) is None
    assert await store.create_job(job("ftjob-4", created_at=T0 + 4), jobs) == "queued_jobs"
    await store.request_cancel("t1", "ftjob-2")
    assert await store.create_job(job("ftjob-4", created_at=T0 + 5), jobs) == "jobs_last_day"
    # A day later the old ones no longer count.
    assert await store.create_job(job("ftjob-4", created_at=T0 + 86_401), jobs) is None
    one_run = msgspec_replace(ROOMY, eval_runs_last_day=1)
    assert await store.add_eval_run(run("ev-1"), one_run) is None
    assert await store.add_eval_run(run("ev-2", at=T0 + 1), one_run) == "eval_runs_last_day"
    assert await store.get_eval_run("t1", "ev-2") is None
    assert await store.add_eval_run(run("ev-2", at=T0 + 86_401), one_run) is None


async def test_concurrent_admissions_never_overshoot(url: str) -> None:
    stores = [open_store(url) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        await stores[0].create_tenant("t1", "acme")
        limits = msgspec_replace(ROOMY, queued_jobs=3, files=4)
        jobs = [job(f"ftjob-{i}", created_at=T0 + i) for i in range(12)]
        files = [file(f"file-{i}") for i in range(12)]
        results = await asyncio.gather(
            *(stores[i % 3].create_job(j, limits) for i, j in enumerate(jobs)),
            *(stores[i % 3].add_file(f, limits) for i, f in enumerate(files)),
        )
        assert results[:12].count(None) == 3 and set(results[:12]) == {None, "queued_jobs"}
        assert results[12:].count(None) == 4 and set(results[12:]) == {None, "files"}
        usage = await stores[1].tenant_usage("t1", T0)
        assert (usage.queued_jobs, usage.files) == (3, 4)
    finally:
        for s in stores:
            await s.close()


async def finish(store: Store, claimed: FineTuningJob | None) -> str:
    """The claimed job's tenant; the job ends (its worker is done with it)."""
    assert claimed is not None and claimed.worker is not None
    done = JobChanges(status="succeeded", stage="done", finished_at=T0)
    assert await store.update_job(claimed.id, done, worker=claimed.worker)
    return claimed.id


async def test_claims_go_round_robin_across_tenants(store: Store) -> None:
    await store.create_tenant("t3", "initech")
    for i in range(3):
        await store.create_job(job(f"ftjob-a{i}", "t1", created_at=T0 + i))
    await store.create_job(job("ftjob-b0", "t2", created_at=T0 + 10))
    first = await store.claim_job("w1")
    assert first is not None and first.id == "ftjob-a0"  # nobody served yet: the oldest
    second = await store.claim_job("w2")
    # acme has a job in training: globex's one job goes next, not acme's older ones.
    assert second is not None and second.id == "ftjob-b0"
    await finish(store, first)
    await finish(store, second)
    # Neither trains now: acme was served least recently.
    assert await finish(store, await store.claim_job("w1")) == "ftjob-a1"
    # A tenant never served goes before one served before, whatever the queue's age.
    await store.create_job(job("ftjob-c0", "t3", created_at=T0 + 20))
    assert await finish(store, await store.claim_job("w1")) == "ftjob-c0"
    assert await finish(store, await store.claim_job("w1")) == "ftjob-a2"
    assert await store.claim_job("w1") is None


async def test_claims_are_plain_fifo_within_one_tenant(store: Store) -> None:
    for i in (2, 0, 1):
        await store.create_job(job(f"ftjob-{i}", created_at=T0 + i))
    claimed = [await store.claim_job(f"w{i}") for i in range(3)]
    assert [c.id for c in claimed if c is not None] == ["ftjob-0", "ftjob-1", "ftjob-2"]


async def test_a_job_that_keeps_losing_its_worker_fails(store: Store) -> None:
    await store.create_job(job("ftjob-1", created_at=T0))
    await store.create_job(job("ftjob-c", "t2", created_at=T0 + 1))
    for attempt in (1, 2):
        claimed = await store.claim_job("w1")
        assert claimed is not None and (claimed.id, claimed.attempts) == ("ftjob-1", attempt)
        assert await store.requeue_stale(before=2e10, max_requeues=2) == [("ftjob-1", "queued")]
        await store.request_cancel("t2", "ftjob-c")  # keeps globex out of the way
    claimed = await store.claim_job("w1")
    assert claimed is not None and claimed.attempts == 3
    assert await store.requeue_stale(before=2e10, max_requeues=2) == [("ftjob-1", "failed")]
    failed = await store.get_job("ftjob-1")
    assert failed is not None
    assert (failed.status, failed.stage, failed.worker) == ("failed", "done", None)
    assert failed.finished_at is not None
    error = json.loads(failed.error or "{}")
    assert error["code"] == "too_many_attempts" and "at most 2 times" in error["message"]
    assert await store.claim_job("w1") is None  # not queued again


async def test_past_the_limit_a_cancelled_job_still_ends_cancelled(store: Store) -> None:
    await store.create_job(job("ftjob-1", created_at=T0))
    claimed = await store.claim_job("w1")
    assert claimed is not None
    await store.request_cancel("t1", "ftjob-1")
    assert await store.requeue_stale(before=2e10, max_requeues=0) == [("ftjob-1", "cancelled")]
    cancelled = await store.get_job("ftjob-1")
    assert cancelled is not None and cancelled.error is None and cancelled.stage == "done"


async def test_without_a_limit_stale_jobs_are_always_queued_again(store: Store) -> None:
    await store.create_job(job("ftjob-1", created_at=T0))
    for _ in range(5):
        assert await store.claim_job("w1") is not None
        assert await store.requeue_stale(before=2e10) == [("ftjob-1", "queued")]


def msgspec_replace(usage: Usage, **changes: int) -> Usage:
    return Usage(**{**{k: getattr(usage, k) for k in Usage.__struct_fields__}, **changes})
