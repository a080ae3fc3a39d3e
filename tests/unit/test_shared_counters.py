"""The workers' shared counters and placement table: limits summed over workers, a drain that
waits for every worker's leases, and a dead worker's row forgotten."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adapters.placement import LoadState
from gateway.limits import SharedInflight
from gateway.shared_counters import SharedCounters
from gateway.worker_placements import FollowerPool, PrimaryPool, SharedLease, TableFile
from replicas.pool import Backend, BackendPool
from tests.support.polling import until
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_placement import version


@pytest.fixture
def rows(tmp_path: Path) -> list[SharedCounters]:
    """Two workers' views of one table (rows 0 and 1)."""
    first = SharedCounters.create(tmp_path / "counters", workers=2, slots=64)
    return [first, SharedCounters(first.path, 2, 64, 1)]


def test_a_limit_counts_every_worker(rows: list[SharedCounters]) -> None:
    a, b = SharedInflight(rows[0]), SharedInflight(rows[1])
    assert a.take(["tenant 'acme'"], [2]) is None
    assert b.take(["tenant 'acme'"], [2]) is None
    assert a.take(["tenant 'acme'"], [2]) == 0  # full: two in flight across the workers
    assert b.take(["key 'k1'", "tenant 'acme'"], [5, 2]) == 1
    assert rows[0].total(rows[0].slot("key 'k1'")) == 0  # a refused take counts nothing
    b.give_back(["tenant 'acme'"])
    assert a.take(["tenant 'acme'"], [2]) is None


def test_names_sharing_a_slot_only_make_a_limit_stricter(rows: list[SharedCounters]) -> None:
    counters = rows[0]
    slot = counters.slot("x")
    other = next(f"n{i}" for i in range(10_000) if counters.slot(f"n{i}") == slot)
    assert counters.take([slot], [1]) is None
    assert counters.take([counters.slot(other)], [1]) == 0
    assert counters.take([slot, slot], [3, 3]) is None  # one request's two limits in one slot
    assert counters.total(slot) == 3


def test_a_dead_workers_row_is_zeroed(rows: list[SharedCounters]) -> None:
    rows[1].take([7], [1])
    assert rows[0].take([7], [1]) == 0
    rows[0].zero_row(1)  # the parent, before starting the worker again
    assert rows[0].take([7], [1]) is None


def test_generation_is_seen_by_every_worker(rows: list[SharedCounters]) -> None:
    assert rows[1].generation == 0
    rows[0].bump_generation()
    assert rows[1].generation == 1


@dataclass
class Workers:
    engine: FakeEngine
    primary: PrimaryPool
    follower: FollowerPool


@pytest.fixture
async def workers(rows: list[SharedCounters], tmp_path: Path) -> AsyncIterator[Workers]:
    engine = FakeEngine()
    table = tmp_path / "placements.json"
    backend = Backend("http://engine.test", "", "r0", ready=True)
    async with (
        httpx.AsyncClient(transport=engine.transport()) as client,
        httpx.AsyncClient(transport=engine.transport()) as unused_primary,
    ):
        primary = PrimaryPool(BackendPool([backend]), client, 2, 5.0, TableFile(table, rows[0]))
        follower = FollowerPool(
            BackendPool([]),
            client,
            2,
            TableFile(table, rows[1]),
            Backend,
            unused_primary,
        )
        primary.publish()
        yield Workers(engine, primary, follower)


async def test_the_follower_mirrors_replicas_and_placements(workers: Workers) -> None:
    await workers.primary.load(workers.primary.pool.backends[0], version(1), pinned=True)
    lease = workers.follower.try_lease("av-1")
    assert isinstance(lease, SharedLease)
    assert [b.name for b in workers.follower.pool.backends] == ["r0"]
    assert lease.engine_name in workers.engine.loras
    assert workers.follower.try_lease("av-2") is None


async def test_a_drain_waits_for_the_other_workers_leases(workers: Workers) -> None:
    primary, follower = workers.primary, workers.follower
    placement = await primary.load(primary.pool.backends[0], version(1), pinned=True)
    lease = follower.try_lease("av-1")
    assert lease is not None
    unload = asyncio.create_task(primary.unload(placement))
    await until(lambda: placement.state is LoadState.DRAINING, "the drain began")
    assert follower.try_lease("av-1") is None  # the follower sees the drain: no new lease
    await asyncio.sleep(0.1)  # not a wait for a condition: the unload must NOT happen here
    assert not unload.done() and placement.engine_name in workers.engine.loras
    lease.release()
    assert await asyncio.wait_for(unload, 5)
    assert placement.engine_name not in workers.engine.loras
    follower.follow()
    assert follower.placements_of("av-1") == []


async def test_a_drain_times_out_while_another_worker_still_streams(workers: Workers) -> None:
    primary = workers.primary
    placement = await primary.load(primary.pool.backends[0], version(1), pinned=False)
    lease = workers.follower.try_lease("av-1")
    assert lease is not None
    assert await primary.unload(placement, drain_timeout_s=0.1) is False
    assert placement.state is LoadState.READY  # served on, as after a local drain timeout
    assert placement.engine_name in workers.engine.loras
    assert primary._evictable(placement.backend) == []  # in use by the other worker
    lease.release()
    assert primary._evictable(placement.backend) == [placement]
