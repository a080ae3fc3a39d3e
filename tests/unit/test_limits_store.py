"""The limits part of the store contract, on SQLite and a real PostgreSQL: limit rows, and
reservations on shared counters that never overshoot, also from several store instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from store import Charge, LimitSet, Store, open_store

FAR = 4_000_000_000.0  # an expiry no test reaches


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    await s.create_tenant("t1", "acme")
    yield s
    await s.close()


def charge(scope: str, amount: int, limit: int, window: int = 1) -> Charge:
    return Charge(scope, window, amount, limit, FAR)


async def test_limit_rows_round_trip_and_unlimited_deletes(store: Store) -> None:
    tenant = LimitSet("t1", "", requests_per_minute=5, token_budget=10**12, budget_period="day")
    key = LimitSet("t1", "k1", tokens_per_minute=100, max_concurrent=2, max_tokens_per_request=64)
    await store.set_limits(tenant)
    await store.set_limits(key)
    assert await store.get_limits("t1", "") == tenant
    assert await store.get_limits("t1", "k1") == key
    found = await store.limits_for("t1", "k1")
    assert sorted(found, key=lambda s: s.key_id) == [tenant, key]
    assert await store.limits_for("t1", "other") == [tenant]
    await store.set_limits(LimitSet("t1", "k1"))  # all None: the row goes away
    assert await store.get_limits("t1", "k1") is None


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="requests_per_minute must be at least 1"):
        LimitSet("t1", "", requests_per_minute=0)


async def test_reservation_is_all_or_nothing(store: Store) -> None:
    first = await store.reserve([charge("a", 3, 5), charge("b", 10, 10)])
    assert first.granted and first.used == [3, 10]
    # "b" is full: nothing of this reservation sticks, not even the part of "a" that fit.
    second = await store.reserve([charge("a", 1, 5), charge("b", 1, 10)])
    assert not second.granted and second.denied == 1 and second.used == [3, 10]
    assert await store.counter_usage([charge("a", 0, 5), charge("b", 0, 10)]) == [3, 10]
    # An amount larger than the whole limit never fits, even on an empty counter.
    third = await store.reserve([charge("c", 11, 10)])
    assert not third.granted and third.denied == 0 and third.used == [0]


async def test_windows_are_separate_counters(store: Store) -> None:
    assert (await store.reserve([charge("rpm", 1, 1, window=7)])).granted
    assert not (await store.reserve([charge("rpm", 1, 1, window=7)])).granted
    assert (await store.reserve([charge("rpm", 1, 1, window=8)])).granted


async def test_settlement_applies_the_truth_and_never_goes_negative(store: Store) -> None:
    await store.reserve([charge("tpm", 50, 100)])
    await store.settle([charge("tpm", 30, 0)])  # used more than estimated: may pass the limit
    assert await store.counter_usage([charge("tpm", 0, 100)]) == [80]
    await store.settle([charge("tpm", -500, 0)])
    assert await store.counter_usage([charge("tpm", 0, 100)]) == [0]


async def test_expired_counters_are_purged(store: Store) -> None:
    await store.reserve([Charge("old", 1, 1, 5, 100.0), Charge("new", 1, 1, 5, FAR)])
    assert await store.purge_counters(before=1000.0) == 1
    assert await store.counter_usage([charge("old", 0, 5), charge("new", 0, 5)]) == [0, 1]


async def test_concurrent_reservations_from_several_stores_never_overshoot(url: str) -> None:
    stores = [open_store(url) for _ in range(4)]  # PostgreSQL: four pools, like four gateways
    await asyncio.gather(*(s.open() for s in stores))
    try:
        # 4 x 25 requests race for 30 slots of a request counter and 120 of a token counter
        # (each asks for 5 tokens, so the token counter is the one that runs out: 24 fit).
        charges = [charge("k:req", 1, 30), charge("t:tok", 5, 120)]
        results = await asyncio.gather(
            *(stores[i % 4].reserve(charges) for i in range(100)), return_exceptions=True
        )
        assert not [r for r in results if isinstance(r, BaseException)]
        granted = [r for r in results if not isinstance(r, BaseException) and r.granted]
        assert len(granted) == 24
        assert await stores[0].counter_usage(charges) == [24, 120]
        # The grants saw every value from 1 to 24 exactly once: no two shared a slot.
        assert sorted(r.used[0] for r in granted) == list(range(1, 25))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
