"""Running a claimed batch in the evals worker: send its lines, write its output and error files.

1. Lines already answered (a result row each) are skipped: a batch whose worker stopped or died
   resumes where it was, and no answered line is sent twice.
2. The rest are sent to the gateway's admin API (`GatewayClient.batch_line`), at most
   `batch_concurrency` at a time; the gateway serves each as the tenant's own request at a lower
   engine priority than live traffic. A 429 (the tenant's limits) or 502-504 (the engine busy
   or restarting) is tried again later; any other answer is the line's result.
3. Between lines the batch's heartbeat shows a cancel (stop sending, let the lines in flight
   finish) and the end of the completion window (unsent lines fail with `batch_expired`).
4. The results become two files owned by the tenant (purpose `batch_output`): answers in the
   output file, failures in the error file, in input order, each line
   `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from evals.batch_lines import BatchLine, LineReply
from evals.gateway_client import GatewayClient, GatewayError
from store import BatchRecord, BatchResult, BatchStatus, FileObject, Store
from store.settings import Settings

log = logging.getLogger("loopgate.evals.batches")
RETRIED = frozenset({429, 502, 503, 504})
ATTEMPTS = 5
READ_LINES = 64  # input lines read from disk per thread hop
EXPIRED = "This request could not be executed before the completion window expired."
Outcome = Literal["done", "cancelled", "expired", "lost"]


class LineError(msgspec.Struct, frozen=True):
    code: str
    message: str


class LineResponse(msgspec.Struct, frozen=True):
    status_code: int
    request_id: str
    body: msgspec.Raw


class OutputLine(msgspec.Struct, frozen=True):
    """One line of a batch's output or error file (OpenAI's batch output shape)."""

    id: str
    custom_id: str
    response: LineResponse | None
    error: LineError | None


class _Input(msgspec.Struct):
    custom_id: str
    body: msgspec.Raw


class _Watch:
    """What the batch's heartbeat last said: keep sending, or stop and why."""

    def __init__(self, batch: BatchRecord):
        self.batch = batch
        self.status: BatchStatus | None = batch.status

    def stop(self) -> Outcome | None:
        if self.status is None:
            return "lost"
        if self.status == "cancelling":
            return "cancelled"
        if time.time() >= self.batch.expires_at:
            return "expired"
        return None


class BatchRunner:
    def __init__(
        self,
        store: Store,
        gateway: GatewayClient,
        worker: str,
        settings: Settings,
        retry_wait_s: float = 1.0,
    ):
        self.store = store
        self.gateway = gateway
        self.worker = worker
        self.beat_s = settings.job_heartbeat_s
        self.concurrency = settings.batch_concurrency
        self.files = settings.training_path / "files"
        self.retry_wait_s = retry_wait_s

    async def run(self, batch: BatchRecord) -> None:
        """Run a claimed batch to its end; a stopped worker hands it back unfinished."""
        try:
            outcome = await self._outcome(batch)
            if outcome != "lost":
                await self._finish(batch, outcome)
        except asyncio.CancelledError:
            await asyncio.shield(self.store.release_batch(batch.id, self.worker))
            raise
        except Exception as exc:
            log.exception("batch %s failed", batch.id)
            await self.store.finish_batch(batch.id, self.worker, "failed", error=str(exc)[:500])

    async def _outcome(self, batch: BatchRecord) -> Outcome:
        if batch.status == "cancelling":
            return "cancelled"
        if batch.status == "finalizing":
            return "done"
        f = await self.store.get_file(batch.tenant_id, batch.input_file_id)
        if f is None:
            raise FileNotFoundError(f"the input file {batch.input_file_id} was deleted")
        return await self._send_all(batch, Path(f.path))

    # -- 1-3: the lines ----------------------------------------------------------------------

    async def _send_all(self, batch: BatchRecord, path: Path) -> Outcome:
        watch = _Watch(batch)
        beat = asyncio.create_task(self._beat(watch), name=f"batch-beat-{batch.id}")
        slots = asyncio.Semaphore(self.concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                async for line in pending(path, await self.store.batch_result_lines(batch.id)):
                    await slots.acquire()
                    watch.status = await self.store.heartbeat_batch(batch.id, self.worker)
                    if watch.stop() is not None:
                        slots.release()
                        break
                    group.create_task(self._one(batch, line, slots, watch))
        finally:
            beat.cancel()
        return watch.stop() or "done"

    async def _beat(self, watch: _Watch) -> None:
        """Keeps the claim while every slot waits on the engine (long answers)."""
        while watch.status is not None:
            await asyncio.sleep(self.beat_s)
            watch.status = await self.store.heartbeat_batch(watch.batch.id, self.worker)

    async def _one(
        self, batch: BatchRecord, line: BatchLine, slots: asyncio.Semaphore, watch: _Watch
    ) -> None:
        try:
            reply = await self._send(batch, line, watch)
            if reply is not None:
                await self.store.add_batch_result(_result(batch.id, line, reply))
        finally:
            slots.release()

    async def _send(self, batch: BatchRecord, line: BatchLine, watch: _Watch) -> LineReply | None:
        """The line's answer; None when it is left for later (the gateway unreachable, the
        batch lost, or still refused for lack of capacity after every try)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                reply = await self.gateway.batch_line(batch.tenant_id, batch.id, line)
            except GatewayError as exc:
                log.warning("batch %s line %d not sent: %s", batch.id, line.line, exc)
                watch.status = None  # left for the next claim, once this one is stale
                return None
            if reply.status_code not in RETRIED or attempt == ATTEMPTS:
                return reply
            await asyncio.sleep(self.retry_wait_s * attempt)
        return None

    # -- 4: the files ------------------------------------------------------------------------

    async def _finish(self, batch: BatchRecord, outcome: Outcome) -> None:
        if outcome == "expired":
            await self._expire_rest(batch)
        if outcome == "done":
            outcome = await self._finalizing(batch)
        if outcome == "lost":
            return
        results = await self.store.batch_results(batch.id)
        output = await self._write(batch, "output", [r for r in results if r.ok])
        errors = await self._write(batch, "error", [r for r in results if not r.ok])
        final: BatchStatus = "completed" if outcome == "done" else outcome
        await self.store.finish_batch(
            batch.id, self.worker, final, output_file_id=output, error_file_id=errors
        )
        log.info("batch %s %s: %d results", batch.id, final, len(results))

    async def _finalizing(self, batch: BatchRecord) -> Outcome:
        """in_progress -> finalizing; a batch cancelled just now ends cancelled instead."""
        if await self.store.batch_finalizing(batch.id, self.worker):
            return "done"
        status = await self.store.heartbeat_batch(batch.id, self.worker)
        if status == "finalizing":
            return "done"
        return "cancelled" if status == "cancelling" else "lost"

    async def _expire_rest(self, batch: BatchRecord) -> None:
        f = await self.store.get_file(batch.tenant_id, batch.input_file_id)
        if f is None:
            return
        async for line in pending(Path(f.path), await self.store.batch_result_lines(batch.id)):
            expired = BatchResult(
                batch.id,
                line.line,
                line.custom_id,
                status_code=None,
                request_id=None,
                body=None,
                error_code="batch_expired",
                error_message=EXPIRED,
                created_at=time.time(),
            )
            await self.store.add_batch_result(expired)

    async def _write(self, batch: BatchRecord, kind: str, results: list[BatchResult]) -> str | None:
        """The file of these results, kept as the tenant's (the same id when a resumed batch
        writes it again); None when there are none."""
        if not results:
            return None
        file_id = "file-" + _digest(f"{batch.id}:{kind}")
        if await self.store.get_file(batch.tenant_id, file_id) is not None:
            return file_id
        path = self.files / batch.tenant_id / f"{file_id}.jsonl"
        size = await asyncio.to_thread(_write_lines, path, [_output_line(r) for r in results])
        f = FileObject(
            id=file_id,
            tenant_id=batch.tenant_id,
            purpose="batch_output",
            filename=f"{batch.id}_{kind}.jsonl",
            bytes=size,
            lines=len(results),
            path=str(path),
            created_by=f"batch:{batch.id}",
            created_at=time.time(),
        )
        await self.store.add_file(f)
        return file_id


async def pending(path: Path, done: set[int]) -> AsyncIterator[BatchLine]:
    """The input lines (checked when the batch was created) not yet answered, in order."""
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        number = 0
        while block := await asyncio.to_thread(_read_block, fh):
            for raw in block:
                number += 1
                if raw.strip() and number not in done:
                    found = msgspec.json.decode(raw, type=_Input)
                    yield BatchLine(number, found.custom_id, bytes(found.body).decode())
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(fh.close)


def _read_block(fh: BinaryIO) -> list[bytes]:
    block = []
    for _ in range(READ_LINES):
        raw = fh.readline()
        if not raw:
            break
        block.append(raw)
    return block


def _result(batch_id: str, line: BatchLine, reply: LineReply) -> BatchResult:
    return BatchResult(
        batch_id=batch_id,
        line=line.line,
        custom_id=line.custom_id,
        status_code=reply.status_code,
        request_id=reply.request_id,
        body=reply.body,
        created_at=time.time(),
    )


def _output_line(r: BatchResult) -> OutputLine:
    line_id = "batch_req_" + _digest(f"{r.batch_id}:{r.line}")
    if r.status_code is None:
        error = LineError(r.error_code or "batch_error", r.error_message or "")
        return OutputLine(line_id, r.custom_id, None, error)
    body = msgspec.Raw((r.body or "null").encode())
    return OutputLine(
        line_id, r.custom_id, LineResponse(r.status_code, r.request_id or "", body), None
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_lines(path: Path, lines: list[OutputLine]) -> int:
    """Write the file whole (a temporary file renamed into place); its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    encoder = msgspec.json.Encoder()
    with tmp.open("wb") as fh:
        for line in lines:
            fh.write(encoder.encode(line) + b"\n")
    tmp.replace(path)
    return path.stat().st_size
