"""A cheap OpenAI-compatible stand-in for vLLM (raw uvloop + httptools HTTP/1.1) for benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from dataclasses import dataclass
from typing import cast

import httptools
import msgspec
import uvloop


class _Fields(msgspec.Struct):
    """The only request fields the mock looks at."""

    model: str = "mock"
    stream: bool = False
    # "gap-<ms>": this stream's gap between chunks (else the configured one); "step-<ms>": the
    # same gap on the mock's shared step clock (see _StepClock)
    user: str = ""


_DECODE = msgspec.json.Decoder(_Fields)

# Bodies are (prefix, suffix) around the JSON-encoded model name.
_CHAT = (
    b'{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":',
    b',"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":5,'
    b'"total_tokens":13}}',
)
_TEXT = (
    b'{"id":"cmpl-x","object":"text_completion","created":1,"model":',
    b',"choices":[{"index":0,"text":"Hello from the mock.","finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":8,"completion_tokens":5,"total_tokens":13}}',
)
_CHAT_CHUNK = (
    b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":',
    b',"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n',
)
_TEXT_CHUNK = (
    b'data: {"id":"cmpl-x","object":"text_completion","created":1,"model":',
    b',"choices":[{"index":0,"text":"tok","finish_reason":null}]}\n\n',
)
_ROUTES = {
    b"/v1/chat/completions": (_CHAT, _CHAT_CHUNK),
    b"/v1/completions": (_TEXT, _TEXT_CHUNK),
}
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


def _reply(status: int, body: bytes) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        status,
        _REASONS[status],
        len(body),
    )
    return head + body


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_HEALTH = _reply(200, b"{}")
_DONE = _http_chunk(b"data: [DONE]\n\n")


@dataclass(frozen=True)
class Config:
    chunks: int
    chunk_delay_s: float


class MockProtocol(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer from templates."""

    def __init__(self, config: Config):
        self.config = config
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(_reply(400, b'{"error":"bad request"}'), keep_alive=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if path == b"/health":
            self._send(_HEALTH, keep_alive)
            return
        route = _ROUTES.get(path)
        if route is None:
            self._send(_reply(404, b'{"error":"not found"}'), keep_alive)
        elif method != b"POST":
            self._send(_reply(405, b'{"error":"method not allowed"}'), keep_alive)
        else:
            self._complete(route, keep_alive)

    # replies
    def _complete(self, route: tuple[tuple[bytes, bytes], ...], keep_alive: bool) -> None:
        try:
            fields = _DECODE.decode(b"".join(self.body))
        except msgspec.DecodeError:
            self._send(_reply(400, b'{"error":"invalid JSON body"}'), keep_alive)
            return
        model = msgspec.json.encode(fields.model)
        (body_pre, body_post), (chunk_pre, chunk_post) = route
        if not fields.stream:
            self._send(_reply(200, body_pre + model + body_post), keep_alive)
            return
        event = _http_chunk(chunk_pre + model + chunk_post)
        gap_s, stepped = _gap_of(fields.user, self.config.chunk_delay_s)
        if gap_s <= 0:
            payload = _STREAM_HEAD + event * self.config.chunks + _DONE + _LAST_CHUNK
            self._send(payload, keep_alive)
            return
        stream = self._stream_slowly(event, keep_alive, gap_s, stepped)
        self.task = asyncio.get_running_loop().create_task(stream)

    async def _stream_slowly(
        self, event: bytes, keep_alive: bool, gap_s: float, stepped: bool
    ) -> None:
        """One chunk per write, `gap_s` apart, like an engine emitting tokens (`stepped`: on the
        shared step clock, so every stepped stream in flight writes in the same loop turn)."""
        transport = self.transport
        assert transport is not None
        transport.pause_reading()  # no pipelining while a stream is in flight
        try:
            transport.write(_STREAM_HEAD + event)
            for _ in range(self.config.chunks - 1):
                await (_CLOCK.next_tick(gap_s) if stepped else asyncio.sleep(gap_s))
                if transport.is_closing():
                    return
                transport.write(event)
            transport.write(_DONE + _LAST_CHUNK)
        finally:
            self.task = None
            if not keep_alive:
                transport.close()
            elif not transport.is_closing():
                transport.resume_reading()

    def _send(self, data: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()


def paced(gap_ms: float, stepped: bool = False) -> str:
    """The `user` tag that asks this mock for a stream's chunk gap (read by `_gap_of`)."""
    return f"{'step' if stepped else 'gap'}-{gap_ms:g}"


def _gap_of(user: str, default_s: float) -> tuple[float, bool]:
    """A request may ask for its own chunk gap (`"user": "gap-20"`: 20 ms; `"step-20"`: 20 ms
    on the shared step clock), so one benchmark run can time streams several ways through the
    same proxies. Returns the gap in seconds and whether it is stepped."""
    for prefix, stepped in (("gap-", False), ("step-", True)):
        if user.startswith(prefix):
            try:
                return max(0.0, float(user[len(prefix) :]) / 1000.0), stepped
            except ValueError:
                return default_s, False
    return default_s, False


class _StepClock:
    """Ticks every `step_s` of the loop's clock, as an engine's decode steps do: a step makes one
    token for every sequence in the batch, so an engine's streams get their chunks together,
    not each on its own timer. Every stream waiting for a tick resumes in the same loop turn."""

    def __init__(self) -> None:
        self.ticks: dict[tuple[float, int], asyncio.Future[None]] = {}
        self.fired: dict[float, int] = {}  # the last tick fired, per step

    def next_tick(self, step_s: float) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        # A stream a tick resumed reads (about) that tick's time, and the division may round
        # either way: never wait on a tick that has fired.
        index = max(int(loop.time() / step_s) + 1, self.fired.get(step_s, 0) + 1)
        key = (step_s, index)
        tick = self.ticks.get(key)
        if tick is None:
            tick = self.ticks[key] = loop.create_future()
            loop.call_at(key[1] * step_s, self._fire, key)
        return tick

    def _fire(self, key: tuple[float, int]) -> None:
        self.fired[key[0]] = max(self.fired.get(key[0], 0), key[1])
        tick = self.ticks.pop(key)
        if not tick.done():
            tick.set_result(None)


_CLOCK = _StepClock()


async def serve(
    host: str, port: int, config: Config, lifetime_s: float, uds: str | None = None
) -> None:
    """Serve until SIGTERM/SIGINT or `lifetime_s` seconds, whichever comes first (also on the
    Unix socket `uds` when given, as the embedded engine is reached)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MockProtocol(config), host, port, backlog=2048)
    if uds is not None:
        unix = await loop.create_unix_server(lambda: MockProtocol(config), uds, backlog=2048)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime_s)
    server.close()
    if uds is not None:
        unix.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mock_upstream", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=64, help="content chunks per stream")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="gap between chunks")
    p.add_argument("--lifetime-s", type=float, default=3600.0, help="exit after this long")
    p.add_argument("--uds", default=None, help="also serve on this Unix socket path")
    args = p.parse_args(argv)
    config = Config(chunks=max(1, args.chunks), chunk_delay_s=args.chunk_delay_ms / 1000.0)
    uvloop.run(serve(args.host, args.port, config, args.lifetime_s, args.uds))


if __name__ == "__main__":
    main()
