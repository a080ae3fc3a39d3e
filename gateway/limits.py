"""Tenant and key limits: reserve before a request goes upstream, settle with the engine's usage.

What is limited, per tenant (key_id "") and per key, each independently (both must admit):
- requests and tokens per minute, and a token budget per day or month: fixed-window counters
  in the store, shared by every gateway on the same database. A reservation charges all of a
  request's counters in one transaction or none (see `store.limits_sql`). Fixed windows
  allow up to twice a per-minute limit across a window boundary; that is the price of one row
  per window.
- concurrent requests: counted in memory, never in the store. One gateway process counts in a
  dict (`Inflight`); the workers of `loopgate serve --workers N` count in a table they share
  (`SharedInflight`, gateway.shared_counters), so the limit holds for the whole host. Separate
  gateways (hosts) count apart: with M of them a tenant may have up to M x max_concurrent in
  flight (a count in the store would leak slots when a gateway dies).
- max tokens per request (the completion's `max_tokens`): a request asking for more is a 400
  (retrying cannot help); one that does not say gets the limit as its `max_tokens`.

Token estimate before the call: prompt characters / 4 (rounded up) plus the completion allowance
(`max_tokens`, else DEFAULT_COMPLETION_TOKENS) for every sequence: prompts x max(n, best_of).
The gateway stays light (no tokenizer in its process); the estimate is only a reservation: after
the call the engine's usage replaces it. Streams ask the engine for a final usage chunk (dropped
again unless the client asked for it); a stream that ends without usage keeps its estimate. A
request that failed before an answer keeps its request count but gives its tokens back.

Callers without limits pay one cached dict lookup (cached for the directory's TTL).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from litestar import Response
from litestar.response import Stream

from gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    StreamOptions,
    prompt_count,
    sequences_per_prompt,
)
from gateway.relay import Outcome, RelayedStream, Tap
from gateway.shared_counters import SharedCounters
from gateway.tenancy import Caller
from store import Charge, LimitSet, Reservation, Store
from store.errors import InvalidRequest, RateLimited

Request = ChatCompletionRequest | CompletionRequest
Kind = Literal["requests", "tokens", "budget"]

log = logging.getLogger("loopgate.limits")

DEFAULT_COMPLETION_TOKENS = 256
MINUTE = 60
_PURGE_EVERY_S = 600.0


class LimitExceeded(RateLimited):
    """429 with OpenAI's rate-limit headers besides Retry-After."""

    def __init__(
        self, message: str, *, retry_after_s: float, code: str, rate_headers: dict[str, str]
    ):
        super().__init__(message, retry_after_s=retry_after_s, code=code)
        self.rate_headers = rate_headers

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.rate_headers}


@dataclass(frozen=True, slots=True)
class Counter:
    """One counter a request is charged against, and what it is for."""

    kind: Kind
    owner: str  # "tenant 'acme'" or "key '<id>'", for messages
    charge: Charge
    resets_at: float


@dataclass
class Ticket:
    """One admitted request: its reservation, settled and released exactly once."""

    counters: list[Counter]
    estimate: int
    slots: list[str]
    strip_usage: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class Inflight:
    """Requests in flight per limit owner, counted in this process."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def take(self, owners: list[str], limits: list[int]) -> int | None:
        """Count one for every owner unless one is at its limit (the index of the first)."""
        for i, (owner, limit) in enumerate(zip(owners, limits, strict=True)):
            if self._counts.get(owner, 0) >= limit:
                return i
        for owner in owners:
            self._counts[owner] = self._counts.get(owner, 0) + 1
        return None

    def give_back(self, owners: list[str]) -> None:
        for owner in owners:
            self._counts[owner] -= 1


class SharedInflight(Inflight):
    """Requests in flight per limit owner, summed over every worker of this host."""

    def __init__(self, counters: SharedCounters) -> None:
        super().__init__()
        self.counters = counters

    def take(self, owners: list[str], limits: list[int]) -> int | None:
        return self.counters.take([self.counters.slot(o) for o in owners], limits)

    def give_back(self, owners: list[str]) -> None:
        self.counters.give_back(self.counters.slot(o) for o in owners)


class Limiter:
    def __init__(self, store: Store, ttl_s: float, inflight: Inflight | None = None):
        self.store = store
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, list[LimitSet]]] = {}
        self._inflight = inflight or Inflight()
        self._next_purge = 0.0

    def invalidate(self) -> None:
        self._cache.clear()

    async def limits_of(self, caller: Caller) -> list[LimitSet]:
        key = (caller.tenant_id, caller.key_id)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self.store.limits_for(caller.tenant_id, caller.key_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + self.ttl_s, found)
        return found

    async def admit(self, caller: Caller, req: Request) -> tuple[Request, Ticket | None]:
        """The request as it may be sent (max_tokens capped, usage asked for), and its ticket;
        raises 400 (max tokens) or 429 (a limit is reached)."""
        sets = await self.limits_of(caller)
        if not sets:
            return req, None
        req = _cap_max_tokens(req, sets)
        req, strip_usage = _ask_for_usage(req)
        now = time.time()
        estimate = estimate_tokens(req)
        counters = _counters(caller, sets, estimate, now)
        slots = self._acquire(caller, sets, counters, now)
        ticket = Ticket(counters, estimate, slots, strip_usage)
        if not counters:
            return req, ticket if slots else None
        await self._purge(now)
        try:
            reservation = await self.store.reserve([c.charge for c in counters])
        except BaseException:
            self._release(slots)
            raise
        if not reservation.granted:
            self._release(slots)
            raise _denied(counters, reservation, now)
        ticket.headers = rate_headers(counters, reservation.used, now)
        return req, ticket

    def _acquire(
        self, caller: Caller, sets: list[LimitSet], counters: list[Counter], now: float
    ) -> list[str]:
        limited = [
            (_owner(caller, s), s.max_concurrent) for s in sets if s.max_concurrent is not None
        ]
        slots = [owner for owner, _ in limited]
        full = self._inflight.take(slots, [limit for _, limit in limited])
        if full is not None:
            slot, limit = limited[full]
            raise LimitExceeded(
                f"Too many concurrent requests for {slot} (limit {limit}); retry when one finishes",
                retry_after_s=1,
                code="rate_limit_exceeded",
                rate_headers=rate_headers(counters, None, now),
            )
        return slots

    def _release(self, slots: list[str]) -> None:
        self._inflight.give_back(slots)

    async def _purge(self, now: float) -> None:
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_EVERY_S
            await self.store.purge_counters(before=now)

    async def settle(self, ticket: Ticket, used_tokens: int | None) -> None:
        """Release the ticket's slots; replace its token estimate by what was used (None:
        unknown, the estimate stays)."""
        if ticket.settled:
            return
        ticket.settled = True
        self._release(ticket.slots)
        if used_tokens is None or used_tokens == ticket.estimate:
            return
        delta = used_tokens - ticket.estimate
        adjustments = [
            msgspec.structs.replace(c.charge, amount=delta)
            for c in ticket.counters
            if c.kind != "requests"
        ]
        if not adjustments:
            return
        try:
            await asyncio.shield(self.store.settle(adjustments))
        except Exception:  # the answer was given; a lost settlement leaves the estimate
            log.exception("could not settle token usage (%d tokens)", delta)

    async def meter(
        self, ticket: Ticket, response: Response[bytes] | Stream
    ) -> Response[bytes] | Stream:
        """Add the rate-limit headers; settle now (a body) or when the relayed stream ends
        (a tap on it: gateway.relay)."""
        response.headers.update(ticket.headers)
        if isinstance(response, RelayedStream):
            response.taps.append(_Meter(self, ticket))
            return response
        if isinstance(response, Stream):
            raise TypeError("only a relayed stream can be metered (gateway.relay)")
        await self.settle(ticket, usage_of_body(response.content))
        return response


class _Meter(Tap):
    """Reads a stream's usage (stripping it when only the limits asked for it) and settles the
    ticket when the stream is over."""

    __slots__ = ("limiter", "ticket", "used")

    def __init__(self, limiter: Limiter, ticket: Ticket):
        self.limiter, self.ticket = limiter, ticket
        self.used: int | None = None

    def see(self, events: bytes) -> bytes:
        found, kept = read_usage(events, self.ticket.strip_usage)
        if found is not None:
            self.used = found
        return kept

    async def end(self, outcome: Outcome) -> None:
        await self.limiter.settle(self.ticket, self.used)


# -- estimates and counters ------------------------------------------------------------------


def estimate_tokens(req: Request) -> int:
    """Prompt characters / 4, plus the completion allowance for every sequence generated:
    each prompt of the request x max(n, best_of)."""
    sequences = prompt_count(req) * sequences_per_prompt(req)
    return math.ceil(prompt_chars(req) / 4) + sequences * _completion_allowance(req)


def _completion_allowance(req: Request) -> int:
    asked = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and isinstance(req.max_completion_tokens, int):
        asked = req.max_completion_tokens
    return asked if isinstance(asked, int) else DEFAULT_COMPLETION_TOKENS


def prompt_chars(req: Request) -> int:
    """The prompt's size in characters (token ids count their JSON digits)."""
    if isinstance(req, ChatCompletionRequest):
        return sum(len(msgspec.json.encode(m.content)) for m in req.messages)
    if isinstance(req.prompt, str):
        return len(req.prompt)
    return len(msgspec.json.encode(req.prompt))


def _cap_max_tokens(req: Request, sets: list[LimitSet]) -> Request:
    caps = [s.max_tokens_per_request for s in sets if s.max_tokens_per_request is not None]
    if not caps:
        return req
    cap = min(caps)
    name = "max_tokens"
    asked = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and isinstance(req.max_completion_tokens, int):
        name, asked = "max_completion_tokens", req.max_completion_tokens
    if isinstance(asked, int):
        if asked > cap:
            raise InvalidRequest(
                f"{name} is {asked}, above this API key's limit of {cap} tokens per request; "
                f"send {name} <= {cap}",
                param=name,
                code="max_tokens_exceeded",
            )
        return req
    return msgspec.structs.replace(req, max_tokens=cap)


def _ask_for_usage(req: Request) -> tuple[Request, bool]:
    """Streams: ask the engine for its usage chunk; True when the client did not ask for it."""
    options = req.stream_options
    if not req.stream or (isinstance(options, StreamOptions) and options.include_usage is True):
        return req, False
    if isinstance(options, StreamOptions):
        options = msgspec.structs.replace(options, include_usage=True)
    else:
        options = StreamOptions(include_usage=True)
    return msgspec.structs.replace(req, stream_options=options), True


def _owner(caller: Caller, s: LimitSet) -> str:
    return f"key '{caller.key_id}'" if s.key_id else f"tenant '{caller.tenant_name}'"


def _counters(caller: Caller, sets: list[LimitSet], estimate: int, now: float) -> list[Counter]:
    minute = int(now // MINUTE)
    minute_end = (minute + 1) * MINUTE
    out = []
    for s in sets:
        owner = _owner(caller, s)
        scope = f"k:{caller.key_id}" if s.key_id else f"t:{caller.tenant_id}"
        if s.requests_per_minute is not None:
            c = Charge(f"{scope}:rpm", minute, 1, s.requests_per_minute, minute_end)
            out.append(Counter("requests", owner, c, minute_end))
        if s.tokens_per_minute is not None:
            c = Charge(f"{scope}:tpm", minute, estimate, s.tokens_per_minute, minute_end)
            out.append(Counter("tokens", owner, c, minute_end))
        if s.token_budget is not None:
            window, end = budget_window(s.budget_period, now)
            c = Charge(f"{scope}:budget:{s.budget_period}", window, estimate, s.token_budget, end)
            out.append(Counter("budget", owner, c, end))
    return out


def budget_window(period: str, now: float) -> tuple[int, float]:
    """The (UTC) day or month `now` falls in: its number, and when it ends."""
    if period == "day":
        day = int(now // 86400)
        return day, (day + 1) * 86400.0
    t = time.gmtime(now)
    month = t.tm_year * 12 + t.tm_mon - 1
    year, mon = divmod(month + 1, 12)
    return month, float(calendar.timegm((year, mon + 1, 1, 0, 0, 0, 0, 0, 0)))


async def standing(store: Store, limits: LimitSet, tenant_name: str) -> list[tuple[Counter, int]]:
    """Each counter of a tenant's (or one key's) limits in its current window, with what it has
    used so far (the console shows them); concurrency is per process and not listed."""
    caller = Caller(limits.tenant_id, tenant_name, limits.key_id)
    counters = _counters(caller, [limits], 0, time.time())
    used = await store.counter_usage([c.charge for c in counters])
    return list(zip(counters, used, strict=True))


_WHAT = {"requests": "requests per minute", "tokens": "tokens per minute", "budget": "token budget"}


def _denied(counters: list[Counter], reservation: Reservation, now: float) -> LimitExceeded:
    assert reservation.denied is not None
    counter = counters[reservation.denied]
    used, c = reservation.used[reservation.denied], counter.charge
    wait = max(counter.resets_at - now, 1.0)
    what = _WHAT[counter.kind]
    if counter.kind == "budget":
        message = (
            f"Token budget exhausted for {counter.owner} ({used} of {c.limit} tokens used this "
            f"{c.scope.rsplit(':', 1)[-1]}; this request needs about {c.amount}); it renews in "
            f"{format_reset(wait)}"
        )
        code = "insufficient_quota"
    else:
        message = (
            f"Rate limit reached for {counter.owner}: {what} limit {c.limit}, used {used}, "
            f"requested {c.amount}; retry in {format_reset(wait)}"
        )
        code = "rate_limit_exceeded"
    headers = rate_headers(counters, reservation.used, now)
    return LimitExceeded(message, retry_after_s=wait, code=code, rate_headers=headers)


# -- headers -------------------------------------------------------------------------------


def rate_headers(counters: list[Counter], used: list[int] | None, now: float) -> dict[str, str]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens}, from the tightest counter
    of each kind (tokens: per-minute or budget, whichever has less left). `used` None: the
    counters are not known (a request refused before reserving); only limits are said."""
    headers: dict[str, str] = {}
    for name, kinds in (("requests", ("requests",)), ("tokens", ("tokens", "budget"))):
        rows = [
            (c.charge.limit - (used[i] if used else 0), c)
            for i, c in enumerate(counters)
            if c.kind in kinds
        ]
        if not rows:
            continue
        remaining, tightest = min(rows, key=lambda r: r[0])
        headers[f"x-ratelimit-limit-{name}"] = str(tightest.charge.limit)
        if used is not None:
            headers[f"x-ratelimit-remaining-{name}"] = str(max(remaining, 0))
        headers[f"x-ratelimit-reset-{name}"] = format_reset(tightest.resets_at - now)
    return headers


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: '12s', '6m0s', '3h2m1s'."""
    s = max(math.ceil(seconds), 0)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


# -- usage from the engine's answers ----------------------------------------------------------


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None
    choices: list[msgspec.Raw] = msgspec.field(default_factory=list)


_with_usage = msgspec.json.Decoder(_WithUsage)


def usage_of_body(content: bytes) -> int | None:
    try:
        usage = _with_usage.decode(content).usage
    except msgspec.DecodeError:
        return None
    return None if usage is None else usage.prompt_tokens + usage.completion_tokens


def read_usage(events: bytes, strip: bool) -> tuple[int | None, bytes]:
    """The usage in a batch of SSE events (if any), and the events to pass on: the usage-only
    chunk is dropped when `strip` (the client did not ask for it)."""
    if events.find(b'"usage"') < 0:  # per relayed block: find, not `in` (see SSEEvents.feed)
        return None, events
    used, kept = None, []
    for event in events.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"usage"' in event:
            try:
                chunk = _with_usage.decode(event[6:])
            except msgspec.DecodeError:
                kept.append(event)
                continue
            if chunk.usage is not None:
                used = chunk.usage.prompt_tokens + chunk.usage.completion_tokens
                if strip and not chunk.choices:
                    continue
        kept.append(event)
    return used, b"\n\n".join(kept)
