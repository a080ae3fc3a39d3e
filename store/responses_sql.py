"""Statements for stored Responses-API responses, in one dialect (`?`; PostgreSQL numbers them).

A response links to the captured chat completion it was served as: deleting that completion
(its owner, retention, erasure) deletes the response too (`ON DELETE CASCADE`), and deleting the
response deletes the completion (`DELETE_COMPLETION` then `DELETE`, in one transaction). The
link is taken only if the completion exists in the same tenant when the response is written.
"""

from __future__ import annotations

from typing import Any, Protocol

from store.records import StoredResponse


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


INSERT = """
INSERT INTO responses (id, tenant_id, completion_id, previous_response_id, model, stored, status,
    request, input_items, output, input_tokens, output_tokens, end_user, created_at)
VALUES (?, ?, (SELECT id FROM completions WHERE tenant_id = ? AND id = ?),
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

GET = "SELECT * FROM responses WHERE tenant_id = ? AND id = ?"

# The response and those it continues, oldest first: at most `limit` of them, all the tenant's.
# A link to a response that is gone (deleted, or another tenant's) ends the chain there.
CHAIN = """
WITH RECURSIVE chain(id, previous_response_id, depth) AS (
    SELECT id, previous_response_id, 0 FROM responses WHERE tenant_id = ? AND id = ?
    UNION ALL
    SELECT r.id, r.previous_response_id, c.depth + 1
    FROM responses r JOIN chain c ON r.id = c.previous_response_id
    WHERE r.tenant_id = ? AND c.depth + 1 < ?
)
SELECT r.* FROM chain c JOIN responses r ON r.id = c.id ORDER BY c.depth DESC
"""

# Deleting: the response's row first (its completion's cascade would leave nothing to count),
# then the completion it names, in one transaction.
DELETE = "DELETE FROM responses WHERE tenant_id = ? AND id = ? RETURNING completion_id"
DELETE_COMPLETION = "DELETE FROM completions WHERE tenant_id = ? AND id = ?"


def insert_params(r: StoredResponse) -> tuple[object, ...]:
    head = (r.id, r.tenant_id, r.tenant_id, r.completion_id, r.previous_response_id, r.model)
    content = (r.stored, r.status, r.request, r.input_items, r.output)
    return (*head, *content, r.input_tokens, r.output_tokens, r.end_user, r.created_at)


def chain_params(tenant_id: str, response_id: str, limit: int) -> tuple[object, ...]:
    return (tenant_id, response_id, tenant_id, limit)


def response(row: Row) -> StoredResponse:
    return StoredResponse(
        id=row["id"],
        tenant_id=row["tenant_id"],
        completion_id=row["completion_id"],
        previous_response_id=row["previous_response_id"],
        model=row["model"],
        stored=bool(row["stored"]),
        status=row["status"],
        request=row["request"],
        input_items=row["input_items"],
        output=row["output"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        end_user=row["end_user"],
        created_at=row["created_at"],
    )
