"""What Litestar's OpenAPI generation cannot read from a signature: error answers, credentials,
bodies that are streamed or not JSON, and the fields the wire types declare only to refuse."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.plugins import OpenAPISchemaPlugin

from gateway.protocol import FORBIDDEN_FIELDS, ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

JSON = "application/json"
TENANT_KEY: list[dict[str, list[str]]] = [{"tenantKey": []}]
ADMIN_KEY: list[dict[str, list[str]]] = [{"adminKey": []}]

DESCRIPTIONS = {
    400: "Invalid request (body, parameters or JSON)",
    401: "Missing, malformed or unknown credential",
    403: "This credential may not use this route",
    404: "No such resource (or not visible to the caller)",
    409: "Conflicts with the resource's current state",
    413: "Request body too large",
    422: "Well-formed but unacceptable content",
    429: "A rate limit, concurrency limit or token budget was reached, or a tenant quota "
    "(`quota_exceeded`, `param` the quota; not worth retrying soon)",
    502: "The inference engine failed or could not be reached",
    503: "The inference engine is not ready, or the store stayed locked by another process "
    "past its 30 s wait (`store_busy`); retry after `Retry-After`",
    504: "The inference engine timed out",
}
ENGINE = (404, 413, 429, 502, 503, 504)
WRITE = (503,)  # every write can meet a store locked by another process (`store_busy`)


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | int | None  # an engine's own error, relayed as it is, carries its status


class Error(msgspec.Struct):
    """The OpenAI error body (store.errors.ErrorEnvelope) as documented."""

    error: ErrorDetail


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers of a route, each in the OpenAI shape; 400 is always possible."""
    return {
        code: ResponseSpec(Error, description=DESCRIPTIONS[code], generate_examples=False)
        for code in sorted({400, *codes})
    }


def tenant(*codes: int) -> dict[int, ResponseSpec]:
    """A tenant route's errors: its own, and a refused tenant key (401)."""
    return errors(401, *codes)


def admin(*codes: int) -> dict[int, ResponseSpec]:
    """An admin route's errors: its own, and a refused admin credential (401, 403)."""
    return errors(401, 403, *codes)


def schema(raw: dict[str, Any]) -> Schema:
    return raw  # type: ignore[return-value]  # a plain JSON Schema, rendered as it is


SSE_EVENT = schema(
    {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {"contentMediaType": JSON, "contentSchema": {"type": "object"}},
                ]
            }
        },
    }
)
# A completion prompt: what `protocol.decode_completion` accepts (its list check is code).
_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
PROMPT = schema(
    {
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            _TOKENS,
            {"type": "array", "minItems": 1, "items": _TOKENS},
        ]
    }
)


def _content(media: dict[str, Schema]) -> dict[str, OpenAPIMediaType]:
    return {m: OpenAPIMediaType(schema=s) for m, s in media.items()}


def answers(status: int, media: dict[str, Schema]) -> type[Operation]:
    """An Operation whose success answer is `media` (streams, files, text), not the signature's."""

    @dataclass
    class Answers(Operation):
        def __post_init__(self) -> None:
            assert self.responses is not None
            self.responses[str(status)] = OpenAPIResponse("Success", content=_content(media))

    return Answers


def streamed(returns: dict[str, Any]) -> type[Operation]:
    """A completion answer: a JSON object, or (stream: true) server-sent events."""
    return answers(200, {JSON: schema(returns), "text/event-stream": SSE_EVENT})


def raw_body(media: dict[str, Schema]) -> type[Operation]:
    """An Operation whose request body is read as a stream (uploads), so not in the signature."""

    @dataclass
    class RawBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(content=_content(media), required=True)

    return RawBody


class RefusedFields(OpenAPISchemaPlugin):
    """OpenAPI schema plugin for the two completion requests: the engine-internal fields they
    declare only to refuse are `false` (never valid), and a prompt's four accepted shapes."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return field_definition.annotation in (ChatCompletionRequest, CompletionRequest)

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Any:
        from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin

        result = StructSchemaPlugin().to_openapi_schema(field_definition, schema_creator)
        assert result.properties is not None
        for name in FORBIDDEN_FIELDS:
            result.properties[name] = False  # type: ignore[assignment]
        if field_definition.annotation is CompletionRequest:
            result.properties["prompt"] = PROMPT
        return result


class DocumentOnly(Router):
    """Litestar's OpenAPI router, left empty: the gateway serves the document itself at
    GET /openapi.json (no documentation site, no catch-all 404 page)."""

    def register(self, value: Any) -> list[Any]:
        return []


def _version() -> str:
    try:
        return version("loopgate")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0"


def openapi_config() -> OpenAPIConfig:
    bearer = "bearer"
    return OpenAPIConfig(
        title="loopgate",
        version=_version(),
        description="OpenAI-compatible multi-tenant gateway; errors have the OpenAI shape.",
        components=Components(
            security_schemes={
                "tenantKey": SecurityScheme(
                    type="http", scheme=bearer, description="A tenant API key (lg-<id>-<secret>)."
                ),
                "adminKey": SecurityScheme(
                    type="http", scheme=bearer, description="The admin key (LOOPGATE_ADMIN_KEY)."
                ),
            }
        ),
        openapi_router=DocumentOnly("/", route_handlers=[]),
        use_handler_docstrings=True,
    )


class Document(msgspec.Struct):
    openapi: str
    info: dict[str, str]
    paths: dict[str, object]


def document_route() -> HTTPRouteHandler:
    """GET /openapi.json: the document Litestar generated, encoded once on first use."""
    cache: list[bytes] = []

    @get("/openapi.json", sync_to_thread=False, media_type=JSON, summary="This document")
    def openapi_json(request: Request[object, object, State]) -> Response[Document]:
        if not cache:
            cache.append(msgspec.json.encode(request.app.openapi_schema.to_schema()))
        return Response(cache[0], media_type=JSON)  # type: ignore[arg-type]

    return openapi_json
