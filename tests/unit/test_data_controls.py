"""Tenant data controls: capture policy, erasure, training opt-out, retention purge, export."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.cli import main
from tests.unit.conftest import ADMIN, Env

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "mail me at jo@example.com"}]}


def count(env: Env, where: str = "1=1") -> int:
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    return int(db.execute(f"SELECT COUNT(*) FROM completions WHERE {where}").fetchone()[0])


def test_policy_changes_what_is_kept(env: Env) -> None:
    resp = env.client.patch(
        "/admin/tenants/acme", json={"store_default": False, "redact_pii": False}, headers=ADMIN
    )
    assert resp.status_code == 200 and resp.json()["store_default"] is False
    env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    assert count(env, "stored = 0 AND request IS NULL") == 1
    env.client.post("/v1/chat/completions", json={**CHAT, "store": True}, headers=env.auth())
    assert count(env, "stored = 1 AND request LIKE '%jo@example.com%'") == 1  # redaction off
    bad = env.client.patch("/admin/tenants/acme", json={"retention_days": 0}, headers=ADMIN)
    assert bad.status_code == 400


def test_erase_by_end_user_and_whole_tenant(env: Env) -> None:
    for user in ("u1", "u1", "u2"):
        cid = env.client.post(
            "/v1/chat/completions", json={**CHAT, "user": user}, headers=env.auth()
        ).json()["id"]
        env.client.post(
            f"/v1/chat/completions/{cid}/feedback", json={"rating": "up"}, headers=env.auth()
        )
    env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth(env.globex_key))
    resp = env.client.post("/admin/tenants/acme/erase", json={"end_user": "u1"}, headers=ADMIN)
    assert resp.json() == {
        "erased": 2,
        "end_user": "u1",
        "datasets": [],  # nothing was built from it (tests/unit/test_erasure.py: what was)
        "adapter_versions_trained_on_erased": [],
        "eval_runs": [],
        "files_pending": [],
    }
    assert count(env, "end_user = 'u1'") == 0 and count(env, "end_user = 'u2'") == 1
    assert (
        env.client.post("/admin/tenants/acme/erase", json={}, headers=ADMIN).json()["erased"] == 1
    )
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 0
    assert count(env) == 1  # globex untouched
    assert [r[0] for r in db.execute("SELECT end_user FROM erasures ORDER BY seq")] == ["u1", None]


def test_opt_out_flags_the_users_rows(env: Env) -> None:
    env.client.post("/v1/chat/completions", json={**CHAT, "user": "u1"}, headers=env.auth())
    env.client.post("/v1/chat/completions", json={**CHAT, "user": "u2"}, headers=env.auth())
    resp = env.client.post("/admin/tenants/acme/opt-out", json={"end_user": "u1"}, headers=ADMIN)
    assert resp.json()["flagged"] == 1
    assert (
        count(env, "do_not_train = 1") == 1
        and count(env, "do_not_train = 1 AND end_user = 'u1'") == 1
    )
    cid = env.client.get("/v1/chat/completions", headers=env.auth()).json()["data"][1]["id"]
    upd = env.client.post(
        f"/v1/chat/completions/{cid}", json={"do_not_train": True}, headers=env.auth()
    )
    assert upd.json()["loopgate"]["do_not_train"] is True


def test_retention_purges_old_rows(env: Env) -> None:
    for _ in range(3):
        env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    db.execute(
        "UPDATE completions SET created_at = ? WHERE rowid <= 2", (time.time() - 10 * 86400,)
    )
    db.commit()
    env.client.patch("/admin/tenants/acme", json={"retention_days": 7}, headers=ADMIN)
    gw = env.client.app.state.gateway
    assert env.client.blocking_portal.call(gw.purge_expired) == 2
    assert count(env) == 1


def test_export_jsonl_uses_corrections(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = env.client.post(
        "/v1/chat/completions", json={**CHAT, "user": "u1"}, headers=env.auth()
    ).json()["id"]
    env.client.post(
        f"/v1/chat/completions/{cid}/feedback",
        json={"rating": "down", "correction": "Sure, noted."},
        headers=env.auth(),
    )
    env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth())
    env.client.post("/v1/chat/completions", json=CHAT, headers=env.auth(env.globex_key))
    monkeypatch.setenv("LOOPGATE_DATA_DIR", str(env.client.app.state.gateway.settings.data_dir))
    out = tmp_path / "acme.jsonl"
    assert main(["export", "acme", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["messages"][0] == {"role": "user", "content": "mail me at [EMAIL]"}
    assert first["messages"][-1] == {"role": "assistant", "content": "Sure, noted."}
    assert (
        first["feedback"][0]["rating"] == "down" and lines[1]["messages"][-1]["content"] == "Paris."
    )
    assert asyncio.iscoroutinefunction(env.client.app.state.gateway.purge_expired)
