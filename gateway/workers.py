"""`loopgate serve --workers N`: N gateway processes on one port, one control plane.

The parent binds the port (a listening socket per worker, SO_REUSEPORT, so the kernel spreads
connections over the workers), makes the shared counters (gateway.shared_counters), marks the
captured rows an earlier run left open, and starts N workers (spawned, so no state is
inherited), each accepting on its own socket. Worker 0 is the primary: the gateway as one process
runs it (engine supervisor, training and evals workers, background loops, every adapter load and
unload), and it also listens on a private Unix socket in `<data_dir>/run`. Every other worker
serves the serving routes itself (`served_locally`) and forwards everything else to the primary
over that socket, streaming both ways with the headers kept (`ForwardToPrimary`). A worker that
dies is started again (its row of the counters zeroed first); SIGTERM or SIGINT on the parent is
passed to every worker, each drains like a single gateway does, and the parent exits 0 when all
of them did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from gateway.logs import configure_logging
from gateway.shared_counters import SharedCounters
from gateway.worker_placements import PLACE_PATH, PlaceRequest, PrimaryPool, primary_client
from store import open_store
from store.errors import EngineNotReady, LoopgateError, NotFound
from store.settings import ConfigError, Settings

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("loopgate.workers")

WORKER_HEADER = b"x-loopgate-worker"  # which worker answered (with --workers > 1)
CLIENT_HEADER = "x-loopgate-client"  # a follower tells the primary who the client is
MAX_SOCKET_PATH = 107
RESTART_PAUSE_S = 1.0  # a worker that keeps dying is started at most once a second
STOP_GRACE_S = 60.0  # uvicorn drains for 30 s; then the parent kills what is left
LOCAL_PREFIXES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/models",
    "/health",
    "/ready",
    "/metrics",
)
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"trailer"}
)

Scope = dict[str, Any]
Receive = Any
Send = Any
ASGIApp = Any


@dataclass(frozen=True)
class WorkerRole:
    """One worker's place in the gateway (picklable: it travels to the spawned process)."""

    index: int
    workers: int
    counters_path: Path
    table_path: Path
    internal_socket: Path
    first_start: bool = True

    @property
    def primary(self) -> bool:
        return self.index == 0

    def attach(self) -> SharedCounters:
        return SharedCounters(self.counters_path, self.workers, self.slots, self.index)

    @property
    def slots(self) -> int:
        return (self.counters_path.stat().st_size // 8 - 1) // self.workers


def served_locally(path: str) -> bool:
    """The serving routes every worker answers itself; the rest is the primary's."""
    return path.startswith(LOCAL_PREFIXES)


# --- the parent ------------------------------------------------------------------------------


def serve(settings: Settings, socks: list[socket.socket]) -> int:
    """Run `settings.workers` workers, worker i on `socks[i]`, until SIGTERM/SIGINT; 0 when all
    drained."""
    run = settings.data_dir.resolve() / "run"
    run.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    counters = SharedCounters.create(run / f"workers-{pid}.counters", settings.workers)
    role = WorkerRole(
        0,
        settings.workers,
        counters.path,
        run / f"placements-{pid}.json",
        _internal_socket(run, pid),
    )
    asyncio.run(_mark_lost(settings))
    pool = WorkerPool(settings, socks, role, counters)
    try:
        return pool.run()
    finally:
        counters.close()
        for path in (role.counters_path, role.table_path, role.internal_socket):
            path.unlink(missing_ok=True)


def _internal_socket(run: Path, pid: int) -> Path:
    path = run / f"primary-{pid}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"the workers' private socket {path} is longer than a Unix socket allows: "
            "use a shorter LOOPGATE_DATA_DIR"
        )
    return path


async def _mark_lost(settings: Settings) -> None:
    """Rows an earlier run left in progress never finish: say so before any worker serves."""
    store = open_store(settings.store_url)
    await store.open()
    try:
        shared = not settings.store_url.startswith("sqlite:")
        grace = settings.upstream_total_timeout_s + 60 if shared else 0.0
        lost = await store.mark_incomplete(before=time.time() - grace)
        if lost:
            log.warning("marked %d captured requests from an earlier run as incomplete", lost)
    finally:
        await store.close()


class WorkerPool:
    """The parent: starts the workers, replaces the ones that die, stops them all on a signal."""

    def __init__(
        self,
        settings: Settings,
        socks: list[socket.socket],
        role: WorkerRole,
        counters: SharedCounters,
    ):
        self.settings, self.socks, self.role, self.counters = settings, socks, role, counters
        self.context = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.started_at: list[float] = []
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self.role.workers):
            self.procs.append(self._start(index, first=True))
            self.started_at.append(time.monotonic())
        while not self.stopping:
            sentinels = [p.sentinel for p in self.procs]
            multiprocessing.connection.wait(sentinels, timeout=0.5)
            self._replace_dead()
        return self._stop_all()

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _start(self, index: int, *, first: bool) -> BaseProcess:
        role = WorkerRole(
            index,
            self.role.workers,
            self.role.counters_path,
            self.role.table_path,
            self.role.internal_socket,
            first_start=first,
        )
        proc = self.context.Process(
            target=run_worker,
            args=(self.settings, role, self.socks[index]),
            name=f"loopgate-{index}",
        )
        proc.start()
        return proc

    def _replace_dead(self) -> None:
        for index, proc in enumerate(self.procs):
            if self.stopping or proc.is_alive():
                continue
            log.warning(
                "worker %d (pid %s) exited with %s; starting it again",
                index,
                proc.pid,
                proc.exitcode,
            )
            wait = self.started_at[index] + RESTART_PAUSE_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.counters.zero_row(index)  # its requests died with it
            self.procs[index] = self._start(index, first=False)
            self.started_at[index] = time.monotonic()

    def _stop_all(self) -> int:
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.0))
            if proc.is_alive():
                log.error("worker %s did not drain in time; killing it", proc.name)
                proc.kill()
                proc.join()
        return 0 if all(p.exitcode == 0 for p in self.procs) else 1


# --- one worker ------------------------------------------------------------------------------


def run_worker(settings: Settings, role: WorkerRole, sock: socket.socket) -> None:
    """A spawned worker's entry point: the gateway app on its listening socket."""
    signal.signal(signal.SIGTERM, _exit_before_serving)  # uvicorn's own handler replaces it
    configure_logging(settings.log_level, settings.log_format)
    from gateway.cli import on_uvloop

    with contextlib.suppress(KeyboardInterrupt):
        on_uvloop(_serve_worker(settings, role, sock))


def _exit_before_serving(*_: object) -> None:
    """SIGTERM while a worker is still starting: nothing to drain yet."""
    raise SystemExit(0)


async def _serve_worker(settings: Settings, role: WorkerRole, sock: socket.socket) -> None:
    from gateway.app import create_app
    from gateway.cli import server_config
    from gateway.heap import Server

    app = create_app(settings, role=role)
    gateway: Gateway = app.state["gateway"]
    sockets = [sock]
    wrapped: ASGIApp
    if role.primary:
        role.internal_socket.unlink(missing_ok=True)
        internal = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        internal.bind(str(role.internal_socket))
        os.chmod(role.internal_socket, 0o600)
        internal.listen(1024)
        sockets.append(internal)
        wrapped = PrimaryRoutes(app, gateway, role.index)
    else:
        wrapped = ForwardToPrimary(app, primary_client(role.internal_socket), role.index)
    server = Server(server_config(settings, wrapped))
    signal.signal(signal.SIGTERM, lambda *_: None)  # see gateway.cli._serve
    await server.serve(sockets=sockets)


def _tag(send: Send, index: int) -> Send:
    """Say which worker answered (x-loopgate-worker)."""
    value = str(index).encode()

    async def tagged(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (WORKER_HEADER, value)]
        await send(message)

    return tagged


class PrimaryRoutes:
    """The primary's app: on its private Unix socket it also answers followers' placement
    requests and trusts the client address a follower forwarded."""

    def __init__(self, app: ASGIApp, gateway: Gateway, index: int):
        self.app, self.gateway, self.index = app, gateway, index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _from_follower(scope):
            _adopt_client(scope)
            if scope["path"] == PLACE_PATH and scope["method"] == "POST":
                await self._place(receive, send)
                return
        else:
            send = _tag(send, self.index)
        await self.app(scope, receive, send)

    async def _place(self, receive: Receive, send: Send) -> None:
        status, body = 204, b""
        try:
            wanted = msgspec.json.decode(await _read_body(receive), type=PlaceRequest)
            version = await self.gateway.store.get_adapter(wanted.version_id)
            if version is None:
                raise NotFound(f"no adapter version {wanted.version_id}")
            assert isinstance(self.gateway.adapters, PrimaryPool)
            await self.gateway.adapters.place(version)
        except (LoopgateError, msgspec.DecodeError) as exc:
            status, body = 503, str(exc).encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})


def _from_follower(scope: Scope) -> bool:
    server = scope.get("server")
    return server is not None and server[1] is None  # a Unix socket has no port


def _adopt_client(scope: Scope) -> None:
    for name, value in scope["headers"]:
        if name == CLIENT_HEADER.encode():
            host, _, port = value.decode("latin-1").rpartition(":")
            scope["client"] = (host, int(port or 0))
            return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


class ForwardToPrimary:
    """A follower's app: serving routes here, everything else relayed to the primary."""

    def __init__(self, app: ASGIApp, primary: httpx.AsyncClient, index: int):
        self.app, self.primary, self.index = app, primary, index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _tag(send, self.index)
        if served_locally(scope["path"]):
            await self.app(scope, receive, send)
            return
        await self._forward(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = self.primary.build_request(
            scope["method"],
            "http://primary" + _target(scope),
            headers=_forwarded_headers(scope),
            content=_body(receive),
        )
        try:
            response = await self.primary.send(request, stream=True)
        except httpx.HTTPError:
            await _unavailable(send)
            return
        try:
            headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def _target(scope: Scope) -> str:
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string") or b""
    return (path + (b"?" + query if query else b"")).decode("latin-1")


def _forwarded_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    headers = [
        (k, v)
        for k, v in scope["headers"]
        if k.lower() not in _HOP_BY_HOP and k.lower() != CLIENT_HEADER.encode()
    ]
    client = scope.get("client")
    if client:
        headers.append((CLIENT_HEADER.encode(), f"{client[0]}:{client[1]}".encode()))
    return headers


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def _unavailable(send: Send) -> None:
    error = EngineNotReady("the gateway's primary worker is restarting; retry shortly")
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": msgspec.json.encode(error.body())})
