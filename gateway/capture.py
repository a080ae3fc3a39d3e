"""Traffic capture: a write-ahead row per request, finalized by a group-commit writer.

Durability contract (tested in tests/unit/test_capture*.py and the kill -9 test):
- The `in_progress` row of a request is committed before the request goes upstream.
- A response's last byte (a non-streaming body, or a stream's `[DONE]`) is sent only after the
  row's final state is committed. So every exchange a client saw complete is stored complete.
- Commits are group commits: whatever is queued when the writer wakes goes in one transaction;
  request handlers never touch the database themselves. SQLite runs in WAL mode with
  synchronous=NORMAL: committed rows survive a killed process; after a power loss the last
  transactions may be lost (a store URL ending in `?synchronous=FULL` makes commits fsync).
- Rows still `in_progress` at start-up belong to requests that never finished (the process
  died): they are marked `incomplete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from store import CaptureFinal, Completion, Store
from store.errors import EngineNotReady
from store.privacy import redact
from store.records import ToolCall, ToolFunction

log = logging.getLogger("loopgate.capture")

DONE = b"data: [DONE]"


class CaptureWriter:
    """Queues inserts and finals; one background task commits them in batches."""

    def __init__(self, store: Store, max_batch: int = 2048):
        self.store = store
        self.max_batch = max_batch
        self._inserts: list[Completion] = []
        self._finals: list[CaptureFinal] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.errors = 0

    @property
    def depth(self) -> int:
        return len(self._inserts) + len(self._finals)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="capture-writer")

    async def begin(self, record: Completion) -> None:
        """Commit the write-ahead row (raises 503 if the store cannot take it)."""
        self._inserts.append(record)
        try:
            await self._committed()
        except Exception as exc:
            raise EngineNotReady(
                "traffic capture is unavailable; the request was not sent"
            ) from exc

    async def finish(self, final: CaptureFinal) -> None:
        """Commit a request's final state; never raises (a lost final leaves `in_progress`)."""
        self._finals.append(final)
        try:
            await asyncio.shield(self._committed())
        except Exception:
            log.exception("could not finalize capture row %s", final.id)

    def _committed(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        return waiter

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush_once()

    async def _flush_once(self) -> None:
        inserts, self._inserts = self._inserts, []
        finals, self._finals = self._finals, []
        waiters, self._waiters = self._waiters, []
        if not (inserts or finals):
            _resolve(waiters, None)
            return
        try:
            await self.store.capture_batch(inserts, finals)
        except Exception as exc:
            self.errors += 1
            log.exception("capture batch of %d rows failed", len(inserts) + len(finals))
            _resolve(waiters, exc)
            return
        self.batches += 1
        _resolve(waiters, None)

    async def stop(self) -> None:
        """Flush everything queued, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self.depth or self._waiters:
            await self._flush_once()


def _resolve(waiters: list[asyncio.Future[None]], exc: Exception | None) -> None:
    for waiter in waiters:
        if not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _FunctionPart(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallPart(msgspec.Struct):
    """A tool call, whole (a body) or one streamed fragment of it (the first carries its id
    and name; the arguments come in pieces)."""

    index: int = 0
    id: str | None = None
    function: _FunctionPart | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallPart] | None = None


class _StreamChoice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_StreamChoice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: dict[str, object] | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallPart] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Body(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None


_chunk = msgspec.json.Decoder(_Chunk)
_body = msgspec.json.Decoder(_Body)
_tool_calls = msgspec.json.Encoder()


@dataclass
class _Call:
    """One tool call being assembled from its fragments."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def add(self, part: _ToolCallPart) -> None:
        self.id = self.id or part.id or ""
        if part.function is not None:
            self.name = self.name or part.function.name or ""
            if part.function.arguments:
                self.arguments.append(part.function.arguments)

    def record(self, redact_pii: bool) -> ToolCall:
        arguments = "".join(self.arguments)
        arguments = redact(arguments).text if redact_pii else arguments
        return ToolCall(id=self.id, function=ToolFunction(self.name, arguments))


@dataclass
class Exchange:
    """What is learned about one request while it is served, for its final row."""

    id: str
    started: float
    stored: bool
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: _Usage | None = None
    first_token: float | None = None
    error: str | None = None
    redact: bool = True
    backend: str | None = None  # the replica that served it, when a retry moved it
    calls: dict[int, _Call] = field(default_factory=dict)  # tool calls by index

    def final(self, status: str) -> CaptureFinal:
        now = time.monotonic()
        ttft = (self.first_token - self.started) * 1000 if self.first_token else None
        text: str | None = None
        calls: str | None = None
        if self.stored:
            text = "".join(self.parts)
            text = redact(text).text if self.redact else text
            calls = self._tool_calls()
        return CaptureFinal(
            id=self.id,
            response=text,
            finish_reason=self.finish_reason,
            prompt_tokens=self.usage.prompt_tokens if self.usage else None,
            completion_tokens=self.usage.completion_tokens if self.usage else None,
            latency_ms=(now - self.started) * 1000,
            ttft_ms=ttft,
            status=status,  # type: ignore[arg-type]
            error=self.error,
            completed_at=time.time(),
            backend=self.backend,
            tool_calls=calls,
        )

    def _tool_calls(self) -> str | None:
        """The answer's tool calls as JSON of OpenAI's list, in index order (None: there were
        none)."""
        if not self.calls:
            return None
        calls = [self.calls[i].record(self.redact) for i in sorted(self.calls)]
        return _tool_calls.encode(calls).decode()

    def _add_calls(self, parts: list[_ToolCallPart], *, streamed: bool) -> None:
        """A stream's fragments name their call's index; a body's whole calls are in order."""
        for n, part in enumerate(parts):
            self.calls.setdefault(part.index if streamed else n, _Call()).add(part)

    def read_body(self, content: bytes) -> None:
        try:
            body = _body.decode(content)
        except msgspec.DecodeError:
            return
        for choice in body.choices[:1]:
            text = choice.message.content if choice.message else choice.text
            self.parts.append(text or "")
            self.finish_reason = choice.finish_reason
            if choice.message is not None and choice.message.tool_calls:
                self._add_calls(choice.message.tool_calls, streamed=False)
        self.usage = body.usage
        self.first_token = time.monotonic()

    def read_events(self, events: bytes) -> None:
        for line in events.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                chunk = _chunk.decode(line[6:])
            except msgspec.DecodeError:
                continue
            if chunk.error is not None:
                self.error = str(chunk.error.get("message", "stream error"))[:500]
            if chunk.usage is not None:
                self.usage = chunk.usage
            for choice in chunk.choices[:1]:  # n > 1 streams: the first choice is captured
                text = choice.delta.content if choice.delta else choice.text
                if text:
                    self.first_token = self.first_token or time.monotonic()
                    self.parts.append(text)
                if choice.delta is not None and choice.delta.tool_calls:
                    self.first_token = self.first_token or time.monotonic()
                    self._add_calls(choice.delta.tool_calls, streamed=True)
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason


async def captured_stream(
    relay: AsyncIterator[bytes], exchange: Exchange, writer: CaptureWriter
) -> AsyncIterator[bytes]:
    """Pass a relay through, recording it; `[DONE]` goes out only after the row is final."""
    finished = False
    try:
        async for events in relay:
            at = events.find(DONE)
            if at < 0:
                exchange.read_events(events)
                yield events
                continue
            head, tail = events[:at], events[at:]
            exchange.read_events(head)
            if head:
                yield head
            await writer.finish(exchange.final("error" if exchange.error else "complete"))
            finished = True
            yield tail
    finally:
        if not finished:  # the engine failed, or the client went away: keep what was said
            with contextlib.suppress(Exception):
                await writer.finish(exchange.final("incomplete"))
