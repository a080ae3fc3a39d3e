"""The benchmark mock's step clock: streams on it wait on shared ticks, so their chunks go out
together, as an engine's decode step emits a token for every sequence of its batch."""

from __future__ import annotations

import asyncio
import itertools

import uvloop

from benchmarks.mock_upstream import _gap_of, _StepClock

STEP_S = 0.02


def test_streams_on_the_step_clock_share_its_ticks() -> None:
    async def run() -> dict[int, list[int]]:
        clock = _StepClock()
        loop = asyncio.get_running_loop()
        waited: dict[int, list[int]] = {}

        async def stream(n: int) -> None:
            await asyncio.sleep(0.003 * n)  # started at different times, like real requests
            for _ in range(5):
                tick = clock.next_tick(STEP_S)
                index = next(i for (_, i), t in clock.ticks.items() if t is tick)
                await tick
                assert loop.time() >= index * STEP_S - 0.001  # not before its tick (ms clock)
                waited.setdefault(n, []).append(index)

        await asyncio.gather(*(stream(n) for n in range(4)))
        assert not clock.ticks  # every tick fired and was dropped
        return waited

    waited = uvloop.run(run())
    for ticks in waited.values():  # a new tick each chunk, never one that has fired
        assert all(b > a for a, b in itertools.pairwise(ticks)), ticks
    # Four streams started 3 ms apart wait on shared ticks, not on four timers of their own.
    assert len({i for ticks in waited.values() for i in ticks}) < 4 * 5 / 2, waited


def test_a_request_names_its_gap_and_whether_it_is_stepped() -> None:
    assert _gap_of("gap-20", 0.001) == (0.02, False)
    assert _gap_of("step-20", 0.001) == (0.02, True)
    assert _gap_of("step-x", 0.001) == (0.001, False)
    assert _gap_of("someone", 0.001) == (0.001, False)
