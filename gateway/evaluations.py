"""Eval runs on the gateway side: candidate, live version and base answer the same cases on vLLM.

A run evaluates a tenant's candidate adapter for an alias against what the alias serves now
(live) and the base, on the held-out split of the candidate's dataset (the tenant suite, graded
with the tenant's checks) and the shipped guard suite; stores every answer and score, writes a
Markdown/HTML/PNG report, and records the gate's verdict. Promotion requires a passing run.

Each held-out case's source completion is recorded with the run (`CaseSource`): erasing that
completion replaces the case's answers by "[erased]" and deletes the run's report files, also
when the erase lands while the run is still going (gateway.erasure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import msgspec

from adapters.placement import AdapterPool
from adapters.registry import Registry
from adapters.swap import Swapper
from evals.gate import GatePolicy
from evals.graders import Check
from evals.report import write_report
from evals.runner import Answer, Generate, answer_all, compare
from evals.suite import (
    DEFAULT_TENANT_CHECKS,
    GUARD_SUITE,
    Suite,
    SuiteError,
    from_conversations,
    load_guard_suite,
    parse_jsonl,
)
from gateway.cache_salt import CacheSalts
from gateway.quotas import Quotas, refusal
from replicas.pool import Backend
from store import (
    AdapterVersion,
    CaseSource,
    EvalResult,
    EvalRun,
    Store,
    Tenant,
    Usage,
    erasure_sql,
)
from store.errors import Conflict, InvalidRequest, NotFound
from training.chat import Conversation
from training.dataset import read_split
from training.snapshot_erasure import split_sources

log = logging.getLogger("loopgate.evals")
# The held-out split's suite; an erase blanks older runs' answers by this name.
TENANT_SUITE = erasure_sql.TENANT_SUITE
AN_EVAL_RUN = Usage(eval_runs_last_day=1)
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class PolicyIn(msgspec.Struct, forbid_unknown_fields=True):
    """A tenant's promotion gate and how its held-out split is graded."""

    min_improvement: Fraction = 0.05
    max_guard_regression: Fraction = 0.02
    max_latency_increase: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    confidence: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.95
    tenant_checks: list[Check] = msgspec.field(default_factory=list)
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 96

    def gate(self) -> GatePolicy:
        return GatePolicy(
            self.min_improvement,
            self.max_guard_regression,
            self.max_latency_increase,
            self.confidence,
        )


@dataclass(frozen=True)
class TenantSuite:
    """The tenant suite of a run; from a candidate's held-out split, with the completion each
    case came from (what an erasure of that completion blanks)."""

    suite: Suite
    dataset_id: str | None = None
    sources: list[CaseSource] = field(default_factory=list)


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
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def policy(self, tenant_id: str) -> PolicyIn:
        raw = await self.store.get_gate_policy(tenant_id)
        return PolicyIn() if raw is None else msgspec.json.decode(raw, type=PolicyIn)

    async def set_policy(self, tenant_id: str, policy: PolicyIn) -> PolicyIn:
        try:
            policy.gate()
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        await self.store.set_gate_policy(tenant_id, msgspec.json.encode(policy).decode())
        return policy

    # -- starting a run -------------------------------------------------------------------

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
        tenant_suite = await self._tenant_suite(tenant, candidate, req, policy)
        suites = [tenant_suite.suite, load_guard_suite()]
        run = EvalRun(
            id="ev-" + secrets.token_hex(8),
            tenant_id=tenant.id,
            alias=req.alias,
            candidate=candidate.id,
            live=live,
            status="running",
            created_by=actor,
            created_at=time.time(),
            suite_dataset_id=tenant_suite.dataset_id,
        )
        over = await self.store.add_eval_run(run, quotas.limits(), sources=tenant_suite.sources)
        if over is not None:  # another run took the room since the first check
            raise refusal(quotas, over)
        task = asyncio.create_task(self._run(run, candidate, suites, policy))
        self.tasks[run.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(run.id, None))
        return run

    async def _tenant_suite(
        self, tenant: Tenant, candidate: AdapterVersion, req: StartEval, policy: PolicyIn
    ) -> TenantSuite:
        checks = policy.tenant_checks or list(DEFAULT_TENANT_CHECKS)
        if req.suite_jsonl is not None:
            try:
                return TenantSuite(
                    parse_jsonl(req.suite_jsonl, TENANT_SUITE, default_checks=checks)
                )
            except SuiteError as exc:
                raise InvalidRequest(str(exc), param="suite_jsonl") from None
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
        folder = Path(dataset.path)
        held_out = await asyncio.to_thread(read_split, folder, "eval")
        if not held_out:
            raise InvalidRequest(f"dataset {dataset.id} has an empty eval split", param="candidate")
        suite = from_conversations(TENANT_SUITE, held_out, checks)
        lineage = await asyncio.to_thread(split_sources, folder, "eval")
        sources = [
            CaseSource(TENANT_SUITE, case.id, completion)
            for case, completion in zip(suite.cases, lineage, strict=False)
            if completion is not None
        ]
        return TenantSuite(suite, dataset.id, sources)

    # -- the run itself ---------------------------------------------------------------------

    async def _run(
        self, run: EvalRun, candidate: AdapterVersion, suites: list[Suite], policy: PolicyIn
    ) -> None:
        try:
            tenant = await self.store.get_tenant(run.tenant_id)
            assert tenant is not None
            live = await self.registry.get(tenant, run.live) if run.live else None
            salt = self.salts.of(tenant.id)  # the tenant's prefix-cache salt, as for its traffic
            async with (
                self._generator(candidate, policy, salt) as cand,
                self._generator(live, policy, salt) as cur,
            ):
                base = self._generate(self._ready(), self.base_engine_name, policy, salt)
                systems = {"candidate": cand, "base": base}
                if live is not None:
                    systems["live"] = cur
                answers = await answer_all(suites, systems)
            if live is None:  # the alias served the base: live and base are the same answers
                answers += [
                    Answer(a.suite, a.case_id, "live", a.result, a.latency_ms)
                    for a in answers
                    if a.system == "base"
                ]
            await self.store.add_eval_results([_result(run.id, a) for a in answers])
            title = f"{candidate.id} for alias '{run.alias}' (live: {run.live or 'base'})"
            report = compare(answers, suites, TENANT_SUITE, GUARD_SUITE, policy.gate(), title)
            folder = self.reports_root / run.tenant_id / run.id
            await asyncio.to_thread(write_report, report, folder)
            summary = {
                s.name: {
                    "means": {k: v.mean for k, v in s.systems.items()},
                    "vs_live": asdict(s.vs_live) if s.vs_live else None,
                    "vs_base": asdict(s.vs_base) if s.vs_base else None,
                }
                for s in report.suites
            }
            summary["latency_ms"] = {k: asdict(v) for k, v in report.latency.items()}
            await self.store.finish_eval_run(
                run.id,
                "done",
                promote=report.decision.promote,
                decision=json.dumps(asdict(report.decision)),
                summary=json.dumps(summary),
                report_dir=str(folder),
            )
            log.info("eval %s: promote=%s", run.id, report.decision.promote)
        except Exception as exc:
            log.exception("eval %s failed", run.id)
            await self.store.finish_eval_run(run.id, "failed", error=f"the eval run failed: {exc}")

    def _ready(self) -> Backend:
        for backend in self.adapters.pool.backends:
            if backend.ready:
                return backend
        raise RuntimeError("no replica is ready")

    @asynccontextmanager
    async def _generator(
        self, version: AdapterVersion | None, policy: PolicyIn, salt: str
    ) -> AsyncIterator[Generate]:
        if version is None:
            yield self._generate(self._ready(), self.base_engine_name, policy, salt)
            return
        lease = await self.adapters.lease(version)
        try:
            yield self._generate(lease.backend, lease.engine_name, policy, salt)
        finally:
            lease.release()

    def _generate(self, backend: Backend, model: str, policy: PolicyIn, salt: str) -> Generate:
        async def generate(messages: Conversation) -> str:
            body = {
                "model": model,
                "messages": list(messages),
                "temperature": 0.0,
                "max_tokens": policy.max_tokens,
                "seed": 0,
                "cache_salt": salt,
            }
            resp = await self.client.post(
                backend.url + "/v1/chat/completions", json=body, headers=backend.headers
            )
            resp.raise_for_status()
            return str(resp.json()["choices"][0]["message"]["content"] or "")

        return generate

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


def _result(run_id: str, a: Answer) -> EvalResult:
    return EvalResult(
        run_id,
        a.suite,
        a.case_id,
        a.system,
        a.result.score,
        a.result.passed,
        a.latency_ms,
        a.result.answer,
    )
