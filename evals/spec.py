"""What passes between the gateway and an evals worker: a queued run's spec and the answers route.

The gateway writes a `RunSpec` with the run (the policy in force when it was started and, when
the caller sent one, the suite's JSONL); the worker reads it back. The worker asks the gateway
for each answer (`POST /admin/tenants/{t}/evals/{run_id}/answers`): the gateway owns adapter
placement and the tenant's cache salt, and vLLM is reachable only through it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from evals.policy import PolicyIn
from training.chat import ChatMessage

System = Literal["candidate", "live", "base"]


class RunSpec(msgspec.Struct, frozen=True):
    policy: PolicyIn
    suite_jsonl: str | None = None  # None: the candidate dataset's held-out split


class AnswerRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One greedy completion of `messages` by one system of a running eval."""

    system: System
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1, max_length=256)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 96


class AnswerReply(msgspec.Struct, frozen=True):
    content: str
    latency_ms: float  # the engine's time for this answer, measured by the gateway
