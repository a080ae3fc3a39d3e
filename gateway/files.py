"""Uploaded files (`/v1/files`, purpose `fine-tune`): streamed to disk, checked there, kept
within the tenant's quotas.

An upload is written to a hidden temporary file in `<training_dir>/files/<tenant>/` as it
arrives (`gateway.uploads`) and refused the moment it passes `LOOPGATE_FILE_MAX_BYTES` (413) or
the room left in the tenant's `max_file_bytes` quota (429, `gateway.quotas`); it is validated
line by line from disk (every bad line reported, one line in memory at a time), renamed to
`<file id>.jsonl` and recorded, the store checking the file quotas again as it adds the row. A
refusal at any step leaves no file behind.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from gateway import uploads
from gateway.quotas import Quotas, QuotaSet, Standing, refusal
from gateway.tenancy import Caller
from store import FileObject, Store, Usage
from store.errors import InvalidRequest, LoopgateError, NotFound, PayloadTooLarge
from store.settings import Settings
from training.jsonl import JsonlError, count_chat_jsonl_file

MAX_LINES = 100_000
MAX_LINE_BYTES = 1024 * 1024
PURPOSE = "fine-tune"
BATCH_PURPOSE = "batch"  # a Batch API input: its lines are checked when a batch is created


class Files:
    """A tenant's uploaded files: upload, look up, delete."""

    def __init__(self, settings: Settings, store: Store, quotas: Quotas):
        self.settings = settings
        self.store = store
        self.quotas = quotas
        self.root = settings.training_path / "files"

    async def upload(
        self,
        caller: Caller,
        content_type: tuple[str, Mapping[str, str]],
        body: AsyncIterator[bytes],
    ) -> FileObject:
        boundary = uploads.boundary(content_type, "file")
        standing = await self.quotas.check(caller.tenant_id, Usage(files=1))
        max_bytes, too_large = self._limit(standing)
        received = await uploads.receive(
            body,
            boundary,
            self.root / caller.tenant_id,
            file_field="file",
            max_bytes=max_bytes,
            too_large=too_large,
        )
        try:
            return await self._keep(caller, received, standing.quotas)
        except BaseException:
            await asyncio.to_thread(received.path.unlink, True)
            raise

    def _limit(self, standing: Standing) -> tuple[int, LoopgateError]:
        """The most bytes this upload may have, and the error for one past it."""
        cap, room = self.settings.file_max_bytes, standing.room("file_bytes")
        if room < cap:
            return room, refusal(standing.quotas, "file_bytes")
        message = f"the file is larger than {cap} bytes, the limit (LOOPGATE_FILE_MAX_BYTES)"
        return cap, PayloadTooLarge(message, param="file")

    async def _keep(
        self, caller: Caller, received: uploads.Received, quotas: QuotaSet
    ) -> FileObject:
        purpose = received.fields.get("purpose", "")
        if purpose not in (PURPOSE, BATCH_PURPOSE):
            raise InvalidRequest(
                f"purpose {purpose!r} is not supported; loopgate accepts '{PURPOSE}' and "
                f"'{BATCH_PURPOSE}'",
                param="purpose",
            )
        count = _count_lines if purpose == PURPOSE else _count_batch_lines
        lines = await asyncio.to_thread(count, received.path)
        file_id = "file-" + secrets.token_hex(12)
        path = received.path.with_name(f"{file_id}.jsonl")
        f = FileObject(
            id=file_id,
            tenant_id=caller.tenant_id,
            purpose=purpose,
            filename=Path(received.filename or "upload.jsonl").name[:255],
            bytes=received.size,
            lines=lines,
            path=str(path),
            created_by=f"key:{caller.key_id}",
            created_at=time.time(),
        )
        await asyncio.to_thread(received.path.rename, path)
        try:
            over = await self.store.add_file(f, quotas.limits())
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        if over is not None:  # another upload took the room since the first check
            await asyncio.to_thread(path.unlink, True)
            raise refusal(quotas, over)
        return f

    async def file(self, caller: Caller, file_id: str) -> FileObject:
        found = await self.store.get_file(caller.tenant_id, file_id)
        if found is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return found

    async def delete(self, caller: Caller, file_id: str) -> None:
        found = await self.file(caller, file_id)
        await self.store.delete_file(caller.tenant_id, file_id)
        await asyncio.to_thread(Path(found.path).unlink, True)


def _count_lines(path: Path) -> int:
    try:
        return count_chat_jsonl_file(path, max_lines=MAX_LINES, max_line_bytes=MAX_LINE_BYTES)
    except JsonlError as exc:
        raise InvalidRequest(str(exc), param="file", code="invalid_file") from None


def _count_batch_lines(path: Path) -> int:
    """The non-blank lines of a batch input, within the same bounds as training files."""
    count = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise InvalidRequest(
                    f"line {number} is longer than {MAX_LINE_BYTES} bytes", param="file"
                )
            count += bool(raw.strip())
            if count > MAX_LINES:
                raise InvalidRequest(f"the file has more than {MAX_LINES} lines", param="file")
    return count
