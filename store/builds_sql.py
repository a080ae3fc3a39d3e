"""The statements for queued dataset builds, in one dialect (`?`; PostgreSQL: `numbered`)."""

from __future__ import annotations

import json

from store.records import DatasetBuild
from store.training_sql import Row

BUILD_COLUMNS = (
    "id, tenant_id, created_by, source, file_id, config, override, limits, status, created_at"
)
INSERT_BUILD = f"INSERT INTO dataset_builds ({BUILD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
GET_BUILD = "SELECT * FROM dataset_builds WHERE tenant_id = ? AND id = ?"
# One statement, so two workers never claim the same build (PostgreSQL adds SKIP LOCKED). Fair
# shares as for jobs: the oldest queued build of the tenant with the fewest builds running, and
# among those of the tenant served least recently; one tenant's burst waits behind no one else.
ANY_QUEUED_BUILD = "SELECT 1 FROM dataset_builds WHERE status = 'queued' LIMIT 1"
CLAIM_BUILD = (
    "UPDATE dataset_builds SET status = 'building', worker = ?, attempts = attempts + 1, "
    "claimed_at = ?, heartbeat_at = ? "
    "WHERE id = (SELECT b.id FROM dataset_builds b WHERE b.status = 'queued' ORDER BY "
    "(SELECT COUNT(*) FROM dataset_builds r WHERE r.tenant_id = b.tenant_id "
    "AND r.status = 'building'), "
    "COALESCE((SELECT MAX(s.claimed_at) FROM dataset_builds s "
    "WHERE s.tenant_id = b.tenant_id), 0), "
    "b.created_at, b.id LIMIT 1 {lock}) AND status = 'queued' RETURNING *"
)
HEARTBEAT_BUILD = (
    "UPDATE dataset_builds SET heartbeat_at = ? WHERE id = ? AND worker = ? AND status = 'building'"
)
# Only the worker that holds the build writes its outcome (a requeued build has a new worker).
FINISH_BUILD = (
    "UPDATE dataset_builds SET status = ?, dataset_id = ?, report = ?, error = ?, "
    "finished_at = ? WHERE id = ? AND worker = ? AND status = 'building'"
)
# A build whose worker stopped beating is queued again, or failed once started more than
# `max_requeues` + 1 times (a build that keeps killing its worker must not do so forever).
REQUEUE_STALE_BUILDS = (
    "UPDATE dataset_builds SET status = CASE WHEN attempts > ? THEN 'failed' ELSE 'queued' END, "
    "error = CASE WHEN attempts > ? THEN ? ELSE error END, "
    "finished_at = CASE WHEN attempts > ? THEN ? ELSE finished_at END, "
    "worker = NULL WHERE status = 'building' AND heartbeat_at < ? RETURNING id, status"
)
# Finished builds are kept only long enough for their caller to read the outcome.
PURGE_BUILDS = (
    "DELETE FROM dataset_builds WHERE status IN ('ready', 'needs_review', 'failed') "
    "AND finished_at < ?"
)


def build_params(b: DatasetBuild) -> tuple[object, ...]:
    return (
        b.id,
        b.tenant_id,
        b.created_by,
        b.source,
        b.file_id,
        b.config,
        b.override,
        b.limits,
        b.status,
        b.created_at,
    )


def build(row: Row) -> DatasetBuild:
    return DatasetBuild(**{k: row[k] for k in DatasetBuild.__struct_fields__})


def requeue_params(before: float, max_requeues: int, now: float) -> tuple[object, ...]:
    return (max_requeues, max_requeues, lost_worker(max_requeues), max_requeues, now, before)


def lost_worker(max_requeues: int) -> str:
    """The error of a build that lost its worker once more than it may be requeued."""
    message = (
        f"the worker building this dataset went silent on attempt {max_requeues + 1} or later "
        f"(a build is queued again at most {max_requeues} times)"
    )
    error = {"status": 500, "code": "worker_lost", "message": message, "param": None}
    return json.dumps(error)
