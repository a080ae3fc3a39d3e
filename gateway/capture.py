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
import functools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from gateway.relay import Outcome, Tap, has_token
from store import CaptureFinal, Completion, Store
from store.errors import EngineNotReady
from store.privacy import redact
from store.records import ToolCall, ToolFunction

log = logging.getLogger("loopgate.capture")


def exchange_id() -> str:
    """A new exchange's id (its row's key, and the engine's request id): the time in
    milliseconds (48 bits), then 96 random bits, in hex. Ids that grow with time go in at the end
    of the completions table's primary-key index; random ones dirtied a random page of it per
    captured row, more of them as the table grew (SQLite, batches of 64: the INSERT 12.5 → 8.7 µs
    a row at 20,000 rows, 18.4 → 9.0 µs at 100,000)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(12)}"


class CaptureWriter:
    """Queues inserts and finals; one background task commits them in batches."""

    def __init__(self, store: Store, max_batch: int = 2048):
        self.store = store
        self.max_batch = max_batch
        self._inserts: list[tuple[Completion, Callable[[], str] | None]] = []
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

    async def begin(self, record: Completion, render: Callable[[], str] | None = None) -> None:
        """Commit the write-ahead row (raises 503 if the store cannot take it). `render` makes
        the stored request when it must be redacted first: the store runs it with its batch
        where it writes (SQLite: its connection's thread, in the same hop as the writes), so
        redaction never holds the event loop (and every other stream) up."""
        self._inserts.append((record, render))
        try:
            await self._committed()
        except Exception as exc:
            raise EngineNotReady(
                "traffic capture is unavailable; the request was not sent"
            ) from exc

    async def finish(self, final: CaptureFinal) -> None:
        """Commit a request's final state; never raises (a lost final leaves `in_progress`).
        Once queued it is committed with its batch even if the caller is cancelled meanwhile
        (the writer skips a cancelled waiter)."""
        self._finals.append(final)
        try:
            await self._committed()
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
        rows = [record for record, _ in inserts]
        renders = [render for _, render in inserts]
        transform = None
        if any(render is not None for render in renders) or any(f.redact for f in finals):
            transform = functools.partial(_redacted, renders)  # run by the store, off the loop
        try:
            await self.store.capture_batch(rows, finals, transform)
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


def _redacted(
    renders: list[Callable[[], str] | None], rows: list[Completion], finals: list[CaptureFinal]
) -> tuple[list[Completion], list[CaptureFinal]]:
    """A batch as it is stored: requests rendered and answers redacted (where the store writes,
    off the event loop)."""
    rows = [
        row if render is None else msgspec.structs.replace(row, request=render())
        for row, render in zip(rows, renders, strict=True)
    ]
    return rows, [redact_final(f) if f.redact else f for f in finals]


def redact_final(final: CaptureFinal) -> CaptureFinal:
    """The final state with its answer and tool-call arguments PII-redacted."""
    calls = final.tool_calls
    if calls is not None:
        parsed = msgspec.json.decode(calls, type=list[ToolCall])
        calls = _tool_calls.encode(
            [
                msgspec.structs.replace(
                    c, function=ToolFunction(c.function.name, redact(c.function.arguments).text)
                )
                for c in parsed
            ]
        ).decode()
    text = None if final.response is None else redact(final.response).text
    return msgspec.structs.replace(final, response=text, tool_calls=calls, redact=False)


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
# Blocks a stream keeps before parsing them (one decode each time): a long answer is held as
# parsed text, not as its raw events.
_PARSE_EVERY = 256
_chunks = msgspec.json.Decoder(list[_Chunk])
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

    def record(self) -> ToolCall:
        return ToolCall(id=self.id, function=ToolFunction(self.name, "".join(self.arguments)))


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
    blocks: list[bytes] = field(default_factory=list)  # a stream's events, parsed at its end

    def final(self, status: str) -> CaptureFinal:
        now = time.monotonic()
        ttft = (self.first_token - self.started) * 1000 if self.first_token else None
        text: str | None = None
        calls: str | None = None
        if self.stored:  # redacted by the writer, off the event loop (CaptureFinal.redact)
            text = "".join(self.parts)
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
            redact=self.stored and self.redact,
        )

    def _tool_calls(self) -> str | None:
        """The answer's tool calls as JSON of OpenAI's list, in index order (None: there were
        none)."""
        if not self.calls:
            return None
        calls = [self.calls[i].record() for i in sorted(self.calls)]
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

    def read_blocks(self) -> None:
        """Parse the stream's kept events, all at once (see CaptureTap)."""
        if self.blocks:
            events, self.blocks = b"".join(self.blocks), []
            self.read_events(events)

    def read_events(self, events: bytes) -> None:
        payloads = [line[6:] for line in events.split(b"\n") if line.startswith(b"data: {")]
        try:
            chunks = _chunks.decode(b"[" + b",".join(payloads) + b"]")
        except msgspec.DecodeError:  # one bad event: read them one by one, skipping it
            chunks = [c for c in map(_one_chunk, payloads) if c is not None]
        for chunk in chunks:
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


def _one_chunk(payload: bytes) -> _Chunk | None:
    try:
        return _chunk.decode(payload)
    except msgspec.DecodeError:
        return None


class CaptureTap(Tap):
    """Records a relayed stream: keeps its blocks as they pass (no parsing on the way), notes
    the first token's time, and makes the row final before `[DONE]` goes out."""

    __slots__ = ("exchange", "finished", "writer")

    def __init__(self, exchange: Exchange, writer: CaptureWriter):
        self.exchange, self.writer, self.finished = exchange, writer, False

    def see(self, events: bytes) -> bytes:
        exchange = self.exchange
        if exchange.first_token is None and has_token(events):
            exchange.first_token = time.monotonic()
        exchange.blocks.append(events)
        if len(exchange.blocks) >= _PARSE_EVERY:  # a long answer: parse as it goes, in batches
            exchange.read_blocks()
        return events

    async def before_done(self) -> None:
        self.exchange.read_blocks()
        self.finished = True
        await self.writer.finish(
            self.exchange.final("error" if self.exchange.error else "complete")
        )

    async def end(self, outcome: Outcome) -> None:
        if not self.finished:  # the engine failed, or the client went away: keep what was said
            self.finished = True
            self.exchange.read_blocks()
            await self.writer.finish(self.exchange.final("incomplete"))
