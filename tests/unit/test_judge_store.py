"""The judges table on both backends: set (insert, then replace), get, delete, per tenant."""

from __future__ import annotations

import pytest

from store import JudgeConfig, open_store


def judge(tenant_id: str, **kw: object) -> JudgeConfig:
    fields: dict[str, object] = {
        "tenant_id": tenant_id,
        "kind": "alias",
        "alias": "smollm2",
        "base_url": None,
        "model": None,
        "api_key_sealed": None,
        "key_hint": None,
        "max_tokens": 256,
        "timeout_s": 60.0,
        "created_at": 100.0,
        "updated_at": 100.0,
    }
    return JudgeConfig(**{**fields, **kw})  # type: ignore[arg-type]


async def test_a_judge_is_set_replaced_read_and_deleted_per_tenant(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        acme = await store.create_tenant("ten_acme", "acme")
        globex = await store.create_tenant("ten_globex", "globex")
        assert await store.get_judge(acme.id) is None
        first = await store.set_judge(judge(acme.id))
        assert first == judge(acme.id)
        external = judge(
            acme.id,
            kind="external",
            alias=None,
            base_url="https://judge.example/v1",
            model="judge-1",
            api_key_sealed="gAAAA-sealed",
            key_hint="sk-…wxyz",
            max_tokens=64,
            timeout_s=12.5,
            created_at=999.0,  # a replace keeps the first creation time
            updated_at=200.0,
        )
        replaced = await store.set_judge(external)
        assert replaced.kind == "external" and replaced.alias is None
        assert (replaced.base_url, replaced.model, replaced.api_key_sealed) == (
            "https://judge.example/v1",
            "judge-1",
            "gAAAA-sealed",
        )
        assert (replaced.created_at, replaced.updated_at, replaced.timeout_s) == (
            100.0,
            200.0,
            12.5,
        )
        assert await store.get_judge(globex.id) is None  # another tenant's row is not theirs
        assert await store.delete_judge(globex.id) is False
        assert await store.delete_judge(acme.id) is True
        assert await store.get_judge(acme.id) is None
    finally:
        await store.close()


async def test_the_table_refuses_a_judge_that_is_neither_kind(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        tenant = await store.create_tenant("ten_acme", "acme")
        with pytest.raises(Exception, match=r"(?i)check|constraint"):
            await store.set_judge(judge(tenant.id, kind="external"))  # alias set, no base_url
    finally:
        await store.close()
