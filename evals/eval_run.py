"""One claimed eval run, done in the evals worker: candidate, live version and base answer the
same cases (through the gateway), every answer is graded, the paired statistics and the gate
decide, the report is written, and the results are stored.

The tenant suite is the uploaded JSONL of the run's spec, or the held-out split of the
candidate's dataset; in the latter case each case's source completion is recorded with the run
(`CaseSource`), so that erasing that completion blanks the case's answers, also when the erase
lands while the run is still going (gateway.erasure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import msgspec

from evals.calibration import judge_summary
from evals.checks import Check, JudgeCheck
from evals.gateway_client import GatewayClient
from evals.graders import Judge, check_schemas
from evals.judging import JudgeClient
from evals.policy import GatePolicy, PolicyIn
from evals.report import EvalReport, write_report
from evals.runner import Answer, Generate, answer_all, compare
from evals.spec import AnswerReply, AnswerRequest, RunSpec, System
from evals.suite import (
    DEFAULT_TENANT_CHECKS,
    GUARD_SUITE,
    Suite,
    SuiteError,
    from_conversations,
    load_guard_suite,
    parse_jsonl,
)
from store import CaseSource, EvalResult, EvalRun, ShadowSummary, Store, erasure_sql
from training.chat import Conversation
from training.dataset import read_split
from training.snapshot_erasure import split_sources

log = logging.getLogger("loopgate.evals")
TENANT_SUITE = erasure_sql.TENANT_SUITE  # an erase blanks older runs' answers by this name


class EvalJob:
    """Runs claimed eval runs for one worker, keeping each claim alive with a heartbeat."""

    def __init__(
        self,
        store: Store,
        gateway: GatewayClient,
        reports_root: Path,
        worker_id: str,
        heartbeat_s: float,
    ):
        self.store = store
        self.gateway = gateway
        self.reports_root = reports_root
        self.worker_id = worker_id
        self.heartbeat_s = heartbeat_s
        self.judges = JudgeClient(gateway.client, backoff_s=gateway.retry_wait_s)

    async def run(self, run: EvalRun) -> None:
        async with self._heartbeat(run.id):
            try:
                await self._run(run)
            except Exception as exc:
                log.exception("eval %s failed", run.id)
                error = f"the eval run failed: {exc}"
                await self.store.finish_eval_run(run.id, "failed", error=error)

    @contextlib.asynccontextmanager
    async def _heartbeat(self, run_id: str) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_s)
                if not await self.store.heartbeat_eval_run(run_id, self.worker_id):
                    log.warning("eval %s is no longer this worker's", run_id)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, run: EvalRun) -> None:
        spec = msgspec.json.decode(run.spec or "{}", type=RunSpec)
        suites = [await self._tenant_suite(run, spec), load_guard_suite()]
        try:  # a json check's schema: checked here, where jsonschema may be imported
            check_schemas(c for s in suites for case in s.cases for c in case.checks)
        except ValueError as exc:
            raise SuiteError(f"the tenant suite's checks: {exc}") from None
        names: tuple[System, ...] = (
            ("candidate", "base", "live") if run.live else ("candidate", "base")
        )
        systems: dict[str, Generate] = {
            n: self._generate(run, n, spec.policy.max_tokens) for n in names
        }
        answers = await answer_all(suites, systems, judge=await self._judge(run, suites))
        judged = judge_summary(answers, suites[0])  # before live copies base's (next)
        if run.live is None:  # the alias served the base: live and base are the same answers
            answers += [
                Answer(a.suite, a.case_id, "live", a.result, a.latency_ms)
                for a in answers
                if a.system == "base"
            ]
        await self.store.add_eval_results([_result(run.id, a) for a in answers])
        title = f"{run.candidate} for alias '{run.alias}' (live: {run.live or 'base'})"
        gate = spec.policy.gate()
        candidate_judged = judged.systems.get("candidate") if judged else None
        shadow = await self._shadow_evidence(run, gate)
        report = await asyncio.to_thread(
            compare,
            answers,
            suites,
            TENANT_SUITE,
            GUARD_SUITE,
            gate,
            title,
            candidate_judged,
            shadow,
        )
        summary = _summary(report)
        if judged is not None:
            summary["judge"] = msgspec.to_builtins(judged)
        folder = self.reports_root / run.tenant_id / run.id
        await asyncio.to_thread(write_report, report, folder)
        await self.store.finish_eval_run(
            run.id,
            "done",
            promote=report.decision.promote,
            decision=json.dumps(asdict(report.decision)),
            summary=json.dumps(summary),
            report_dir=str(folder),
        )
        log.info("eval %s: promote=%s", run.id, report.decision.promote)

    async def _judge(self, run: EvalRun, suites: list[Suite]) -> Judge | None:
        """The tenant's judge when a case has a judge check (none configured: the run fails,
        saying how to configure one)."""
        if not any(isinstance(c, JudgeCheck) for s in suites for k in s.cases for c in k.checks):
            return None
        if not await self.judges.configured(run.tenant_id):
            raise SuiteError(
                "the suite has judge checks but this tenant has no judge: set one with "
                f"PUT /admin/tenants/{run.tenant_id}/judge (an alias, or an external endpoint)"
            )
        return self.judges.for_run(run.tenant_id, run.id)

    def _generate(self, run: EvalRun, system: System, max_tokens: int) -> Generate:
        async def generate(messages: Conversation) -> AnswerReply:
            req = AnswerRequest(system, list(messages), max_tokens)
            return await self.gateway.answer(run.tenant_id, run.id, req)

        return generate

    async def _shadow_evidence(self, run: EvalRun, gate: GatePolicy) -> ShadowSummary | None:
        """The candidate's shadow pairs on this alias so far, when the policy asks for them."""
        if gate.min_shadow_pairs is None and gate.max_shadow_loss_rate is None:
            return None
        return await self.store.shadow_summary(run.tenant_id, run.alias, run.candidate)

    async def _tenant_suite(self, run: EvalRun, spec: RunSpec) -> Suite:
        checks = _checks(spec.policy)
        if spec.suite_jsonl is not None:
            return parse_jsonl(spec.suite_jsonl, TENANT_SUITE, default_checks=checks)
        dataset = (
            await self.store.get_dataset(run.tenant_id, run.suite_dataset_id)
            if run.suite_dataset_id
            else None
        )
        if dataset is None or dataset.erasure == "deleted":
            raise SuiteError(f"{run.candidate}'s dataset is gone: no held-out split to evaluate")
        folder = Path(dataset.path)
        held_out = await asyncio.to_thread(read_split, folder, "eval")
        if not held_out:
            raise SuiteError(f"dataset {dataset.id} has an empty eval split")
        suite = from_conversations(TENANT_SUITE, held_out, checks)
        lineage = await asyncio.to_thread(split_sources, folder, "eval")
        sources = [
            CaseSource(TENANT_SUITE, case.id, completion)
            for case, completion in zip(suite.cases, lineage, strict=False)
            if completion is not None
        ]
        await self.store.add_eval_sources(run.id, sources)
        return suite


def _checks(policy: PolicyIn) -> list[Check]:
    return list(policy.tenant_checks or DEFAULT_TENANT_CHECKS)


def _summary(report: EvalReport) -> dict[str, object]:
    summary: dict[str, object] = {
        s.name: {
            "means": {k: v.mean for k, v in s.systems.items()},
            "vs_live": asdict(s.vs_live) if s.vs_live else None,
            "vs_base": asdict(s.vs_base) if s.vs_base else None,
        }
        for s in report.suites
    }
    summary["latency_ms"] = {k: asdict(v) for k, v in report.latency.items()}
    return summary


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
        "; ".join(g.reason for g in a.result.grades),
    )
