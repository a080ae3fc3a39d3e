"""The Responses API (`/v1/responses`), served by translating each request into a chat completion
on the gateway's own chat path (gateway.serving): aliases, adapters, limits, quotas, capture,
failover and cache salts apply exactly as they do to chat.

A response is stored per tenant, linked to the captured chat completion it was served as; that
completion's id is the response's `loopgate.completion_id`, so feedback, datasets and the exact
adapter version are the completion's. Another tenant's response is a 404, like an unknown one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal, cast

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Raw
from gateway.request_id import request_id
from gateway.responses import CursorPageOf
from gateway.responses_object import ResponseObject, answer, response_object, usage_of
from gateway.responses_object import State as ResponseState
from gateway.responses_stream import ChatToResponses
from gateway.responses_translate import (
    Item,
    ResponsesRequest,
    chat_messages,
    chat_request,
    decode_echo,
    decode_items,
    decode_request,
    echo_of,
    encode,
    input_items,
    new_id,
    scrubbed,
)
from gateway.serving import Serving, primed
from gateway.tenancy import Caller
from store import Store, StoredResponse
from store.errors import InvalidRequest, NotFound
from store.privacy import redact

AnyRequest = Request[object, object, State]
PageLimit = Annotated[int, QueryParameter(ge=1, le=100, description="Page size (1-100)")]
RID = "/v1/responses/{response_id:str}"
MAX_CHAIN = 100  # responses a `previous_response_id` chain reaches back through, at most
_PASSED_HEADERS = ("x-loopgate-adapter-version", "x-ratelimit-", "cache-control", "x-accel-")
_STREAM = "text/event-stream"


class ResponseDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class Responder:
    """Creates responses through the chat path, and keeps them."""

    def __init__(self, serving: Serving, store: Store):
        self.serving = serving
        self.store = store

    async def create(
        self, caller: Caller, body: bytes, rid: str, priority: int | None = None
    ) -> Response[bytes] | Stream:
        """A response through the chat path; `priority` only for batch lines (gateway.batches)."""
        req = decode_request(body)
        state = self._start(caller, req)
        history = await self.history(caller, req.previous_response_id)
        messages = chat_messages(req.instructions, [*history, *state.input])
        chat = encode(chat_request(req, messages)).encode()
        served = await self.serving.complete(caller, chat, "chat", rid, priority)
        headers = {k: v for k, v in served.headers.items() if k.startswith(_PASSED_HEADERS)}
        if isinstance(served, Stream):
            chunks = cast(AsyncIterator[bytes], served.iterator)
            events = await primed(self._events(caller, state, chunks))
            return Stream(events, media_type=_STREAM, headers=headers)
        answer(state, served.content, time.time())
        await self.store.add_response(record(caller, state))
        return Response(encode(response_object(state)).encode(), headers=headers)

    def _start(self, caller: Caller, req: ResponsesRequest) -> ResponseState:
        stored = req.store if req.store is not None else caller.store_default
        return ResponseState(
            id=new_id("resp"),
            created_at=time.time(),
            model=req.model,
            echo=echo_of(req),
            previous_response_id=req.previous_response_id,
            store=stored,
            input=input_items(req),
        )

    async def history(self, caller: Caller, previous_id: str | None) -> list[Item]:
        """The conversation a response continues: each earlier response's input, then output."""
        if previous_id is None:
            return []
        chain = await self.store.response_chain(caller.tenant_id, previous_id, MAX_CHAIN)
        if not chain or chain[-1].id != previous_id:
            raise NotFound(
                f"No response found with id '{previous_id}'", param="previous_response_id"
            )
        if not chain[-1].stored:
            raise InvalidRequest(
                f"response '{previous_id}' was created with store=false and cannot be continued",
                param="previous_response_id",
            )
        items: list[Item] = []
        for earlier in chain:
            items += decode_items(earlier.input_items) + decode_items(earlier.output)
        return items

    async def _events(
        self, caller: Caller, state: ResponseState, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        translator = ChatToResponses(state)
        yield translator.opening()
        async for events in chunks:
            if out := translator.feed(events):
                yield out
        if closing := translator.finishing(time.time()):
            yield closing
        await self.store.add_response(record(caller, state))
        yield translator.ending()

    async def owned(self, caller: Caller, response_id: str) -> StoredResponse:
        found = await self.store.get_response(caller.tenant_id, response_id)
        if found is None or not found.stored:
            raise NotFound(f"No response found with id '{response_id}'", param="response_id")
        return found


def record(caller: Caller, s: ResponseState) -> StoredResponse:
    """The row of a response: its content only when stored, PII-redacted if the tenant asks."""
    echo, items, output = s.echo, s.input, s.output
    if caller.redact_pii:
        instructions = redact(echo.instructions).text if echo.instructions else None
        echo = msgspec.structs.replace(echo, instructions=instructions)
        items, output = scrubbed(items), scrubbed(output)
    usage = s.usage
    return StoredResponse(
        id=s.id,
        tenant_id=caller.tenant_id,
        completion_id=s.completion_id,
        previous_response_id=s.previous_response_id,
        model=s.model,
        stored=s.store,
        status="failed" if s.status == "in_progress" else s.status,
        request=encode(echo) if s.store else None,
        input_items=encode(items) if s.store else None,
        output=encode(output) if s.store else None,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        end_user=echo.user,
        created_at=s.created_at,
    )


def restored(r: StoredResponse) -> ResponseObject:
    """A stored response as the response object."""
    return response_object(
        ResponseState(
            id=r.id,
            created_at=r.created_at,
            model=r.model,
            echo=decode_echo(r.request),
            previous_response_id=r.previous_response_id,
            store=r.stored,
            input=[],
            output=decode_items(r.output),
            status=r.status,
            usage=usage_of(r.input_tokens, r.output_tokens),
            completion_id=r.completion_id,
        )
    )


def item_page(
    items: list[Item], after: str | None, limit: int, order: Literal["asc", "desc"]
) -> CursorPageOf[Item]:
    if order == "desc":
        items = items[::-1]
    if after:
        ids = [i.id for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    shown = items[:limit]
    first, last = (shown[0].id, shown[-1].id) if shown else (None, None)
    return CursorPageOf(data=shown, has_more=len(items) > limit, first_id=first, last_id=last)


@post(
    "/v1/responses",
    status_code=200,
    summary="Create a response (served as a chat completion)",
    dto=Raw[ResponsesRequest],
    return_dto=None,
    responses=apidoc.tenant(*apidoc.ENGINE),
    operation_class=apidoc.streamed({"type": "object", "required": ["id", "object", "output"]}),
)
async def create_response(
    request: AnyRequest,
    caller: Injected[Caller],
    serving: Injected[Serving],
    store: Injected[Store],
    data: JSONBody[bytes] = b"",
) -> Response[bytes] | Stream:
    return await Responder(serving, store).create(caller, data, request_id(request.scope))


@get(RID, summary="Get a stored response", responses=apidoc.tenant(404))
async def get_response(
    caller: Injected[Caller],
    serving: Injected[Serving],
    store: Injected[Store],
    response_id: FromPath[str],
) -> ResponseObject:
    return restored(await Responder(serving, store).owned(caller, response_id))


@delete(
    RID,
    status_code=200,
    summary="Delete a stored response (and the completion it was captured as)",
    responses=apidoc.tenant(404, *apidoc.WRITE),
)
async def delete_response(
    caller: Injected[Caller],
    serving: Injected[Serving],
    store: Injected[Store],
    response_id: FromPath[str],
) -> ResponseDeleted:
    await Responder(serving, store).owned(caller, response_id)
    await store.delete_response(caller.tenant_id, response_id)
    return ResponseDeleted(id=response_id)


@get(RID + "/input_items", summary="A stored response's input items", responses=apidoc.tenant(404))
async def list_input_items(
    caller: Injected[Caller],
    serving: Injected[Serving],
    store: Injected[Store],
    response_id: FromPath[str],
    after: FromQuery[str | None] = None,
    limit: PageLimit = 20,
    order: FromQuery[Literal["asc", "desc"]] = "desc",
) -> CursorPageOf[Item]:
    found = await Responder(serving, store).owned(caller, response_id)
    return item_page(decode_items(found.input_items), after, limit, order)


ROUTES = [create_response, get_response, delete_response, list_input_items]
