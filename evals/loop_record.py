"""A loop run's record (steps, ids, verdict) and the loop steps' wire types, gateway ⇄ evals worker.

The record is what `GET /admin/tenants/{t}/loops/{id}` shows; the store keeps it as the row's
`state`. The request that started the run is the gateway's (its `spec`): the worker reads only
the few fields it acts on (`LoopSpecView`) and asks the gateway for each step that needs the
gateway's validation and quotas (the dataset, the job, the eval, the promotion).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from training.build_records import DatasetOverride
from training.poisoning import Flag, Review

# A loop that ends in a rollout (the default) is `rolling_out` until the rollout ends; then it
# shows the rollout's end: `promoted`, `rolled_back` or `aborted` (gateway.loop.view).
LoopStatus = Literal[
    "running",
    "promoted",
    "refused",
    "failed",
    "needs_review",
    "rolling_out",
    "rolled_back",
    "aborted",
]


class Step(msgspec.Struct):
    at: float
    message: str


class LoopRun(msgspec.Struct):
    id: str
    tenant_id: str
    alias: str
    status: LoopStatus
    started_at: float
    steps: list[Step] = msgspec.field(default_factory=list)
    dataset_id: str | None = None
    job_id: str | None = None
    fine_tuned_model: str | None = None
    candidate: str | None = None
    eval_id: str | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    seconds: dict[str, float] = msgspec.field(default_factory=dict)
    finished_at: float | None = None
    review: Review | None = None  # the poisoning guards' verdict on the dataset
    flags: list[Flag] = msgspec.field(default_factory=list)  # the acting ones, on a review stop
    override: DatasetOverride | None = None  # an admin's, with its reason
    rollout_id: str | None = None  # the rollout the loop ended in (gateway.rollout)
    rollout_stage: str | None = None  # where it stands now, as shown


class LoopRequestView(msgspec.Struct):
    alias: str
    promote: bool = True
    end: Literal["rollout", "promote"] = "rollout"


class LoopSpecView(msgspec.Struct):
    """The part of the gateway's stored request the worker acts on."""

    request: LoopRequestView
    actor: str


class DatasetSummary(msgspec.Struct, frozen=True):
    id: str
    train_count: int
    eval_count: int
    preference_count: int


class LoopDataset(msgspec.Struct, frozen=True):
    """The dataset step's outcome: a saved dataset, or a stop for review with the acting flags."""

    review: Review
    dataset: DatasetSummary | None = None
    flags: list[Flag] = msgspec.field(default_factory=list)


class LoopJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dataset_id: str


class Created(msgspec.Struct, frozen=True):
    id: str


class TrainingFigures(msgspec.Struct):
    """The part of a job's result the loop reports: how fast it trained, in what, on what."""

    train_tokens: int = 0
    tokens_per_s: float = 0.0
    compute_dtype: str = ""
    hardware: str = ""


class JobFigures(msgspec.Struct):
    training: TrainingFigures | None = None


def training_summary(result: str | None) -> str:
    """A job result's 'N tokens at 146 tok/s, float32 on CPU AVX2 (bf16 emulated)', or ''."""
    try:
        figures = msgspec.json.decode(result or "{}", type=JobFigures).training
    except msgspec.DecodeError:
        return ""
    if figures is None:
        return ""
    return (
        f"{figures.train_tokens} tokens at {figures.tokens_per_s:.0f} tok/s, "
        f"{figures.compute_dtype or '?'} on {figures.hardware or '?'}"
    )
