"""The statements for rollouts (the promotion controller's runs), in one dialect.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`. A running rollout is
advanced by the one gateway process that holds its lease: `CLAIM` takes the free or expired
ones and renews this owner's own in one statement (a row lock in PostgreSQL, the write lock in
SQLite), so two processes never both hold one. At most one rollout runs per alias (a partial
unique index: a second insert inserts nothing).
"""

from __future__ import annotations

from typing import Any, Protocol

from store.records import AliasEvent, RolloutRecord


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


INSERT = (
    "INSERT INTO rollouts (id, tenant_id, alias, version, status, stage, policy, state, actor, "
    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
GET = "SELECT * FROM rollouts WHERE tenant_id = ? AND id = ?"
LIST = "SELECT * FROM rollouts WHERE tenant_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
LIST_OF_ALIAS = (
    "SELECT * FROM rollouts WHERE tenant_id = ? AND alias = ? "
    "ORDER BY created_at DESC, id DESC LIMIT ?"
)
# args: owner, lease_until, owner, now
CLAIM = (
    "UPDATE rollouts SET owner = ?, lease_until = ? WHERE status = 'running' "
    "AND (owner IS NULL OR owner = ? OR lease_until < ?) RETURNING *"
)
# The owner's write; nothing when it lost the lease or the rollout was ended (aborted) meanwhile.
SAVE = (
    "UPDATE rollouts SET status = ?, stage = ?, state = ?, updated_at = ?, finished_at = ? "
    "WHERE id = ? AND owner = ? AND status = 'running'"
)
# Anyone's end (an abort): only over the state it read (`updated_at` unchanged since).
END = (
    "UPDATE rollouts SET status = ?, state = ?, updated_at = ?, finished_at = ?, owner = NULL, "
    "lease_until = NULL WHERE tenant_id = ? AND id = ? AND status = 'running' AND updated_at = ?"
)
RELEASE = "UPDATE rollouts SET owner = NULL, lease_until = NULL WHERE owner = ?"
ADD_ALIAS_EVENT = (
    "INSERT INTO alias_events (tenant_id, alias, action, from_version, to_version, actor, "
    "reason, forced, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Example sources of a dataset whose owner withdrew consent since: the completion was marked
# do-not-train, or its end user opted out of training. (Erased ones are gone: see erasure_sql.)
CONSENT_WITHDRAWN = (
    "SELECT COUNT(*) FROM dataset_sources s JOIN completions c ON c.id = s.completion_id "
    "WHERE s.dataset_id = ? AND s.role = 'example' AND (c.do_not_train {truth} OR EXISTS "
    "(SELECT 1 FROM training_optouts o WHERE o.tenant_id = c.tenant_id "
    "AND o.end_user = c.end_user))"
)


def params(r: RolloutRecord) -> tuple[object, ...]:
    return (
        r.id,
        r.tenant_id,
        r.alias,
        r.version,
        r.status,
        r.stage,
        r.policy,
        r.state,
        r.actor,
        r.created_at,
        r.updated_at,
    )


def rollout(row: Row) -> RolloutRecord:
    return RolloutRecord(**{k: row[k] for k in RolloutRecord.__struct_fields__})


def event_params(e: AliasEvent, forced: object, at: float) -> tuple[object, ...]:
    """ADD_ALIAS_EVENT's arguments (`forced` as the backend stores a boolean)."""
    return (
        e.tenant_id,
        e.alias,
        e.action,
        e.from_version,
        e.to_version,
        e.actor,
        e.reason,
        forced,
        at,
    )
