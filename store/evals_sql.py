"""The statements for eval runs and results, gate policies and canaries, in one dialect.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`.
"""

from __future__ import annotations

from typing import Any, Protocol

from store.records import Canary, EvalResult, EvalRun, LoopRecord


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


INSERT_RUN = (
    "INSERT INTO eval_runs (id, tenant_id, alias, candidate, live, status, created_by, "
    "created_at, suite_dataset_id, spec) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The oldest queued run goes to one worker (PostgreSQL: `lock` skips rows another claims).
CLAIM_RUN = (
    "UPDATE eval_runs SET status = 'running', worker = ?, heartbeat_at = ?, "
    "attempts = attempts + 1 WHERE id = (SELECT id FROM eval_runs WHERE status = 'queued' "
    "ORDER BY created_at, id LIMIT 1 {lock}) AND status = 'queued' RETURNING *"
)
HEARTBEAT_RUN = (
    "UPDATE eval_runs SET heartbeat_at = ? WHERE id = ? AND worker = ? AND status = 'running'"
)
# A running run whose worker went silent: queued again, or failed past the requeue limit.
REQUEUE_STALE_RUNS = (
    "UPDATE eval_runs SET status = CASE WHEN attempts > ? THEN 'failed' ELSE 'queued' END, "
    "error = CASE WHEN attempts > ? THEN ? ELSE error END, "
    "finished_at = CASE WHEN attempts > ? THEN ? ELSE finished_at END, worker = NULL "
    "WHERE status = 'running' AND heartbeat_at < ? RETURNING id, status"
)
INSERT_LOOP = (
    "INSERT INTO loop_runs (id, tenant_id, alias, status, spec, state, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
GET_LOOP = "SELECT * FROM loop_runs WHERE tenant_id = ? AND id = ?"
LIST_LOOPS = "SELECT * FROM loop_runs WHERE tenant_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
CLAIM_LOOP = (
    "UPDATE loop_runs SET worker = ?, heartbeat_at = ?, attempts = attempts + 1 "
    "WHERE id = (SELECT id FROM loop_runs WHERE status = 'running' AND worker IS NULL "
    "ORDER BY created_at, id LIMIT 1 {lock}) AND worker IS NULL RETURNING *"
)
SAVE_LOOP = (
    "UPDATE loop_runs SET status = ?, state = ?, finished_at = ?, heartbeat_at = ? "
    "WHERE id = ? AND worker = ? AND status = 'running'"
)
HEARTBEAT_LOOP = (
    "UPDATE loop_runs SET heartbeat_at = ? WHERE id = ? AND worker = ? AND status = 'running'"
)
REQUEUE_STALE_LOOPS = (
    "UPDATE loop_runs SET status = CASE WHEN attempts > ? THEN 'failed' ELSE 'running' END, "
    "finished_at = CASE WHEN attempts > ? THEN ? ELSE finished_at END, worker = NULL "
    "WHERE status = 'running' AND worker IS NOT NULL AND heartbeat_at < ? RETURNING id, status"
)
LOST_WORKER = "its worker went silent (crashed or was stopped) {n} times; not retried again"
FINISH_RUN = (
    "UPDATE eval_runs SET status = ?, promote = ?, decision = ?, summary = ?, report_dir = ?, "
    "error = ?, finished_at = ? WHERE id = ?"
)
GET_RUN = "SELECT * FROM eval_runs WHERE tenant_id = ? AND id = ?"
LIST_RUNS = "SELECT * FROM eval_runs WHERE tenant_id = ? ORDER BY created_at DESC, id DESC"
RUNS_OF = (
    "SELECT * FROM eval_runs WHERE tenant_id = ? AND candidate = ? "
    "ORDER BY created_at DESC, id DESC"
)
INSERT_RESULT = (
    "INSERT INTO eval_results (run_id, suite, case_id, system, score, passed, latency_ms, answer, "
    "reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
LIST_RESULTS = "SELECT * FROM eval_results WHERE run_id = ? ORDER BY suite, case_id, system"
# One page of a run's cases (every system's answer to each), the tenant suite's first, optionally
# of one suite, or only where the candidate scored below live: args run_id, [suite], limit,
# offset, run_id.
_CASE_ORDER = "CASE {t}.suite WHEN 'tenant' THEN 0 ELSE 1 END, {t}.suite, {t}.case_id"
_PAGE_OF_CASES = (
    "SELECT r.* FROM eval_results r JOIN (SELECT c.suite, c.case_id FROM eval_results c "
    "LEFT JOIN eval_results l ON l.run_id = c.run_id AND l.suite = c.suite "
    "AND l.case_id = c.case_id AND l.system = 'live' "
    "WHERE c.run_id = ? AND c.system = 'candidate'{where} "
    f"ORDER BY {_CASE_ORDER.format(t='c')} LIMIT ? OFFSET ?) p "
    "ON r.suite = p.suite AND r.case_id = p.case_id WHERE r.run_id = ? "
    f"ORDER BY {_CASE_ORDER.format(t='r')}, r.system"
)


def page_of_cases(suite: str | None, losses: bool) -> str:
    where = (" AND c.suite = ?" if suite is not None else "") + (
        " AND c.score < l.score" if losses else ""
    )
    return _PAGE_OF_CASES.format(where=where)


def page_args(run_id: str, suite: str | None, limit: int, offset: int) -> tuple[object, ...]:
    return (run_id, *([suite] if suite is not None else []), limit, offset, run_id)


SET_POLICY = (
    "INSERT INTO gate_policies (tenant_id, policy, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (tenant_id) DO UPDATE SET policy = excluded.policy, "
    "updated_at = excluded.updated_at"
)
GET_POLICY = "SELECT policy FROM gate_policies WHERE tenant_id = ?"
INSERT_CANARY = (
    "INSERT INTO canaries (id, tenant_id, alias, version, percent, thresholds, status, actor, "
    "reason, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ACTIVE_CANARIES = "SELECT * FROM canaries WHERE status = 'active' ORDER BY started_at"
CANARIES_OF = (
    "SELECT * FROM canaries WHERE tenant_id = ? AND alias = ? ORDER BY started_at DESC, id DESC"
)
END_CANARY = (
    "UPDATE canaries SET status = ?, reason = ?, ended_at = ? WHERE id = ? AND status = 'active'"
)


def run_params(r: EvalRun) -> tuple[object, ...]:
    return (
        r.id,
        r.tenant_id,
        r.alias,
        r.candidate,
        r.live,
        r.status,
        r.created_by,
        r.created_at,
        r.suite_dataset_id,
        r.spec,
    )


def requeue_params(before: float, max_requeues: int, now: float) -> tuple[object, ...]:
    error = "the eval run failed: " + LOST_WORKER.format(n=max_requeues + 1)
    return (max_requeues, max_requeues, error, max_requeues, now, before)


def loop_requeue_params(before: float, max_requeues: int, now: float) -> tuple[object, ...]:
    return (max_requeues, max_requeues, now, before)


def loop_params(r: LoopRecord) -> tuple[object, ...]:
    return (r.id, r.tenant_id, r.alias, r.status, r.spec, r.state, r.created_at)


def loop(row: Row) -> LoopRecord:
    return LoopRecord(**{k: row[k] for k in LoopRecord.__struct_fields__})


def run(row: Row) -> EvalRun:
    values = {k: row[k] for k in EvalRun.__struct_fields__}
    values["promote"] = None if values["promote"] is None else bool(values["promote"])
    return EvalRun(**values)


def result_params(r: EvalResult) -> tuple[object, ...]:
    return (
        r.run_id,
        r.suite,
        r.case_id,
        r.system,
        r.score,
        r.passed,
        r.latency_ms,
        r.answer,
        r.reasons,
    )


def result(row: Row) -> EvalResult:
    values = {k: row[k] for k in EvalResult.__struct_fields__}
    values["passed"] = bool(values["passed"])
    return EvalResult(**values)


def canary_params(c: Canary) -> tuple[object, ...]:
    return (
        c.id,
        c.tenant_id,
        c.alias,
        c.version,
        c.percent,
        c.thresholds,
        c.status,
        c.actor,
        c.reason,
        c.started_at,
    )


def canary(row: Row) -> Canary:
    return Canary(**{k: row[k] for k in Canary.__struct_fields__})
