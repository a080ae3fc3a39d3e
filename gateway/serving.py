"""Serving one completion: validate → resolve the caller's alias → pick a backend → relay."""

from __future__ import annotations

from typing import Literal

from litestar import Response
from litestar.response import Stream

from gateway.protocol import decode_chat, decode_completion, encode_for_engine
from gateway.store import Alias
from gateway.tenancy import Caller, Directory
from gateway.upstream import BackendPool, Upstream, rename_model

Kind = Literal["chat", "completion"]

_PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Serving:
    def __init__(
        self, directory: Directory, pool: BackendPool, upstream: Upstream, base_engine_name: str
    ):
        self.directory = directory
        self.pool = pool
        self.upstream = upstream
        self.base_engine_name = base_engine_name

    def engine_name(self, alias: Alias) -> str:
        """The name vLLM knows the alias's target by."""
        if alias.target.kind == "base" or alias.target.adapter_version is None:
            return self.base_engine_name
        return alias.target.adapter_version

    async def complete(self, caller: Caller, body: bytes, kind: Kind) -> Response[bytes] | Stream:
        req = decode_chat(body) if kind == "chat" else decode_completion(body)
        alias = await self.directory.resolve(caller, req.model)
        engine_model = self.engine_name(alias)
        payload = encode_for_engine(req, engine_model)
        backend = self.pool.pick()
        engine_b, public_b = engine_model.encode(), alias.name.encode()
        if req.stream:
            resp = await self.upstream.open_stream(backend, _PATHS[kind], payload)
            relay = self.upstream.relay(backend, resp, engine_b, public_b)
            return Stream(relay, media_type="text/event-stream", headers=_STREAM_HEADERS)
        content = await self.upstream.post(backend, _PATHS[kind], payload)
        return Response(rename_model(content, engine_b, public_b), media_type="application/json")
