"""The statements for shared canary counts and shadow evaluation, in one dialect.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`. Counts are added
with upsert-increments, so every gateway's flush adds to the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from store.records import ArmCounts, CanaryDelta, Shadow, ShadowPair, ShadowSummary


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


ADD_ARM_COUNTS = (
    "INSERT INTO canary_counts (canary_id, arm, requests, errors) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (canary_id, arm) DO UPDATE SET "
    "requests = canary_counts.requests + excluded.requests, "
    "errors = canary_counts.errors + excluded.errors"
)
ADD_LATENCY = (
    "INSERT INTO canary_latency (canary_id, arm, bucket, answers) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (canary_id, arm, bucket) DO UPDATE SET "
    "answers = canary_latency.answers + excluded.answers"
)
ARM_COUNTS = "SELECT arm, requests, errors FROM canary_counts WHERE canary_id = ?"
LATENCY = "SELECT arm, bucket, answers FROM canary_latency WHERE canary_id = ?"

_SHADOW_COLUMNS = (
    "id, tenant_id, alias, version, share, max_inflight, per_minute, checks, status, actor, "
    "started_at"
)
INSERT_SHADOW = f"INSERT INTO shadows ({_SHADOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ACTIVE_SHADOWS = "SELECT * FROM shadows WHERE status = 'active' ORDER BY started_at, id"
SHADOWS_OF = (
    "SELECT * FROM shadows WHERE tenant_id = ? AND alias = ? ORDER BY started_at DESC, id DESC"
)
GET_SHADOW = "SELECT * FROM shadows WHERE id = ?"
END_SHADOW = (
    "UPDATE shadows SET status = 'stopped', reason = ?, ended_at = ? "
    "WHERE id = ? AND status = 'active'"
)
ADD_SKIPS = "UPDATE shadows SET skipped = skipped + ? WHERE id = ?"

_PAIR_COLUMNS = (
    "id, shadow_id, tenant_id, alias, live_completion_id, request_id, live_version, "
    "candidate_version, live_answer, candidate_answer, candidate_error, candidate_latency_ms, "
    "created_at"
)
INSERT_PAIR = (
    f"INSERT INTO shadow_pairs ({_PAIR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UNGRADED = "SELECT * FROM shadow_pairs WHERE verdict IS NULL ORDER BY created_at, id LIMIT ?"
GRADE_PAIR = (
    "UPDATE shadow_pairs SET verdict = ?, live_score = ?, candidate_score = ?, reasons = ?, "
    "graded_at = ? WHERE id = ? AND verdict IS NULL"
)
PAIRS_OF = (
    "SELECT * FROM shadow_pairs WHERE tenant_id = ? AND alias = ? AND candidate_version = ? "
    "ORDER BY created_at DESC, id DESC LIMIT ?"
)
_COUNT = "COALESCE(SUM(CASE WHEN {} THEN 1 ELSE 0 END), 0) AS {}"
_COUNTS = ", ".join(
    _COUNT.format(cond, name)
    for cond, name in (
        ("verdict = 'win'", "wins"),
        ("verdict = 'loss'", "losses"),
        ("verdict = 'tie'", "ties"),
        ("verdict = 'ungradable'", "ungradable"),
        ("candidate_answer IS NULL", "candidate_errors"),
    )
)
SUMMARY = (
    f"SELECT COUNT(*) AS pairs, {_COUNTS}, "
    "AVG(live_score) AS live_mean, AVG(candidate_score) AS candidate_mean "
    "FROM shadow_pairs WHERE tenant_id = ? AND alias = ? AND candidate_version = ?"
)
SKIPPED = (
    "SELECT COALESCE(SUM(skipped), 0) FROM shadows WHERE tenant_id = ? AND alias = ? "
    "AND version = ?"
)


def arm_rows(deltas: Iterable[CanaryDelta]) -> list[tuple[object, ...]]:
    return [(d.canary_id, d.arm, d.counts.requests, d.counts.errors) for d in deltas]


def latency_rows(deltas: Iterable[CanaryDelta]) -> list[tuple[object, ...]]:
    return [
        (d.canary_id, d.arm, bucket, answers)
        for d in deltas
        for bucket, answers in sorted(d.counts.latency.items())
        if answers
    ]


def arm_counts(arms: Iterable[Row], latency: Iterable[Row]) -> dict[str, ArmCounts]:
    """{arm: its counts summed over every gateway} from the two tables' rows."""
    histograms: dict[str, dict[int, int]] = {}
    for row in latency:
        histograms.setdefault(row["arm"], {})[int(row["bucket"])] = int(row["answers"])
    return {
        row["arm"]: ArmCounts(
            int(row["requests"]), int(row["errors"]), histograms.get(row["arm"], {})
        )
        for row in arms
    }


def shadow_params(s: Shadow) -> tuple[object, ...]:
    return (
        s.id,
        s.tenant_id,
        s.alias,
        s.version,
        s.share,
        s.max_inflight,
        s.per_minute,
        s.checks,
        s.status,
        s.actor,
        s.started_at,
    )


def shadow(row: Row) -> Shadow:
    return Shadow(**{k: row[k] for k in Shadow.__struct_fields__})


def pair_params(p: ShadowPair) -> tuple[object, ...]:
    return (
        p.id,
        p.shadow_id,
        p.tenant_id,
        p.alias,
        p.live_completion_id,
        p.request_id,
        p.live_version,
        p.candidate_version,
        p.live_answer,
        p.candidate_answer,
        p.candidate_error,
        p.candidate_latency_ms,
        p.created_at,
    )


def pair(row: Row) -> ShadowPair:
    return ShadowPair(**{k: row[k] for k in ShadowPair.__struct_fields__})


def summary(row: Row, skipped: int) -> ShadowSummary:
    wins, losses, ties = int(row["wins"]), int(row["losses"]), int(row["ties"])
    live, candidate = row["live_mean"], row["candidate_mean"]
    return ShadowSummary(
        pairs=int(row["pairs"]),
        graded=wins + losses + ties,
        wins=wins,
        losses=losses,
        ties=ties,
        ungradable=int(row["ungradable"]),
        candidate_errors=int(row["candidate_errors"]),
        skipped_for_budget=skipped,
        mean_live_score=None if live is None else float(live),
        mean_candidate_score=None if candidate is None else float(candidate),
    )
