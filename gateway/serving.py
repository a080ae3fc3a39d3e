"""Serving one completion: validate → resolve the caller's alias → lease a backend → relay."""

from __future__ import annotations

from typing import Literal

from litestar import Response
from litestar.response import Stream

from adapters.placement import AdapterPool, Lease
from adapters.swap import Swapper
from gateway.errors import EngineNotReady, NotFound
from gateway.protocol import decode_chat, decode_completion, encode_for_engine
from gateway.store import Alias
from gateway.tenancy import Caller, Directory
from gateway.upstream import BackendPool, Upstream, rename_model

Kind = Literal["chat", "completion"]

VERSION_HEADER = "x-loopgate-adapter-version"
_PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Serving:
    def __init__(
        self,
        directory: Directory,
        pool: BackendPool,
        upstream: Upstream,
        adapters: AdapterPool,
        swapper: Swapper,
        base_engine_name: str,
    ):
        self.directory = directory
        self.pool = pool
        self.upstream = upstream
        self.adapters = adapters
        self.swapper = swapper
        self.base_engine_name = base_engine_name

    async def route(self, alias: Alias) -> Lease:
        """A lease on what the alias serves at this instant (see adapters.swap)."""
        for _ in range(3):
            target = self.swapper.current(alias)
            if target.kind == "base" or target.adapter_version is None:
                return Lease(self.pool.pick(), self.base_engine_name, None)
            lease = self.adapters.try_lease(target.adapter_version)
            if lease is not None:
                return lease
            version = await self.directory.store.get_adapter(target.adapter_version)
            if version is None:
                raise NotFound(f"The model '{alias.name}' is not available", param="model")
            lease = await self.adapters.lease(version)
            if self.swapper.current(alias) == target:
                return lease
            lease.release()  # the alias moved while we were loading: route again
        raise EngineNotReady("the model is being swapped; retry shortly")

    async def complete(self, caller: Caller, body: bytes, kind: Kind) -> Response[bytes] | Stream:
        req = decode_chat(body) if kind == "chat" else decode_completion(body)
        alias = await self.directory.resolve(caller, req.model)
        lease = await self.route(alias)
        headers = {VERSION_HEADER: lease.version_id or "base"}
        engine_b, public_b = lease.engine_name.encode(), alias.name.encode()
        payload = encode_for_engine(req, lease.engine_name)
        try:
            if req.stream:
                resp = await self.upstream.open_stream(lease.backend, _PATHS[kind], payload)
                relay = self.upstream.relay(lease.backend, resp, engine_b, public_b, lease.release)
                return Stream(
                    relay, media_type="text/event-stream", headers={**_STREAM_HEADERS, **headers}
                )
            content = await self.upstream.post(lease.backend, _PATHS[kind], payload)
        except BaseException:
            lease.release()
            raise
        lease.release()
        return Response(
            rename_model(content, engine_b, public_b),
            media_type="application/json",
            headers=headers,
        )
