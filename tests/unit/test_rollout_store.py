"""The store's rollouts on both backends: one running per alias, one owner at a time, the
owner's and anyone's writes, decisions in the alias history, consent lineage."""

from __future__ import annotations

import time

from store import AliasEvent, RolloutRecord, Store
from tests.unit.test_store_contract import dataset, seed_completions, store  # noqa: F401


def rollout(rid: str, alias: str = "support", tenant: str = "t1") -> RolloutRecord:
    now = time.time()
    return RolloutRecord(
        id=rid,
        tenant_id=tenant,
        alias=alias,
        version="av-2",
        status="running",
        stage="offline",
        policy="{}",
        state="{}",
        actor="admin",
        created_at=now,
        updated_at=now,
    )


async def test_one_running_rollout_per_alias_and_one_owner(store: Store) -> None:  # noqa: F811
    await seed_completions(store)  # tenants t1 and t2
    assert await store.add_rollout(rollout("ro-1"))
    assert not await store.add_rollout(rollout("ro-2"))  # the alias already has one running
    assert await store.add_rollout(rollout("ro-3", alias="other"))
    assert await store.get_rollout("t2", "ro-1") is None  # another tenant's id: not found
    assert [r.id for r in await store.list_rollouts("t1", "support", 10)] == ["ro-1"]
    assert {r.id for r in await store.list_rollouts("t1", None, 10)} == {"ro-1", "ro-3"}
    claimed = await store.claim_rollouts("gw-a", 60.0)
    assert {r.id for r in claimed} == {"ro-1", "ro-3"} and claimed[0].owner == "gw-a"
    assert await store.claim_rollouts("gw-b", 60.0) == []  # held by gw-a
    assert {r.id for r in await store.claim_rollouts("gw-a", 60.0)} == {"ro-1", "ro-3"}  # renews
    assert await store.save_rollout("ro-1", "gw-b", "running", "shadow", "{}", None) is None
    saved_at = await store.save_rollout("ro-1", "gw-a", "running", "shadow", '{"s": 1}', None)
    assert saved_at is not None
    # anyone's end, only over what it read: a stale read changes nothing
    assert not await store.end_rollout("t1", "ro-1", "aborted", "{}", saved_at - 1)
    assert await store.end_rollout("t1", "ro-1", "aborted", '{"a": 1}', saved_at)
    ended = await store.get_rollout("t1", "ro-1")
    assert ended is not None and (ended.status, ended.state, ended.owner) == (
        "aborted",
        '{"a": 1}',
        None,
    )
    assert await store.save_rollout("ro-1", "gw-a", "running", "canary", "{}", None) is None
    assert await store.add_rollout(rollout("ro-4"))  # the alias is free again
    await store.release_rollouts("gw-a")
    assert {r.id for r in await store.claim_rollouts("gw-b", 60.0)} == {"ro-3", "ro-4"}


async def test_decisions_join_the_alias_history_and_consent_is_traced(
    store: Store,  # noqa: F811
) -> None:
    completions = await seed_completions(store)
    await store.add_alias_event(
        AliasEvent(0, "t1", "support", "rollout-hold", None, "av-2", "rollout:ro-1", "{}", False, 0)
    )
    (event,) = await store.alias_events("t1", "support")
    assert (event.action, event.to_version, event.forced) == ("rollout-hold", "av-2", False)
    users = {c.end_user for c in completions if c.tenant_id == "t1" and c.end_user}
    examples = [c.id for c in completions if c.tenant_id == "t1" and c.end_user == "alice"]
    await store.add_dataset(dataset("ds-1"), examples)
    assert users and await store.consent_withdrawn("ds-1") == 0
    await store.opt_out("t1", "alice")
    assert await store.consent_withdrawn("ds-1") == len(examples)
