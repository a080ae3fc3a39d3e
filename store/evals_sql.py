"""The statements for eval runs and results, gate policies and canaries, in one dialect.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`.
"""

from __future__ import annotations

from typing import Any, Protocol

from store.records import Canary, EvalResult, EvalRun


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


INSERT_RUN = (
    "INSERT INTO eval_runs (id, tenant_id, alias, candidate, live, status, created_by, "
    "created_at, suite_dataset_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
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
    "INSERT INTO eval_results (run_id, suite, case_id, system, score, passed, latency_ms, answer) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
LIST_RESULTS = "SELECT * FROM eval_results WHERE run_id = ? ORDER BY suite, case_id, system"
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
    )


def run(row: Row) -> EvalRun:
    values = {k: row[k] for k in EvalRun.__struct_fields__}
    values["promote"] = None if values["promote"] is None else bool(values["promote"])
    return EvalRun(**values)


def result_params(r: EvalResult) -> tuple[object, ...]:
    return (r.run_id, r.suite, r.case_id, r.system, r.score, r.passed, r.latency_ms, r.answer)


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
