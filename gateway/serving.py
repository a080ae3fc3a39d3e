"""Serving one completion: validate → resolve the caller's alias → lease a backend → capture
(write-ahead) → relay → finalize the capture before the last byte."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Collection
from typing import Literal

import msgspec
from litestar import Response
from litestar.response import Stream
from msgspec import UNSET

from adapters.placement import AdapterPool, Lease
from adapters.swap import Swapper
from gateway.cache_salt import CacheSalts
from gateway.canary import Assignment, Canaries, counts_against_canary
from gateway.capture import CaptureTap, CaptureWriter, Exchange, exchange_id
from gateway.limits import Limiter, prompt_chars
from gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    decode_chat,
    decode_completion,
    encode_for_engine,
    prompt_count,
)
from gateway.relay import DirectRoute, RelayedStream, Tap
from gateway.shadow import Shadows
from gateway.telemetry import Telemetry, current_request, note_alias
from gateway.tenancy import Caller, Directory
from gateway.upstream import Upstream, rename_model, start_relay
from replicas.pool import Backend, BackendPool
from store import Alias, Completion
from store.errors import (
    EngineNotReady,
    InvalidRequest,
    LoopgateError,
    NotFound,
    UpstreamUnavailable,
)
from store.privacy import redact

Kind = Literal["chat", "completion"]

VERSION_HEADER = "x-loopgate-adapter-version"
_PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_PREFIX: dict[Kind, str] = {"chat": "chatcmpl-", "completion": "cmpl-"}
_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_encoder = msgspec.json.Encoder()
log = logging.getLogger("loopgate.serving")
# Requests with more prompt text than this are redacted off the event loop (a thread hop costs
# tens of microseconds, more than redacting a typical prompt inline).
REDACT_INLINE_CHARS = 16 * 1024
# No tokenizer packs more characters than this into one token of ordinary text (English BPE
# averages ~4), so a prompt longer than context x this cannot fit the engine's context.
CHARS_PER_TOKEN_CEILING = 16


class Serving:
    def __init__(
        self,
        directory: Directory,
        pool: BackendPool,
        upstream: Upstream,
        adapters: AdapterPool,
        swapper: Swapper,
        base_engine_name: str,
        capture: CaptureWriter | None,
        canaries: Canaries | None = None,
        telemetry: Telemetry | None = None,
        limits: Limiter | None = None,
        retries: int = 1,
        ready_wait_s: float = 0.0,
        salts: CacheSalts | None = None,
        max_prompt_chars: int | None = None,
        shadows: Shadows | None = None,
    ):
        self.directory = directory
        self.pool = pool
        self.upstream = upstream
        self.adapters = adapters
        self.swapper = swapper
        self.base_engine_name = base_engine_name
        self.capture = capture
        self.canaries = canaries
        self.telemetry = telemetry
        self.limits = limits
        self.retries = retries
        self.ready_wait_s = ready_wait_s
        self.salts = salts or CacheSalts(secrets.token_urlsafe(32))
        self.max_prompt_chars = max_prompt_chars
        self.shadows = shadows

    async def route(self, alias: Alias) -> Lease:
        """A lease on what the alias serves at this instant (see adapters.swap)."""
        if not self.pool.any_ready:
            await self.pool.wait_ready(self.ready_wait_s)
        for _ in range(3):
            target = self.swapper.current(alias)
            if target.kind == "base" or target.adapter_version is None:
                return Lease(self.pool.pick(), self.base_engine_name, None)
            lease = await self.lease_version(target.adapter_version, alias)
            if self.swapper.current(alias) == target:
                return lease
            lease.release()  # the alias moved while we were loading: route again
        raise EngineNotReady("the model is being swapped; retry shortly")

    async def lease_version(
        self, version_id: str, alias: Alias, exclude: Collection[Backend] = ()
    ) -> Lease:
        """A lease on one version (without awaiting when it is loaded somewhere)."""
        lease = self.adapters.try_lease(version_id, exclude)
        if lease is not None:
            return lease
        version = await self.directory.store.get_adapter(version_id)
        # An alias only ever targets its tenant's own versions; checked again here all the same.
        if version is None or version.tenant_id != alias.tenant_id:
            raise NotFound(f"The model '{alias.name}' is not available", param="model")
        return await self.adapters.lease(version, exclude)

    async def complete(
        self, caller: Caller, body: bytes, kind: Kind, request_id: str, priority: int | None = None
    ) -> Response[bytes] | Stream:
        """Serve one request; `priority` (vLLM's, lower first; live requests send none, which
        is 0) is set only by the gateway itself, for batch lines (gateway.batches)."""
        if self.telemetry is None:
            return await self._complete(caller, body, kind, request_id, priority)
        with self.telemetry.request(kind, caller.tenant_name, request_id):
            return await self._complete(caller, body, kind, request_id, priority)

    async def _complete(
        self, caller: Caller, body: bytes, kind: Kind, request_id: str, priority: int | None
    ) -> Response[bytes] | Stream:
        req = decode_chat(body) if kind == "chat" else decode_completion(body)
        if priority is not None:  # after decoding, which refuses a client's own priority
            req = msgspec.structs.replace(req, priority=priority)
        self._check_prompt_size(req)
        alias = await self.directory.resolve(caller, req.model)
        note_alias(alias.name)
        if self.limits is not None:
            return await self._limited(self.limits, caller, req, kind, alias, request_id)
        return await self._serve(caller, req, kind, alias, request_id)

    def _check_prompt_size(self, req: ChatCompletionRequest | CompletionRequest) -> None:
        """A prompt that cannot fit the engine's context is refused here, before the engine
        spends seconds tokenizing megabytes of it only to refuse it too."""
        if self.max_prompt_chars is None:
            return
        size, limit = prompt_chars(req), self.max_prompt_chars * prompt_count(req)
        if size > limit:
            param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
            raise InvalidRequest(
                f"the prompt has {size} characters; the engine's context cannot hold more than "
                f"{limit} (LOOPGATE_ENGINE_MAX_MODEL_LEN tokens x {CHARS_PER_TOKEN_CEILING} "
                "characters per prompt); shorten it",
                param=param,
                code="context_length_exceeded",
            )

    async def _limited(
        self,
        limits: Limiter,
        caller: Caller,
        req: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        alias: Alias,
        request_id: str,
    ) -> Response[bytes] | Stream:
        """Serve within the caller's limits: reserve, serve, settle (see gateway.limits)."""
        req, ticket = await limits.admit(caller, req)
        if ticket is None:
            return await self._serve(caller, req, kind, alias, request_id)
        try:
            response = await self._serve(caller, req, kind, alias, request_id)
        except BaseException:
            await limits.settle(ticket, 0)  # no answer: the tokens go back, the request counts
            raise
        return await limits.meter(ticket, response)

    async def _serve(
        self,
        caller: Caller,
        req: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        alias: Alias,
        request_id: str,
    ) -> Response[bytes] | Stream:
        pick = None
        if self.canaries is not None:
            sticky = req.user if isinstance(req.user, str) and req.user else caller.key_id
            pick = self.canaries.assign(alias, sticky)
        if pick is not None and pick.to_canary:
            served = await self._on_canary(caller, req, kind, alias, pick, request_id)
            if served is not None:
                return served
            pick = None  # the retry on the normal target is no sample of the live arm
        started = time.monotonic()
        try:
            response, completion_id = await self._send(
                caller, req, kind, alias, await self.route(alias), request_id
            )
        except LoopgateError as exc:
            if pick is not None and counts_against_canary(exc):
                pick.stats.failed()
            raise
        if pick is not None:
            pick.stats.served(time.monotonic() - started, completion_id)
        return response

    async def _on_canary(
        self,
        caller: Caller,
        req: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        alias: Alias,
        pick: Assignment,
        request_id: str,
    ) -> Response[bytes] | Stream | None:
        """Serve on the canary's version; None when it failed before the first byte (the
        failure counts against the canary, and the caller retries on the normal target)."""
        started = time.monotonic()
        try:
            lease = await self.lease_version(pick.running.record.version, alias)
            response, completion_id = await self._send(caller, req, kind, alias, lease, request_id)
        except LoopgateError as exc:
            if not counts_against_canary(exc):
                raise
            pick.stats.failed()
            log.warning(
                "canary %s failed a request (%s); retrying it on the alias's target",
                pick.running.record.id,
                exc.message,
            )
            return None
        pick.stats.served(time.monotonic() - started, completion_id)
        return response

    async def _send(
        self,
        caller: Caller,
        req: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        alias: Alias,
        lease: Lease,
        request_id: str,
    ) -> tuple[Response[bytes] | Stream, str | None]:
        """Serve on a lease: the response (streams started) and the stored completion's id."""
        engine_id = exchange_id()
        try:
            exchange = await self._begin(caller, req, kind, alias, lease, engine_id, request_id)
        except BaseException:
            lease.release()
            raise
        obs = current_request()
        tried: list[Backend] = []
        while True:
            if obs is not None:
                obs.sending(alias.name, lease)
            try:
                response = await self._attempt(
                    req, kind, alias, lease, engine_id, exchange, self.salts.of(caller.tenant_id)
                )
                if self.shadows is not None:  # mirrored after the response, if sampled
                    self.shadows.offer(
                        caller, req, kind, alias, lease.version_id, exchange, response, request_id
                    )
                return response, _stored_id(exchange)
            except UpstreamUnavailable as exc:
                tried.append(lease.backend)
                lease = await self._failover(lease, alias, tried, exc, exchange)
            except BaseException as exc:
                await self._failed(exchange, exc)
                raise

    async def _attempt(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        alias: Alias,
        lease: Lease,
        engine_id: str,
        exchange: Exchange | None,
        cache_salt: str,
    ) -> Response[bytes] | Stream:
        """One try on one replica; the lease is released when the answer is over (or failed)."""
        headers = {VERSION_HEADER: lease.version_id or "base"}
        engine_b, public_b = lease.engine_name.encode(), alias.name.encode()
        payload = encode_for_engine(req, lease.engine_name, cache_salt)
        obs = current_request()
        try:
            if req.stream:
                opened = await self.upstream.open_stream(
                    lease.backend, _PATHS[kind], payload, engine_id, engine_b, public_b
                )
                taps: list[Tap] = []
                if exchange is not None and self.capture is not None:
                    taps.append(CaptureTap(exchange, self.capture))
                if obs is not None:
                    taps.append(obs.watch())
                route = DirectRoute()
                relay = await start_relay(self.upstream.relay(opened, taps, lease.release, route))
                return RelayedStream(
                    taps,
                    relay,
                    route=route,
                    media_type="text/event-stream",
                    headers={**_STREAM_HEADERS, **headers},
                )
            content = await self.upstream.post(lease.backend, _PATHS[kind], payload, engine_id)
        except BaseException:
            lease.release()
            raise
        lease.release()
        if obs is not None:
            obs.received(content)
        if exchange is not None and self.capture is not None:
            exchange.read_body(content)
            await self.capture.finish(exchange.final("complete"))
        return Response(
            rename_model(content, engine_b, public_b),
            media_type="application/json",
            headers=headers,
        )

    async def _failover(
        self,
        lease: Lease,
        alias: Alias,
        tried: list[Backend],
        exc: UpstreamUnavailable,
        exchange: Exchange | None,
    ) -> Lease:
        """A lease on the same target on another replica, when a request failed before its
        first byte reached the client and retries are left; else the failure stands."""
        another: Lease | None = None
        if len(tried) <= self.retries:
            try:
                if lease.version_id is None:
                    backend = self.pool.pick(exclude=tried)
                    another = Lease(backend, self.base_engine_name, None)
                else:
                    another = await self.lease_version(lease.version_id, alias, exclude=tried)
            except LoopgateError:
                another = None
        if another is None:
            await self._failed(exchange, exc)
            raise exc
        log.warning(
            "replica %s failed before the first byte (%s); retrying on %s",
            lease.backend.name,
            exc.message,
            another.backend.name,
        )
        if exchange is not None:
            exchange.backend = another.backend.name
        return another

    async def _begin(
        self,
        caller: Caller,
        req: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        alias: Alias,
        lease: Lease,
        engine_id: str,
        request_id: str,
    ) -> Exchange | None:
        """Commit the write-ahead row of this request (nothing when capture is off)."""
        if self.capture is None:
            return None
        store = getattr(req, "store", UNSET)
        stored = store if isinstance(store, bool) else caller.store_default
        metadata = getattr(req, "metadata", UNSET)
        request, render = None, None
        if stored and caller.redact_pii and prompt_chars(req) > REDACT_INLINE_CHARS:
            # A big body's redaction (linear, ~1 s per MB at worst) runs in a worker thread of
            # its own, so neither the event loop nor other requests' capture batches wait on it.
            request = await asyncio.to_thread(request_record, req, True)
        elif stored and caller.redact_pii:  # redacted with its batch, off the event loop
            render = functools.partial(request_record, req, True)
        elif stored:
            request = request_record(req, False)
        record = Completion(
            id=_PREFIX[kind] + engine_id,
            tenant_id=caller.tenant_id,
            key_id=caller.key_id,
            kind=kind,
            alias=alias.name,
            adapter_version=lease.version_id,
            backend=lease.backend.name,
            stored=stored,
            request=request,
            response=None,
            finish_reason=None,
            prompt_tokens=None,
            completion_tokens=None,
            latency_ms=None,
            ttft_ms=None,
            status="in_progress",
            error=None,
            end_user=req.user if isinstance(req.user, str) else None,
            metadata=metadata if isinstance(metadata, dict) and stored else {},
            do_not_train=caller.do_not_train,
            request_id=request_id,
            created_at=time.time(),
            completed_at=None,
        )
        await self.capture.begin(record, render)
        return Exchange(record.id, time.monotonic(), stored, redact=caller.redact_pii)

    async def _failed(self, exchange: Exchange | None, exc: BaseException) -> None:
        if exchange is None or self.capture is None:
            return
        exchange.error = exc.message if isinstance(exc, LoopgateError) else type(exc).__name__
        await self.capture.finish(exchange.final("error"))


def _stored_id(exchange: Exchange | None) -> str | None:
    return exchange.id if exchange is not None and exchange.stored else None


async def primed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Start the stream now (up to its first event). A started async generator is closed by the
    event loop even if the client vanishes before the body is sent, so its `finally` (lease,
    upstream connection, capture row) always runs; an unstarted one would never run it."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return _empty()
    return _prepend(first, stream)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for item in rest:
        yield item


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def request_record(req: ChatCompletionRequest | CompletionRequest, redact_pii: bool) -> str:
    """The request as stored: the validated body (PII-redacted when the tenant wants it)."""
    kept = (
        msgspec.structs.replace(req, store=UNSET, metadata=UNSET)
        if isinstance(req, ChatCompletionRequest)
        else req
    )
    data = msgspec.to_builtins(kept)
    if redact_pii:  # all but the model: an alias of the tenant's own, which routed the request
        data = {k: v if k == "model" else _redact_tree(v) for k, v in data.items()}
    return _encoder.encode(data).decode()


def _redact_tree(value: object) -> object:
    if isinstance(value, str):
        return redact(value).text
    if isinstance(value, list):
        return [_redact_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_tree(v) for k, v in value.items()}
    return value
