"""Asking a tenant's LLM judge from an evals worker, and what a run records of its verdicts.

The worker never holds a judge's credentials nor reaches its model itself: it sends each judge
prompt to the gateway (`POST /admin/tenants/{t}/judge/replies`, gateway.judges), which serves
it through the tenant's judge alias or calls its external endpoint with the key it keeps
sealed. Here: one call per prompt with a timeout, retried on 429 and 5xx (and transport
errors) with exponential backoff (the gateway's Retry-After is honoured, up to a cap); the
last failure raises `JudgeError`, which evals.graders turns into an errored grade, never a
crashed run. Light on purpose (msgspec, httpx): the gateway decodes these types too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

import httpx
import msgspec

Judge = Callable[[str], Awaitable[str]]
"""An OpenAI-compatible model behind a coroutine: prompt in, reply text out."""


class JudgeError(Exception):
    """The judge could not give a verdict (unreachable, refused, timed out, retries spent)."""


RETRIED = frozenset({429, 500, 502, 503, 504})
ATTEMPTS = 4
CONCURRENCY = 4  # judge calls in flight per worker (the judge's own limits apply as well)
MAX_RETRY_AFTER_S = 30.0
PROMPT_LIMIT = 256 * 1024


# -- the gateway route's wire types ----------------------------------------------------------
class JudgeAsk(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One judge prompt; `run_id` (an eval run) is recorded with the judge's captured call."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=PROMPT_LIMIT)]
    run_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class JudgeReply(msgspec.Struct, frozen=True):
    content: str
    judge: str  # which judge answered: "alias:<name>" or "external:<model>"
    latency_ms: float


# -- what a run records (evals.calibration computes it; the console shows it) ----------------
class JudgeScores(msgspec.Struct, frozen=True):
    """One system's judge grades on the tenant suite: their mean (errors left out)."""

    mean: float | None
    graded: int
    errors: int
    first_error: str | None = None


class Confusion(msgspec.Struct, frozen=True):
    """Cases by (judge verdict, reference verdict)."""

    both_pass: int
    judge_only: int  # the judge passed what the reference-based checks failed
    reference_only: int  # the judge failed what the reference-based checks passed
    both_fail: int


class Calibration(msgspec.Struct, frozen=True):
    """How often the judge agrees with the reference-based checks on the same answers."""

    n: int
    agreement: float
    kappa: float | None  # Cohen's kappa; None when undefined (one verdict only, on both sides)
    confusion: Confusion
    spearman: float | None  # rank correlation of judge and reference scores; None: undefined


class JudgeSummary(msgspec.Struct, frozen=True):
    """The judge's part of a run's summary (key `judge`)."""

    systems: dict[str, JudgeScores]
    calibration: Calibration | None = None


# -- the worker's client ---------------------------------------------------------------------
class JudgeClient:
    """Judge calls through the gateway's admin API, for one worker."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout_s: float = 180.0,
        backoff_s: float = 1.0,
        attempts: int = ATTEMPTS,
        concurrency: int = CONCURRENCY,
    ):
        self.client = client
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.attempts = attempts
        self.gate = asyncio.Semaphore(concurrency)

    async def configured(self, tenant_id: str) -> bool:
        """Whether the tenant has a judge (a 404 says it has none)."""
        resp = await self.client.get(f"/admin/tenants/{tenant_id}/judge")
        if resp.status_code == 404:
            return False
        resp.raise_for_status()
        return True

    def for_run(self, tenant_id: str, run_id: str | None) -> Judge:
        async def judge(prompt: str) -> str:
            async with self.gate:
                return await self.ask(tenant_id, JudgeAsk(prompt, run_id))

        return judge

    async def ask(self, tenant_id: str, ask: JudgeAsk) -> str:
        path = f"/admin/tenants/{tenant_id}/judge/replies"
        content = msgspec.json.encode(ask)
        headers = {"content-type": "application/json"}
        for attempt in range(1, self.attempts + 1):
            try:
                resp = await self.client.post(
                    path, content=content, headers=headers, timeout=self.timeout_s
                )
            except httpx.TimeoutException:
                failure, wait = f"no reply within {self.timeout_s:g} s", None
            except httpx.TransportError as exc:
                failure, wait = f"the gateway is unreachable: {type(exc).__name__}", None
            else:
                if resp.status_code < 300:
                    return msgspec.json.decode(resp.content, type=JudgeReply).content
                failure, wait = f"HTTP {resp.status_code}: {_message(resp)}", _retry_after(resp)
                if resp.status_code not in RETRIED:
                    raise JudgeError(f"the judge call failed ({failure})")
            if attempt == self.attempts:
                break
            await asyncio.sleep(wait if wait is not None else self.backoff_s * 2 ** (attempt - 1))
        raise JudgeError(f"the judge call failed after {self.attempts} attempts ({failure})")


class _ErrorBody(msgspec.Struct):
    message: str = ""


class _Envelope(msgspec.Struct):
    error: _ErrorBody = msgspec.field(default_factory=_ErrorBody)


def _message(resp: httpx.Response) -> str:
    try:
        found = msgspec.json.decode(resp.content, type=_Envelope).error.message
    except (msgspec.DecodeError, msgspec.ValidationError):
        found = ""
    return (found or resp.text[:200] or resp.reason_phrase)[:300]


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        seconds = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
