"""The console overview's statements (traffic per tenant in time buckets, work not yet ended),
in one dialect: `?` placeholders, which PostgreSQL rewrites with `training_sql.numbered`.

Every statement is bounded: traffic reads one window through the (tenant_id, created_at) index
and returns one row per tenant and bucket; the lists of work read their status indexes, with a
LIMIT.
"""

from __future__ import annotations

from store.evals_sql import Row
from store.records import TrafficBucket

# A tenant's bucket counts in [since, until). `bucket` is the dialect's floor of
# (created_at - since) / bucket_s; `tenants` is `= ?` (one tenant) or every tenant through the
# index (`IN (SELECT id FROM tenants)`: one index range per tenant, not a scan of the table).
TRAFFIC = (
    "SELECT tenant_id, {bucket} AS bucket, COUNT(*) AS requests, "
    "SUM(CASE WHEN status IN ('error', 'incomplete') THEN 1 ELSE 0 END) AS errors "
    "FROM completions WHERE tenant_id {tenants} AND created_at >= ? AND created_at < ? "
    "GROUP BY tenant_id, bucket ORDER BY tenant_id, bucket"
)
BUCKET_SQLITE = "CAST((created_at - ?) / ? AS INTEGER)"  # truncation is the floor: never < 0
BUCKET_PG = "FLOOR((created_at - ?) / ?)::BIGINT"
ONE_TENANT = "= ?"
EVERY_TENANT = "IN (SELECT id FROM tenants)"

# Work not yet ended, newest first; `tenant` is "" or "AND tenant_id = ?".
ACTIVE_JOBS = (
    "SELECT * FROM fine_tuning_jobs WHERE stage IN ('queued', 'training', 'registering') "
    "{tenant} ORDER BY created_at DESC, id DESC LIMIT ?"
)
ACTIVE_EVALS = (
    "SELECT * FROM eval_runs WHERE status IN ('queued', 'running') "
    "{tenant} ORDER BY created_at DESC, id DESC LIMIT ?"
)
ACTIVE_LOOPS = (
    "SELECT * FROM loop_runs WHERE status = 'running' "
    "{tenant} ORDER BY created_at DESC, id DESC LIMIT ?"
)
OF_TENANT = "AND tenant_id = ?"

# Whose object an id names (the console follows a link that carries only the id): one
# primary-key lookup; the kinds are fixed here, never taken from a request.
OWNER_OF = {
    "eval_run": "SELECT tenant_id FROM eval_runs WHERE id = ?",
    "dataset": "SELECT tenant_id FROM datasets WHERE id = ?",
    "loop_run": "SELECT tenant_id FROM loop_runs WHERE id = ?",
}


def traffic_sql(bucket: str, tenant_id: str | None) -> str:
    return TRAFFIC.format(bucket=bucket, tenants=ONE_TENANT if tenant_id else EVERY_TENANT)


def traffic_args(
    tenant_id: str | None, since: float, until: float, bucket_s: float
) -> tuple[object, ...]:
    scope: tuple[object, ...] = (tenant_id,) if tenant_id else ()
    return (since, bucket_s, *scope, since, until)


def active_sql(template: str, tenant_id: str | None) -> str:
    return template.format(tenant=OF_TENANT if tenant_id else "")


def active_args(tenant_id: str | None, limit: int) -> tuple[object, ...]:
    return (tenant_id, limit) if tenant_id else (limit,)


def bucket(row: Row) -> TrafficBucket:
    return TrafficBucket(
        row["tenant_id"], int(row["bucket"]), int(row["requests"]), int(row["errors"])
    )
