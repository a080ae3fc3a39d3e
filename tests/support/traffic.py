"""Synthetic captured traffic for the dataset tests: completions and feedback built in code."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from typing import Literal

from store.records import CaptureStatus, Completion, Feedback

Row = tuple[Completion, list[Feedback]]
T0 = 1_800_000_000.0


def words(rng: random.Random, n: int) -> str:
    """n random lower-case pseudo-words: unrelated sentences share almost no shingles."""
    return " ".join(
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(n)
    )


def completion(
    cid: str,
    prompt: str | Sequence[object],
    answer: str | None,
    *,
    end_user: str | None = None,
    key_id: str = "key-1",
    created_at: float = T0,
    status: CaptureStatus = "complete",
    finish_reason: str | None = "stop",
    do_not_train: bool = False,
    kind: Literal["chat", "completion"] = "chat",
    alias: str = "assistant",
    adapter_version: str | None = None,
    system: str | None = None,
    request: str | None = None,
) -> Completion:
    """A captured chat exchange; `prompt` is the user content (a string or content parts)."""
    messages: list[object] = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": prompt})
    body = {"model": alias, "messages": messages, "temperature": 0.2}
    return Completion(
        id=cid,
        tenant_id="acme",
        key_id=key_id,
        kind=kind,
        alias=alias,
        adapter_version=adapter_version,
        backend="http://engine.test",
        stored=True,
        request=json.dumps(body) if request is None else request,
        response=answer,
        finish_reason=finish_reason,
        prompt_tokens=10,
        completion_tokens=20,
        latency_ms=100.0,
        ttft_ms=10.0,
        status=status,
        error=None,
        end_user=end_user,
        metadata={},
        do_not_train=do_not_train,
        request_id=None,
        created_at=created_at,
        completed_at=created_at + 1,
    )


def feedback(
    completion_id: str,
    *,
    rating: Literal["up", "down"] | None = None,
    score: float | None = None,
    correction: str | None = None,
    created_at: float = T0 + 60,
    fid: str | None = None,
    author: str = "reviewer",
    key_id: str | None = None,
    end_user: str | None = None,
) -> Feedback:
    return Feedback(
        id=fid or f"fb-{completion_id}-{created_at}",
        completion_id=completion_id,
        tenant_id="acme",
        rating=rating,
        score=score,
        correction=correction,
        comment=None,
        tags=(),
        author=author,
        created_at=created_at,
        key_id=key_id,
        end_user=end_user,
    )


def liked(c: Completion) -> Row:
    return c, [feedback(c.id, rating="up")]


def liked_traffic(
    n: int, *, seed: int = 0, authors: int | None = None, start: int = 0, prefix: str = "c"
) -> list[Row]:
    """n distinct exchanges rated 'up'; author i % authors (default: everyone different)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(start, start + n):
        user = f"user-{i % authors if authors else i}"
        c = completion(
            f"{prefix}{i}", words(rng, 8), words(rng, 15), end_user=user, created_at=T0 + i
        )
        rows.append(liked(c))
    return rows
