"""Keys, the store and alias resolution on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.tenancy import Admin, Directory, hash_key, mint_key
from store import MIGRATIONS, AliasTarget, SQLiteStore
from store.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SQLiteStore(tmp_path / "db.sqlite")
    await s.open()
    yield s
    await s.close()


async def test_migrations_apply_once_and_reopen_cleanly(tmp_path: Path) -> None:
    for _ in range(2):
        s = SQLiteStore(tmp_path / "db.sqlite")
        await s.open()
        assert await s.schema_version() == len(MIGRATIONS)
        await s.close()
    mode = sqlite3.connect(tmp_path / "db.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_keys_are_stored_hashed_never_plain(store: SQLiteStore, tmp_path: Path) -> None:
    admin = Admin(store, "base")
    await admin.create_tenant("acme")
    issued = await admin.issue_key("acme")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))
    assert issued.key.encode() not in raw
    assert hash_key(issued.key).encode() in raw or (await store.get_key(issued.id)) is not None
    assert (await store.get_key(issued.id)).key_hash == hash_key(issued.key)  # type: ignore[union-attr]


async def test_authenticate_and_revoke(store: SQLiteStore) -> None:
    admin = Admin(store, "base")
    tenant = await admin.create_tenant("acme")
    issued = await admin.issue_key("acme")
    directory = Directory(store, ttl_s=60)
    caller = await directory.authenticate(f"Bearer {issued.key}")
    assert (caller.tenant_id, caller.key_id) == (tenant.id, issued.id)
    for bad in (
        None,
        "",
        "Basic abc",
        "Bearer ",
        "Bearer lg-0000000000000000-" + "A" * 43,
        f"Bearer {issued.key}x",
    ):
        with pytest.raises(AuthenticationFailed):
            await directory.authenticate(bad)
    await store.revoke_key(issued.id)
    assert (await directory.authenticate(f"Bearer {issued.key}")) == caller  # cached for ttl
    directory.invalidate()
    with pytest.raises(AuthenticationFailed):
        await directory.authenticate(f"Bearer {issued.key}")


async def test_minted_keys_are_unique_and_well_formed() -> None:
    keys = {mint_key()[1] for _ in range(200)}
    assert len(keys) == 200
    assert all(k.startswith("lg-") and len(k) == 3 + 16 + 1 + 43 for k in keys)


async def test_aliases_are_scoped_to_their_tenant(store: SQLiteStore) -> None:
    admin = Admin(store, "base")
    acme = await admin.create_tenant("acme")
    globex = await admin.create_tenant("globex")
    await admin.set_alias("globex", "secret", AliasTarget())
    directory = Directory(store, ttl_s=0)
    from gateway.tenancy import Caller

    acme_caller = Caller(acme.id, "acme", "k")
    assert (await directory.resolve(acme_caller, "base")).target == AliasTarget()
    with pytest.raises(NotFound):
        await directory.resolve(acme_caller, "secret")
    assert (await directory.resolve(Caller(globex.id, "globex", "k"), "secret")).name == "secret"


async def test_tenant_and_alias_validation(store: SQLiteStore) -> None:
    admin = Admin(store, "")
    await admin.create_tenant("acme")
    assert await store.list_aliases((await admin.tenant("acme")).id) == []
    with pytest.raises(Conflict):
        await admin.create_tenant("acme")
    for bad in ("", "UPPER", "-x", "a" * 64, "a b"):
        with pytest.raises(InvalidRequest):
            await admin.create_tenant(bad)
    for bad in ("", "a/b", "../x", " x"):
        with pytest.raises(InvalidRequest):
            await admin.set_alias("acme", bad, AliasTarget())
    assert (await admin.set_alias("acme", "support@canary", AliasTarget())).name == "support@canary"
    with pytest.raises(ValueError, match="adapter target"):
        AliasTarget("adapter", None)
    with pytest.raises(NotFound):
        await store.revoke_key("nope")
