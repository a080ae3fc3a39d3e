"""The store's shadow and canary-count contract, run on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from store import (
    ArmCounts,
    Canary,
    CanaryDelta,
    Shadow,
    ShadowPair,
    ShadowSummary,
    Store,
    open_store,
)
from store.errors import Conflict
from store.latency import bucket_of, merged, quantile_ms
from tests.unit.test_store_contract import completion

T0 = 1_700_000_000.0


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


def shadow(sid: str = "sh-1", alias: str = "support", version: str = "av-2") -> Shadow:
    return Shadow(sid, "t1", alias, version, 0.5, 4, 60, "[]", "active", "admin", T0)


def pair(pid: str, cid: str, answer: str | None = "B", version: str = "av-2") -> ShadowPair:
    return ShadowPair(
        id=pid,
        shadow_id="sh-1",
        tenant_id="t1",
        alias="support",
        live_completion_id=cid,
        request_id=f"req-{cid}",
        live_version="av-1",
        candidate_version=version,
        live_answer="A",
        candidate_answer=answer,
        candidate_error=None if answer is not None else "engine said 500",
        candidate_latency_ms=12.5 if answer is not None else None,
        created_at=T0 + len(pid),
    )


async def test_canary_counts_add_up_across_flushes(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.add_canary(Canary("cn-1", "t1", "support", "av-2", 10.0, "{}", "active", "a", T0))
    assert await store.canary_counts("cn-1") == {}
    one = [
        CanaryDelta("cn-1", "canary", ArmCounts(3, 1, {5: 2})),
        CanaryDelta("cn-1", "live", ArmCounts(10, 0, {5: 4, 9: 6})),
    ]
    other = [CanaryDelta("cn-1", "canary", ArmCounts(2, 0, {5: 1, 40: 1}))]
    await store.add_canary_counts(one)
    await store.add_canary_counts(other)  # as a second gateway would
    await store.add_canary_counts([])
    assert await store.canary_counts("cn-1") == {
        "canary": ArmCounts(5, 1, {5: 3, 40: 1}),
        "live": ArmCounts(10, 0, {5: 4, 9: 6}),
    }
    assert await store.canary_counts("cn-2") == {}


async def test_shadows_one_active_per_alias_and_end_once(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.add_shadow(shadow())
    with pytest.raises(Conflict):
        await store.add_shadow(shadow("sh-2"))  # another gateway's start of the same alias
    await store.add_shadow(shadow("sh-3", alias="sales"))
    assert [s.id for s in await store.active_shadows()] == ["sh-1", "sh-3"]
    await store.add_shadow_skips({"sh-1": 3, "sh-3": 0})
    await store.add_shadow_skips({"sh-1": 2})
    got = await store.get_shadow("sh-1")
    assert got is not None and got.skipped == 5
    assert await store.end_shadow("sh-1", "stopped by admin")
    assert not await store.end_shadow("sh-1", "again")
    (ended,) = await store.shadows_of("t1", "support")
    assert (ended.status, ended.reason) == ("stopped", "stopped by admin")
    assert ended.ended_at is not None
    await store.add_shadow(shadow("sh-4"))  # the alias may have a new one now
    assert [s.id for s in await store.shadows_of("t1", "support")] == ["sh-4", "sh-1"]
    assert await store.get_shadow("sh-nope") is None


async def test_pairs_are_graded_once_and_summarised(store: Store) -> None:
    await store.create_tenant("t1", "acme")
    await store.add_shadow(shadow())
    empty = await store.shadow_summary("t1", "support", "av-2")
    assert empty == ShadowSummary(0, 0, 0, 0, 0, 0, 0, 0, None, None)
    cids = [f"c-{i}" for i in range(5)]
    await store.capture_batch([completion(c, created_at=T0) for c in cids], [])
    for i, cid in enumerate(cids):
        await store.add_shadow_pair(pair(f"p-{i}", cid, answer=None if i == 4 else "B"))
    ungraded = await store.ungraded_shadow_pairs(10)
    assert [p.id for p in ungraded] == [f"p-{i}" for i in range(5)]
    assert ungraded[4].candidate_answer is None and ungraded[0].candidate_latency_ms == 12.5
    assert await store.grade_shadow_pair("p-0", "win", 0.0, 1.0, "regex found")
    assert not await store.grade_shadow_pair("p-0", "loss", 1.0, 0.0, "late")  # once
    await store.grade_shadow_pair("p-1", "tie", 1.0, 1.0, "")
    await store.grade_shadow_pair("p-2", "loss", 1.0, 0.5, "")
    await store.grade_shadow_pair("p-4", "loss", 1.0, 0.0, "candidate failed")
    assert [p.id for p in await store.ungraded_shadow_pairs(10)] == ["p-3"]
    await store.add_shadow_skips({"sh-1": 7})
    summary = await store.shadow_summary("t1", "support", "av-2")
    assert summary == ShadowSummary(
        pairs=5,
        graded=4,
        wins=1,
        losses=2,
        ties=1,
        ungradable=0,
        candidate_errors=1,
        skipped_for_budget=7,
        mean_live_score=0.75,
        mean_candidate_score=0.625,
    )
    assert summary.loss_rate == 0.5
    assert (await store.shadow_summary("t1", "support", "av-9")).pairs == 0
    assert (await store.shadow_summary("t2", "support", "av-2")).pairs == 0
    listed = await store.shadow_pairs("t1", "support", "av-2", 2)
    assert len(listed) == 2 and listed[0].id == "p-4"  # newest first


async def test_a_pair_goes_with_its_live_completion(store: Store) -> None:
    """Erasure, retention and deletion remove the captured completion: its pair goes too."""
    await store.create_tenant("t1", "acme")
    await store.add_shadow(shadow())
    await store.capture_batch([completion("c-1", created_at=T0)], [])
    await store.add_shadow_pair(pair("p-1", "c-1"))
    assert await store.delete_completion("t1", "c-1")
    assert await store.ungraded_shadow_pairs(10) == []
    assert (await store.shadow_summary("t1", "support", "av-2")).pairs == 0


def test_latency_histograms_merge_and_give_quantiles() -> None:
    assert bucket_of(0.0) == 0 and bucket_of(0.05) == 0
    assert bucket_of(1e12) == 99
    # each bucket is a quarter of a doubling: a value reads back within ~19%
    for ms in (0.7, 3.0, 42.0, 999.0, 65_000.0):
        hist = {bucket_of(ms): 1}
        got = quantile_ms(hist, 0.5)
        assert got is not None and ms / 1.19 <= got <= ms * 1.19
    fast = {bucket_of(10.0): 90}
    slow = {bucket_of(1000.0): 10}
    both = merged([fast, slow])
    p50, p95 = quantile_ms(both, 0.5), quantile_ms(both, 0.95)
    assert p50 is not None and 8 < p50 < 12
    assert p95 is not None and 800 < p95 < 1200
    assert quantile_ms({}, 0.5) is None
