"""Row ↔ record conversion shared by the store backends (sqlite3.Row and asyncpg.Record alike)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from store.records import (
    AdapterVersion,
    Alias,
    AliasEvent,
    AliasTarget,
    ApiKey,
    CaptureFinal,
    Completion,
    Feedback,
    Tenant,
)


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def tenant(row: Row) -> Tenant:
    return Tenant(
        row["id"],
        row["name"],
        row["created_at"],
        bool(row["disabled"]),
        bool(row["store_default"]),
        bool(row["redact_pii"]),
        row["retention_days"],
    )


def key(row: Row) -> ApiKey:
    return ApiKey(
        row["id"],
        row["tenant_id"],
        row["name"],
        row["key_hash"],
        row["created_at"],
        row["revoked_at"],
    )


def alias(row: Row) -> Alias:
    target = AliasTarget(row["target_kind"], row["adapter_version"])
    return Alias(row["tenant_id"], row["name"], target, row["created_at"], row["updated_at"])


def event(row: Row) -> AliasEvent:
    return AliasEvent(
        row["seq"],
        row["tenant_id"],
        row["alias"],
        row["action"],
        row["from_version"],
        row["to_version"],
        row["actor"],
        row["reason"],
        bool(row["forced"]),
        row["at"],
    )


def adapter(row: Row) -> AdapterVersion:
    return AdapterVersion(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        content_hash=row["content_hash"],
        base_model=row["base_model"],
        base_hash=row["base_hash"],
        rank=row["rank"],
        alpha=float(row["alpha"]),
        target_modules=tuple(json.loads(row["target_modules"])),
        created_by=row["created_by"],
        status=row["status"],
        path=row["path"],
        size_bytes=row["size_bytes"],
        created_at=row["created_at"],
        dataset_id=row["dataset_id"],
        eval_report_ids=tuple(json.loads(row["eval_report_ids"])),
        trained_on_erased=bool(row["trained_on_erased"]),
    )


def completion(row: Row) -> Completion:
    return Completion(
        id=row["id"],
        tenant_id=row["tenant_id"],
        key_id=row["key_id"],
        kind=row["kind"],
        alias=row["alias"],
        adapter_version=row["adapter_version"],
        backend=row["backend"],
        stored=bool(row["stored"]),
        request=row["request"],
        response=row["response"],
        finish_reason=row["finish_reason"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency_ms=row["latency_ms"],
        ttft_ms=row["ttft_ms"],
        status=row["status"],
        error=row["error"],
        end_user=row["end_user"],
        metadata=json.loads(row["metadata"]),
        do_not_train=bool(row["do_not_train"]),
        request_id=row["request_id"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        tool_calls=row["tool_calls"],
    )


def feedback(row: Row) -> Feedback:
    return Feedback(
        id=row["id"],
        completion_id=row["completion_id"],
        tenant_id=row["tenant_id"],
        rating=row["rating"],
        score=row["score"],
        correction=row["correction"],
        comment=row["comment"],
        tags=tuple(json.loads(row["tags"])),
        author=row["author"],
        created_at=row["created_at"],
        key_id=row["key_id"],
        end_user=row["end_user"],
    )


def adapter_params(v: AdapterVersion) -> tuple[object, ...]:
    """In the column order of adapter_versions' INSERT in both backends."""
    return (
        v.id,
        v.tenant_id,
        v.name,
        v.content_hash,
        v.base_model,
        v.base_hash,
        v.rank,
        v.alpha,
        json.dumps(list(v.target_modules)),
        v.created_by,
        v.dataset_id,
        json.dumps(list(v.eval_report_ids)),
        v.status,
        v.path,
        v.size_bytes,
        v.created_at,
    )


def completion_params(c: Completion) -> tuple[object, ...]:
    """The write-ahead insert's values, in the column order both backends use."""
    return (
        c.id,
        c.tenant_id,
        c.key_id,
        c.kind,
        c.alias,
        c.adapter_version,
        c.backend,
        bool(c.stored),
        c.request,
        c.status,
        c.end_user,
        json.dumps(c.metadata) if c.metadata else "{}",
        c.request_id,
        c.created_at,
        c.tool_calls,
        bool(c.do_not_train),  # set at once for callers never trained on (an LLM judge)
    )


def final_params(f: CaptureFinal) -> tuple[object, ...]:
    """The final update's values (the row id last, for its WHERE)."""
    return (
        f.response,
        f.finish_reason,
        f.prompt_tokens,
        f.completion_tokens,
        f.latency_ms,
        f.ttft_ms,
        f.status,
        f.error,
        f.completed_at,
        f.backend,
        f.tool_calls,
        f.id,
    )
