"""Human review of captured completions: the next one to review and why, and a decision.

The queue (`Store.next_to_review`, SQL in store.review_sql) holds a tenant's stored chat
completions with negative feedback, with a low grade on an eval case taken from them, or where
the two disagree, until someone reviews them. A decision is feedback, the same record the
feedback API writes (`FeedbackIn.record`): approve rates the answer up, reject rates it down,
correct sends the reviewer's answer as a correction, which a dataset built later trains on
instead of the model's (training.dataset). The builder lets the latest reviewer's decision
override users' feedback (an approved answer a user rated down is trained on, a rejected one a
user rated up is not). A completion takes one decision: a second is a Conflict (409), decided by
the store in one statement (`Store.add_review`), so two reviewers at once never both write.
API clients cannot author `reviewer:` feedback (theirs is `user:…` or `key:…`, set by
`FeedbackIn.feedback`). Its provenance: the author `reviewer:<name>`, the tags `review` and
`review:<decision>`, and the example's `feedback_ids` in the snapshot. It has
no API key and names no end user, so the builder counts a correction as the completion's
(its key and end user), as it does feedback sent before keys were recorded: a trusted person's
corrections are not capped by the per-author poisoning guard as if one end user wrote them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import msgspec

from gateway.completions_api import FeedbackIn
from gateway.responses import stored_messages
from store import Completion, Feedback, ReviewCandidate, Store, Tenant
from store.errors import Conflict, InvalidRequest, NotFound
from store.review_sql import REVIEWER_PREFIX
from training.dataset_config import DatasetConfig

Decision = Literal["approve", "correct", "reject"]
DECISIONS: tuple[str, ...] = get_args(Decision)
REVIEW_TAG = "review"
# Feedback scored below this is negative, as the dataset builder counts it by default; an eval
# case graded below it makes the completion it came from worth a look.
THRESHOLD = DatasetConfig().positive_score


@dataclass(frozen=True, slots=True)
class Turn:
    role: str
    text: str


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """What a reviewer sees: the conversation, the model's answer, why it was picked."""

    completion: Completion
    turns: list[Turn]
    answer: str
    reasons: list[str]
    waiting: int  # the tenant's completions waiting, this one included


async def next_item(store: Store, tenant_id: str) -> ReviewItem | None:
    found = await store.next_to_review(tenant_id, THRESHOLD)
    return None if found is None else item_of(found)


def item_of(found: ReviewCandidate) -> ReviewItem:
    c = found.completion
    return ReviewItem(c, conversation(c), c.response or "", reasons(found), found.waiting)


def conversation(c: Completion) -> list[Turn]:
    return [Turn(m.role, text_of(m.content)) for m in stored_messages(c)]


def text_of(content: str | list[object] | None) -> str:
    """A message's text; parts that are not text are named, not shown."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else None
            texts.append(f"[{kind or 'non-text'} part]")
    return "\n".join(texts)


def reasons(found: ReviewCandidate) -> list[str]:
    """Why this completion is in the queue, in words."""
    said: list[str] = []
    if found.positive and (found.negative or found.low_score is not None):
        said.append("disagreement: positive feedback beside a negative signal")
    if found.negative:
        said.append(
            f"{found.negative} negative feedback (rated down or scored below {THRESHOLD:g})"
        )
    if found.positive:
        said.append(f"{found.positive} positive feedback")
    if found.low_score is not None:
        said.append(
            f"an eval case taken from it was graded {found.low_score:.2f} (below {THRESHOLD:g})"
        )
    return said


async def decide(
    store: Store,
    tenant: Tenant,
    completion_id: str,
    decision: str,
    correction: str | None,
    reviewer: str,
) -> Feedback:
    """Record a reviewer's decision on one of the tenant's completions as feedback."""
    chosen = decision_of(decision)
    completion = await reviewable(store, tenant.id, completion_id)
    body = feedback_body(chosen, completion, correction)
    record = body.record(
        completion.id,
        tenant.id,
        redact_pii=tenant.redact_pii,
        author=REVIEWER_PREFIX + reviewer,
        key_id=None,
        end_user=None,
    )
    if not await store.add_review(record):  # one statement: of two racing reviewers, one wins
        raise Conflict(f"completion '{completion_id}' has already been reviewed")
    return record


def decision_of(value: str) -> Decision:
    if value not in DECISIONS:
        raise InvalidRequest(
            f"unknown decision {value[:40]!r}: one of {', '.join(DECISIONS)}", param="decision"
        )
    return value  # type: ignore[return-value]  # checked against the Literal's values above


async def reviewable(store: Store, tenant_id: str, completion_id: str) -> Completion:
    """The tenant's stored chat completion (another tenant's: not found)."""
    found = await store.get_completion(tenant_id, completion_id)
    if found is None or not found.stored or found.kind != "chat":
        raise NotFound(f"No chat completion found with id '{completion_id}'", param="completion_id")
    return found


def feedback_body(decision: Decision, completion: Completion, correction: str | None) -> FeedbackIn:
    """The feedback a decision sends, validated as the feedback API validates a body."""
    fields: dict[str, object] = {"tags": [REVIEW_TAG, f"{REVIEW_TAG}:{decision}"]}
    if decision == "correct":
        fields["correction"] = corrected_answer(completion, correction)
    else:
        fields["rating"] = "up" if decision == "approve" else "down"
    try:
        return msgspec.convert(fields, FeedbackIn)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid review: {exc}", param="correction") from None


def corrected_answer(completion: Completion, correction: str | None) -> str:
    """The reviewer's answer (a browser sends a textarea's line breaks as CRLF)."""
    text = (correction or "").replace("\r\n", "\n").strip()
    if not text:
        raise InvalidRequest("a correction needs the corrected answer", param="correction")
    if text == (completion.response or "").strip():
        raise InvalidRequest(
            "the correction is the model's answer unchanged: approve it instead",
            param="correction",
        )
    return text
