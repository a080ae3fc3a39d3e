"""The evals worker's way to the gateway: its admin API, for engine answers and loop steps.

vLLM is reachable only through the gateway, which owns adapter placement and each tenant's
cache salt, and the gateway alone creates datasets, jobs, eval runs and promotions (with its
validation and quotas). The worker authenticates with the admin key: the embedded worker gets it
in its environment from the gateway that starts it; a worker on another host from its settings.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import msgspec

from evals.batch_lines import BatchLine, LineReply
from evals.loop_record import Created, LoopDataset, LoopJob
from evals.spec import AnswerReply, AnswerRequest
from store.settings import Settings

log = logging.getLogger("loopgate.evals.gateway")
RETRIED = frozenset({502, 503, 504})  # the engine restarting or busy: worth another try
ATTEMPTS = 4


class GatewayError(Exception):
    """The gateway refused or failed a request; `message` is its error's message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


class _ErrorBody(msgspec.Struct):
    message: str = ""


class _Envelope(msgspec.Struct):
    error: _ErrorBody = msgspec.field(default_factory=_ErrorBody)


def gateway_url(settings: Settings) -> str:
    """`gateway_url`, else this host's gateway (a wildcard listen address is reached locally)."""
    if settings.gateway_url:
        return settings.gateway_url.rstrip("/")
    wildcard = settings.host in ("0.0.0.0", "", "::")  # noqa: S104 - reached, not bound
    host = "127.0.0.1" if wildcard else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def make_client(settings: Settings) -> httpx.AsyncClient:
    if not settings.admin_key:
        raise ValueError("an evals worker needs LOOPGATE_ADMIN_KEY to use the gateway's admin API")
    return httpx.AsyncClient(
        base_url=gateway_url(settings),
        headers={"Authorization": f"Bearer {settings.admin_key}"},
        timeout=httpx.Timeout(settings.upstream_total_timeout_s + 60, connect=10.0),
    )


class GatewayClient:
    def __init__(self, client: httpx.AsyncClient, retry_wait_s: float = 1.0):
        self.client = client
        self.retry_wait_s = retry_wait_s

    async def _post(self, path: str, body: object, actor: str | None = None) -> bytes:
        headers = {"x-loopgate-actor": actor[:128]} if actor else {}
        content = msgspec.json.encode(body)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                resp = await self.client.post(
                    path, content=content, headers={**headers, "content-type": "application/json"}
                )
            except httpx.TransportError as exc:
                if attempt == ATTEMPTS:
                    raise GatewayError(502, f"the gateway is unreachable: {exc!r}") from None
            else:
                if resp.status_code < 300:
                    return resp.content
                if resp.status_code not in RETRIED or attempt == ATTEMPTS:
                    raise GatewayError(resp.status_code, _message(resp))
            await asyncio.sleep(self.retry_wait_s * attempt)
        raise AssertionError("unreachable")

    async def answer(self, tenant_id: str, run_id: str, req: AnswerRequest) -> AnswerReply:
        raw = await self._post(f"/admin/tenants/{tenant_id}/evals/{run_id}/answers", req)
        return msgspec.json.decode(raw, type=AnswerReply)

    async def batch_line(self, tenant_id: str, batch_id: str, line: BatchLine) -> LineReply:
        raw = await self._post(f"/admin/tenants/{tenant_id}/batches/{batch_id}/lines", line)
        return msgspec.json.decode(raw, type=LineReply)

    async def loop_dataset(self, tenant_id: str, loop_id: str) -> LoopDataset:
        raw = await self._post(f"/admin/tenants/{tenant_id}/loops/{loop_id}/dataset", {})
        return msgspec.json.decode(raw, type=LoopDataset)

    async def loop_job(self, tenant_id: str, loop_id: str, dataset_id: str) -> str:
        path = f"/admin/tenants/{tenant_id}/loops/{loop_id}/job"
        return msgspec.json.decode(await self._post(path, LoopJob(dataset_id)), type=Created).id

    async def start_eval(self, tenant_id: str, alias: str, candidate: str, actor: str) -> str:
        body = {"alias": alias, "candidate": candidate}
        raw = await self._post(f"/admin/tenants/{tenant_id}/evals", body, actor)
        return msgspec.json.decode(raw, type=Created).id

    async def loop_rollout(self, tenant_id: str, loop_id: str) -> str:
        """The rollout the loop ends in (the gateway starts it, or finds the one it started)."""
        path = f"/admin/tenants/{tenant_id}/loops/{loop_id}/rollout"
        return msgspec.json.decode(await self._post(path, {}), type=Created).id

    async def promote(
        self, tenant_id: str, alias: str, version: str, actor: str, reason: str
    ) -> None:
        body = {"version": version, "reason": reason}
        await self._post(f"/admin/tenants/{tenant_id}/aliases/{alias}/promote", body, actor)


def _message(resp: httpx.Response) -> str:
    try:
        found = msgspec.json.decode(resp.content, type=_Envelope).error.message
    except (msgspec.DecodeError, msgspec.ValidationError):
        found = ""
    return found or resp.text[:300] or resp.reason_phrase
