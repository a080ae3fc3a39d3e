"""The console's Evals:
runs, candidate vs live vs base per suite, the per-case table and the plot.

A run is read from the store as the admin API reads it (`get_eval_run`, `list_eval_runs`); its
`summary` and `decision` JSON (written by evals.eval_run) are decoded into the types below. The
per-case table reads one page of cases at a time (`eval_case_page`), never the whole run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, QueryParameter
from litestar.response import File, Template
from markupsafe import Markup

from evals.judging import JudgeSummary
from evals.spec import RunSpec
from evals.suite import (
    DEFAULT_TENANT_CHECKS,
    GUARD_SUITE,
    Suite,
    SuiteError,
    load_guard_suite,
    parse_jsonl,
)
from gateway.access import Injected
from gateway.console.charts import Estimate, interval_chart
from gateway.console.pages import NO_STORE, owner_tenant, render
from gateway.console.session import ConsoleUser
from gateway.responses import REPORT_FILES
from gateway.tenancy import Admin
from store import EvalResult, EvalRun, Store, Tenant, erasure_sql
from store.errors import InvalidRequest, NotFound

ACTIVE = "/console/evals"
SYSTEMS = ("candidate", "live", "base")
FILTERS = ("", "losses", "guard")
PAGE_SIZE = 25  # cases per page of the per-case table
MAX_PAGE = 100_000
MAX_RUNS = 200  # the newest runs a list shows
TENANT_SUITE = erasure_sql.TENANT_SUITE
TenantParam = Annotated[str | None, QueryParameter(name="tenant", required=False)]
OnlyParam = Annotated[str, QueryParameter(name="only", required=False)]
PageParam = Annotated[str, QueryParameter(name="page", required=False)]


# -- the run's summary and decision, as evals.eval_run writes them ----------------------------
class Interval(msgspec.Struct, frozen=True):
    low: float
    high: float
    level: float


class Comparison(msgspec.Struct, frozen=True):
    """Candidate minus a reference (live or base) on the same cases."""

    candidate_mean: float
    reference_mean: float
    mean_delta: float
    ci: Interval
    wins: int
    ties: int
    losses: int


class SuiteSummary(msgspec.Struct, frozen=True):
    means: dict[str, float]
    vs_live: Comparison | None = None
    vs_base: Comparison | None = None


class Latency(msgspec.Struct, frozen=True):
    p50: float
    p95: float
    n: int


class GateCheck(msgspec.Struct, frozen=True):
    name: str
    passed: bool
    detail: str


class Decision(msgspec.Struct, frozen=True):
    promote: bool
    reasons: list[str]
    checks: list[GateCheck]


@dataclass(frozen=True)
class Summary:
    suites: list[tuple[str, SuiteSummary]]
    latency: dict[str, Latency]
    judge: JudgeSummary | None = None  # judge scores and calibration (evals.calibration)


def summary_of(run: EvalRun) -> Summary:
    """Per suite: each system's mean and the candidate's paired comparisons; latencies."""
    try:
        raw = msgspec.json.decode(run.summary or "{}", type=dict[str, msgspec.Raw])
        latency = msgspec.json.decode(
            raw.pop("latency_ms", msgspec.Raw(b"{}")), type=dict[str, Latency]
        )
        judge = raw.pop("judge", None)
        judged = msgspec.json.decode(judge, type=JudgeSummary) if judge is not None else None
        suites = [(name, msgspec.json.decode(v, type=SuiteSummary)) for name, v in raw.items()]
    except msgspec.DecodeError:  # a summary this console cannot read: the page shows none
        return Summary([], {})
    return Summary(suites, latency, judged)


def decision_of(run: EvalRun) -> Decision | None:
    try:
        return msgspec.json.decode(run.decision, type=Decision) if run.decision else None
    except msgspec.DecodeError:
        return None


def min_improvement(run: EvalRun) -> float | None:
    """The least tenant-suite gain the run's gate asked for (its policy when it was started)."""
    spec = _spec(run.spec)
    return spec.policy.min_improvement if spec else None


@functools.lru_cache(maxsize=32)
def _spec(text: str | None) -> RunSpec | None:
    try:
        return msgspec.json.decode(text, type=RunSpec) if text else None
    except msgspec.DecodeError:
        return None


def plot(summary: Summary, reference: float | None) -> Markup:
    """Candidate minus live and minus base per suite, with the confidence intervals."""
    groups = [
        (name, [_estimate(f"Δ vs {ref}", c) for ref, c in _comparisons(s) if c is not None])
        for name, s in summary.suites
    ]
    return interval_chart(groups, y_label="candidate - reference", reference=reference)


def _comparisons(s: SuiteSummary) -> list[tuple[str, Comparison | None]]:
    return [("live", s.vs_live), ("base", s.vs_base)]


def _estimate(label: str, c: Comparison) -> Estimate:
    return Estimate(label, c.mean_delta, c.ci.low, c.ci.high)


# -- the per-case table ---------------------------------------------------------------------
@dataclass(frozen=True)
class CaseView:
    """One case of a suite: each system's answer with its score and the grader's reasons."""

    suite: str
    case_id: str
    prompt: str | None
    answers: dict[str, EvalResult]

    @property
    def loss(self) -> bool:
        cand, live = self.answers.get("candidate"), self.answers.get("live")
        return cand is not None and live is not None and cand.score < live.score


@dataclass(frozen=True)
class CasePage:
    cases: list[CaseView]
    only: str
    page: int
    has_next: bool


def parse_filter(only: str | None, page: str | None) -> tuple[str, int]:
    """`?only=` (losses, guard or nothing) and `?page=` (from 1), or a 400."""
    only = only or ""
    if only not in FILTERS:
        raise InvalidRequest("only= takes 'losses' or 'guard'", param="only")
    try:
        number = int(page or "1")
    except ValueError:
        raise InvalidRequest("page= takes a page number", param="page") from None
    if not 1 <= number <= MAX_PAGE:
        raise InvalidRequest(f"page= takes a page number from 1 to {MAX_PAGE}", param="page")
    return only, number


async def case_page(store: Store, run: EvalRun, only: str, page: int) -> CasePage:
    results = await store.eval_case_page(
        run.id,
        suite=GUARD_SUITE if only == "guard" else None,
        losses=only == "losses",
        limit=PAGE_SIZE + 1,  # one more: whether there is a next page
        offset=(page - 1) * PAGE_SIZE,
    )
    cases = _group(results, run)
    return CasePage(cases[:PAGE_SIZE], only, page, len(cases) > PAGE_SIZE)


def _group(results: Sequence[EvalResult], run: EvalRun) -> list[CaseView]:
    by_case: dict[tuple[str, str], dict[str, EvalResult]] = {}
    for r in results:
        by_case.setdefault((r.suite, r.case_id), {})[r.system] = r
    prompts = _prompts(run.spec) if by_case else {}
    return [
        CaseView(suite, case_id, prompts.get((suite, case_id)), answers)
        for (suite, case_id), answers in by_case.items()
    ]


@functools.lru_cache(maxsize=16)
def _prompts(spec_text: str | None) -> dict[tuple[str, str], str]:
    """Each case's last user message, where the run's suites are at hand: the uploaded tenant
    suite and the guard suite (a held-out split's prompts stay with its dataset)."""
    prompts = {(GUARD_SUITE, c.id): c.messages[-1]["content"] for c in _guard().cases}
    spec = _spec(spec_text)
    if spec is not None and spec.suite_jsonl is not None:
        checks = spec.policy.tenant_checks or DEFAULT_TENANT_CHECKS
        try:
            suite = parse_jsonl(spec.suite_jsonl, TENANT_SUITE, default_checks=checks)
        except SuiteError:
            return prompts
        prompts |= {(TENANT_SUITE, c.id): c.messages[-1]["content"] for c in suite.cases}
    return prompts


@functools.cache
def _guard() -> Suite:
    return load_guard_suite()


# -- which tenant and which run ---------------------------------------------------------------
async def tenant_for(user: ConsoleUser, admin: Admin, name: str | None) -> Tenant | None:
    """The tenant a page is about: a tenant session's own (another's is 404); an admin's pick."""
    if not user.is_admin:
        if name is not None and name != user.tenant_name:
            raise NotFound(f"no tenant '{name}'", param="tenant")
        return await admin.tenant(str(user.tenant_id))
    return await admin.tenant(name) if name else None


async def find_run(
    user: ConsoleUser, admin: Admin, store: Store, tenant: str | None, run_id: str
) -> tuple[Tenant, EvalRun]:
    """A run and its tenant: `?tenant=` when given, else the run's own (a link may carry just
    the id); another tenant's run is not found for a tenant session."""
    if tenant:
        found = await tenant_for(user, admin, tenant)
    else:
        found = await owner_tenant(user, store, "eval_run", run_id)
    run = None if found is None else await store.get_eval_run(found.id, run_id)
    if found is None or run is None:
        raise NotFound(f"no eval run '{run_id}' for this tenant", param="run_id")
    return found, run


@dataclass(frozen=True)
class RunRow:
    run: EvalRun
    created: str
    verdict: str
    tone: str


def when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else "—"


def verdict(run: EvalRun) -> tuple[str, str]:
    """What the gate said, in a word, and its colour."""
    if run.status == "failed":
        return "failed", "bad"
    if run.promote is None:
        return "—", "muted"
    return ("promote", "good") if run.promote else ("keep live", "bad")


async def run_rows(store: Store, tenant: Tenant) -> list[RunRow]:
    runs = (await store.list_eval_runs(tenant.id))[:MAX_RUNS]
    return [RunRow(r, when(r.created_at), *verdict(r)) for r in runs]


async def list_context(
    user: ConsoleUser, admin: Admin, store: Store, name: str | None
) -> dict[str, object]:
    tenant = await tenant_for(user, admin, name)
    tenants = [t.name for t in await store.list_tenants()] if user.is_admin else []
    rows = await run_rows(store, tenant) if tenant else []
    return {"tenant": tenant, "tenants": tenants, "rows": rows, "max_runs": MAX_RUNS}


async def run_context(
    store: Store, run: EvalRun, tenant: str, only: str, page: int
) -> dict[str, object]:
    summary = summary_of(run)
    reference = min_improvement(run)
    return {
        "run": run,
        "tenant_name": tenant,
        "created": when(run.created_at),
        "finished": when(run.finished_at),
        "verdict": verdict(run),
        "summary": summary,
        "decision": decision_of(run),
        "min_improvement": reference,
        "chart": plot(summary, reference),
        "cases": await case_page(store, run, only, page),
        "systems": SYSTEMS,
        "live_label": run.live or "base",
    }


# -- handlers ---------------------------------------------------------------------------------
@get("/evals")
async def eval_runs(
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    store: Injected[Store],
    tenant: TenantParam = None,
) -> Template:
    context = await list_context(console_user, admin, store, tenant)
    return render(console_user, "evals.html", ACTIVE, context)


@get("/evals/{run_id:str}")
async def eval_run(
    run_id: FromPath[str],
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    store: Injected[Store],
    tenant: TenantParam = None,
    only: OnlyParam = "",
    page: PageParam = "1",
) -> Template:
    only, number = parse_filter(only, page)
    owner, run = await find_run(console_user, admin, store, tenant, run_id)
    context = await run_context(store, run, owner.name, only, number)
    return render(console_user, "eval_run.html", ACTIVE, context)


@get("/evals/{run_id:str}/status")
async def eval_status(
    run_id: FromPath[str],
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    store: Injected[Store],
    tenant: TenantParam = None,
) -> Template:
    """The fragment a queued or running run's page reloads its status from."""
    owner, run = await find_run(console_user, admin, store, tenant, run_id)
    context = {"run": run, "tenant_name": owner.name}
    return Template("console/eval_status.html", context=context, headers=NO_STORE)


@get("/evals/{run_id:str}/report/{name:str}")
async def eval_report(
    run_id: FromPath[str],
    name: FromPath[str],
    console_user: Injected[ConsoleUser],
    admin: Injected[Admin],
    store: Injected[Store],
    tenant: TenantParam = None,
) -> File:
    """The report files the evals worker wrote (as the admin API serves them)."""
    _, run = await find_run(console_user, admin, store, tenant, run_id)
    if name not in REPORT_FILES or run.report_dir is None:
        raise NotFound(f"no report file '{name}' for {run_id}", param="name")
    return File(
        Path(run.report_dir) / name,
        media_type=REPORT_FILES[name],
        content_disposition_type="inline",
        headers=NO_STORE,
    )


ROUTES: list[HTTPRouteHandler] = [eval_runs, eval_run, eval_status, eval_report]
