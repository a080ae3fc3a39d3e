"""Wire types of the OpenAI-compatible API: what a client may send, and what reaches vLLM.

Decoding a body into these structs *is* the field allowlist: a field not declared here is
dropped and never reaches the engine. Fields the gateway acts on are typed and validated;
the rest of the allowed set is carried as decoded JSON and re-encoded untouched. Fields that
would reach the engine's internals (chat templates, engine-side request ids, KV-transfer
parameters, ...) are declared only so that sending them is a clear 400.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from store.errors import InvalidRequest

PositiveInt = Annotated[int, Meta(ge=1)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)]
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]
# One request may not ask the engine for more than this: prompts in a legacy completion, and
# sequences generated in all (prompts x max(n, best_of)). A tenant's request is one of many in
# the engine's batch; bigger jobs belong in several requests, each counted by the limits.
MAX_PROMPTS = 64
MAX_SEQUENCES = 64

FORBIDDEN_FIELDS = (
    "chat_template",
    "chat_template_kwargs",
    "mm_processor_kwargs",
    "kv_transfer_params",
    "vllm_xargs",
    "request_id",
    "priority",
    "cache_salt",
    "logits_processors",
    "return_tokens_as_token_ids",
    "lora_request",
)


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | UnsetType = UNSET
    continuous_usage_stats: bool | UnsetType = UNSET


class _Forbidden(msgspec.Struct, kw_only=True):
    """Engine-internal fields: declared only to refuse them."""

    chat_template: object = UNSET
    chat_template_kwargs: object = UNSET
    mm_processor_kwargs: object = UNSET
    kv_transfer_params: object = UNSET
    vllm_xargs: object = UNSET
    request_id: object = UNSET
    priority: object = UNSET
    cache_salt: object = UNSET
    logits_processors: object = UNSET
    return_tokens_as_token_ids: object = UNSET
    lora_request: object = UNSET


class _Sampling(_Forbidden, kw_only=True):
    """Fields common to chat and legacy completions."""

    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | UnsetType | None = UNSET
    max_tokens: PositiveInt | UnsetType | None = UNSET
    n: Annotated[int, Meta(ge=1, le=16)] | UnsetType = UNSET
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | UnsetType | None = UNSET
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | UnsetType | None = UNSET
    stop: str | Annotated[list[str], Meta(max_length=16)] | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    logit_bias: dict[str, float] | UnsetType | None = UNSET
    user: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    # vLLM sampling extensions that are safe to expose.
    top_k: int | UnsetType | None = UNSET
    min_p: Probability | UnsetType | None = UNSET
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | UnsetType | None = UNSET
    min_tokens: Annotated[int, Meta(ge=0)] | UnsetType = UNSET

    def check_forbidden(self) -> None:
        for name in FORBIDDEN_FIELDS:
            if getattr(self, name) is not UNSET:
                raise InvalidRequest(f"field '{name}' is not accepted by this gateway", param=name)


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[object] | None = None
    name: str | UnsetType = UNSET
    tool_calls: list[object] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: PositiveInt | UnsetType | None = UNSET
    logprobs: bool | UnsetType | None = UNSET
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | UnsetType | None = UNSET
    response_format: object = UNSET
    tools: list[object] | UnsetType | None = UNSET
    tool_choice: object = UNSET
    parallel_tool_calls: bool | UnsetType | None = UNSET
    # Gateway-side fields: acted on here, never forwarded.
    store: bool | UnsetType | None = UNSET
    metadata: Metadata | UnsetType | None = UNSET


class CompletionRequest(_Sampling, kw_only=True):
    # A string, a list of strings, token ids, or lists of token ids (checked in check_prompt).
    prompt: (
        Annotated[str, Meta(min_length=1)]
        | Annotated[list[object], Meta(min_length=1, max_length=MAX_PROMPTS)]
    )
    echo: bool | UnsetType | None = UNSET
    logprobs: Annotated[int, Meta(ge=0, le=5)] | UnsetType | None = UNSET
    best_of: Annotated[int, Meta(ge=1, le=16)] | UnsetType | None = UNSET
    suffix: str | UnsetType | None = UNSET


_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_completion_decoder = msgspec.json.Decoder(CompletionRequest)
_encoder = msgspec.json.Encoder()


T = TypeVar("T")
_PATH_RE = re.compile(r"`\$\.([^`]+)`")


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        paths = _PATH_RE.findall(text)  # "... - at `$.messages[0].role`"
        param = paths[-1] if paths else None
        raise InvalidRequest(f"invalid request: {text}", param=param) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def decode_chat(body: bytes) -> ChatCompletionRequest:
    req = _decode(_chat_decoder, body)
    req.check_forbidden()
    return req


def decode_completion(body: bytes) -> CompletionRequest:
    req = _decode(_completion_decoder, body)
    req.check_forbidden()
    if isinstance(req.prompt, list) and not _is_prompt_list(req.prompt):
        raise InvalidRequest(
            "prompt must be a string, a list of strings, a list of token ids or a list of "
            "token-id lists, none of them empty",
            param="prompt",
        )
    if prompt_count(req) * sequences_per_prompt(req) > MAX_SEQUENCES:
        raise InvalidRequest(
            f"this request asks for {prompt_count(req)} prompt(s) x "
            f"{sequences_per_prompt(req)} sequence(s) each; at most {MAX_SEQUENCES} sequences "
            "per request (split it into several requests)",
            param="n",
        )
    return req


def prompt_count(req: ChatCompletionRequest | CompletionRequest) -> int:
    """How many prompts the engine runs: a chat is one; a legacy completion's list is one per
    string or token-id list (a flat list of token ids is one prompt)."""
    if isinstance(req, ChatCompletionRequest) or isinstance(req.prompt, str):
        return 1
    return len(req.prompt) if isinstance(req.prompt[0], str | list) else 1


def sequences_per_prompt(req: ChatCompletionRequest | CompletionRequest) -> int:
    """Sequences generated per prompt: max(n, best_of)."""
    n = req.n if isinstance(req.n, int) else 1
    best_of = getattr(req, "best_of", None)
    return max(n, best_of if isinstance(best_of, int) else 1)


def _is_prompt_list(items: list[object]) -> bool:
    if all(isinstance(p, str) and p for p in items):
        return True
    if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in items):
        return True
    return all(
        isinstance(p, list) and p and _is_prompt_list(p) and not isinstance(p[0], (str, list))
        for p in items
    )


def encode_for_engine(
    req: ChatCompletionRequest | CompletionRequest, engine_model: str, cache_salt: str
) -> bytes:
    """The body vLLM receives: the allowlisted fields, the engine-side model name and the
    tenant's prefix-cache salt (`gateway.cache_salt`; a client's own is refused at decoding)."""
    changes: dict[str, object] = {"model": engine_model, "cache_salt": cache_salt}
    if isinstance(req, ChatCompletionRequest):
        changes.update(store=UNSET, metadata=UNSET)
    return _encoder.encode(msgspec.structs.replace(req, **changes))
