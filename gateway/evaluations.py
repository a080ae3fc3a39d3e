"""Eval runs on the gateway side: starting one (a queued row), the engine answers its worker asks
for, and the gate on promotion.

A run evaluates a tenant's candidate adapter for an alias against what the alias serves now
(live) and the base, on the held-out split of the candidate's dataset (the tenant suite, graded
with the tenant's checks) or an uploaded suite, and the shipped guard suite. Starting one checks
what is cheap to check here (the versions, the alias, the quota, the suite's lines) and queues
it; an evals worker (evals.worker) claims it and does the rest: every answer, through
`answer` below (the gateway owns adapter placement and the tenant's cache salt), the grading,
the statistics, the report and the gate's verdict. Promotion requires a passing run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated

import httpx
import msgspec

from adapters.placement import AdapterPool
from adapters.registry import Registry
from adapters.swap import Swapper
from evals.checks import check_schemas
from evals.policy import PolicyIn
from evals.spec import AnswerReply, AnswerRequest, RunSpec
from evals.suite import DEFAULT_TENANT_CHECKS, SuiteError, parse_jsonl
from gateway.background import BackgroundProcess, embedded_worker, worker_env
from gateway.cache_salt import CacheSalts
from gateway.quotas import Quotas, refusal
from replicas.pool import Backend
from store import AdapterVersion, EvalRun, Store, Tenant, Usage, erasure_sql
from store.errors import (
    Conflict,
    EngineNotReady,
    InvalidRequest,
    NotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from store.settings import Settings

__all__ = ["Evaluations", "PolicyIn", "StartEval"]
log = logging.getLogger("loopgate.evals")
TENANT_SUITE = erasure_sql.TENANT_SUITE
AN_EVAL_RUN = Usage(eval_runs_last_day=1)


class StartEval(msgspec.Struct, forbid_unknown_fields=True):
    alias: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    candidate: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    suite_jsonl: Annotated[str, msgspec.Meta(max_length=4 * 1024 * 1024)] | None = None


class Evaluations:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        adapters: AdapterPool,
        swapper: Swapper,
        client: httpx.AsyncClient,
        base_engine_name: str,
        reports_root: Path,
        salts: CacheSalts | None = None,
        *,
        quotas: Quotas,
    ):
        self.store = store
        self.quotas = quotas
        self.registry = registry
        self.adapters = adapters
        self.swapper = swapper
        self.client = client
        self.base_engine_name = base_engine_name
        self.reports_root = reports_root
        self.salts = salts or CacheSalts(secrets.token_urlsafe(32))

    async def policy(self, tenant_id: str) -> PolicyIn:
        raw = await self.store.get_gate_policy(tenant_id)
        return PolicyIn() if raw is None else msgspec.json.decode(raw, type=PolicyIn)

    async def set_policy(self, tenant_id: str, policy: PolicyIn) -> PolicyIn:
        try:
            policy.gate()
            check_schemas(policy.tenant_checks)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        await self.store.set_gate_policy(tenant_id, msgspec.json.encode(policy).decode())
        return policy

    # -- starting a run: a queued row ---------------------------------------------------------

    async def start(self, tenant: Tenant, req: StartEval, actor: str) -> EvalRun:
        candidate = await self.registry.get(tenant, req.candidate)
        alias = await self.store.get_alias(tenant.id, req.alias)
        if alias is None:
            raise NotFound(f"no alias '{req.alias}' for this tenant", param="alias")
        live = self.swapper.current(alias).adapter_version
        if live == candidate.id:
            raise Conflict(f"alias '{req.alias}' already serves {candidate.id}")
        quotas = (await self.quotas.check(tenant.id, AN_EVAL_RUN)).quotas  # max per day
        policy = await self.policy(tenant.id)
        dataset_id = await self._suite_source(tenant, candidate, req, policy)
        run = EvalRun(
            id="ev-" + secrets.token_hex(8),
            tenant_id=tenant.id,
            alias=req.alias,
            candidate=candidate.id,
            live=live,
            status="queued",
            created_by=actor,
            created_at=time.time(),
            suite_dataset_id=dataset_id,
            spec=msgspec.json.encode(RunSpec(policy, req.suite_jsonl)).decode(),
        )
        over = await self.store.add_eval_run(run, quotas.limits())
        if over is not None:  # another run took the room since the first check
            raise refusal(quotas, over)
        return run

    async def _suite_source(
        self, tenant: Tenant, candidate: AdapterVersion, req: StartEval, policy: PolicyIn
    ) -> str | None:
        """The dataset whose held-out split is the tenant suite (None: the uploaded suite,
        whose lines are checked here; the worker reads the split)."""
        if req.suite_jsonl is not None:
            checks = policy.tenant_checks or list(DEFAULT_TENANT_CHECKS)
            try:
                suite = parse_jsonl(req.suite_jsonl, TENANT_SUITE, default_checks=checks)
                check_schemas(c for case in suite.cases for c in case.checks)
            except (SuiteError, ValueError) as exc:
                raise InvalidRequest(str(exc), param="suite_jsonl") from None
            return None
        dataset = (
            await self.store.get_dataset(tenant.id, candidate.dataset_id)
            if candidate.dataset_id
            else None
        )
        if dataset is None or dataset.erasure == "deleted":
            why = "no dataset" if dataset is None else "a dataset whose data was all erased"
            raise InvalidRequest(
                f"{candidate.id} has {why}, so no held-out split: send 'suite_jsonl'",
                param="suite_jsonl",
            )
        if dataset.eval_count == 0:
            raise InvalidRequest(f"dataset {dataset.id} has an empty eval split", param="candidate")
        return dataset.id

    # -- the answers a running run's worker asks for ------------------------------------------

    async def answer(self, tenant: Tenant, run_id: str, req: AnswerRequest) -> AnswerReply:
        """One greedy answer by the run's candidate, live version or base, with the tenant's
        cache salt, as for its traffic."""
        run = await self.store.get_eval_run(tenant.id, run_id)
        if run is None:
            raise NotFound(f"no eval run '{run_id}' for this tenant", param="run_id")
        if run.status != "running":
            raise Conflict(f"eval run {run_id} is {run.status}, not running")
        version_id = {"candidate": run.candidate, "live": run.live, "base": None}[req.system]
        version = await self.registry.get(tenant, version_id) if version_id else None
        async with self._engine(version) as (backend, model):
            body = {
                "model": model,
                "messages": list(req.messages),
                "temperature": 0.0,
                "max_tokens": req.max_tokens,
                "seed": 0,
                "cache_salt": self.salts.of(tenant.id),
            }
            started = time.perf_counter()
            content = await self._complete(backend, body)
        return AnswerReply(content, (time.perf_counter() - started) * 1000)

    @contextlib.asynccontextmanager
    async def _engine(self, version: AdapterVersion | None) -> AsyncIterator[tuple[Backend, str]]:
        if version is None:
            yield self._ready(), self.base_engine_name
            return
        lease = await self.adapters.lease(version)
        try:
            yield lease.backend, lease.engine_name
        finally:
            lease.release()

    def _ready(self) -> Backend:
        for backend in self.adapters.pool.backends:
            if backend.ready:
                return backend
        raise EngineNotReady("the inference engine is not ready yet; retry shortly")

    async def _complete(self, backend: Backend, body: dict[str, object]) -> str:
        url = backend.url + "/v1/chat/completions"
        try:
            resp = await self.client.post(url, json=body, headers=backend.headers)
        except httpx.TimeoutException:
            raise UpstreamTimeout("the engine did not answer in time") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the engine is unreachable: {exc!r}") from None
        if resp.status_code != 200:
            raise UpstreamUnavailable(f"the engine answered {resp.status_code}: {resp.text[:200]}")
        try:
            return str(resp.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamUnavailable("the engine's answer was not a chat completion") from None

    # -- the gate on promotion ----------------------------------------------------------------

    async def require_passing(self, tenant: Tenant, alias: str, version_id: str) -> EvalRun:
        """The latest finished run of this candidate against what the alias serves now."""
        found = await self.store.get_alias(tenant.id, alias)
        live = self.swapper.current(found).adapter_version if found else None
        for run in await self.store.list_eval_runs(tenant.id, version_id):
            if run.status != "done" or run.alias != alias or run.live != live:
                continue
            if run.promote:
                return run
            reasons = json.loads(run.decision or "{}").get("reasons", [])
            raise Conflict(
                f"the gate refused {version_id} in eval {run.id}: {'; '.join(reasons)} "
                "(promote with force and a reason to override)",
                code="gate_refused",
            )
        raise Conflict(
            f"no finished eval of {version_id} against what '{alias}' serves now "
            f"({live or 'base'}): run POST /admin/tenants/{tenant.name}/evals first, or "
            "promote with force and a reason",
            code="eval_required",
        )


# Secrets the evals worker has no use for: it never serves nor talks to the engine itself. The
# admin key it keeps: it asks the gateway's admin API for answers and loop steps.
EVALS_WORKER_OMITS = ("engine_api_key", "cache_salt_secret", "metrics_key", "console_secret")


def evals_worker_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The embedded evals worker's environment (replicas.child_env), with its settings."""
    return worker_env(settings, environ, EVALS_WORKER_OMITS)


def evals_worker_process(settings: Settings) -> BackgroundProcess | None:
    """The embedded evals worker: a child process with the gateway's settings. None without an
    admin key: the worker works through the admin API, which is then off (and so is every route
    that would queue it work), so it would only spend seconds of CPU importing and exit."""
    if not settings.admin_key:
        log.info("evals worker not started: the admin API is off (no LOOPGATE_ADMIN_KEY)")
        return None
    return embedded_worker(
        settings, "evals worker", "evals.worker", EVALS_WORKER_OMITS, stop_timeout_s=30.0
    )
