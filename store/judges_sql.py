"""The statements for each tenant's judge configuration, in one dialect (`?` placeholders;
PostgreSQL rewrites them with `training_sql.numbered`)."""

from __future__ import annotations

from typing import Any, Protocol

from store.records import JudgeConfig


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


_FIELDS = JudgeConfig.__struct_fields__
_UPDATED = [f for f in _FIELDS if f not in ("tenant_id", "created_at")]
SET_JUDGE = (
    f"INSERT INTO judges ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))}) "
    "ON CONFLICT (tenant_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
)
GET_JUDGE = "SELECT * FROM judges WHERE tenant_id = ?"
DELETE_JUDGE = "DELETE FROM judges WHERE tenant_id = ?"


def judge_params(judge: JudgeConfig) -> tuple[object, ...]:
    return tuple(getattr(judge, name) for name in _FIELDS)


def judge(row: Row) -> JudgeConfig:
    return JudgeConfig(**{name: row[name] for name in _FIELDS})
