"""OpenAI stored chat completions (list, get, messages, update, delete) and feedback on them.

Everything is scoped to the caller's tenant; another tenant's completion is a 404, exactly
like one that does not exist, so existence is never leaked.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Annotated, Literal, TypeVar

import msgspec
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.protocol import Metadata
from gateway.runtime import Gateway
from gateway.tenancy import Caller
from store import Completion, CompletionQuery, Feedback
from store.errors import InvalidRequest, NotFound
from store.privacy import redact

GW = NamedDependency[Gateway]
AnyRequest = Request[object, object, State]
Text = Annotated[str, msgspec.Meta(max_length=32_768)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class UpdateCompletion(msgspec.Struct, forbid_unknown_fields=True):
    metadata: Metadata | None = None
    do_not_train: bool | None = None  # loopgate extension


class FeedbackIn(msgspec.Struct, forbid_unknown_fields=True):
    rating: Literal["up", "down"] | None = None
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    correction: Text | None = None
    comment: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    tags: Annotated[list[Tag], msgspec.Meta(max_length=16)] = msgspec.field(default_factory=list)
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None


T = TypeVar("T")


def decode_body(raw: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"invalid request: {exc}") from None


async def _caller(request: AnyRequest, gw: Gateway) -> Caller:
    return await gw.directory.authenticate(request.headers.get("authorization"))


async def _owned(gw: Gateway, caller: Caller, completion_id: str) -> Completion:
    found = await gw.store.get_completion(caller.tenant_id, completion_id)
    if found is None or not found.stored or found.kind != "chat":
        raise NotFound(f"No chat completion found with id '{completion_id}'", param="completion_id")
    return found


def completion_object(c: Completion) -> dict[str, object]:
    usage = None
    if c.prompt_tokens is not None and c.completion_tokens is not None:
        usage = {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
        }
    return {
        "id": c.id,
        "object": "chat.completion",
        "created": int(c.created_at),
        "model": c.alias,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c.response},
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
        "metadata": c.metadata,
        "request_id": c.request_id,
        "loopgate": {
            "status": c.status,
            "adapter_version": c.adapter_version,
            "latency_ms": c.latency_ms,
            "ttft_ms": c.ttft_ms,
            "end_user": c.end_user,
            "do_not_train": c.do_not_train,
        },
    }


def _page(items: list[dict[str, object]], has_more: bool) -> dict[str, object]:
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }


def _query(request: AnyRequest, caller: Caller) -> CompletionQuery:
    params = request.query_params
    metadata = {
        k[len("metadata[") : -1]: v
        for k, v in params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    order = _order(params.get("order"))
    return CompletionQuery(
        caller.tenant_id,
        params.get("model"),
        metadata,
        params.get("after"),
        page_limit(params.get("limit")),
        order,
    )


def page_limit(raw: str | None) -> int:
    try:
        limit = 20 if raw is None else int(raw)  # `?limit=` is no number either
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100", param="limit")
    return limit


def _order(raw: str | None) -> Literal["asc", "desc"]:
    if raw in (None, "asc"):
        return "asc"
    if raw == "desc":
        return "desc"
    raise InvalidRequest("order must be 'asc' or 'desc'", param="order")


@get("/v1/chat/completions")
async def list_completions(request: AnyRequest, gw: GW) -> dict[str, object]:
    caller = await _caller(request, gw)
    rows, has_more = await gw.store.list_completions(_query(request, caller))
    return _page([completion_object(c) for c in rows if c.kind == "chat"], has_more)


@get("/v1/chat/completions/{completion_id:str}")
async def get_completion(
    request: AnyRequest, gw: GW, completion_id: FromPath[str]
) -> dict[str, object]:
    return completion_object(await _owned(gw, await _caller(request, gw), completion_id))


@get("/v1/chat/completions/{completion_id:str}/messages")
async def get_messages(
    request: AnyRequest, gw: GW, completion_id: FromPath[str]
) -> dict[str, object]:
    found = await _owned(gw, await _caller(request, gw), completion_id)
    messages = json.loads(found.request or "{}").get("messages", [])
    items: list[dict[str, object]] = [
        {"id": f"{found.id}-{i}", **m} for i, m in enumerate(messages)
    ]
    params = request.query_params
    limit = page_limit(params.get("limit"))
    if _order(params.get("order")) == "desc":
        items.reverse()
    if after := params.get("after"):
        ids = [m["id"] for m in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return _page(items[:limit], len(items) > limit)


@post("/v1/chat/completions/{completion_id:str}", status_code=200)
async def update_completion(
    request: AnyRequest, gw: GW, completion_id: FromPath[str]
) -> dict[str, object]:
    caller = await _caller(request, gw)
    await _owned(gw, caller, completion_id)
    data = decode_body(await request.body(), UpdateCompletion)
    updated = await gw.store.update_completion(
        caller.tenant_id, completion_id, metadata=data.metadata, do_not_train=data.do_not_train
    )
    assert updated is not None
    return completion_object(updated)


@delete("/v1/chat/completions/{completion_id:str}", status_code=200)
async def delete_completion(
    request: AnyRequest, gw: GW, completion_id: FromPath[str]
) -> dict[str, object]:
    caller = await _caller(request, gw)
    await _owned(gw, caller, completion_id)
    await gw.store.delete_completion(caller.tenant_id, completion_id)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


@post("/v1/chat/completions/{completion_id:str}/feedback", status_code=201)
async def add_feedback(request: AnyRequest, gw: GW, completion_id: FromPath[str]) -> Feedback:
    caller = await _caller(request, gw)
    await _owned(gw, caller, completion_id)
    data = decode_body(await request.body(), FeedbackIn)
    if (
        data.rating is None
        and data.score is None
        and data.correction is None
        and data.comment is None
    ):
        raise InvalidRequest("feedback needs at least one of rating, score, correction, comment")

    def clean(text: str | None) -> str | None:
        return redact(text).text if text is not None and caller.redact_pii else text

    feedback = Feedback(
        id="fb_" + secrets.token_hex(12),
        completion_id=completion_id,
        tenant_id=caller.tenant_id,
        rating=data.rating,
        score=data.score,
        correction=clean(data.correction),
        comment=clean(data.comment),
        tags=tuple(data.tags),
        author=f"user:{data.user}" if data.user else f"key:{caller.key_id}",
        created_at=time.time(),
        key_id=caller.key_id,  # a correction's author is the key that sent it (training.dataset)
        end_user=data.user or None,
    )
    await gw.store.add_feedback(feedback)
    return feedback


@get("/v1/chat/completions/{completion_id:str}/feedback")
async def list_feedback(
    request: AnyRequest, gw: GW, completion_id: FromPath[str]
) -> dict[str, object]:
    caller = await _caller(request, gw)
    await _owned(gw, caller, completion_id)
    return {"object": "list", "data": await gw.store.list_feedback(caller.tenant_id, completion_id)}


ROUTES = [
    list_completions,
    get_completion,
    get_messages,
    update_completion,
    delete_completion,
    add_feedback,
    list_feedback,
]
