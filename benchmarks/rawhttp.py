"""A blocking HTTP/1.1 keep-alive probe over one socket: the cheapest client a benchmark can use."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_LINE = 65536
MAX_HEADERS = 100
MAX_CHUNKS = 100_000


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def build_request(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawClient:
    """One keep-alive connection to 127.0.0.1:port; reconnects when the server closes it."""

    def __init__(self, port: int, timeout_s: float = 10.0):
        self.port = port
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf = b""

    def exchange(self, raw: bytes, on_chunk: Callable[[bytes], None] | None = None) -> Reply:
        """Send one prebuilt request and read the whole reply (chunks go to on_chunk too)."""
        sock = self._connect()
        sock.sendall(raw)
        status, headers = self._read_head()
        body = self._read_body(headers, on_chunk)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Reply(status, headers, body)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def _fill(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(MAX_LINE)
        if not data:
            raise ConnectionError("server closed the connection")
        self._buf += data

    def _line(self) -> bytes:
        for _ in range(MAX_LINE):
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line, self._buf = self._buf[:end], self._buf[end + 2 :]
                return line
            if len(self._buf) > MAX_LINE:
                break
            self._fill()
        raise ConnectionError("line too long")

    def _exact(self, n: int) -> bytes:
        for _ in range(n + 1):
            if len(self._buf) >= n:
                data, self._buf = self._buf[:n], self._buf[n:]
                return data
            self._fill()
        raise ConnectionError("short read")

    def _read_head(self) -> tuple[int, dict[str, str]]:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if not line:
                return status, headers
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raise ConnectionError("too many headers")

    def _read_body(
        self, headers: dict[str, str], on_chunk: Callable[[bytes], None] | None
    ) -> bytes:
        if "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
            if on_chunk is not None:
                on_chunk(body)
            return body
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise ConnectionError("neither content-length nor chunked: unsupported")
        parts: list[bytes] = []
        for _ in range(MAX_CHUNKS):
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                self._line()  # the empty trailer line
                return b"".join(parts)
            chunk = self._exact(size)
            self._exact(2)
            parts.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
        raise ConnectionError("too many chunks")


@dataclass(frozen=True)
class StreamTiming:
    first_event_s: float
    total_s: float
    events: int
    done: bool


def timed_stream(client: RawClient, raw: bytes) -> StreamTiming:
    """Time one SSE request: to the first `data:` event, and to the end of the body."""
    first: list[float] = []
    start = time.perf_counter()

    def on_chunk(chunk: bytes) -> None:
        if not first and b"data:" in chunk:
            first.append(time.perf_counter())

    reply = client.exchange(raw, on_chunk)
    total = time.perf_counter() - start
    if reply.status != 200 or not first:
        raise RuntimeError(f"stream failed: {reply.status} {reply.body[:200]!r}")
    return StreamTiming(
        first_event_s=first[0] - start,
        total_s=total,
        events=reply.body.count(b"data:"),
        done=b"data: [DONE]" in reply.body,
    )
