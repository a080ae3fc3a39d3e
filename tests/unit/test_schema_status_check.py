"""The completions table's status rule, spelled out by a migration so SQLite checks it in place
(store/schema.py, the last migration): existing databases keep their rows and the same rule, and
connections opened before the change see it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import store.sqlite
from store import MIGRATIONS, SQLiteStore

UPDATE = "EXPLAIN UPDATE completions SET status = 'complete' WHERE id = 'x'"
INSERT = (
    "INSERT INTO completions (id, tenant_id, key_id, kind, alias, backend, stored, status, "
    "created_at) VALUES (?, 't1', 'k1', 'chat', 'a', 'b', 1, ?, 0)"
)


def temp_tables(conn: sqlite3.Connection, sql: str) -> int:
    """How many temporary tables the statement builds each time it runs."""
    return sum(1 for row in conn.execute(sql) if row[1] == "OpenEphemeral")


async def test_the_rewrite_keeps_rows_and_rule_and_reaches_open_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "loopgate.db"
    with monkeypatch.context() as before:  # a database as the previous release left it
        before.setattr(store.sqlite, "MIGRATIONS", MIGRATIONS[:-1])
        old = SQLiteStore(path)
        await old.open()
        await old.close()
    other = sqlite3.connect(path, isolation_level=None)  # open across the upgrade
    other.execute("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'one', 0)")
    other.execute(INSERT, ("c1", "complete"))
    assert temp_tables(other, UPDATE) == 1  # the IN list's table, built per row

    upgraded = SQLiteStore(path)
    await upgraded.open()
    try:
        assert await upgraded.schema_version() == len(MIGRATIONS)
        async with upgraded.db.execute(UPDATE) as cur:
            assert sum(1 for row in await cur.fetchall() if row[1] == "OpenEphemeral") == 0
    finally:
        await upgraded.close()

    # its next statement sees the bumped schema cookie and reloads the schema (an EXPLAIN
    # already prepared would only list its old program: a new text is compiled)
    assert other.execute("SELECT id, status FROM completions").fetchall() == [("c1", "complete")]
    assert temp_tables(other, UPDATE.replace("'x'", "'y'")) == 0
    assert other.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for n, status in enumerate(("in_progress", "complete", "incomplete", "error")):
        other.execute(INSERT, (f"ok{n}", status))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        other.execute(INSERT, ("bad", "done"))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        other.execute("UPDATE completions SET status = 'archived' WHERE id = 'c1'")
    other.close()
