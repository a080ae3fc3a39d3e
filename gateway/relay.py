"""What watches a relayed stream: taps see each block of whole SSE events once, in one loop.

A stream's capture, telemetry and limits each need to look at the events going to the client.
Stacked async generators (one per concern) cost a generator hop per concern per chunk; the
relay (`gateway.upstream.Upstream.relay`) instead runs one loop and hands every block to each
tap in order. A tap may rewrite the block (limits strip a usage event the client did not ask
for), must be cheap (no parsing per event where avoidable: capture keeps the raw blocks and
parses them once, at the end), and gets two awaited moments: `before_done`, after the last
event and before `[DONE]` goes out (the capture row is made final there, so a client that has
`[DONE]` can rely on it), and `end`, once, however the stream ended.
"""

from __future__ import annotations

from typing import Literal

from litestar.response import Stream

# "done": the client got [DONE]; "ended": the stream stopped without it (an error event went
# out instead); "cancelled": the client went away, or the relay was torn down.
Outcome = Literal["done", "ended", "cancelled"]

_TOKEN_MARKS = (b'"content":"', b'"text":"', b'"content": "', b'"text": "')
_CALL_MARKS = (b'"tool_calls":[{', b'"tool_calls": [{')


class Tap:
    """Watches one relayed stream; the defaults do nothing."""

    __slots__ = ()

    def see(self, events: bytes) -> bytes:
        """One block of whole events on its way to the client; return what goes on."""
        return events

    async def before_done(self) -> None:
        """The last events went out; `[DONE]` goes next."""

    async def end(self, outcome: Outcome) -> None:
        """The stream is over (called once, shielded from cancellation)."""


class RelayedStream(Stream):
    """A relayed SSE response; its taps may still be added to until the body is sent."""

    __slots__ = ("taps",)

    def __init__(self, taps: list[Tap], *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.taps = taps


def has_token(events: bytes) -> bool:
    """Whether the events carry generated output (a non-empty content or text string, or the
    start of a tool call)."""
    for mark in _TOKEN_MARKS:
        at = events.find(mark)
        while at >= 0:
            end = at + len(mark)
            if end < len(events) and events[end] != 0x22:  # not the empty string ""
                return True
            at = events.find(mark, end)
    return any(mark in events for mark in _CALL_MARKS)
