"""Multipart uploads streamed to disk: never whole in memory, the size limit kept while streaming.

The body is parsed as it arrives (`multipart`, the parser Litestar itself uses); the file part
goes chunk by chunk into a hidden temporary file in the folder where it will be kept, and the
upload is refused the moment that part passes its limit. Small form fields beside it (OpenAI's
`purpose`) are kept in memory, up to `MAX_FIELD_BYTES` each. Whatever goes wrong, the temporary
file is removed; on success the caller validates it from disk and renames it into place.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from multipart import (  # type: ignore[import-untyped]
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
)

from store.errors import InvalidRequest, LoopgateError

MAX_FIELD_BYTES = 1024
MAX_PARTS = 8


@dataclass
class Received:
    """One streamed upload: the file part in a temporary file, and the other form fields."""

    path: Path
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    has_file: bool = False


def boundary(content_type: tuple[str, Mapping[str, str]], param: str) -> str:
    """The multipart boundary of a request's (media type, options), or a 400."""
    media_type, options = content_type
    if media_type != "multipart/form-data" or not options.get("boundary"):
        raise InvalidRequest(f"send the file as multipart/form-data field '{param}'", param=param)
    return options["boundary"]


async def receive(
    body: AsyncIterator[bytes],
    boundary: str,
    folder: Path,
    *,
    file_field: str,
    max_bytes: int,
    too_large: LoopgateError,
) -> Received:
    """Stream a multipart body into `folder`; `too_large` is raised once the file part passes
    `max_bytes`. The caller owns (and must remove or rename) the returned temporary file."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    received = Received(folder / f".upload-{secrets.token_hex(8)}.part")
    try:
        with received.path.open("wb") as fh:
            await _stream(body, boundary, _Sink(received, fh, file_field, max_bytes, too_large))
    except BaseException:
        await asyncio.to_thread(received.path.unlink, True)
        raise
    if not received.has_file:
        await asyncio.to_thread(received.path.unlink, True)
        raise InvalidRequest(f"send the file as multipart form field '{file_field}'", param="file")
    return received


async def _stream(body: AsyncIterator[bytes], boundary: str, sink: _Sink) -> None:
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_PARTS) as parser:
            async for chunk in body:
                for event in parser.parse(chunk):  # an empty chunk ends (and checks) the body
                    await sink.event(event)
                if parser.closed:
                    break
    except (ParserError, ParserLimitReached) as exc:
        raise InvalidRequest(f"the body is not valid multipart/form-data: {exc}") from None


@dataclass
class _Sink:
    """Routes the parser's events: the file part to disk, other fields to memory."""

    received: Received
    fh: BinaryIO
    file_field: str
    max_bytes: int
    too_large: LoopgateError
    segment: MultipartSegment | None = None
    value: bytearray = field(default_factory=bytearray)

    async def event(self, event: MultipartSegment | bytes | None) -> None:
        if isinstance(event, MultipartSegment):
            self._start(event)
        elif event is None:
            self._end()
        elif self._is_file():
            self.received.size += len(event)
            if self.received.size > self.max_bytes:
                raise self.too_large
            await asyncio.to_thread(self.fh.write, event)
        else:
            self.value += event
            if len(self.value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"the form field '{self._name()}' is too long")

    def _start(self, segment: MultipartSegment) -> None:
        self.segment = segment
        if self._is_file():
            if self.received.has_file:
                raise InvalidRequest("send one file per upload", param=self.file_field)
            self.received.has_file = True
            self.received.filename = str(segment.filename or "")

    def _end(self) -> None:
        if not self._is_file():
            self.received.fields[self._name()] = self.value.decode("utf-8", "replace")
        self.segment, self.value = None, bytearray()

    def _is_file(self) -> bool:
        return self._name() == self.file_field

    def _name(self) -> str:
        return str(self.segment.name) if self.segment is not None else ""
