"""Who may set which dataset-builder knobs: a tenant key's ceilings, an admin's overrides.

A tenant key (`POST /v1/datasets`) may tighten the poisoning guards of `training.poisoning`, not
loosen them: `max_author_share` and `max_key_share` stop at TENANT_MAX_SHARE (above it one
author, or one key posing as many end users, could outweigh everyone else), and a snapshot the
guards stop for review is refused. An admin (the loop's `dataset`) may go past the ceilings and
override a review stop (`allow_flagged`: train without the flagged examples; `keep_flagged`:
with them), each only with a `reason`; the override (who, when, why, what) is recorded in the
dataset's report and on the loop run.
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from store.errors import InvalidRequest
from training.build_records import DatasetOverride, DatasetReport
from training.dataset_config import DatasetConfig

__all__ = [  # the override and the report are records the worker writes (training.build_records)
    "TENANT_MAX_SHARE",
    "AdminDataset",
    "BuildDataset",
    "DatasetOverride",
    "DatasetReport",
    "admin_config",
    "tenant_config",
]

TENANT_MAX_SHARE = 0.5
Share = Annotated[float, msgspec.Meta(gt=0, le=1)]


class BuildDataset(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/datasets (loopgate): a snapshot of the caller's captured traffic + feedback."""

    include_unrated: bool | None = None
    max_author_share: Share | None = None  # at most TENANT_MAX_SHARE for a tenant key
    max_key_share: Share | None = None  # likewise
    eval_fraction: Annotated[float, msgspec.Meta(ge=0, lt=1)] | None = None
    near_duplicate_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=16)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0)] | None = None


class AdminDataset(BuildDataset):
    """The loop's `dataset` (admin): no share ceilings, and overrides of a review stop; every
    one of those needs a `reason`, which is recorded."""

    allow_flagged: bool = False
    keep_flagged: bool = False
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None = None


def tenant_config(req: BuildDataset) -> DatasetConfig:
    """The builder's config for a tenant key: refused past the ceilings."""
    for name in ("max_author_share", "max_key_share"):
        value = getattr(req, name)
        if value is not None and value > TENANT_MAX_SHARE:
            raise InvalidRequest(
                f"{name} may be at most {TENANT_MAX_SHARE} for an API key (above it one "
                f"{name.split('_')[1]} could outweigh the rest of the data); an admin may set "
                "it on a loop's `dataset`, with a `reason`",
                param=name,
            )
    return _config(req)


def admin_config(req: AdminDataset, actor: str) -> tuple[DatasetConfig, DatasetOverride | None]:
    """The builder's config for an admin, and the override it makes (None: it makes none)."""
    overrides = [
        f"{name}={value}"
        for name in ("max_author_share", "max_key_share")
        if (value := getattr(req, name)) is not None and value > TENANT_MAX_SHARE
    ]
    overrides += [name for name in ("allow_flagged", "keep_flagged") if getattr(req, name)]
    config = _config(req)
    if not overrides:
        return config, None
    if req.reason is None or not req.reason.strip():
        raise InvalidRequest(
            f"{', '.join(overrides)} overrides a poisoning guard: give a `reason` (recorded)",
            param="dataset.reason",
        )
    return config, DatasetOverride(actor, time.time(), req.reason.strip(), overrides)


def _config(req: BuildDataset) -> DatasetConfig:
    given = msgspec.structs.asdict(req)
    given.pop("reason", None)
    try:
        return DatasetConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
