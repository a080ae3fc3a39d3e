"""The benchmark mock's step clock: streams on it get their chunks in the same loop turn, as an
engine's decode step emits a token for every sequence of its batch."""

from __future__ import annotations

import asyncio
import itertools

import uvloop

from benchmarks.mock_upstream import _gap_of, _StepClock

STEP_S = 0.02


def test_streams_on_the_step_clock_resume_together() -> None:
    async def run() -> dict[int, list[float]]:
        clock = _StepClock()
        loop = asyncio.get_running_loop()
        woke: dict[int, list[float]] = {}

        async def stream(n: int) -> None:
            await asyncio.sleep(0.003 * n)  # started at different times, like real requests
            for _ in range(5):
                await clock.next_tick(STEP_S)
                woke.setdefault(n, []).append(loop.time())

        await asyncio.gather(*(stream(n) for n in range(4)))
        assert not clock.ticks  # every tick fired and was dropped
        return woke

    woke = uvloop.run(run())
    ticks = sorted({t for times in woke.values() for t in times})
    for times in woke.values():
        assert all(t in ticks for t in times)
        steps = [(b - a) / STEP_S for a, b in itertools.pairwise(times)]
        assert all(0.5 < step < 1.5 for step in steps), times  # one step apart
    assert len(ticks) <= 6  # 4 streams x 5 chunks fell on at most 6 distinct turns


def test_a_request_names_its_gap_and_whether_it_is_stepped() -> None:
    assert _gap_of("gap-20", 0.001) == (0.02, False)
    assert _gap_of("step-20", 0.001) == (0.02, True)
    assert _gap_of("step-x", 0.001) == (0.001, False)
    assert _gap_of("someone", 0.001) == (0.001, False)
