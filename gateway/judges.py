"""Each tenant's LLM judge: its configuration (with a sealed API key) and one judge call.

A judge is either one of the tenant's aliases or an external OpenAI-compatible endpoint.

- An alias judge is served exactly like the tenant's traffic (gateway.serving: the alias's
  routing, the tenant's cache salt, capture policy and PII redaction), as a caller of its own:
  the key id `judge-<tenant id>`, whose limit set (the `limits` table, under that key id) is
  the only one that applies to it. Judge calls thus never spend the tenant's limits, nor can
  the tenant's users starve the judge; they run at the batch priority when the engine
  schedules by priority, skip the alias's canary and shadow, and their captured rows are marked
  do-not-train (with `loopgate_judge` in their metadata), so no dataset build takes them.
- An external judge's API key is sealed with Fernet (AES-128-CBC + HMAC-SHA256) under a key
  kept in `<data_dir>/judge_secret_key` (0600, created on first use; gateways sharing a store
  must share that file). The API shows only a masked hint; the key is sent to that endpoint
  alone (never to the engine, never logged, never in an error message).

Every judge call is greedy (temperature 0) with the judge's `max_tokens` and `timeout_s`.
Failures are errors in OpenAI's shape that the evals worker retries (429, 502, 504) or not
(409: the endpoint refused the request).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
import msgspec
from cryptography.fernet import Fernet, InvalidToken

from evals.judging import JudgeAsk, JudgeReply
from gateway.admin_limits import LimitsBody
from gateway.batches import BATCH_PRIORITY
from gateway.cache_salt import secret_file
from gateway.limits import Limiter
from gateway.serving import Serving
from gateway.tenancy import Caller
from store import JudgeConfig, LimitSet, Store, Tenant
from store.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from store.settings import Settings

KEY_FILE = "judge_secret_key"
JUDGE_METADATA = "loopgate_judge"
DEFAULT_LIMITS = LimitsBody(max_concurrent=4)


def judge_key_id(tenant_id: str) -> str:
    """The judge's own identity: its limit set and the key id of its captured calls."""
    return f"judge-{tenant_id}"


# -- the admin API's bodies ------------------------------------------------------------------
class JudgeIn(msgspec.Struct, forbid_unknown_fields=True):
    """`alias` (one of the tenant's), or `base_url` + `model` (+ `api_key`): not both."""

    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    base_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    model: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    api_key: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256
    timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=600.0)] = 60.0
    limits: LimitsBody = msgspec.field(default_factory=lambda: DEFAULT_LIMITS)


class JudgeInfo(msgspec.Struct, kw_only=True):
    """A tenant's judge as the API shows it: the API key masked, never in clear."""

    object: Literal["judge"] = "judge"
    kind: str
    alias: str | None
    base_url: str | None
    model: str | None
    api_key: str | None  # e.g. "sk-…wxyz"
    max_tokens: int
    timeout_s: float
    key_id: str  # the identity its calls are limited and captured under
    limits: LimitSet
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, judge: JudgeConfig, limits: LimitSet) -> JudgeInfo:
        return cls(
            kind=judge.kind,
            alias=judge.alias,
            base_url=judge.base_url,
            model=judge.model,
            api_key=judge.key_hint,
            max_tokens=judge.max_tokens,
            timeout_s=judge.timeout_s,
            key_id=limits.key_id,
            limits=limits,
            created_at=judge.created_at,
            updated_at=judge.updated_at,
        )


# -- the sealed key ----------------------------------------------------------------------------
class SecretBox:
    """Seals and opens judge API keys with a key derived from a 0600 file in data_dir."""

    def __init__(self, secret: str):
        digest = hashlib.sha256(b"loopgate judge keys\0" + secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> SecretBox:
        return cls(secret_file(data_dir / KEY_FILE))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise Conflict(
                f"the judge's API key cannot be unsealed with this gateway's {KEY_FILE} "
                "(a different data_dir?): set the judge again with its key",
                code="judge_key_unreadable",
            ) from None


def mask(api_key: str) -> str:
    """Enough of a key to recognise it, never enough to use it."""
    return f"{api_key[:3]}…{api_key[-4:]}" if len(api_key) >= 16 else "…" * 3


# -- validation ------------------------------------------------------------------------------
def check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            "base_url must be an http:// or https:// URL with a host, e.g. "
            "https://api.openai.com/v1",
            param="base_url",
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidRequest(
            "base_url must not carry a query, a fragment or credentials (send api_key)",
            param="base_url",
        )
    return url.strip().rstrip("/")


def _check_kind(body: JudgeIn) -> None:
    external = (body.base_url, body.model, body.api_key)
    if body.alias is not None and any(v is not None for v in external):
        raise InvalidRequest(
            "a judge is either an alias or an external endpoint: send 'alias', or "
            "'base_url' and 'model' (and 'api_key'), not both",
            param="alias",
        )
    if body.alias is None and body.base_url is None:
        raise InvalidRequest(
            "send 'alias' (one of this tenant's models) or 'base_url' and 'model' "
            "(an OpenAI-compatible endpoint)",
            param="alias",
        )
    if body.base_url is not None and not (body.model or "").strip():
        raise InvalidRequest("an external judge needs a non-empty 'model'", param="model")
    if body.api_key is not None and not body.api_key.strip():
        raise InvalidRequest("api_key must not be empty (leave it out for none)", param="api_key")


# -- the service -----------------------------------------------------------------------------
class JudgeLimiter(Limiter):
    """Only the caller's own limit set (the judge's), never the tenant's as a whole."""

    async def limits_of(self, caller: Caller) -> list[LimitSet]:
        return [s for s in await super().limits_of(caller) if s.key_id == caller.key_id]


def judge_serving(serving: Serving, limiter: Limiter) -> Serving:
    """The tenant serving path itself (same pool, adapters, capture, salts), with the judge's
    limiter, without canaries nor shadows: a judge call is no sample of an alias's live
    traffic (no canary arm counts it, no shadow candidate is asked to mirror it)."""
    twin = copy.copy(serving)
    twin.limits = limiter
    twin.canaries = None
    twin.shadows = None
    return twin


def judges_for(
    settings: Settings,
    store: Store,
    serving: Serving,
) -> Judges:
    """The gateway's judges: the key file in data_dir, the batch priority when vLLM schedules
    by priority (judge calls yield to live traffic), a limiter of their own."""
    priority = BATCH_PRIORITY if settings.engine_scheduling_policy == "priority" else None
    return Judges(
        store,
        serving,
        SecretBox.for_data_dir(settings.data_dir),
        limiter=JudgeLimiter(store, settings.auth_cache_ttl_s),
        priority=priority,
    )


class Judges:
    def __init__(
        self,
        store: Store,
        serving: Serving,
        box: SecretBox,
        *,
        limiter: Limiter,
        priority: int | None = None,
    ):
        self.store = store
        self.limiter = limiter
        self.serving = judge_serving(serving, limiter)
        self.box = box
        self.priority = priority

    async def get(self, tenant: Tenant) -> JudgeConfig:
        found = await self.store.get_judge(tenant.id)
        if found is None:
            raise NotFound(f"tenant '{tenant.name}' has no judge configured", param="tenant")
        return found

    async def info(self, tenant: Tenant) -> JudgeInfo:
        judge = await self.get(tenant)
        return JudgeInfo.of(judge, await self._limits(tenant))

    async def set(self, tenant: Tenant, body: JudgeIn) -> JudgeInfo:
        _check_kind(body)
        if body.alias is not None and await self.store.get_alias(tenant.id, body.alias) is None:
            raise NotFound(f"no alias '{body.alias}' for this tenant", param="alias")
        base_url = check_url(body.base_url) if body.base_url is not None else None
        now = time.time()
        old = await self.store.get_judge(tenant.id)
        judge = JudgeConfig(
            tenant_id=tenant.id,
            kind="alias" if body.alias is not None else "external",
            alias=body.alias,
            base_url=base_url,
            model=body.model.strip() if body.model is not None else None,
            api_key_sealed=self.box.seal(body.api_key) if body.api_key else None,
            key_hint=mask(body.api_key) if body.api_key else None,
            max_tokens=body.max_tokens,
            timeout_s=body.timeout_s,
            created_at=old.created_at if old else now,
            updated_at=now,
        )
        limits = LimitSet(
            tenant.id,
            judge_key_id(tenant.id),
            **msgspec.structs.asdict(body.limits),
            updated_at=now,
        )
        await self.store.set_limits(limits)
        self.limiter.invalidate()
        return JudgeInfo.of(await self.store.set_judge(judge), limits)

    async def delete(self, tenant: Tenant) -> None:
        if not await self.store.delete_judge(tenant.id):
            raise NotFound(f"tenant '{tenant.name}' has no judge configured", param="tenant")
        await self.store.set_limits(LimitSet(tenant.id, judge_key_id(tenant.id)))  # removes it
        self.limiter.invalidate()

    async def _limits(self, tenant: Tenant) -> LimitSet:
        key_id = judge_key_id(tenant.id)
        return await self.store.get_limits(tenant.id, key_id) or LimitSet(tenant.id, key_id)

    # -- one judge call ------------------------------------------------------------------------
    async def reply(self, tenant: Tenant, ask: JudgeAsk, request_id: str) -> JudgeReply:
        if tenant.disabled:
            raise PermissionDenied("the tenant is disabled")
        judge = await self.get(tenant)
        started = time.perf_counter()
        if judge.kind == "alias":
            content = await self._on_alias(tenant, judge, ask, request_id)
            who = f"alias:{judge.alias}"
        else:
            content = await self._external(judge, ask)
            who = f"external:{judge.model}"
        return JudgeReply(content, who, (time.perf_counter() - started) * 1000)

    async def _on_alias(
        self, tenant: Tenant, judge: JudgeConfig, ask: JudgeAsk, request_id: str
    ) -> str:
        caller = Caller(
            tenant.id,
            tenant.name,
            judge_key_id(tenant.id),
            tenant.store_default,
            tenant.redact_pii,
            do_not_train=True,
        )
        body = {
            "model": judge.alias,
            "messages": [{"role": "user", "content": ask.prompt}],
            "temperature": 0.0,
            "max_tokens": judge.max_tokens,
            "seed": 0,
            "metadata": {JUDGE_METADATA: ask.run_id or "true"},
        }
        response = await self.serving.complete(
            caller, msgspec.json.encode(body), "chat", request_id, priority=self.priority
        )
        content = response.content if isinstance(response.content, bytes) else b""
        return _content_of(content, f"the judge alias '{judge.alias}'")

    async def _external(self, judge: JudgeConfig, ask: JudgeAsk) -> str:
        assert judge.base_url is not None
        key = self.box.open(judge.api_key_sealed) if judge.api_key_sealed else None
        body = {
            "model": judge.model,
            "messages": [{"role": "user", "content": ask.prompt}],
            "temperature": 0.0,
            "max_tokens": judge.max_tokens,
        }
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        where = f"the judge endpoint {urlsplit(judge.base_url).hostname}"
        async with httpx.AsyncClient(timeout=judge.timeout_s, follow_redirects=False) as client:
            try:
                resp = await client.post(
                    judge.base_url + "/chat/completions", json=body, headers=headers
                )
            except httpx.TimeoutException:
                raise UpstreamTimeout(
                    f"{where} did not answer within {judge.timeout_s:g} s"
                ) from None
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(f"{where} is unreachable: {type(exc).__name__}") from None
        _check_status(resp, where, key)
        return _content_of(resp.content, where)


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Completion(msgspec.Struct):
    choices: list[_Choice]


def _content_of(raw: bytes, where: str) -> str:
    try:
        choices = msgspec.json.decode(raw, type=_Completion).choices
    except msgspec.DecodeError:
        raise UpstreamUnavailable(f"{where} did not answer with a chat completion") from None
    if not choices:
        raise UpstreamUnavailable(f"{where} answered with no choices")
    return choices[0].message.content or ""


def _check_status(resp: httpx.Response, where: str, key: str | None) -> None:
    """An external judge's error as ours: 429 and 5xx are retried by the worker, the rest
    (a wrong key, an unknown model) is a refusal that retrying cannot mend."""
    if resp.status_code == 200:
        return
    detail = resp.text[:300]
    if key:
        detail = detail.replace(key, "***")
    what = f"{where} answered {resp.status_code}: {detail}"
    if resp.status_code == 429:
        wait = resp.headers.get("retry-after", "")
        raise RateLimited(what, retry_after_s=float(wait) if wait.isdigit() else 5.0)
    if resp.status_code >= 500:
        raise UpstreamUnavailable(what)
    raise Conflict(what, code="judge_refused")
