"""The `Store` contract, run against every backend: SQLite and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from store import (
    MIGRATIONS,
    MIGRATIONS_PG,
    ActiveWork,
    AdapterVersion,
    AliasEvent,
    AliasTarget,
    ApiKey,
    Canary,
    CaptureFinal,
    CaseSource,
    Completion,
    CompletionQuery,
    Dataset,
    DatasetErasure,
    Erasure,
    EvalResult,
    EvalRun,
    Feedback,
    FileObject,
    FineTuningJob,
    JobChanges,
    LoopRecord,
    PostgresStore,
    SQLiteStore,
    Store,
    TrafficBucket,
    open_store,
    postgres,
    postgres_erasure,
    postgres_evals,
    postgres_training,
    sqlite,
    sqlite_capture,
    sqlite_erasure,
    sqlite_evals,
    sqlite_training,
)
from store.errors import Conflict, NotFound
from tests.support.postgres import PostgresServer

IntegrityError = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)
T0 = 1_700_000_000.0


TIMED_MODULES = (
    sqlite,
    sqlite_capture,
    sqlite_training,
    postgres,
    postgres_training,
    sqlite_evals,
    postgres_evals,
    sqlite_erasure,
    postgres_erasure,
)


class Clock:
    """Stands in for `time` inside the store modules: every reading is one second later."""

    def __init__(self) -> None:
        self.now = T0 + 1_000_000

    def time(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Deterministic store timestamps, so both backends can be compared record for record."""
    c = Clock()
    for module in TIMED_MODULES:
        monkeypatch.setattr(module, "time", c)
    return c


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def pg_url(pg_server: PostgresServer) -> AsyncIterator[str]:
    db = await pg_server.create_database()
    yield db
    await pg_server.drop_database(db)


async def migration_versions(url: str) -> list[int]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            rows = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        return [r[0] for r in rows]
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [r[0] for r in rows]


# -- builders -----------------------------------------------------------------------------------


def adapter(vid: str, tenant: str = "t1", *, created_at: float, **kw: Any) -> AdapterVersion:
    fields: dict[str, Any] = {
        "id": vid,
        "tenant_id": tenant,
        "name": f"{vid}-name",
        "content_hash": f"sha256:{vid}",
        "base_model": "smollm2-135m",
        "base_hash": "sha256:base",
        "rank": 8,
        "alpha": 16.0,
        "target_modules": ("q_proj", "v_proj"),
        "created_by": "trainer",
        "status": "candidate",
        "path": f"/adapters/{vid}",
        "size_bytes": 5_000_000_000,  # past 32 bits
        "created_at": created_at,
        "dataset_id": None,
        "eval_report_ids": (),
    }
    fields.update(kw)
    return AdapterVersion(**fields)


def completion(cid: str, tenant: str = "t1", *, created_at: float, **kw: Any) -> Completion:
    fields: dict[str, Any] = {
        "id": cid,
        "tenant_id": tenant,
        "key_id": "k1",
        "kind": "chat",
        "alias": "support",
        "adapter_version": None,
        "backend": "http://engine:8000",
        "stored": True,
        "request": '{"messages": [{"role": "user", "content": "hi \\u00e9"}]}',
        "response": None,
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "latency_ms": None,
        "ttft_ms": None,
        "status": "in_progress",
        "error": None,
        "end_user": None,
        "metadata": {},
        "do_not_train": False,
        "request_id": f"req-{cid}",
        "created_at": created_at,
        "completed_at": None,
    }
    fields.update(kw)
    return Completion(**fields)


def final(cid: str, *, completed_at: float, status: str = "complete", **kw: Any) -> CaptureFinal:
    fields: dict[str, Any] = {
        "id": cid,
        "response": f'{{"content": "answer to {cid}"}}',
        "finish_reason": "stop",
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "latency_ms": 123.25,
        "ttft_ms": 45.5,
        "status": status,
        "error": None,
        "completed_at": completed_at,
    }
    fields.update(kw)
    return CaptureFinal(**fields)


def finished(c: Completion, f: CaptureFinal) -> Completion:
    """What the store holds once `f` is written over `c`'s in-progress row."""
    return msgspec.structs.replace(
        c,
        response=f.response,
        finish_reason=f.finish_reason,
        prompt_tokens=f.prompt_tokens,
        completion_tokens=f.completion_tokens,
        latency_ms=f.latency_ms,
        ttft_ms=f.ttft_ms,
        status=f.status,
        error=f.error,
        completed_at=f.completed_at,
        tool_calls=f.tool_calls,
    )


def feedback(fid: str, cid: str, tenant: str = "t1", *, created_at: float, **kw: Any) -> Feedback:
    fields: dict[str, Any] = {
        "id": fid,
        "completion_id": cid,
        "tenant_id": tenant,
        "rating": "up",
        "score": 0.75,
        "correction": None,
        "comment": "good",
        "tags": ("tone", "facts"),
        "author": "reviewer",
        "created_at": created_at,
    }
    fields.update(kw)
    return Feedback(**fields)


def event(
    action: str, to: str | None, frm: str | None = None, *, forced: bool = False
) -> AliasEvent:
    return AliasEvent(0, "", "", action, frm, to, "ops", f"why {action}", forced, 0.0)


def adapter_target(version: str) -> AliasTarget:
    return AliasTarget("adapter", version)


# -- schema and migrations ----------------------------------------------------------------------


def test_every_sqlite_migration_has_a_postgres_twin() -> None:
    assert len(MIGRATIONS_PG) == len(MIGRATIONS)


async def test_migrations_apply_once_and_reopen_cleanly(url: str) -> None:
    for _ in range(3):
        s = open_store(url)
        await s.open()
        assert await s.schema_version() == len(MIGRATIONS)
        await s.close()
    assert await migration_versions(url) == list(range(1, len(MIGRATIONS) + 1))


# A snapshot tainted by an erase before erasure followed the data: its missing source is erased.
LEGACY_ROWS = (
    "INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'acme', 1)",
    "INSERT INTO datasets (id, tenant_id, content_hash, source, train_count, eval_count, "
    "preference_count, path, stats, created_by, created_at, tainted_at, taint_reason) VALUES "
    "('ds-old', 't1', 'h', 'traffic', 2, 1, 0, '/d', '{}', 'k1', 1, 2, 'erasure')",
    "INSERT INTO dataset_sources (dataset_id, completion_id) VALUES ('ds-old', 'c-gone')",
    "INSERT INTO adapter_versions (id, tenant_id, name, content_hash, base_model, base_hash, "
    "rank, alpha, target_modules, created_by, dataset_id, status, path, size_bytes, created_at) "
    "VALUES ('av-old', 't1', 'n', 'h', 'b', 'bh', 8, 16, '[]', 'job', 'ds-old', 'candidate', "
    "'/a', 1, 1)",
    "INSERT INTO eval_runs (id, tenant_id, alias, candidate, status, report_dir, created_by, "
    "created_at) VALUES ('ev-old', 't1', 'support', 'av-old', 'done', '/r', 'admin', 1)",
    "INSERT INTO eval_results (run_id, suite, case_id, system, score, passed, answer) VALUES "
    "('ev-old', 'tenant', 'tenant-0', 'candidate', 1, TRUE, 'quoting alice')",
    "INSERT INTO eval_results (run_id, suite, case_id, system, score, passed, answer) VALUES "
    "('ev-old', 'guard', 'guard-0', 'candidate', 1, TRUE, 'Paris')",
)


async def test_the_erasure_migration_follows_older_erasures(url: str) -> None:
    """A store migrated up to just before the erasure lineage, with a tainted snapshot."""
    mine = next(i for i, m in enumerate(MIGRATIONS) if "eval_case_sources" in m)
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, at REAL)")
            for version, script in enumerate(MIGRATIONS[:mine], start=1):
                db.executescript(script)
                db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
            for sql in LEGACY_ROWS:
                db.execute(sql)
    else:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                "applied_at DOUBLE PRECISION NOT NULL)"
            )
            for version, script in enumerate(MIGRATIONS_PG[:mine], start=1):
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
            for sql in LEGACY_ROWS:
                await conn.execute(sql)
        finally:
            await conn.close()
    store = open_store(url)
    await store.open()
    try:
        assert [d.id for d in await store.datasets_to_erase()] == ["ds-old"]
        assert await store.erased_sources("ds-old") == {"c-gone"}
        marked = await store.get_adapter("av-old")
        assert marked is not None and marked.trained_on_erased
        assert {r.case_id: r.answer for r in await store.list_eval_results("ev-old")} == {
            "tenant-0": "[erased]",
            "guard-0": "Paris",
        }
        assert [r.id for r in await store.eval_reports_to_erase()] == ["ev-old"]
        run = await store.get_eval_run("t1", "ev-old")
        assert run is not None and run.suite_dataset_id == "ds-old"
    finally:
        await store.close()


async def test_concurrent_opens_migrate_exactly_once(url: str) -> None:
    stores = [open_store(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [len(MIGRATIONS)] * 4
        assert await migration_versions(url) == list(range(1, len(MIGRATIONS) + 1))
        # Every one of them works on the shared schema.
        await stores[0].create_tenant("t1", "acme")
        assert [t.name for t in await stores[3].list_tenants()] == ["acme"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_schemas_have_the_same_tables_columns_and_indexes(
    tmp_path: Path, pg_url: str
) -> None:
    lite = SQLiteStore(tmp_path / "db.sqlite")
    await lite.open()
    await lite.close()
    pg = PostgresStore(pg_url)
    await pg.open()
    await pg.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        tables = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        lite_columns = {
            t: [(r[1], bool(r[3]), r[5] > 0) for r in db.execute(f"PRAGMA table_info({t})")]
            for t in tables
        }
        lite_indexes = {
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT c.table_name, c.column_name, c.is_nullable = 'NO' AS notnull, "
            "(kcu.column_name IS NOT NULL) AS pk FROM information_schema.columns c "
            "LEFT JOIN information_schema.table_constraints tc ON tc.table_name = c.table_name "
            "AND tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public' "
            "LEFT JOIN information_schema.key_column_usage kcu "
            "ON kcu.constraint_name = tc.constraint_name AND kcu.column_name = c.column_name "
            "AND kcu.table_schema = 'public' "
            "WHERE c.table_schema = 'public' ORDER BY c.table_name, c.ordinal_position"
        )
        pg_indexes = {
            r[0]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'"
            )
        }
    finally:
        await conn.close()
    pg_columns: dict[str, list[tuple[str, bool, bool]]] = {}
    for r in rows:
        pg_columns.setdefault(r["table_name"], []).append((r["column_name"], r["notnull"], r["pk"]))
    for table, columns in lite_columns.items():
        assert [(c, pk) for c, _, pk in pg_columns[table]] == [(c, pk) for c, _, pk in columns]
        # SQLite's PRIMARY KEY columns are nullable unless declared NOT NULL; PostgreSQL's never.
        for (name, lite_nn, pk), (_, pg_nn, _) in zip(columns, pg_columns[table], strict=True):
            assert pk or lite_nn == pg_nn, (table, name)
    assert sorted(pg_columns) == sorted(lite_columns)
    assert pg_indexes == lite_indexes


# -- tenants, keys, aliases ---------------------------------------------------------------------


async def test_tenants(store: Store) -> None:
    acme = await store.create_tenant("t1", "acme")
    globex = await store.create_tenant("t2", "globex")
    assert acme.created_at < globex.created_at
    assert (acme.disabled, acme.store_default, acme.redact_pii, acme.retention_days) == (
        False,
        True,
        True,
        None,
    )
    assert await store.get_tenant("t1") == acme
    assert await store.get_tenant("acme") == acme
    assert await store.get_tenant("nope") is None
    assert await store.list_tenants() == [acme, globex]
    with pytest.raises(Conflict):
        await store.create_tenant("t3", "acme")
    with pytest.raises(Conflict):
        await store.create_tenant("t1", "other")
    await store.set_tenant_policy("t1", store_default=False, redact_pii=False, retention_days=30)
    assert await store.get_tenant("acme") == msgspec.structs.replace(
        acme, store_default=False, redact_pii=False, retention_days=30
    )
    await store.set_tenant_policy("t1", store_default=True, redact_pii=False, retention_days=None)
    changed = await store.get_tenant("t1")
    assert changed is not None
    assert (changed.store_default, changed.redact_pii, changed.retention_days) == (
        True,
        False,
        None,
    )
    assert await store.get_tenant("t2") == globex


async def test_keys(store: Store, clock: Clock) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    k2 = ApiKey("k2", "t1", "second", "hash2", T0 + 2)
    k1 = ApiKey("k1", "t1", "first", "hash1", T0 + 1)
    other = ApiKey("k3", "t2", "theirs", "hash3", T0)
    for k in (k2, k1, other):
        await store.add_key(k)
    assert await store.get_key("k1") == k1
    assert await store.get_key("nope") is None
    assert await store.list_keys("t1") == [k1, k2]
    assert await store.list_keys("t3") == []
    revoked = await store.revoke_key("k1")
    assert revoked == msgspec.structs.replace(k1, revoked_at=clock.now)
    assert await store.revoke_key("k1") == revoked  # the first revocation time is kept
    assert await store.get_key("k1") == revoked
    with pytest.raises(NotFound):
        await store.revoke_key("nope")
    with pytest.raises(IntegrityError):
        await store.add_key(ApiKey("k1", "t1", "dup", "h", T0))
    with pytest.raises(IntegrityError):
        await store.add_key(ApiKey("k9", "no-such-tenant", "x", "h", T0))


async def test_aliases(store: Store, clock: Clock) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    base = await store.set_alias("t1", "support", AliasTarget())
    assert base.target == AliasTarget() and base.created_at == base.updated_at == clock.now
    moved = await store.set_alias("t1", "support", adapter_target("v1"))
    assert moved.target == adapter_target("v1")
    assert (moved.created_at, moved.updated_at) == (base.created_at, clock.now)
    assert await store.get_alias("t1", "support") == moved
    assert await store.get_alias("t2", "support") is None
    # Bytewise order, like SQLite, whatever the PostgreSQL database's locale.
    names = ["support", "a", "B", "_x", "Z-1", "z@canary", "\u00e9t\u00e9"]
    for n in names[1:]:
        await store.set_alias("t1", n, AliasTarget())
    await store.set_alias("t2", "theirs", adapter_target("v9"))
    assert [a.name for a in await store.list_aliases("t1")] == sorted(names)
    await store.delete_alias("t1", "a")
    assert await store.get_alias("t1", "a") is None
    with pytest.raises(NotFound):
        await store.delete_alias("t1", "a")
    with pytest.raises(NotFound):
        await store.delete_alias("t1", "theirs")  # another tenant's
    with pytest.raises(IntegrityError):
        await store.set_alias("no-such-tenant", "x", AliasTarget())


async def test_flip_alias_records_events_in_order(store: Store, clock: Clock) -> None:
    await store.create_tenant("t1", "acme")
    assert (
        await store.flip_alias("t1", "support", adapter_target("v1"), event("promote", "v1"))
        is None
    )
    at_first = clock.now
    assert (await store.get_alias("t1", "support")).target == adapter_target("v1")  # type: ignore[union-attr]
    previous = await store.flip_alias(
        "t1", "support", adapter_target("v2"), event("promote", "v2", "v1", forced=True)
    )
    assert previous == adapter_target("v1")
    assert await store.flip_alias(
        "t1", "support", AliasTarget(), event("rollback", None, "v2")
    ) == (adapter_target("v2"))
    alias = await store.get_alias("t1", "support")
    assert alias is not None
    assert (alias.target, alias.created_at, alias.updated_at) == (
        AliasTarget(),
        at_first,
        clock.now,
    )
    events = await store.alias_events("t1", "support")
    assert events == [
        AliasEvent(
            1, "t1", "support", "promote", None, "v1", "ops", "why promote", False, at_first
        ),
        AliasEvent(
            2, "t1", "support", "promote", "v1", "v2", "ops", "why promote", True, at_first + 1
        ),
        AliasEvent(
            3, "t1", "support", "rollback", "v2", None, "ops", "why rollback", False, clock.now
        ),
    ]
    assert await store.alias_events("t1", "other") == []


async def test_concurrent_flips_are_atomic(url: str) -> None:
    """Each flip sees exactly the target the one before it left: a chain, no lost update."""
    stores = [open_store(url) for _ in range(3)]  # PostgreSQL: three pools, like three gateways
    for s in stores:
        await s.open()
    try:
        await stores[0].create_tenant("t1", "acme")
        targets = [adapter_target(f"v{i}") for i in range(12)]
        previous = await asyncio.gather(
            *(
                stores[i % 3].flip_alias("t1", "support", t, event("promote", t.adapter_version))
                for i, t in enumerate(targets)
            )
        )
        final_alias = await stores[1].get_alias("t1", "support")
        assert final_alias is not None
        assert previous.count(None) == 1
        assert sorted(p.adapter_version for p in previous if p is not None) == sorted(
            t.adapter_version for t in targets if t != final_alias.target
        )
        events = await stores[2].alias_events("t1", "support")
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        assert len(events) == len(targets)
        # Event order is flip order: each flip's "previous" is the event before it.
        chain = [e.to_version for e in events]
        by_version = {t.adapter_version: p for t, p in zip(targets, previous, strict=True)}
        assert [by_version[v] for v in chain] == [
            None,
            *(adapter_target(v) for v in chain[:-1] if v),
        ]
        assert chain[-1] == final_alias.target.adapter_version
    finally:
        for s in stores:
            await s.close()


# -- adapter versions ---------------------------------------------------------------------------


async def test_adapter_versions(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    v2 = adapter("v2", created_at=T0 + 2, dataset_id="ds-1", eval_report_ids=("ev-1", "ev-2"))
    v1 = adapter("v1", created_at=T0 + 1, alpha=32, rank=16, target_modules=("o_proj",))
    theirs = adapter("v3", "t2", created_at=T0 + 3)
    for v in (v2, v1, theirs):
        await store.add_adapter(v)
    assert await store.get_adapter("v1") == msgspec.structs.replace(v1, alpha=32.0)
    assert isinstance((await store.get_adapter("v1")).alpha, float)  # type: ignore[union-attr]
    assert await store.get_adapter("v2") == v2
    assert await store.get_adapter("nope") is None
    assert await store.find_adapter("t1", "sha256:v2") == v2
    assert await store.find_adapter("t2", "sha256:v2") is None
    assert [v.id for v in await store.list_adapters()] == ["v1", "v2", "v3"]
    assert [v.id for v in await store.list_adapters("t1")] == ["v1", "v2"]
    assert await store.list_adapters("t9") == []
    with pytest.raises(IntegrityError):  # same content in the same tenant
        await store.add_adapter(adapter("v4", created_at=T0 + 4, content_hash="sha256:v2"))
    await store.add_adapter(adapter("v5", "t2", created_at=T0 + 5, content_hash="sha256:v2"))

    await store.set_adapter_status("v2", "live")
    assert (await store.get_adapter("v2")).status == "live"  # type: ignore[union-attr]
    await store.set_adapter_status("nope", "retired")  # nothing to do, no error

    a = await store.set_alias("t1", "support", adapter_target("v2"))
    b = await store.set_alias("t1", "canary", adapter_target("v2"))
    await store.set_alias("t1", "plain", AliasTarget())
    c = await store.set_alias("t2", "theirs", adapter_target("v3"))
    assert sorted(await store.aliases_to("v2"), key=lambda x: x.name) == [b, a]
    assert await store.aliases_to("v1") == []
    assert sorted(await store.live_aliases(), key=lambda x: (x.tenant_id, x.name)) == [b, a, c]

    await store.delete_adapter("v1")
    assert await store.get_adapter("v1") is None
    await store.delete_adapter("v1")  # already gone: no error
    assert [v.id for v in await store.list_adapters("t1")] == ["v2"]


# -- captured traffic ---------------------------------------------------------------------------


async def seed_completions(store: Store) -> list[Completion]:
    """Two tenants' traffic, finished, in one batch-insert and one batch-final."""
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    inserts = [
        completion("c-b", created_at=T0 + 1, end_user="alice", metadata={"team": "red"}),
        completion("c-a", created_at=T0 + 1, end_user="bob", metadata={"team": "blue"}),
        completion(
            "c-C", created_at=T0 + 1, alias="canary", adapter_version="v2", metadata={"team": "red"}
        ),
        completion(
            "c-d", created_at=T0 + 3, end_user="alice", metadata={"team": "red", "x.y": "1"}
        ),
        completion("c-e", created_at=T0 + 4, stored=False, request=None, end_user="alice"),
        completion("c-f", created_at=T0 + 5, kind="completion", metadata={"team": "blue"}),
        completion("c-z", "t2", created_at=T0 + 1, end_user="alice", metadata={"team": "red"}),
    ]
    await store.capture_batch(inserts, [])
    return inserts


async def test_capture_batch_inserts_then_finals(store: Store) -> None:
    inserts = await seed_completions(store)
    by_id = {c.id: c for c in inserts}
    assert await store.get_completion("t1", "c-a") == by_id["c-a"]
    assert await store.get_completion("t2", "c-a") is None  # another tenant's
    assert await store.get_completion("t1", "nope") is None
    finals = [
        final("c-a", completed_at=T0 + 10),
        final("c-b", completed_at=T0 + 11, status="error", error="engine said no", response=None),
    ]
    late = completion("c-g", created_at=T0 + 6)
    calls = '[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]'
    called = final("c-g", completed_at=T0 + 12, tool_calls=calls, finish_reason="tool_calls")
    await store.capture_batch([late], [*finals, called])
    assert await store.get_completion("t1", "c-a") == finished(by_id["c-a"], finals[0])
    assert await store.get_completion("t1", "c-b") == finished(by_id["c-b"], finals[1])
    got = await store.get_completion("t1", "c-g")
    assert got == finished(late, called) and got is not None and got.tool_calls == calls
    assert (await store.get_completion("t1", "c-a")).tool_calls is None  # type: ignore[union-attr]
    await store.capture_batch([], [final("ghost", completed_at=T0)])  # an unknown id: no-op
    await store.capture_batch([], [])


async def test_capture_batch_is_one_transaction(store: Store) -> None:
    await seed_completions(store)
    with pytest.raises(IntegrityError):
        await store.capture_batch(
            [completion("new-1", created_at=T0 + 7), completion("c-a", created_at=T0)],
            [final("c-b", completed_at=T0 + 10)],
        )
    assert await store.get_completion("t1", "new-1") is None
    assert (await store.get_completion("t1", "c-b")).status == "in_progress"  # type: ignore[union-attr]


async def page_ids(store: Store, **kw: Any) -> tuple[list[str], bool]:
    rows, more = await store.list_completions(CompletionQuery("t1", **kw))
    return [r.id for r in rows], more


async def test_list_completions_filters_and_pages(store: Store) -> None:
    await seed_completions(store)
    # Only stored rows; by created_at then id, bytewise like SQLite ("c-C" < "c-a" < "c-b"),
    # whatever the PostgreSQL database's locale says.
    assert await page_ids(store) == (["c-C", "c-a", "c-b", "c-d", "c-f"], False)
    assert await page_ids(store, order="desc") == (["c-f", "c-d", "c-b", "c-a", "c-C"], False)
    assert await page_ids(store, alias="canary") == (["c-C"], False)
    assert await page_ids(store, alias="nope") == ([], False)
    assert await page_ids(store, metadata={"team": "red"}) == (["c-C", "c-b", "c-d"], False)
    assert await page_ids(store, metadata={"team": "red", "x.y": "1"}) == (["c-d"], False)
    assert await page_ids(store, metadata={"team": "green"}) == ([], False)
    assert await page_ids(store, alias="support", metadata={"team": "blue"}) == (
        ["c-a", "c-f"],
        False,
    )

    assert await page_ids(store, limit=2) == (["c-C", "c-a"], True)
    assert await page_ids(store, limit=2, after="c-a") == (["c-b", "c-d"], True)
    assert await page_ids(store, limit=2, after="c-d") == (["c-f"], False)
    assert await page_ids(store, limit=3, after="c-b") == (["c-d", "c-f"], False)
    assert await page_ids(store, limit=5) == (["c-C", "c-a", "c-b", "c-d", "c-f"], False)
    assert await page_ids(store, limit=2, order="desc") == (["c-f", "c-d"], True)
    assert await page_ids(store, limit=2, order="desc", after="c-d") == (["c-b", "c-a"], True)
    assert await page_ids(store, limit=2, order="desc", after="c-a") == (["c-C"], False)
    assert await page_ids(store, limit=1, after="c-C", metadata={"team": "red"}) == (["c-b"], True)
    assert await page_ids(store, after="c-z") == ([], False)  # another tenant's cursor
    assert await page_ids(store, after="nope") == ([], False)
    # An unstored row still works as a cursor.
    assert await page_ids(store, after="c-e") == (["c-f"], False)

    rows, _ = await store.list_completions(CompletionQuery("t2"))
    assert [r.id for r in rows] == ["c-z"]


async def test_update_and_delete_completion(store: Store) -> None:
    inserts = await seed_completions(store)
    a = inserts[1]
    updated = await store.update_completion("t1", "c-a", metadata={"team": "green", "n": "2"})
    assert updated == msgspec.structs.replace(a, metadata={"team": "green", "n": "2"})
    assert await page_ids(store, metadata={"team": "green"}) == (["c-a"], False)
    flagged = await store.update_completion("t1", "c-a", do_not_train=True)
    assert flagged == msgspec.structs.replace(updated, do_not_train=True)
    both = await store.update_completion("t1", "c-a", metadata=dict(a.metadata), do_not_train=False)
    assert both == a
    assert await store.update_completion("t1", "c-a") == a
    assert await store.update_completion("t1", "nope", metadata={"a": "b"}) is None
    assert await store.update_completion("t2", "c-a", do_not_train=True) is None
    assert (await store.get_completion("t1", "c-a")).do_not_train is False  # type: ignore[union-attr]

    assert await store.delete_completion("t2", "c-a") is False
    assert await store.delete_completion("t1", "c-a") is True
    assert await store.delete_completion("t1", "c-a") is False
    assert await store.get_completion("t1", "c-a") is None


async def test_feedback(store: Store) -> None:
    await seed_completions(store)
    f2 = feedback("f2", "c-a", created_at=T0 + 20, rating=None, score=None, tags=())
    f1 = feedback(
        "f1",
        "c-a",
        created_at=T0 + 10,
        correction="better answer",
        comment=None,
        key_id="k1",
        end_user="alice",
    )
    f3 = feedback("f3", "c-b", created_at=T0 + 15, rating="down")
    for f in (f2, f1, f3):
        await store.add_feedback(f)
    assert await store.list_feedback("t1", "c-a") == [f1, f2]
    assert await store.list_feedback("t1", "c-b") == [f3]
    assert await store.list_feedback("t2", "c-a") == []
    assert await store.list_feedback("t1", "c-d") == []
    with pytest.raises(IntegrityError):
        await store.add_feedback(feedback("f4", "nope", created_at=T0))
    with pytest.raises(IntegrityError):
        await store.add_feedback(feedback("f5", "c-a", created_at=T0, rating="meh"))
    # Deleting the completion takes its feedback with it.
    await store.delete_completion("t1", "c-a")
    assert await store.list_feedback("t1", "c-a") == []


async def test_erase_one_end_user_then_the_tenant(store: Store) -> None:
    await seed_completions(store)
    await store.add_feedback(feedback("f1", "c-b", created_at=T0 + 10))
    await store.add_feedback(feedback("f2", "c-a", created_at=T0 + 11))
    await store.add_feedback(feedback("f3", "c-z", "t2", created_at=T0 + 12))
    assert (await store.erase("t1", "alice", "admin")).completions == 3  # c-b, c-d, c-e
    assert await page_ids(store) == (["c-C", "c-a", "c-f"], False)
    assert await store.list_feedback("t1", "c-b") == []
    assert len(await store.list_feedback("t1", "c-a")) == 1
    assert await store.erase("t1", "nobody", "admin") == Erasure(0)
    assert (await store.erase("t1", None, "admin")).completions == 3
    assert await page_ids(store) == ([], False)
    assert await store.list_feedback("t1", "c-a") == []
    # The other tenant's alice is untouched.
    assert await store.get_completion("t2", "c-z") is not None
    assert len(await store.list_feedback("t2", "c-z")) == 1


async def test_purge_mark_incomplete_and_opt_out(store: Store, clock: Clock) -> None:
    await seed_completions(store)
    await store.capture_batch(
        [],
        [final(c, completed_at=T0 + 10) for c in ("c-a", "c-b", "c-C")]
        + [final("c-z", completed_at=T0 + 10)],
    )
    await store.add_feedback(feedback("f1", "c-a", created_at=T0 + 10))
    # Only finished rows created before the cutoff go; in-progress ones stay.
    assert await store.purge_before("t1", T0 + 3) == 3
    assert await page_ids(store) == (["c-d", "c-f"], False)
    assert await store.purge_before("t1", T0 + 3) == 0
    assert await store.get_completion("t2", "c-z") is not None

    assert await store.mark_incomplete(T0 + 5) == 2  # c-d, c-e (c-f is at T0 + 5)
    d = await store.get_completion("t1", "c-d")
    assert d is not None and (d.status, d.completed_at) == ("incomplete", clock.now)
    assert (await store.get_completion("t1", "c-f")).status == "in_progress"  # type: ignore[union-attr]
    assert await store.mark_incomplete(T0 + 5) == 0

    assert await store.opt_out("t1", "alice") == 2  # c-d, c-e
    assert await store.opt_out("t1", "alice") == 2  # idempotent, still counts matched rows
    assert await store.opt_out("t1", "nobody") == 0
    assert (await store.get_completion("t1", "c-d")).do_not_train is True  # type: ignore[union-attr]
    assert (await store.get_completion("t1", "c-f")).do_not_train is False  # type: ignore[union-attr]
    assert (await store.get_completion("t2", "c-z")).do_not_train is False  # type: ignore[union-attr]


async def test_export_completions(store: Store) -> None:
    inserts = {c.id: c for c in await seed_completions(store)}
    finals = {c: final(c, completed_at=T0 + 10) for c in ("c-a", "c-b", "c-e", "c-f")}
    finals["c-b"] = final("c-b", completed_at=T0 + 10, status="error", error="boom")
    await store.capture_batch([], list(finals.values()))
    f2 = feedback("f2", "c-f", created_at=T0 + 21)
    f1 = feedback("f1", "c-f", created_at=T0 + 20)
    f3 = feedback("f3", "c-a", created_at=T0 + 22)
    for f in (f2, f1, f3):
        await store.add_feedback(f)
    # Stored and complete only, oldest first, each with its feedback.
    assert await store.export_completions("t1") == [
        (finished(inserts["c-a"], finals["c-a"]), [f3]),
        (finished(inserts["c-f"], finals["c-f"]), [f1, f2]),
    ]
    assert await store.export_completions("t9") == []


# -- both backends, the same records ------------------------------------------------------------


async def scenario(store: Store) -> list[object]:
    """Every method, with odd inputs included; what each returned (or raised), in order."""
    out: list[object] = []

    async def record(call: Awaitable[object]) -> None:
        try:
            out.append(await call)
        except (Conflict, NotFound, *IntegrityError) as e:
            kind = "IntegrityError" if isinstance(e, IntegrityError) else type(e).__name__
            out.append(("raised", kind))

    steps: list[Callable[[], Awaitable[object]]] = [
        store.schema_version,
        lambda: store.create_tenant("t1", "acme"),
        lambda: store.create_tenant("t2", "globex"),
        lambda: store.create_tenant("t3", "acme"),
        lambda: store.set_tenant_policy(
            "t2", store_default=False, redact_pii=True, retention_days=7
        ),
        store.list_tenants,
        lambda: store.get_tenant("globex"),
        lambda: store.add_key(ApiKey("k1", "t1", "ci", "h1", T0)),
        lambda: store.add_key(ApiKey("k1", "t1", "ci", "h1", T0)),
        lambda: store.revoke_key("k1"),
        lambda: store.revoke_key("k404"),
        lambda: store.list_keys("t1"),
        lambda: store.add_adapter(adapter("v1", created_at=T0 + 1, alpha=8)),
        lambda: store.add_adapter(adapter("v2", created_at=T0 + 2, eval_report_ids=("e",))),
        lambda: store.add_adapter(adapter("v3", created_at=T0 + 3, content_hash="sha256:v1")),
        lambda: store.set_adapter_status("v1", "retired"),
        store.list_adapters,
        lambda: store.find_adapter("t1", "sha256:v2"),
        lambda: store.set_alias("t1", "support", AliasTarget()),
        lambda: store.flip_alias("t1", "support", adapter_target("v1"), event("promote", "v1")),
        lambda: store.flip_alias("t1", "canary", adapter_target("v2"), event("set", "v2")),
        lambda: store.flip_alias("t1", "support", adapter_target("v2"), event("p", "v2", "v1")),
        lambda: store.alias_events("t1", "support"),
        lambda: store.list_aliases("t1"),
        lambda: store.aliases_to("v2"),
        store.live_aliases,
        lambda: store.delete_alias("t1", "canary"),
        lambda: store.delete_alias("t1", "canary"),
        lambda: store.delete_adapter("v1"),
        lambda: store.get_adapter("v1"),
        lambda: store.capture_batch(
            [
                completion("c1", created_at=T0 + 1, end_user="u1", metadata={"k": "v"}),
                # Fields an insert does not carry: what each backend keeps must agree.
                completion("c2", created_at=T0 + 1, do_not_train=True, response="early"),
                completion("c3", created_at=T0 + 2, end_user="u1", stored=False),
                completion("c4", "t2", created_at=T0 + 3),
            ],
            [final("c1", completed_at=T0 + 4), final("c2", completed_at=T0 + 5, ttft_ms=None)],
        ),
        lambda: store.list_completions(CompletionQuery("t1", limit=1)),
        lambda: store.list_completions(CompletionQuery("t1", metadata={"k": "v"})),
        lambda: store.list_completions(CompletionQuery("t1", order="desc", after="c2")),
        lambda: store.get_completion("t1", "c2"),
        lambda: store.update_completion("t1", "c1", metadata={"k": "w"}, do_not_train=True),
        lambda: store.add_feedback(feedback("f1", "c1", created_at=T0 + 6)),
        lambda: store.add_feedback(feedback("f1", "c1", created_at=T0 + 6)),
        lambda: store.list_feedback("t1", "c1"),
        lambda: store.export_completions("t1"),
        lambda: store.opt_out("t1", "u1"),
        lambda: store.mark_incomplete(T0 + 10),
        lambda: store.get_completion("t1", "c3"),
        lambda: store.purge_before("t1", T0 + 2),
        lambda: store.erase("t1", "u1", "admin"),
        lambda: store.erase("t2", None, "admin"),
        lambda: store.delete_completion("t1", "c1"),
        lambda: store.export_completions("t1"),
        lambda: store.get_tenant("t2"),
    ]
    for step in steps:
        await record(step())
    return out


async def test_both_backends_return_identical_records(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for url in (f"sqlite:///{tmp_path / 'db.sqlite'}", pg_url):
        clock = Clock()
        for module in TIMED_MODULES:
            monkeypatch.setattr(module, "time", clock)
        s = open_store(url)
        await s.open()
        try:
            results.append(await scenario(s))
        finally:
            await s.close()
    lite, pg = results
    assert len(lite) == len(pg)
    for i, (a, b) in enumerate(zip(lite, pg, strict=True)):
        assert a == b, f"step {i}: {a!r} != {b!r}"
        assert repr(a) == repr(b), f"step {i}: same value, different types"


# -- URLs ---------------------------------------------------------------------------------------


def test_open_store_urls() -> None:
    for scheme in ("postgresql", "postgres"):
        s = open_store(f"{scheme}://u@db.example:5433/loopgate?pool_max=3&sslmode=disable")
        assert isinstance(s, PostgresStore)
        assert (s.pool_min, s.pool_max) == (1, 3)
        assert s.dsn == f"{scheme}://u@db.example:5433/loopgate?sslmode=disable"
    default = PostgresStore("postgresql://u@h/db")
    assert (default.pool_min, default.pool_max, default.dsn) == (1, 10, "postgresql://u@h/db")
    assert PostgresStore("postgresql://u@h/db?pool_min=4&pool_max=2").pool_min == 2
    for bad in ("pool_max=0", "pool_max=x", "pool_min=-1"):
        with pytest.raises(ValueError, match="positive integer"):
            PostgresStore(f"postgresql://u@h/db?{bad}")
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("mysql://u@h/db")


async def test_a_closed_store_says_so(pg_url: str) -> None:
    s = PostgresStore(pg_url + "?pool_max=2")
    with pytest.raises(RuntimeError, match="not open"):
        await s.list_tenants()
    await s.open()
    await s.close()
    await s.close()
    with pytest.raises(RuntimeError, match="not open"):
        await s.schema_version()


# -- training: files, datasets, fine-tuning jobs ------------------------------------------------


def job(jid: str, tenant: str = "t1", *, created_at: float, **kw: Any) -> FineTuningJob:
    fields: dict[str, Any] = {
        "id": jid,
        "tenant_id": tenant,
        "created_by": "k1",
        "model": "smollm2",
        "base_model": "smollm2-135m",
        "base_adapter": None,
        "training_file": "file-1",
        "validation_file": None,
        "dataset_id": None,
        "hyperparameters": '{"epochs": 3}',
        "suffix": "style",
        "seed": 7,
        "status": "queued",
        "stage": "queued",
        "created_at": created_at,
    }
    fields.update(kw)
    return FineTuningJob(**fields)


def dataset(did: str, tenant: str = "t1", **kw: Any) -> Dataset:
    fields: dict[str, Any] = {
        "id": did,
        "tenant_id": tenant,
        "content_hash": f"sha256:{did}",
        "source": "traffic",
        "source_file_id": None,
        "train_count": 9,
        "eval_count": 1,
        "preference_count": 0,
        "path": f"/datasets/{did}",
        "stats": "{}",
        "created_by": "k1",
        "created_at": T0,
    }
    fields.update(kw)
    return Dataset(**fields)


async def test_files_are_scoped_to_their_tenant(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    f1 = FileObject("file-1", "t1", "fine-tune", "a.jsonl", 120, 3, "/f/1", "k1", T0)
    f2 = FileObject("file-2", "t1", "fine-tune", "b.jsonl", 5_000_000_000, 1, "/f/2", "k1", T0 + 1)
    await store.add_file(f1)
    await store.add_file(f2)
    assert await store.get_file("t1", "file-1") == f1
    assert await store.get_file("t2", "file-1") is None
    assert await store.list_files("t1") == [f2, f1]  # newest first
    assert await store.list_files("t2") == []
    assert not await store.delete_file("t2", "file-1")
    assert await store.delete_file("t1", "file-1")
    assert await store.list_files("t1") == [f2]


async def test_erasure_marks_the_datasets_that_used_the_data(store: Store) -> None:
    await seed_completions(store)
    used_alice = dataset("ds-1")
    used_bob = dataset("ds-2", source="file", source_file_id="file-9")
    other = dataset("ds-3", "t2")
    await store.add_dataset(used_alice, ["c-b", "c-a"])
    await store.add_dataset(used_bob, ["c-a"])
    await store.add_dataset(other, ["c-z"])
    assert await store.get_dataset("t1", "ds-1") == used_alice
    assert await store.get_dataset("t2", "ds-1") is None
    assert [d.id for d in await store.list_datasets("t1")] == ["ds-2", "ds-1"]
    await store.erase("t1", "alice", "admin")
    marked = await store.get_dataset("t1", "ds-1")
    assert marked is not None and marked.tainted_at is not None
    assert marked.taint_reason == "erasure of an end-user's data"
    assert (await store.get_dataset("t1", "ds-2")) == used_bob  # bob's data is still there
    assert (await store.get_dataset("t2", "ds-3")) == other  # the other tenant's alice too
    await store.erase("t1", None, "admin")
    again = await store.get_dataset("t1", "ds-2")
    assert again is not None and again.taint_reason == "erasure of the tenant's data"


async def test_erasure_follows_the_data_into_snapshots_adapters_and_evals(store: Store) -> None:
    """alice's erase reaches what was built from her completions (c-b, c-d, c-e), nothing else."""
    await seed_completions(store)
    await store.add_dataset(dataset("ds-1"), ["c-b", "c-a"], flagged=["c-d", "c-a"])
    await store.add_dataset(dataset("ds-2"), ["c-a"], flagged=["c-e"])  # alice only in a flag
    await store.add_dataset(dataset("ds-3"), ["c-f"])
    await store.add_dataset(dataset("ds-9", "t2"), ["c-z"])  # the other tenant's alice
    for vid, ds in (("v1", "ds-1"), ("v2", "ds-2"), ("v3", "ds-3")):
        await store.add_adapter(adapter(vid, created_at=T0, dataset_id=ds))
    await store.add_adapter(adapter("v9", "t2", created_at=T0, dataset_id="ds-9"))
    cases = [CaseSource("tenant", "tenant-0", "c-b"), CaseSource("tenant", "tenant-1", "c-a")]
    await store.add_eval_run(eval_run("ev-1", "ds-1"), sources=cases)
    await store.add_eval_run(eval_run("ev-2", "ds-1"))  # older than case lineage: no sources
    await store.add_eval_run(eval_run("ev-3", None))  # an uploaded suite
    given = [
        ("ev-1", "tenant-0", "candidate"),
        ("ev-1", "tenant-0", "live"),
        ("ev-1", "tenant-1", "candidate"),
        ("ev-1", "guard-0", "candidate"),
        ("ev-2", "tenant-5", "candidate"),
        ("ev-2", "guard-0", "candidate"),
        ("ev-3", "tenant-0", "candidate"),
    ]
    await store.add_eval_results([answer(*a) for a in given])
    await store.finish_eval_run("ev-1", "done", report_dir="/evals/t1/ev-1")

    done = await store.erase("t1", "alice", "admin")

    assert done == Erasure(3, ("ds-1", "ds-2"), ("v1",), ("ev-1", "ev-2"))
    ds1, ds2, ds3 = [await store.get_dataset("t1", d) for d in ("ds-1", "ds-2", "ds-3")]
    assert ds1 is not None and ds1.tainted_at is not None and ds1.erasure == "pending"
    assert ds2 is not None and ds2.tainted_at is None and ds2.erasure == "pending"
    assert ds3 == dataset("ds-3")
    assert [(await store.get_adapter(v)).trained_on_erased for v in ("v1", "v2", "v3")] == [  # type: ignore[union-attr]
        True,
        False,
        False,
    ]
    assert await answers(store, "ev-1") == {
        ("tenant-0", "candidate"): "[erased]",
        ("tenant-0", "live"): "[erased]",
        ("tenant-1", "candidate"): "said tenant-1",
        ("guard-0", "candidate"): "said guard-0",
    }
    assert await answers(store, "ev-2") == {
        ("tenant-5", "candidate"): "[erased]",
        ("guard-0", "candidate"): "said guard-0",
    }
    assert await answers(store, "ev-3") == {("tenant-0", "candidate"): "said tenant-0"}
    runs = {r.id: r for r in await store.list_eval_runs("t1")}
    assert [runs[r].erased_at is not None for r in ("ev-1", "ev-2", "ev-3")] == [True, True, False]
    # The follow-through's bookkeeping.
    assert await store.erased_sources("ds-1") == {"c-b", "c-d"}
    assert await store.erased_sources("ds-2") == {"c-e"}
    assert [d.id for d in await store.datasets_to_erase()] == ["ds-1", "ds-2"]
    rewritten = DatasetErasure("rewritten", 1, 0, 0, '{"stats": {}}')
    assert not await store.finish_dataset_erasure("ds-1", rewritten, 1)  # one more was erased
    assert await store.finish_dataset_erasure("ds-1", rewritten, 2)
    assert not await store.finish_dataset_erasure("ds-1", rewritten, 2)  # no longer pending
    ds1 = await store.get_dataset("t1", "ds-1")
    assert ds1 is not None and (ds1.erasure, ds1.erased_examples) == ("rewritten", 9)
    assert (ds1.train_count, ds1.eval_count, ds1.stats) == (1, 0, '{"stats": {}}')
    assert [d.id for d in await store.datasets_to_erase()] == ["ds-2"]
    assert [r.id for r in await store.eval_reports_to_erase()] == ["ev-1"]
    await store.clear_eval_report("ev-1")
    assert await store.eval_reports_to_erase() == []

    # What is written after the erase, from data read before it, is caught as it is written.
    await store.add_adapter(adapter("v4", created_at=T0, dataset_id="ds-1", content_hash="h4"))
    await store.add_adapter(adapter("v5", created_at=T0, dataset_id="ds-3", content_hash="h5"))
    v4, v5 = await store.get_adapter("v4"), await store.get_adapter("v5")
    assert v4 is not None and v4.trained_on_erased and v5 is not None and not v5.trained_on_erased
    await store.add_dataset(dataset("ds-4"), ["c-b", "c-a"])  # exported before c-b was erased
    ds4 = await store.get_dataset("t1", "ds-4")
    assert ds4 is not None and ds4.erasure == "pending"
    assert ds4.taint_reason == "data it used was erased while it was being built"
    assert await store.erased_sources("ds-4") == {"c-b"}
    late = [CaseSource("tenant", "tenant-0", "c-d"), CaseSource("tenant", "tenant-1", "c-a")]
    await store.add_eval_run(eval_run("ev-4", "ds-1"), sources=late)
    await store.add_eval_results([answer("ev-4", c, "candidate") for c in ("tenant-0", "tenant-1")])
    assert await answers(store, "ev-4") == {
        ("tenant-0", "candidate"): "[erased]",
        ("tenant-1", "candidate"): "said tenant-1",
    }
    await store.finish_eval_run("ev-4", "done", report_dir="/evals/t1/ev-4")
    assert [r.id for r in await store.eval_reports_to_erase()] == ["ev-4"]

    # The whole tenant: every snapshot with its traffic, every adapter on them, no one else's.
    done = await store.erase("t1", None, "admin")
    assert done == Erasure(
        3,
        ("ds-1", "ds-2", "ds-3", "ds-4"),
        ("v1", "v2", "v3", "v4", "v5"),
        ("ev-1", "ev-2", "ev-4"),
    )
    ds2 = await store.get_dataset("t1", "ds-2")
    assert ds2 is not None and ds2.taint_reason == "erasure of the tenant's data"
    assert await store.get_dataset("t2", "ds-9") == dataset("ds-9", "t2")
    v9 = await store.get_adapter("v9")
    assert v9 is not None and not v9.trained_on_erased


def eval_run(run_id: str, suite_dataset_id: str | None) -> EvalRun:
    return EvalRun(
        run_id,
        "t1",
        "support",
        "v1",
        None,
        "running",
        "admin",
        T0,
        suite_dataset_id=suite_dataset_id,
    )


def answer(run_id: str, case_id: str, system: str) -> EvalResult:
    suite = case_id.split("-", maxsplit=1)[0]
    return EvalResult(run_id, suite, case_id, system, 1.0, True, 5.0, f"said {case_id}")


async def answers(store: Store, run_id: str) -> dict[tuple[str, str], str]:
    return {(r.case_id, r.system): r.answer for r in await store.list_eval_results(run_id)}


async def test_optouts_are_listed_for_the_dataset_builder(store: Store) -> None:
    await seed_completions(store)
    await store.opt_out("t1", "alice")
    await store.opt_out("t2", "carol")
    assert await store.list_optouts("t1") == {"alice"}
    assert await store.list_optouts("t2") == {"carol"}


async def test_jobs_list_newest_first_with_cursor_and_tenant_scope(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    for i in range(5):
        await store.create_job(job(f"ftjob-{i}", created_at=T0 + i))
    await store.create_job(job("ftjob-x", "t2", created_at=T0))
    page, more = await store.list_jobs("t1", None, 2)
    assert [j.id for j in page] == ["ftjob-4", "ftjob-3"] and more
    page, more = await store.list_jobs("t1", "ftjob-3", 10)
    assert [j.id for j in page] == ["ftjob-2", "ftjob-1", "ftjob-0"] and not more
    # Another tenant's job is an unknown cursor (it was found across tenants: an oracle).
    await store.create_job(job("ftjob-y", "t2", created_at=T0 + 10))
    assert await store.list_jobs("t1", "ftjob-y", 10) == await store.list_jobs("t1", "no", 10)
    assert await store.get_job("ftjob-x", "t1") is None
    assert await store.get_job("ftjob-x") == job("ftjob-x", "t2", created_at=T0)


async def test_a_job_is_claimed_once_and_only_its_worker_writes_it(url: str) -> None:
    stores = [open_store(url) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        await stores[0].create_tenant("t1", "acme")
        for i in range(3):
            await stores[0].create_job(job(f"ftjob-{i}", created_at=T0 + i))
        claims = await asyncio.gather(*(s.claim_job(f"w{n}") for n in range(4) for s in stores))
        won = [c for c in claims if c is not None]
        assert sorted(c.id for c in won) == ["ftjob-0", "ftjob-1", "ftjob-2"]  # each once
        first = next(c for c in won if c.id == "ftjob-0")
        assert (first.status, first.stage, first.attempts) == ("running", "training", 1)
        assert first.started_at is not None and first.heartbeat_at is not None
        owner = first.worker
        assert owner is not None
        s = stores[0]
        assert await s.heartbeat_job("ftjob-0", owner) is False
        assert await s.heartbeat_job("ftjob-0", "intruder") is None
        changes = JobChanges(status="running", stage="registering", output_dir="/out")
        assert not await s.update_job("ftjob-0", changes, worker="intruder")
        assert await s.update_job("ftjob-0", changes, worker=owner)
        assert [j.id for j in await s.jobs_in_stage("registering")] == ["ftjob-0"]
        assert await s.heartbeat_job("ftjob-0", owner) is None  # no longer training
    finally:
        for s in stores:
            await s.close()


async def test_cancel_and_requeue_of_stale_jobs(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    await store.create_job(job("ftjob-q", created_at=T0))
    await store.create_job(job("ftjob-r", created_at=T0 + 1))
    await store.create_job(job("ftjob-s", created_at=T0 + 2))
    # Queued: cancelled at once; another tenant cannot cancel it.
    assert await store.request_cancel("t2", "ftjob-q") is None
    cancelled = await store.request_cancel("t1", "ftjob-q")
    assert cancelled is not None and (cancelled.status, cancelled.stage) == ("cancelled", "done")
    running = await store.claim_job("w1")
    assert running is not None and running.id == "ftjob-r"
    # Running: the worker is asked to stop (it sees the flag on its next heartbeat).
    flagged = await store.request_cancel("t1", "ftjob-r")
    assert flagged is not None and flagged.status == "running" and flagged.cancel_requested
    assert await store.heartbeat_job("ftjob-r", "w1") is True
    other = await store.claim_job("w2")
    assert other is not None and other.id == "ftjob-s"
    # Both workers vanish: the cancelled one ends, the other goes back to the queue.
    stale = await store.requeue_stale(before=2e10)
    assert sorted(stale) == [("ftjob-r", "cancelled"), ("ftjob-s", "queued")]
    requeued = await store.get_job("ftjob-s")
    assert requeued is not None and (requeued.status, requeued.worker) == ("queued", None)
    again = await store.claim_job("w3")
    assert again is not None and again.id == "ftjob-s" and again.attempts == 2
    assert await store.requeue_stale(before=0) == []


async def test_job_events_newest_first_with_cursor(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_job(job("ftjob-1", created_at=T0))
    for i in range(5):
        await store.add_job_event(
            "ftjob-1", "info", f"step {i}", {"step": i, "loss": 1.0 / (i + 1)}
        )
    events, more = await store.list_job_events("ftjob-1", None, 3)
    assert [e.message for e in events] == ["step 4", "step 3", "step 2"] and more
    assert msgspec.json.decode(events[0].data or "") == {"loss": 0.2, "step": 4}
    rest, more = await store.list_job_events("ftjob-1", events[-1].seq, 10)
    assert [e.message for e in rest] == ["step 1", "step 0"] and not more


# -- evals, gate policies, canaries -------------------------------------------------------------


async def test_eval_runs_results_and_gate_policy(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    run = EvalRun("ev-1", "t1", "support", "av-new", "av-old", "running", "admin", T0)
    await store.add_eval_run(run)
    await store.add_eval_run(EvalRun("ev-2", "t1", "support", "av-other", None, "running", "a", T0))
    assert await store.get_eval_run("t1", "ev-1") == run
    assert await store.get_eval_run("t2", "ev-1") is None
    results = [
        EvalResult("ev-1", "tenant", f"c{i}", system, 0.5 * i, i > 0, 12.5, f"answer {i} \u00e9")
        for i in range(3)
        for system in ("candidate", "live", "base")
    ]
    await store.add_eval_results(results)
    assert sorted(await store.list_eval_results("ev-1"), key=lambda r: (r.case_id, r.system)) == (
        sorted(results, key=lambda r: (r.case_id, r.system))
    )
    await store.finish_eval_run("ev-1", "done", promote=True, decision='{"promote": true}')
    done = await store.get_eval_run("t1", "ev-1")
    assert done is not None and done.status == "done" and done.promote is True
    assert done.finished_at is not None
    assert [r.id for r in await store.list_eval_runs("t1", "av-new")] == ["ev-1"]
    assert len(await store.list_eval_runs("t1")) == 2
    assert await store.get_gate_policy("t1") is None
    await store.set_gate_policy("t1", '{"min_improvement": 0.1}')
    await store.set_gate_policy("t1", '{"min_improvement": 0.2}')
    assert await store.get_gate_policy("t1") == '{"min_improvement": 0.2}'
    assert await store.get_gate_policy("t2") is None


async def test_canaries_start_and_end_once(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    canary = Canary("cn-1", "t1", "support", "av-new", 10.0, "{}", "active", "admin", T0)
    await store.add_canary(canary)
    assert await store.active_canaries() == [canary]
    assert await store.canaries_of("t1", "support") == [canary]
    assert await store.end_canary("cn-1", "rolled_back", "error rate 0.5 > 0.1")
    assert not await store.end_canary("cn-1", "promoted", "late")  # already ended
    assert await store.active_canaries() == []
    ended = (await store.canaries_of("t1", "support"))[0]
    assert ended.status == "rolled_back" and ended.reason == "error rate 0.5 > 0.1"


async def test_a_queued_eval_run_is_claimed_once_and_requeued_when_its_worker_dies(
    store: Store, clock: Clock
) -> None:
    await store.create_tenant("t1", "acme")
    queued = EvalRun("ev-q", "t1", "support", "av-1", None, "queued", "admin", T0, spec="{}")
    await store.add_eval_run(queued)
    first = await store.claim_eval_run("w1")
    assert first is not None and (first.id, first.status, first.worker) == ("ev-q", "running", "w1")
    assert first.attempts == 1 and first.spec == "{}"
    assert await store.claim_eval_run("w2") is None  # claimed once
    assert await store.heartbeat_eval_run("ev-q", "w1")
    assert not await store.heartbeat_eval_run("ev-q", "w2")  # not w2's
    # w1 goes silent: queued again, then (past the limit) failed with the reason.
    assert await store.requeue_stale_eval_runs(clock.now - 100, 1) == []  # not stale yet
    assert await store.requeue_stale_eval_runs(clock.now + 10, 1) == [("ev-q", "queued")]
    again = await store.claim_eval_run("w2")
    assert again is not None and (again.worker, again.attempts) == ("w2", 2)
    assert not await store.heartbeat_eval_run("ev-q", "w1")  # w1 lost its claim
    assert await store.requeue_stale_eval_runs(clock.now + 10, 1) == [("ev-q", "failed")]
    failed = await store.get_eval_run("t1", "ev-q")
    assert failed is not None and failed.status == "failed" and failed.worker is None
    assert (
        failed.error is not None and "went silent (crashed or was stopped) 2 times" in failed.error
    )
    assert failed.finished_at is not None
    assert await store.claim_eval_run("w3") is None


async def test_a_loop_run_is_claimed_once_saved_by_its_worker_and_requeued(
    store: Store, clock: Clock
) -> None:
    await store.create_tenant("t1", "acme")
    record = LoopRecord("loop-1", "t1", "support", "running", '{"a": 1}', '{"s": 0}', T0)
    await store.add_loop_run(record)
    assert await store.get_loop_run("t2", "loop-1") is None
    claimed = await store.claim_loop_run("w1")
    assert claimed is not None and (claimed.worker, claimed.attempts) == ("w1", 1)
    assert claimed.spec == '{"a": 1}'
    assert await store.claim_loop_run("w2") is None
    assert await store.save_loop_run("loop-1", "w1", "running", '{"s": 1}', None)
    assert not await store.save_loop_run("loop-1", "w2", "running", '{"s": 9}', None)
    assert await store.requeue_stale_loop_runs(clock.now + 10, 1) == [("loop-1", "running")]
    resumed = await store.claim_loop_run("w2")
    assert resumed is not None and resumed.state == '{"s": 1}' and resumed.attempts == 2
    assert not await store.save_loop_run("loop-1", "w1", "running", '{"s": 2}', None)
    assert await store.save_loop_run("loop-1", "w2", "promoted", '{"s": 3}', T0 + 5)
    done = await store.get_loop_run("t1", "loop-1")
    assert done is not None and (done.status, done.state, done.finished_at) == (
        "promoted",
        '{"s": 3}',
        T0 + 5,
    )
    assert await store.claim_loop_run("w3") is None  # an ended run is nobody's
    assert await store.requeue_stale_loop_runs(clock.now + 10, 1) == []


async def test_the_review_queue_picks_disagreement_then_negative_then_low_grades(
    store: Store,
) -> None:
    await seed_completions(store)  # t1: c-b, c-a, c-C (T0+1), c-d (T0+3), c-e, c-f; t2: c-z
    down = {"rating": "down", "score": None}
    for fid, cid, kw in [
        ("f1", "c-a", down),
        ("f2", "c-b", {"rating": "up", "score": None}),
        ("f3", "c-b", down),
        ("f4", "c-d", {"rating": None, "score": 0.9}),  # positive: alone, it waits for no one
        ("f5", "c-C", {"rating": None, "score": 0.8}),
        ("f6", "c-e", down),  # not stored: nothing to show a reviewer
        ("f7", "c-f", down),  # a legacy completion
        ("f8", "c-z", down),
    ]:
        tenant = "t2" if cid == "c-z" else "t1"
        await store.add_feedback(feedback(fid, cid, tenant, created_at=T0 + 10, **kw))
    run = EvalRun("ev-1", "t1", "support", "av-new", "av-old", "running", "admin", T0)
    await store.add_eval_run(run, sources=[CaseSource("tenant", "case-1", "c-d")])
    await store.add_eval_results(
        [
            EvalResult("ev-1", "tenant", "case-1", "live", 0.2, False, None, "meh"),
            EvalResult("ev-1", "tenant", "case-1", "candidate", 0.9, True, None, "fine"),
        ]
    )
    seen = []
    while (pick := await store.next_to_review("t1", 0.5)) is not None:
        c = pick.completion
        seen.append((c.id, pick.negative, pick.positive, pick.low_score, pick.waiting))
        assert c.tenant_id == "t1" and c.request is not None
        review = feedback(f"r-{c.id}", c.id, created_at=T0 + 20, author="reviewer:ada")
        await store.add_feedback(review)  # reviewed: it leaves the queue
    # Disagreement first (feedback both ways; a positive rating beside a low grade), oldest
    # first, then negative feedback alone.
    assert seen == [
        ("c-b", 1, 1, None, 3),
        ("c-d", 0, 1, 0.2, 2),
        ("c-a", 1, 0, None, 1),
    ]
    other = await store.next_to_review("t2", 0.5)
    assert other is not None and (other.completion.id, other.waiting) == ("c-z", 1)
    await store.add_feedback(feedback("f9", "c-z", "t2", created_at=T0 + 30, author="key:k9"))
    assert await store.next_to_review("t2", 0.5) is not None  # only a reviewer's ends the wait


# -- the console's overview: traffic per tenant and bucket, work not yet ended ------------------


async def test_traffic_is_counted_per_tenant_and_bucket_inside_the_window(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    since = T0 + 1000
    await store.capture_batch(
        [
            completion("w-0", created_at=since),  # the window's start is inside it
            completion("w-1", created_at=since + 299.5, status="error"),
            completion("w-2", created_at=since + 300, status="incomplete"),
            completion("w-3", created_at=since + 3599, status="complete"),
            completion("w-before", created_at=since - 0.5),
            completion("w-after", created_at=since + 3600),  # the end is outside
            completion("w-theirs", "t2", created_at=since + 10, status="error"),
        ],
        [],
    )
    hour = (since, since + 3600, 300.0)
    acme = [
        TrafficBucket("t1", 0, 2, 1),
        TrafficBucket("t1", 1, 1, 1),
        TrafficBucket("t1", 11, 1, 0),
    ]
    assert await store.traffic("t1", *hour) == acme
    assert await store.traffic(None, *hour) == [*acme, TrafficBucket("t2", 0, 1, 1)]
    assert await store.traffic("t9", *hour) == []
    assert await store.traffic("t1", since + 300, since + 600, 60.0) == [
        TrafficBucket("t1", 0, 1, 1)
    ]


async def test_active_work_is_what_has_not_ended_newest_first_and_bounded(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.create_tenant("t2", "globex")
    for j in (
        job("j-queued", created_at=T0 + 1),
        job("j-training", created_at=T0 + 2, status="running", stage="training"),
        job("j-registering", created_at=T0 + 3, status="running", stage="registering"),
        job("j-done", created_at=T0 + 4, status="succeeded", stage="done"),
        job("j-theirs", "t2", created_at=T0 + 5),
    ):
        assert await store.create_job(j) is None
    for i, (run_id, status) in enumerate(
        (("ev-q", "queued"), ("ev-r", "running"), ("ev-d", "done"), ("ev-f", "failed"))
    ):
        await store.add_eval_run(EvalRun(run_id, "t1", "support", "v1", None, status, "a", T0 + i))
    await store.add_eval_run(EvalRun("ev-t", "t2", "x", "v9", None, "queued", "a", T0 + 9))
    for loop_id, tenant, status, at in (
        ("loop-a", "t1", "running", T0 + 1),
        ("loop-b", "t1", "promoted", T0 + 2),
        ("loop-c", "t2", "running", T0 + 3),
    ):
        await store.add_loop_run(LoopRecord(loop_id, tenant, "support", status, "{}", "{}", at))

    def ids(work: ActiveWork) -> tuple[list[str], list[str], list[str]]:
        return [j.id for j in work.jobs], [r.id for r in work.evals], [r.id for r in work.loops]

    assert ids(await store.active_work("t1", 10)) == (
        ["j-registering", "j-training", "j-queued"],
        ["ev-r", "ev-q"],
        ["loop-a"],
    )
    assert ids(await store.active_work(None, 10)) == (
        ["j-theirs", "j-registering", "j-training", "j-queued"],
        ["ev-t", "ev-r", "ev-q"],
        ["loop-c", "loop-a"],
    )
    assert ids(await store.active_work(None, 1)) == (["j-theirs"], ["ev-t"], ["loop-c"])
    assert ids(await store.active_work("t9", 10)) == ([], [], [])
