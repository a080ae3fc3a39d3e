"""What watches a relayed stream: taps see each block of whole SSE events once, in one loop.

A stream's capture, telemetry and limits each need to look at the events going to the client.
Stacked async generators (one per concern) cost a generator hop per concern per chunk; the
relay (`gateway.upstream.Upstream.relay`) instead runs one loop and hands every block to each
tap in order. A tap may rewrite the block (limits strip a usage event the client did not ask
for), must be cheap (no parsing per event where avoidable: capture keeps the raw blocks and
parses them once, at the end), and gets two awaited moments: `before_done`, after the last
event and before `[DONE]` goes out (the capture row is made final there, so a client that has
`[DONE]` can rely on it), and `end`, once, however the stream ended.

Under `loopgate serve` (uvicorn with httptools), once its RelayedStream is the response being
sent (`DirectRoute`), the relay writes each block of events to the client's connection itself
(`DirectBody`), in HTTP's chunked framing, instead of yielding it to Litestar's streaming
response, which would send it through the app's send wrappers and uvicorn's ASGI `send`: the
same bytes and system call, ~11,000 fewer instructions per chunk (callgrind, a stream of 16
chunks 3 ms apart). The response's start, `[DONE]` and the end still take the ASGI path, and
any block the connection is not ready for (a client reading slowly, gone, or any other server)
does too, so order and flow control are uvicorn's.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Literal

from litestar.enums import ScopeType
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Receive, Scope, Send

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


# The server's own `send` for the request being served (set by ServerSend; None under
# in-process test clients, where every block takes the ASGI path).
server_send: ContextVar[Send | None] = ContextVar("loopgate_server_send", default=None)
# Where uvicorn's HTTP/1.1 cycle over httptools lives (`loopgate serve` always uses it).
_HTTPTOOLS_CYCLE = "uvicorn.protocols.http.httptools_impl"


class ServerSend:
    """The outermost ASGI layer of `loopgate serve`: keeps the server's `send` per request."""

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            server_send.set(send)  # in this request's task, and the tasks it starts
        await self.app(scope, receive, send)


class DirectBody:
    """Writes a relayed stream's blocks to the client's connection (see the module's notes)."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle

    @classmethod
    def for_request(cls) -> DirectBody | None:
        """The request's uvicorn httptools cycle, or None (another server, or no server)."""
        cycle = getattr(server_send.get(), "__self__", None)
        if cycle is None or type(cycle).__module__ != _HTTPTOOLS_CYCLE:
            return None
        return cls(cycle)

    def write(self, block: bytes) -> bool:
        """Write the block now, as one chunk of the response's body; False when it must take
        the ASGI path instead (the response not started or not chunked, the client gone, or
        its connection's buffer full: uvicorn's `send` waits for it to drain)."""
        c = self.cycle
        if (
            c.chunked_encoding is not True
            or not c.response_started
            or c.response_complete
            or c.disconnected
            or c.flow.write_paused
        ):
            return False
        c.transport.write(b"%x\r\n%b\r\n" % (len(block), block))
        return True


class DirectRoute:
    """Shared by a relay and its RelayedStream: `body` is set only when that stream is sent as
    the response itself (`RelayedStream.to_asgi_response`). A caller that takes the relay's
    blocks to rework them (the Responses API translates them into its own events) never sends
    the RelayedStream, so its relay never writes to the client."""

    __slots__ = ("body",)

    def __init__(self) -> None:
        self.body: DirectBody | None = None


class RelayedStream(Stream):
    """A relayed SSE response; its taps may still be added to until the body is sent."""

    __slots__ = ("route", "taps")

    def __init__(
        self, taps: list[Tap], *args: object, route: DirectRoute | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.taps = taps
        self.route = route

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        """Called by Litestar when this stream is the response: from here on the relay may
        write its blocks to the client's connection."""
        if self.route is not None:
            self.route.body = DirectBody.for_request()
        return super().to_asgi_response(*args, **kwargs)


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
    return any(events.find(mark) >= 0 for mark in _CALL_MARKS)
