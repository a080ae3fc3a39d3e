"""The statements for tenant/key limits and their shared fixed-window counters, in one dialect.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`. A reservation is one
conditional upsert per counter: the row grows only while it stays within its limit, so many
gateways sharing the database can never push a counter past it.
"""

from __future__ import annotations

from typing import Any, Protocol

from store.records import LIMIT_FIELDS, Charge, LimitSet


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


_COLUMNS = "tenant_id, key_id, " + ", ".join(LIMIT_FIELDS) + ", budget_period, updated_at"
SET_LIMITS = (
    f"INSERT INTO limits ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (tenant_id, key_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*LIMIT_FIELDS, "budget_period", "updated_at"))
)
DELETE_LIMITS = "DELETE FROM limits WHERE tenant_id = ? AND key_id = ?"
GET_LIMITS = "SELECT * FROM limits WHERE tenant_id = ? AND key_id = ?"
# The tenant's row and the key's row in one round trip.
LIMITS_FOR = "SELECT * FROM limits WHERE tenant_id = ? AND key_id IN ('', ?)"

RESERVE = (
    "INSERT INTO limit_counters (scope, window_id, used, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (scope, window_id) DO UPDATE SET used = limit_counters.used + excluded.used "
    "WHERE limit_counters.used + excluded.used <= ? RETURNING used"
)
USED = "SELECT used FROM limit_counters WHERE scope = ? AND window_id = ?"
# Settlement is the engine's truth: applied unconditionally, never below zero.
SETTLE = (
    "UPDATE limit_counters SET used = CASE WHEN used + ? > 0 THEN used + ? ELSE 0 END "
    "WHERE scope = ? AND window_id = ?"
)
PURGE = "DELETE FROM limit_counters WHERE expires_at < ?"


def limits_params(s: LimitSet) -> tuple[object, ...]:
    values = tuple(getattr(s, name) for name in LIMIT_FIELDS)
    return (s.tenant_id, s.key_id, *values, s.budget_period, s.updated_at)


def limits(row: Row) -> LimitSet:
    return LimitSet(**{k: row[k] for k in LimitSet.__struct_fields__})


def reserve_params(c: Charge) -> tuple[object, ...]:
    return (c.scope, c.window, c.amount, c.expires_at, c.limit)


def settle_params(c: Charge) -> tuple[object, ...]:
    return (c.amount, c.amount, c.scope, c.window)


def in_lock_order(charges: list[Charge]) -> list[int]:
    """Indices of `charges` in (scope, window) order: every writer locks counter rows in the
    same order, so two reservations never deadlock on PostgreSQL."""
    return sorted(range(len(charges)), key=lambda i: (charges[i].scope, charges[i].window))


class Denied(Exception):
    """Raised inside a reservation's transaction to roll it back."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index
