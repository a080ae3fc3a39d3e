"""OpenAI stored chat completions (list, get, messages, update, delete) and feedback on them.

Everything is scoped to the caller's tenant; another tenant's completion is a 404, exactly
like one that does not exist, so existence is never leaked.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Literal

import msgspec
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Json
from gateway.protocol import Metadata
from gateway.responses import (
    CompletionDeleted,
    CursorPageOf,
    ListOf,
    StoredCompletion,
    StoredMessage,
    stored_messages,
)
from gateway.tenancy import Caller
from store import Completion, CompletionQuery, Feedback, Store
from store.errors import InvalidRequest, NotFound
from store.privacy import redact

AnyRequest = Request[object, object, State]
Text = Annotated[str, msgspec.Meta(max_length=32_768)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PageLimit = Annotated[int, QueryParameter(ge=1, le=100, description="Page size (1-100)")]
Order = Literal["asc", "desc"]
CID = "/v1/chat/completions/{completion_id:str}"


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

    def feedback(self, caller: Caller, completion_id: str) -> Feedback:
        """An API client's record: the end user it names, else its key, is the author."""
        return self.record(
            completion_id,
            caller.tenant_id,
            redact_pii=caller.redact_pii,
            author=f"user:{self.user}" if self.user else f"key:{caller.key_id}",
            key_id=caller.key_id,  # a correction's author is the key that sent it
            end_user=self.user or None,
        )

    def record(
        self,
        completion_id: str,
        tenant_id: str,
        *,
        redact_pii: bool,
        author: str,
        key_id: str | None,
        end_user: str | None,
    ) -> Feedback:
        """The record (also of a console reviewer's decision): free text redacted when the
        tenant asks for it; its author named."""
        if self.rating is None and self.score is None and not self._has_text():
            raise InvalidRequest(
                "feedback needs at least one of rating, score, correction, comment"
            )

        def clean(text: str | None) -> str | None:
            return redact(text).text if text is not None and redact_pii else text

        return Feedback(
            id="fb_" + secrets.token_hex(12),
            completion_id=completion_id,
            tenant_id=tenant_id,
            rating=self.rating,
            score=self.score,
            correction=clean(self.correction),
            comment=clean(self.comment),
            tags=tuple(self.tags),
            author=author,
            created_at=time.time(),
            key_id=key_id,
            end_user=end_user,
        )

    def _has_text(self) -> bool:
        return self.correction is not None or self.comment is not None


async def owned(store: Store, caller: Caller, completion_id: str) -> Completion:
    found = await store.get_completion(caller.tenant_id, completion_id)
    if found is None or not found.stored or found.kind != "chat":
        raise NotFound(f"No chat completion found with id '{completion_id}'", param="completion_id")
    return found


def page(items: list[StoredCompletion], has_more: bool) -> CursorPageOf[StoredCompletion]:
    first, last = (items[0].id, items[-1].id) if items else (None, None)
    return CursorPageOf(data=items, has_more=has_more, first_id=first, last_id=last)


def message_page(
    items: list[StoredMessage], after: str | None, limit: int, order: Order
) -> CursorPageOf[StoredMessage]:
    if order == "desc":
        items.reverse()
    if after:
        ids = [m.id for m in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    shown = items[:limit]
    first, last = (shown[0].id, shown[-1].id) if shown else (None, None)
    return CursorPageOf(data=shown, has_more=len(items) > limit, first_id=first, last_id=last)


def metadata_filter(request: AnyRequest) -> dict[str, str]:
    """`metadata[key]=value` query parameters (OpenAI's filter on stored completions)."""
    params = request.query_params
    return {
        k[len("metadata[") : -1]: v
        for k, v in params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }


@get("/v1/chat/completions", summary="List stored chat completions", responses=apidoc.tenant())
async def list_completions(
    request: AnyRequest,
    caller: Injected[Caller],
    store: Injected[Store],
    model: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    limit: PageLimit = 20,
    order: FromQuery[Order] = "asc",
) -> CursorPageOf[StoredCompletion]:
    query = CompletionQuery(caller.tenant_id, model, metadata_filter(request), after, limit, order)
    rows, has_more = await store.list_completions(query)
    return page([StoredCompletion.of(c) for c in rows if c.kind == "chat"], has_more)


@get(CID, summary="Get a stored chat completion", responses=apidoc.tenant(404))
async def get_completion(
    caller: Injected[Caller], store: Injected[Store], completion_id: FromPath[str]
) -> StoredCompletion:
    return StoredCompletion.of(await owned(store, caller, completion_id))


@get(CID + "/messages", summary="The messages of a stored completion", responses=apidoc.tenant(404))
async def get_messages(
    caller: Injected[Caller],
    store: Injected[Store],
    completion_id: FromPath[str],
    after: FromQuery[str | None] = None,
    limit: PageLimit = 20,
    order: FromQuery[Order] = "asc",
) -> CursorPageOf[StoredMessage]:
    found = await owned(store, caller, completion_id)
    return message_page(stored_messages(found), after, limit, order)


@post(
    CID,
    status_code=200,
    summary="Update a stored completion's metadata",
    dto=Json[UpdateCompletion],
    return_dto=None,
    responses=apidoc.tenant(404, 413, *apidoc.WRITE),
)
async def update_completion(
    caller: Injected[Caller],
    store: Injected[Store],
    completion_id: FromPath[str],
    data: JSONBody[UpdateCompletion | None] = None,
) -> StoredCompletion:
    await owned(store, caller, completion_id)
    change = data or UpdateCompletion()
    updated = await store.update_completion(
        caller.tenant_id, completion_id, metadata=change.metadata, do_not_train=change.do_not_train
    )
    assert updated is not None
    return StoredCompletion.of(updated)


@delete(
    CID,
    status_code=200,
    summary="Delete a stored chat completion",
    responses=apidoc.tenant(404, *apidoc.WRITE),
)
async def delete_completion(
    caller: Injected[Caller], store: Injected[Store], completion_id: FromPath[str]
) -> CompletionDeleted:
    await owned(store, caller, completion_id)
    await store.delete_completion(caller.tenant_id, completion_id)
    return CompletionDeleted(id=completion_id)


@post(
    CID + "/feedback",
    status_code=201,
    summary="Add feedback on a stored completion",
    dto=Json[FeedbackIn],
    return_dto=None,
    responses=apidoc.tenant(404, 413, *apidoc.WRITE),
)
async def add_feedback(
    caller: Injected[Caller],
    store: Injected[Store],
    completion_id: FromPath[str],
    data: JSONBody[FeedbackIn | None] = None,
) -> Feedback:
    await owned(store, caller, completion_id)
    feedback = (data or FeedbackIn()).feedback(caller, completion_id)
    await store.add_feedback(feedback)
    return feedback


@get(CID + "/feedback", summary="List a completion's feedback", responses=apidoc.tenant(404))
async def list_feedback(
    caller: Injected[Caller], store: Injected[Store], completion_id: FromPath[str]
) -> ListOf[Feedback]:
    await owned(store, caller, completion_id)
    return ListOf(data=list(await store.list_feedback(caller.tenant_id, completion_id)))


ROUTES = [
    list_completions,
    get_completion,
    get_messages,
    update_completion,
    delete_completion,
    add_feedback,
    list_feedback,
]
