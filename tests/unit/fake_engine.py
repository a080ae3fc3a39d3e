"""A fake vLLM at the network edge (httpx.MockTransport), recording what the gateway sends."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

ENGINE_MODEL = "smollm2-135m-instruct"


def chat_body(
    text: str = "Paris.", model: str = ENGINE_MODEL, cid: str = "chatcmpl-1"
) -> dict[str, object]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def completion_body(text: str = "Paris.", model: str = ENGINE_MODEL) -> dict[str, object]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def sse_chunks(
    words: list[str], model: str = ENGINE_MODEL, done: bool = True, cid: str = "chatcmpl-1"
) -> list[bytes]:
    out = []
    for w in words:
        chunk = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
        }
        out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


class BrokenStream(httpx.AsyncByteStream):
    """Yields some chunks, then fails like a dropped connection."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body"
        )


class ChunkStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c


@dataclass
class FakeEngine:
    """Answers like vLLM; `mode` switches the behaviour per test."""

    mode: str = "ok"
    requests: list[httpx.Request] = field(default_factory=list)
    stream_words: list[str] = field(
        default_factory=lambda: ["The", " capital", " is", " Paris", "."]
    )
    healthy: bool = True
    reply: str = "Paris."
    custom: Callable[[httpx.Request], httpx.Response] | None = None
    loras: dict[str, str] = field(default_factory=dict)  # engine name -> path
    lora_log: list[tuple[str, str]] = field(default_factory=list)  # (load|unload, name)
    fail_for: tuple[str, ...] = ()  # models whose name ends with one of these answer 500
    delay_for: dict[str, float] = field(default_factory=dict)  # model name suffix -> seconds
    # Answers an LLM judge's prompts (evals.graders.judge_prompt), given the prompt's text.
    judge_reply: Callable[[str], str] | None = None

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith("completions")]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200 if self.healthy else 503)
        if request.url.path == "/v1/models":
            data = [{"id": ENGINE_MODEL, "parent": None}]
            data += [{"id": name, "parent": ENGINE_MODEL} for name in self.loras]
            return httpx.Response(200, json={"object": "list", "data": data})
        if request.url.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            return self.lora_admin(request)
        self.requests.append(request)
        if self.custom is not None:
            return self.custom(request)
        if self.mode == "refuse":
            raise httpx.ConnectError("connection refused")
        if self.mode == "timeout":
            raise httpx.ReadTimeout("timed out")
        if self.mode == "engine400":
            return httpx.Response(
                400,
                json={
                    "error": {
                        "message": "engine says no",
                        "type": "BadRequestError",
                        "param": None,
                        "code": 400,
                    }
                },
            )
        if self.mode == "engine500":
            return httpx.Response(500, text="Internal Server Error")
        body = json.loads(request.content)
        if str(body["model"]).endswith(self.fail_for):
            return httpx.Response(500, text="Internal Server Error")
        for suffix, seconds in self.delay_for.items():
            if str(body["model"]).endswith(suffix):
                time.sleep(seconds)  # blocks the test's loop: only the slow model is slow
        if body["model"] != ENGINE_MODEL and body["model"] not in self.loras:
            return httpx.Response(
                404,
                json={
                    "error": {
                        "message": "no such model",
                        "type": "NotFoundError",
                        "param": None,
                        "code": 404,
                    }
                },
            )
        cid = "chatcmpl-" + request.headers.get("x-request-id", "1")  # as vLLM names it
        if body.get("stream"):
            chunks = sse_chunks(self.stream_words, model=body["model"], cid=cid)
            if self.mode == "break":
                return httpx.Response(
                    200,
                    stream=BrokenStream(chunks[:2]),
                    headers={"content-type": "text/event-stream"},
                )
            if self.mode == "truncate":
                return httpx.Response(
                    200,
                    stream=ChunkStream(chunks[:2]),
                    headers={"content-type": "text/event-stream"},
                )
            # Re-cut the bytes at awkward places: events must still arrive whole.
            data = b"".join(chunks)
            pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
            return httpx.Response(
                200, stream=ChunkStream(pieces), headers={"content-type": "text/event-stream"}
            )
        text = self.reply
        if request.url.path == "/v1/completions":  # vLLM answers a raw prompt with `text`
            return httpx.Response(200, json=completion_body(text=text, model=body["model"]))
        prompt = str((body.get("messages") or [{}])[-1].get("content", ""))
        if self.judge_reply is not None and prompt.startswith("You are grading"):
            text = self.judge_reply(prompt)
        return httpx.Response(200, json=chat_body(text=text, model=body["model"], cid=cid))

    def lora_admin(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        name = body["lora_name"]
        if request.url.path.endswith("/load_lora_adapter"):
            if name in self.loras:
                return httpx.Response(400, json={"error": {"message": f"{name} already loaded"}})
            self.loras[name] = body["lora_path"]
            self.lora_log.append(("load", name))
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if name not in self.loras:
            return httpx.Response(404, json={"error": {"message": f"{name} not found"}})
        del self.loras[name]
        self.lora_log.append(("unload", name))
        return httpx.Response(200, text="Success")
