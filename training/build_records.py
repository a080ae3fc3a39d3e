"""What a queued dataset build carries between the gateway and the worker: the admin's override,
the report a dataset keeps, and the error of a failed build (pure records; no builder code)."""

from __future__ import annotations

import msgspec

from training.poisoning import Flag, Review
from training.snapshot import DatasetStats


class DatasetOverride(msgspec.Struct, frozen=True):
    """An admin's override of the poisoning guards, as recorded."""

    actor: str
    at: float
    reason: str
    overrides: list[str]  # e.g. ["allow_flagged", "max_author_share=0.8"]


class DatasetReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a dataset's `report` holds (its record's `stats` column)."""

    stats: DatasetStats
    flags: list[Flag]
    review: Review
    override: DatasetOverride | None = None


class ReviewStop(msgspec.Struct, frozen=True):
    """A build the poisoning guards stopped for review (its record's `report` column)."""

    review: Review
    flags: list[Flag]


class BuildError(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why a build failed, as the gateway renders it: an HTTP status and OpenAI-style fields;
    `over` names the quota (a `store.Usage` field) that adding the dataset would pass."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    over: str | None = None
