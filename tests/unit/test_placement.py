"""AdapterPool against the fake engine: leases, drain-before-unload, LRU eviction, capacity."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from adapters.placement import AdapterPool, LoadState
from replicas.pool import Backend, BackendPool
from store import AdapterVersion
from store.errors import EngineNotReady
from tests.support.polling import until
from tests.unit.fake_engine import FakeEngine


def version(n: int) -> AdapterVersion:
    return AdapterVersion(
        f"av-{n}",
        "t",
        "v",
        f"h{n}",
        "b",
        "",
        8,
        16.0,
        ("q_proj",),
        "test",
        "candidate",
        f"/adapters/{n}",
        1,
        time.time(),
    )


@pytest.fixture
async def setup():  # type: ignore[no-untyped-def]
    engine = FakeEngine()
    backend = Backend("http://engine.test", "", "r0", ready=True)
    async with httpx.AsyncClient(transport=engine.transport()) as client:
        yield engine, AdapterPool(BackendPool([backend]), client, capacity=2), backend


async def test_lease_loads_on_demand_and_reuses(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pool, _ = setup
    first = await pool.lease(version(1))
    second = await pool.lease(version(1))
    assert first.engine_name == second.engine_name and len(engine.loras) == 1
    assert first.placement is not None and first.placement.inflight == 2
    first.release()
    first.release()  # idempotent
    second.release()
    assert first.placement.inflight == 0


async def test_unload_waits_for_inflight_and_blocks_new_leases(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pool, _ = setup
    lease = await pool.lease(version(1))
    placement = lease.placement
    assert placement is not None
    unloading = asyncio.create_task(pool.unload(placement))
    await until(lambda: placement.state is LoadState.DRAINING, "the unload never began draining")
    assert not unloading.done() and engine.loras  # still loaded: a request is using it
    assert pool.try_lease("av-1") is None  # no new requests on a draining placement
    lease.release()
    assert await unloading is True
    assert engine.loras == {} and placement.state is LoadState.GONE


async def test_drain_timeout_keeps_the_adapter(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pool, _ = setup
    lease = await pool.lease(version(1))
    assert lease.placement is not None
    assert await pool.unload(lease.placement, drain_timeout_s=0.05) is False
    assert engine.loras and lease.placement.state is LoadState.READY


async def test_full_replica_evicts_least_recently_used_idle(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pool, _ = setup
    (await pool.lease(version(1))).release()
    await asyncio.sleep(0.01)
    (await pool.lease(version(2))).release()
    (await pool.lease(version(1))).release()  # v1 is now the most recently used
    (await pool.lease(version(3))).release()
    assert sorted(n.rsplit("-", 1)[-1] for n in engine.loras) == ["1", "3"]


async def test_pinned_and_busy_adapters_are_never_evicted(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pool, backend = setup
    await pool.load(backend, version(1), pinned=True)
    busy = await pool.lease(version(2))
    with pytest.raises(EngineNotReady):
        await pool.lease(version(3))
    busy.release()
    (await pool.lease(version(3))).release()
    assert {n.rsplit("-", 1)[-1] for n in engine.loras} == {"1", "3"}


async def test_routing_prefers_a_replica_that_holds_the_adapter() -> None:
    engine = FakeEngine()
    b0 = Backend("http://engine.test", "", "r0", ready=True)
    b1 = Backend("http://engine.test", "", "r1", ready=True)
    async with httpx.AsyncClient(transport=engine.transport()) as client:
        pool = AdapterPool(BackendPool([b0, b1]), client, capacity=2)
        await pool.load(b0, version(1), pinned=False)
        b0.inflight = 5  # busier, but it has the adapter: no second copy is loaded
        lease = await pool.lease(version(1))
        assert lease.backend is b0 and len(engine.loras) == 1
        lease.release()
        b1.inflight = 9
        other = await pool.lease(version(2))  # a new version goes where there is least load
        assert other.backend is b0
        b0.ready = False
        pool.forget(b0)
        moved = await pool.lease(version(1))  # its replica is gone: loaded on the other one
        assert moved.backend is b1


async def test_equally_idle_replicas_share_sequential_traffic() -> None:
    engine = FakeEngine()
    b0 = Backend("http://engine.test", "", "r0", ready=True)
    b1 = Backend("http://engine.test", "", "r1", ready=True)
    async with httpx.AsyncClient(transport=engine.transport()) as client:
        pool = AdapterPool(BackendPool([b0, b1]), client, capacity=2)
        await pool.load(b0, version(1), pinned=True)
        await pool.load(b1, version(1), pinned=True)
        used = []
        for _ in range(6):
            lease = await pool.lease(version(1))
            used.append(lease.backend.name)
            lease.release()
        assert used.count("r0") == used.count("r1") == 3
        assert [BackendPool([b0, b1]).pick().name for _ in range(4)].count("r1") == 2


async def test_a_version_retired_while_reconcile_restores_it_is_not_left_pinned() -> None:
    """The hot-swap race: a reconcile pass decides to restore the live version, the alias moves
    to another one (and retires the first) while the engine is loading it; the pass must not
    leave the retired version pinned on the replica for good."""
    engine = FakeEngine()
    wanted = [version(1)]

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/load_lora_adapter" and b"av-1" in request.content:
            wanted[:] = [version(2)]  # the swap flips the alias while this load is under way
            await asyncio.sleep(0.01)
        return engine.handle(request)

    async def desired() -> list[AdapterVersion]:
        return list(wanted)

    backend = Backend("http://engine.test", "", "r0", ready=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        pool = AdapterPool(BackendPool([backend]), client, capacity=2)
        await pool.reconcile(backend, desired)
        assert set(pool.on(backend)) == set()  # v1 was loaded, then unloaded again
        assert [action for action, _ in engine.lora_log] == ["load", "unload"]
        await pool.reconcile(backend, desired)  # the next pass restores what is wanted now
        assert set(pool.on(backend)) == {"av-2"} and pool.on(backend)["av-2"].pinned
        assert [n.rsplit("-", 1)[-1] for n in engine.loras] == ["2"]


async def test_reconcile_leaves_a_draining_version_to_its_retirement(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pool, backend = setup
    lease = await pool.lease(version(1))
    assert lease.placement is not None
    placement = lease.placement
    retiring = asyncio.create_task(pool.retire("av-1"))
    await until(lambda: placement.state is LoadState.DRAINING, "the retirement never drained")

    async def stale() -> list[AdapterVersion]:
        return [version(1)]  # a wish from before the alias moved

    await pool.reconcile(backend, stale)
    assert len(engine.loras) == 1  # no second copy was loaded beside the draining one
    lease.release()
    assert await retiring is True
    assert engine.loras == {} and pool.on(backend) == {}


async def test_two_unloads_of_one_placement_unload_it_once(setup) -> None:  # type: ignore[no-untyped-def]
    engine, pool, backend = setup
    placement = await pool.load(backend, version(1), pinned=True)
    assert await asyncio.gather(pool.unload(placement), pool.unload(placement)) == [True, True]
    assert [action for action, _ in engine.lora_log] == ["load", "unload"]
    assert pool.unloads == 1
