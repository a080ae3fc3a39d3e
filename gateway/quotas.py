"""Fair shares of the shared training machine: per-tenant bounds on a job, quotas on the rest.

Bounds, on each fine-tuning job (a 400 `invalid_request_error`, `param` the hyperparameter or
`training_file`, code `bound_exceeded`): `n_epochs`, `batch_size`, `max_seq_length`, and the
training examples of its dataset. A value the caller chose past its bound is refused; one left
at its default ("auto") is lowered to the bound instead.

Quotas, on what a tenant keeps and starts (a 429 `rate_limit_error`, code `quota_exceeded`,
`param` the quota, `x-should-retry: false`): uploaded files (count and bytes), dataset
snapshots, queued jobs, jobs and eval runs created in the last 24 hours. The store checks each
in the transaction that adds the row (`Store.add_file` and co.), so concurrent requests never
overshoot; a cheap check first refuses before an upload is read or a dataset built.

Every value is the tenant's own (`PUT /admin/tenants/{t}/quotas`, null: the default), else the
gateway's default (`LOOPGATE_TENANT_MAX_<NAME>`, sized for the 2-core CPU host in
`store.settings`). The queue is fair as well: workers claim round-robin across tenants
(`training_sql.CLAIM_JOB`), and a job that keeps losing its worker fails after
`LOOPGATE_JOB_MAX_REQUEUES` requeues.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import replace
from typing import Annotated

import msgspec

from store import QUOTA_FIELDS, Dataset, Store, TenantQuotas, Usage
from store.errors import InvalidRequest, QuotaExceeded
from store.settings import Settings
from training.trainer_config import TrainConfig

Quota = Annotated[int, msgspec.Meta(ge=1, le=2**62)] | None


class QuotaSet(msgspec.Struct, frozen=True):
    """The bounds and quotas in force for one tenant."""

    max_epochs: int
    max_batch_size: int
    max_seq_length: int
    max_train_examples: int
    max_queued_jobs: int
    max_jobs_per_day: int
    max_files: int
    max_file_bytes: int
    max_datasets: int
    max_eval_runs_per_day: int
    max_active_batches: int
    max_batch_lines: int

    def limits(self) -> Usage:
        """The quotas as caps on the store's usage counts."""
        return Usage(**{count: getattr(self, quota) for count, quota in QUOTA_OF.items()})


class QuotasBody(msgspec.Struct, forbid_unknown_fields=True):
    """PUT /admin/tenants/{t}/quotas: replaces the tenant's own values; null = the default."""

    max_epochs: Quota = None
    max_batch_size: Quota = None
    max_seq_length: Annotated[int, msgspec.Meta(ge=16, le=2**62)] | None = None
    max_train_examples: Quota = None
    max_queued_jobs: Quota = None
    max_jobs_per_day: Quota = None
    max_files: Quota = None
    max_file_bytes: Quota = None
    max_datasets: Quota = None
    max_eval_runs_per_day: Quota = None
    max_active_batches: Quota = None
    max_batch_lines: Quota = None


class Standing(msgspec.Struct, frozen=True):
    """A tenant's quotas in force and its usage, read together."""

    quotas: QuotaSet
    usage: Usage

    def room(self, count: str) -> int:
        """How much of a Usage count the tenant may still add."""
        return int(getattr(self.quotas.limits(), count) - getattr(self.usage, count))


class TenantShares(msgspec.Struct, frozen=True):
    """GET/PUT /admin/tenants/{t}/quotas: the tenant's own values, those in force, its usage."""

    tenant_id: str
    own: QuotasBody
    in_force: QuotaSet
    usage: Usage


# Each usage count, the quota that caps it, what it counts, and what frees room.
QUOTA_OF = {
    "files": "max_files",
    "file_bytes": "max_file_bytes",
    "datasets": "max_datasets",
    "queued_jobs": "max_queued_jobs",
    "jobs_last_day": "max_jobs_per_day",
    "eval_runs_last_day": "max_eval_runs_per_day",
    "active_batches": "max_active_batches",
}
_COUNTED = {
    "files": ("files", "delete files it no longer needs"),
    "file_bytes": ("bytes of uploaded files", "delete files it no longer needs"),
    "datasets": ("dataset snapshots", "ask the admin to raise the quota"),
    "queued_jobs": ("queued fine-tuning jobs", "wait for one to start, or cancel one"),
    "jobs_last_day": ("fine-tuning jobs created in 24 hours", "try again later"),
    "eval_runs_last_day": ("eval runs started in 24 hours", "try again later"),
    "active_batches": ("batches not yet ended", "wait for one to end, or cancel one"),
}
# The bounded hyperparameters: the API's name, TrainConfig's field, the bound.
_BOUNDS = (
    ("n_epochs", "epochs", "max_epochs"),
    ("batch_size", "batch_size", "max_batch_size"),
    ("max_seq_length", "max_seq_length", "max_seq_length"),
)


def in_force(settings: Settings, own: TenantQuotas | None) -> QuotaSet:
    """The tenant's own value of each quota, else the gateway's default."""
    values = {}
    for name in QUOTA_FIELDS:
        mine = getattr(own, name) if own is not None else None
        values[name] = mine if mine is not None else getattr(settings, f"tenant_{name}")
    return QuotaSet(**values)


def refusal(quotas: QuotaSet, count: str) -> QuotaExceeded:
    """The error for a usage count that would go past its quota."""
    quota = QUOTA_OF[count]
    what, remedy = _COUNTED[count]
    return QuotaExceeded(
        f"this tenant may have at most {getattr(quotas, quota)} {what} (quota {quota}); {remedy}",
        param=quota,
    )


def bounded(config: TrainConfig, chosen: Collection[str], quotas: QuotaSet) -> TrainConfig:
    """`config` within the tenant's bounds. A hyperparameter in `chosen` (the caller set it)
    past its bound is a 400 naming it; one left at its default is lowered to the bound."""
    for param, field, quota in _BOUNDS:
        value, bound = getattr(config, field), getattr(quotas, quota)
        if value <= bound:
            continue
        if param in chosen:
            raise InvalidRequest(
                f"{param} is {value}; this tenant's bound is {bound} (quota {quota}, which "
                "the admin sets per tenant)",
                param=param,
                code="bound_exceeded",
            )
        config = replace(config, **{field: bound})
    return config


def check_examples(dataset: Dataset, quotas: QuotaSet) -> None:
    """A job's dataset within the tenant's bound on training examples."""
    bound = quotas.max_train_examples
    if dataset.train_count > bound:
        raise InvalidRequest(
            f"dataset {dataset.id} has {dataset.train_count} training examples; this tenant's "
            f"bound is {bound} (quota max_train_examples): use a smaller file or dataset",
            param="training_file",
            code="bound_exceeded",
        )


class Quotas:
    """Reads each tenant's quotas in force and checks what a request would add to its usage."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store

    async def of(self, tenant_id: str) -> QuotaSet:
        return in_force(self.settings, await self.store.get_quotas(tenant_id))

    async def check(self, tenant_id: str, adding: Usage) -> Standing:
        """The tenant's standing, refused (429) when `adding` does not fit: the early check
        before costly work; the store checks again, atomically, when it adds the row."""
        standing = Standing(await self.of(tenant_id), await self.store.tenant_usage(tenant_id))
        over = standing.usage.over(standing.quotas.limits(), adding)
        if over is not None:
            raise refusal(standing.quotas, over)
        return standing

    async def shares(self, tenant_id: str) -> TenantShares:
        own = await self.store.get_quotas(tenant_id)
        body = QuotasBody(**{n: getattr(own, n) for n in QUOTA_FIELDS}) if own else QuotasBody()
        usage = await self.store.tenant_usage(tenant_id)
        return TenantShares(tenant_id, body, in_force(self.settings, own), usage)

    async def save(self, tenant_id: str, body: QuotasBody) -> TenantShares:
        values = msgspec.structs.asdict(body)
        await self.store.set_quotas(TenantQuotas(tenant_id, **values, updated_at=time.time()))
        return await self.shares(tenant_id)
