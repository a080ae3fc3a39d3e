"""A chat completion stream as the Responses API's typed SSE events (pure: bytes in, bytes out).

Order, as OpenAI sends it: response.created, response.in_progress, then per output item
output_item.added, (content_part.added, output_text.delta..., output_text.done,
content_part.done | function_call_arguments.delta..., function_call_arguments.done),
output_item.done, and last response.completed (or response.failed). Every event is
`event: <type>` + `data: <json with "type" and "sequence_number">`.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from gateway.responses_object import (
    ChatBody,
    ChatCall,
    ResponseError,
    ResponseObject,
    State,
    finished,
    response_object,
    usage_of,
)
from gateway.responses_translate import FunctionCall, Item, Message, OutputText, new_id


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    sequence_number: int = 0


class _Whole(_Event, kw_only=True):
    response: ResponseObject


class Created(_Whole, tag="response.created"):
    pass


class InProgress(_Whole, tag="response.in_progress"):
    pass


class Completed(_Whole, tag="response.completed"):
    pass


class Failed(_Whole, tag="response.failed"):
    pass


class _ItemEvent(_Event, kw_only=True):
    output_index: int
    item: Item


class ItemAdded(_ItemEvent, tag="response.output_item.added"):
    pass


class ItemDone(_ItemEvent, tag="response.output_item.done"):
    pass


class _PartEvent(_Event, kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class PartAdded(_PartEvent, tag="response.content_part.added"):
    pass


class PartDone(_PartEvent, tag="response.content_part.done"):
    pass


class TextDelta(_Event, tag="response.output_text.delta", kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[object] = msgspec.field(default_factory=list)


class TextDone(_Event, tag="response.output_text.done", kw_only=True):
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[object] = msgspec.field(default_factory=list)


class ArgumentsDelta(_Event, tag="response.function_call_arguments.delta", kw_only=True):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(_Event, tag="response.function_call_arguments.done", kw_only=True):
    item_id: str
    output_index: int
    name: str
    arguments: str


_encoder = msgspec.json.Encoder()
_chunk = msgspec.json.Decoder(ChatBody)
DONE = b"[DONE]"


class ChatToResponses:
    """Translates one chat stream; `state` ends up the finished response (to store)."""

    def __init__(self, state: State):
        self.state = state
        self.seq = 0
        self.open: Message | FunctionCall | None = None  # the item being streamed
        self.parts: list[str] = []  # its text (or arguments) so far
        self.calls: dict[int, int] = {}  # chat tool-call index -> output index
        self.finish_reason: str | None = None
        self.done = False

    def _emit(self, event: _Event) -> bytes:
        event.sequence_number, self.seq = self.seq, self.seq + 1
        tag = type(event).__struct_config__.tag  # the tag is the class's, not a field
        return b"event: " + str(tag).encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"

    def opening(self) -> bytes:
        whole = response_object(self.state)
        return self._emit(Created(response=whole)) + self._emit(InProgress(response=whole))

    def feed(self, events: bytes) -> bytes:
        """Translate whole chat SSE events (the relay yields only whole ones)."""
        return b"".join(self._translate(events))

    def _translate(self, events: bytes) -> Iterator[bytes]:
        for line in events.split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == DONE:
                self.done = True
                continue
            try:
                chunk = _chunk.decode(data)
            except msgspec.DecodeError:
                continue
            yield from self._chunk(chunk)

    def _chunk(self, chunk: ChatBody) -> Iterator[bytes]:
        if chunk.error is not None:
            code = str(chunk.error.code or "server_error")
            self.state.error = ResponseError(code, chunk.error.message)
            return
        self.state.completion_id = self.state.completion_id or chunk.id or None
        if chunk.usage is not None:
            u = chunk.usage
            self.state.usage = usage_of(u.prompt_tokens, u.completion_tokens)
        for choice in chunk.choices[:1]:
            delta = choice.delta
            if delta is not None and delta.content:
                yield from self._text(delta.content)
            for call in (delta.tool_calls if delta is not None else None) or []:
                yield from self._call(call)
            self.finish_reason = choice.finish_reason or self.finish_reason

    def _text(self, text: str) -> Iterator[bytes]:
        if not isinstance(self.open, Message):
            yield from self._close()
            item = Message(id=new_id("msg"), role="assistant", content=[], status="in_progress")
            yield self._add(item)
            yield self._emit(PartAdded(item_id=item.id, output_index=self._at, part=OutputText("")))
        assert self.open is not None
        self.parts.append(text)
        yield self._emit(TextDelta(item_id=self.open.id, output_index=self._at, delta=text))

    def _call(self, call: ChatCall) -> Iterator[bytes]:
        if call.index not in self.calls:
            yield from self._close()
            item = FunctionCall(
                id=new_id("fc"),
                call_id=call.id or new_id("call"),
                name=call.function.name or "",
                arguments="",
                status="in_progress",
            )
            yield self._add(item)
            self.calls[call.index] = self._at
        fragment = call.function.arguments
        if fragment and isinstance(self.open, FunctionCall):
            self.parts.append(fragment)
            yield self._emit(
                ArgumentsDelta(item_id=self.open.id, output_index=self._at, delta=fragment)
            )

    @property
    def _at(self) -> int:
        return len(self.state.output)

    def _add(self, item: Message | FunctionCall) -> bytes:
        self.open, self.parts = item, []
        return self._emit(ItemAdded(output_index=self._at, item=item))

    def _close(self) -> Iterator[bytes]:
        """Finish the open item: its done events, and it joins the output."""
        item, at, text = self.open, self._at, "".join(self.parts)
        if item is None:
            return
        replace = msgspec.structs.replace
        if isinstance(item, Message):
            part = OutputText(text)
            yield self._emit(TextDone(item_id=item.id, output_index=at, text=text))
            yield self._emit(PartDone(item_id=item.id, output_index=at, part=part))
            done: Message | FunctionCall = replace(item, content=[part], status="completed")
        else:
            yield self._emit(
                ArgumentsDone(item_id=item.id, output_index=at, name=item.name, arguments=text)
            )
            done = replace(item, arguments=text, status="completed")
        yield self._emit(ItemDone(output_index=at, item=done))
        self.state.output.append(done)
        self.open, self.parts = None, []

    def finishing(self, now: float) -> bytes:
        """The open item's done events; the state is final after this (store it, then send
        `ending()`)."""
        if self.state.error is not None or not self.done:
            self.state.status = "failed"
            if self.state.error is None:
                self.state.error = ResponseError("server_error", "the stream ended early")
            return b""
        closing = b"".join(self._close())
        self.state.status, self.state.completed_at = finished(self.finish_reason), now
        return closing

    def ending(self) -> bytes:
        whole = response_object(self.state)
        if self.state.status == "failed":
            return self._emit(Failed(response=whole))
        return self._emit(Completed(response=whole))
