"""The gateway's own OpenAPI 3.1 document, served at GET /openapi.json.

Handlers decode raw bodies with msgspec, so Litestar cannot infer their shapes; this module
describes every route once, in a table: its credential, the msgspec type its body decodes into
(turned into JSON Schema by msgspec itself), its success answer and the error statuses it can
give, each in the OpenAI error shape. tests/unit/test_openapi_fuzz.py checks the table against
the router and fuzzes the app against the document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import msgspec
from litestar import Response, get
from litestar.handlers import HTTPRouteHandler

from adapters.swap import SwapReport
from gateway.admin_adapters import AdapterDetail, Promote, Rollback
from gateway.admin_api import (
    CreateKey,
    CreateTenant,
    Erase,
    KeyInfo,
    OptOut,
    SetAlias,
    TenantPolicy,
)
from gateway.admin_canary import Decision
from gateway.admin_limits import LimitsBody
from gateway.canary import CanaryPromotion, CanaryReport, CanarySpec
from gateway.completions_api import FeedbackIn, UpdateCompletion
from gateway.dataset_policy import BuildDataset
from gateway.evaluations import PolicyIn, StartEval
from gateway.finetuning import CreateJob
from gateway.loop import LoopRun, StartLoop
from gateway.protocol import FORBIDDEN_FIELDS, ChatCompletionRequest, CompletionRequest
from gateway.quotas import QuotasBody, TenantShares
from gateway.tenancy import IssuedKey
from store import (
    AdapterVersion,
    Alias,
    AliasEvent,
    Canary,
    EvalResult,
    Feedback,
    LimitSet,
    Tenant,
)
from store.settings import Settings

Schema = dict[str, Any]
Auth = Literal["tenant", "admin", "public"]
JSON = "application/json"
REF = "#/components/schemas/{name}"

ERROR_DESCRIPTIONS = {
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
ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                # vLLM's own errors are relayed as they are: their code is the HTTP status.
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
# A completion prompt: what `protocol.decode_completion` accepts (its list check is code).
PROMPT: Schema = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "integer", "minimum": 0},
            },
        },
    ]
}
ENGINE_ERRORS = (400, 404, 413, 429, 502, 503, 504)
# One server-sent event of a stream: a JSON chunk (or one final error object), then [DONE].
SSE_EVENT: Schema = {
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


@dataclass(frozen=True, slots=True)
class Raw:
    """A body that is not JSON: its media types and schema."""

    media_types: tuple[str, ...]
    schema: Schema


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: Literal["query", "header"]
    schema: Schema
    style: str | None = None


@dataclass(frozen=True, slots=True)
class Op:
    """One route: a body and a success answer are a msgspec type, a JSON Schema, or Raw."""

    method: str
    path: str
    summary: str
    auth: Auth
    status: int = 200
    body: object = None
    body_required: bool = True
    returns: object = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    stream: bool = False  # also answers text/event-stream (stream: true)


def obj(kind: str | None, *required: str, **properties: object) -> Schema:
    """An OpenAI-style object: `object` is `kind`; `required` keys are always present."""
    props: Schema = {"object": {"const": kind}} if kind else {}
    props.update(properties)
    keys = ["object", *required] if kind else list(required)
    return {"type": "object", "required": keys, "properties": props}


def listing(item: object, *extra: str) -> Schema:
    return obj("list", "data", *extra, data={"type": "array", "items": item})


LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100})
AFTER = Param("after", "query", {"type": "string"})
ORDER = Param("order", "query", {"enum": ["asc", "desc"]})
ACTOR = Param("x-loopgate-actor", "header", {"type": "string"})
METADATA = Param(
    "metadata",
    "query",
    {"type": "object", "additionalProperties": {"type": "string"}},
    "deepObject",
)
MODEL_CARD = obj(
    "model", "id", "created", "owned_by", "root", "parent", "max_model_len", "metadata"
)
COMPLETION = obj("chat.completion", "id", "created", "model", "choices", "usage", "metadata")
PAGE = ("has_more", "first_id", "last_id")
FILE = obj("file", "id", "bytes", "created_at", "filename", "purpose", "status")
DATASET = obj("dataset", "id", "created_at", "content_hash", "source", "report")
JOB = obj("fine_tuning.job", "id", "created_at", "model", "status", "hyperparameters", "loopgate")
EVAL_RUN = obj("eval.run", "id", "alias", "candidate", "status", "created_at")
IDS = {"type": "array", "items": {"type": "string"}}
ERASURE = obj(
    None,
    "erased",
    "end_user",
    "datasets",
    "adapter_versions_trained_on_erased",
    "eval_runs",
    "files_pending",
    datasets=IDS,
    adapter_versions_trained_on_erased=IDS,
    eval_runs=IDS,
    files_pending=IDS,
)
UPLOAD = Raw(
    ("multipart/form-data",),
    {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"enum": ["fine-tune"]},
        },
    },
)
ARCHIVE = Raw(("application/octet-stream",), {"type": "string", "format": "binary"})
REPORT = Raw(("text/markdown", "text/html", "image/png"), {"type": "string"})


def tenant_routes() -> list[Op]:
    cid = "/v1/chat/completions/{completion_id}"
    jobs = "/v1/fine_tuning/jobs"
    return [
        Op("POST", "/v1/chat/completions", "Create a chat completion", "tenant",
           body=ChatCompletionRequest, returns=obj("chat.completion", "id", "model", "choices"),
           errors=ENGINE_ERRORS, stream=True),
        Op("POST", "/v1/completions", "Create a (legacy) completion", "tenant",
           body=CompletionRequest, returns=obj(None, "id", "object", "model", "choices"),
           errors=ENGINE_ERRORS, stream=True),
        Op("GET", "/v1/models", "List the caller's models", "tenant", returns=listing(MODEL_CARD)),
        Op("GET", "/v1/models/{model_id}", "Retrieve a model", "tenant", returns=MODEL_CARD,
           errors=(404,)),
        Op("GET", "/v1/chat/completions", "List stored chat completions", "tenant",
           returns=listing(COMPLETION, *PAGE), params=(Param("model", "query", {"type": "string"}),
           METADATA, AFTER, LIMIT, ORDER), errors=(400,)),
        Op("GET", cid, "Get a stored chat completion", "tenant", returns=COMPLETION,
           errors=(404,)),
        Op("POST", cid, "Update a stored completion's metadata", "tenant", body=UpdateCompletion,
           body_required=False, returns=COMPLETION, errors=(400, 404, 413)),
        Op("DELETE", cid, "Delete a stored chat completion", "tenant",
           returns=obj("chat.completion.deleted", "id", "deleted"), errors=(404,)),
        Op("GET", cid + "/messages", "The messages of a stored completion", "tenant",
           returns=listing({"type": "object"}, *PAGE), params=(AFTER, LIMIT, ORDER),
           errors=(400, 404)),
        Op("POST", cid + "/feedback", "Add feedback on a stored completion", "tenant", 201,
           body=FeedbackIn, returns=Feedback, errors=(400, 404, 413)),
        Op("GET", cid + "/feedback", "List a completion's feedback", "tenant",
           returns=listing(Feedback), errors=(404,)),
        Op("POST", "/v1/files", "Upload a fine-tuning file (JSONL chat conversations)", "tenant",
           body=UPLOAD, returns=FILE, errors=(400, 413, 422, 429)),
        Op("GET", "/v1/files", "List files", "tenant", returns=listing(FILE, "has_more")),
        Op("GET", "/v1/files/{file_id}", "Retrieve a file", "tenant", returns=FILE,
           errors=(404,)),
        Op("DELETE", "/v1/files/{file_id}", "Delete a file", "tenant",
           returns=obj("file", "id", "deleted"), errors=(404,)),
        Op("POST", "/v1/datasets", "Snapshot a dataset from captured traffic", "tenant", 201,
           body=BuildDataset, body_required=False, returns=DATASET, errors=(400, 413, 422, 429)),
        Op("GET", "/v1/datasets", "List dataset snapshots", "tenant",
           returns=listing(DATASET, "has_more")),
        Op("GET", "/v1/datasets/{dataset_id}", "Retrieve a dataset snapshot", "tenant",
           returns=DATASET, errors=(404,)),
        Op("POST", jobs, "Create a fine-tuning job", "tenant", body=CreateJob, returns=JOB,
           errors=(400, 404, 413, 422, 429)),
        Op("GET", jobs, "List fine-tuning jobs", "tenant", returns=listing(JOB, "has_more"),
           params=(AFTER, LIMIT), errors=(400,)),
        Op("GET", jobs + "/{job_id}", "Retrieve a fine-tuning job", "tenant", returns=JOB,
           errors=(404,)),
        Op("GET", jobs + "/{job_id}/events", "A fine-tuning job's events", "tenant",
           returns=listing(obj("fine_tuning.job.event", "id", "created_at", "level", "message"),
                           "has_more"),
           params=(AFTER, LIMIT), errors=(400, 404)),
        Op("POST", jobs + "/{job_id}/cancel", "Cancel a fine-tuning job", "tenant", returns=JOB,
           errors=(400, 404)),
    ]  # fmt: skip


def admin_routes() -> list[Op]:
    t = "/admin/tenants/{tenant}"
    canary = t + "/aliases/{alias}/canary"
    swap = (400, 404, 409, 422, 503)
    return [
        Op("POST", "/admin/tenants", "Create a tenant", "admin", 201, body=CreateTenant,
           returns=Tenant, errors=(400, 409, 413)),
        Op("GET", "/admin/tenants", "List tenants", "admin", returns=listing(Tenant)),
        Op("GET", t, "Get a tenant", "admin", returns=Tenant, errors=(404,)),
        Op("PATCH", t, "Set a tenant's capture policy", "admin", body=TenantPolicy,
           returns=Tenant, errors=(400, 404, 413)),
        Op("POST", t + "/erase", "Erase captured traffic (all, or one end-user's)", "admin",
           body=Erase, returns=ERASURE, params=(ACTOR,),
           errors=(400, 404, 413)),
        Op("POST", t + "/opt-out", "Never train on an end-user's data", "admin", body=OptOut,
           returns=obj(None, "flagged", "end_user"), errors=(400, 404, 413)),
        Op("POST", t + "/keys", "Issue an API key (its plaintext is shown once)", "admin", 201,
           body=CreateKey, body_required=False, returns=IssuedKey, errors=(400, 404, 413)),
        Op("GET", t + "/keys", "List a tenant's keys", "admin", returns=listing(KeyInfo),
           errors=(404,)),
        Op("DELETE", "/admin/keys/{key_id}", "Revoke a key", "admin", returns=KeyInfo,
           errors=(404,)),
        Op("GET", t + "/aliases", "List a tenant's aliases", "admin", returns=listing(Alias),
           errors=(404,)),
        Op("PUT", t + "/aliases/{name}", "Create an alias, or set it to the base", "admin",
           body=SetAlias, returns=Alias, errors=(400, 404, 413, 422, 503)),
        Op("DELETE", t + "/aliases/{name}", "Delete an alias", "admin", 204, errors=(404,)),
        Op("POST", t + "/adapters", "Register an adapter archive (.tar.gz or .zip)", "admin", 201,
           body=ARCHIVE, returns=AdapterVersion, errors=(400, 404, 409, 413, 422),
           params=(Param("name", "query", {"type": "string"}),
                   Param("sha256", "query", {"type": "string"}), ACTOR)),
        Op("GET", t + "/adapters", "List adapter versions", "admin",
           returns=listing(AdapterVersion), errors=(404,)),
        Op("GET", t + "/adapters/{version}", "An adapter version and where it is loaded",
           "admin", returns=AdapterDetail, errors=(404,)),
        Op("POST", t + "/adapters/{version}/retire", "Retire an adapter version", "admin",
           returns=AdapterVersion, errors=(404, 409)),
        Op("DELETE", t + "/adapters/{version}", "Delete a retired adapter version", "admin",
           returns=AdapterVersion, errors=(404, 409)),
        Op("POST", t + "/aliases/{alias}/promote", "Swap an alias onto a version (gated)",
           "admin", body=Promote, returns=SwapReport, params=(ACTOR,), errors=(*swap, 413)),
        Op("POST", t + "/aliases/{alias}/rollback", "Swap an alias back to its last version",
           "admin", body=Rollback, returns=SwapReport, params=(ACTOR,), errors=(*swap, 413)),
        Op("GET", t + "/aliases/{alias}/history", "An alias's swaps", "admin",
           returns={"type": "array", "items": AliasEvent}, errors=(404,)),
        Op("GET", "/admin/backends", "Engine replicas and the adapters they hold", "admin",
           returns=obj("list", "data", "loads", "unloads")),
        Op("POST", canary, "Start a canary on an alias", "admin", 201, body=CanarySpec,
           returns=Canary, params=(ACTOR,), errors=(*swap, 413)),
        Op("GET", canary, "The alias's canaries, with live signals", "admin",
           returns=CanaryReport, errors=(404,)),
        Op("DELETE", canary, "Stop the active canary", "admin", returns=Canary,
           params=(Param("reason", "query", {"type": "string"}), ACTOR), errors=(404,)),
        Op("POST", canary + "/promote", "Promote the canary's version (gated)", "admin",
           body=Decision, returns=CanaryPromotion, params=(ACTOR,), errors=(*swap, 413)),
        Op("GET", t + "/limits", "A tenant's limits", "admin", returns=LimitSet, errors=(404,)),
        Op("PUT", t + "/limits", "Replace a tenant's limits", "admin", body=LimitsBody,
           returns=LimitSet, errors=(400, 404, 413)),
        Op("GET", t + "/keys/{key_id}/limits", "One key's limits", "admin", returns=LimitSet,
           errors=(404,)),
        Op("PUT", t + "/keys/{key_id}/limits", "Replace one key's limits", "admin",
           body=LimitsBody, returns=LimitSet, errors=(400, 404, 413)),
        Op("GET", t + "/gate-policy", "A tenant's promotion gate", "admin", returns=PolicyIn,
           errors=(404,)),
        Op("PUT", t + "/gate-policy", "Set a tenant's promotion gate", "admin", body=PolicyIn,
           returns=PolicyIn, errors=(400, 404, 413)),
        Op("POST", t + "/evals", "Start an eval run", "admin", 202, body=StartEval,
           returns=EVAL_RUN, params=(ACTOR,), errors=(400, 404, 409, 413, 429)),
        Op("GET", t + "/evals", "List eval runs", "admin", returns=listing(EVAL_RUN),
           errors=(404,)),
        Op("GET", t + "/evals/{run_id}", "An eval run", "admin", returns=EVAL_RUN,
           errors=(404,)),
        Op("GET", t + "/evals/{run_id}/results", "An eval run's per-case results", "admin",
           returns=listing(EvalResult), errors=(404,)),
        Op("GET", t + "/evals/{run_id}/{name}", "An eval report file", "admin", returns=REPORT,
           errors=(404,)),
        Op("POST", t + "/loops", "Start an adaptation loop", "admin", 202, body=StartLoop,
           returns=LoopRun, params=(ACTOR,), errors=(400, 404, 413)),
        Op("GET", t + "/loops/{run_id}", "An adaptation loop run", "admin", returns=LoopRun,
           errors=(404,)),
        Op("GET", t + "/quotas", "A tenant's fine-tuning bounds and quotas, and its usage",
           "admin", returns=TenantShares, errors=(404,)),
        Op("PUT", t + "/quotas", "Replace a tenant's bounds and quotas (null: the default)",
           "admin", body=QuotasBody, returns=TenantShares, errors=(400, 404, 413)),
        Op("GET", t + "/fine_tuning/jobs", "A tenant's fine-tuning jobs", "admin",
           returns=listing(JOB, "has_more"), params=(AFTER, LIMIT), errors=(400, 404)),
        Op("POST", t + "/fine_tuning/jobs/{job_id}/cancel", "Cancel a tenant's job (queued or "
           "running); the job's events record the actor", "admin", returns=JOB, params=(ACTOR,),
           errors=(400, 404)),
    ]  # fmt: skip


def public_routes(settings: Settings) -> list[Op]:
    ops = [
        Op("GET", "/health", "Liveness", "public", returns=obj(None, "status")),
        Op("GET", "/ready", "Readiness: an engine replica can serve", "public",
           returns=obj(None, "status", "backends"), errors=(503,)),
        Op("GET", "/openapi.json", "This document", "public",
           returns=obj(None, "openapi", "info", "paths")),
    ]  # fmt: skip
    if settings.metrics_enabled:
        auth: Auth = "admin" if settings.metrics_require_admin else "public"
        text = Raw(("text/plain",), {"type": "string"})
        ops.append(Op("GET", "/metrics", "Prometheus metrics", auth, returns=text))
    return ops


def operations(settings: Settings) -> list[Op]:
    return [*tenant_routes(), *admin_routes(), *public_routes(settings)]


@dataclass
class Components:
    """msgspec types met in the table, turned into JSON Schema components at the end."""

    types: list[object] = field(default_factory=list)

    def schema(self, spec: object) -> Schema:
        """A body's or answer's JSON Schema: types become $refs, nested specs are walked."""
        if isinstance(spec, dict):
            return {k: self.schema(v) for k, v in spec.items()}
        if isinstance(spec, list):
            return [self.schema(v) for v in spec]  # type: ignore[return-value]
        if isinstance(spec, type) and issubclass(spec, msgspec.Struct):
            if spec not in self.types:
                self.types.append(spec)
            return {"$ref": REF.format(name=spec.__name__)}
        return spec  # type: ignore[return-value]

    def render(self) -> Schema:
        refs, schemas = msgspec.json.schema_components(
            self.types, ref_template=REF, schema_hook=_any_json
        )
        for t, ref in zip(self.types, refs, strict=True):  # one name per struct type
            assert ref == self.schema(t), f"two structs are named {t.__name__}"  # type: ignore[attr-defined]
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            for refused in FORBIDDEN_FIELDS:  # declared in the struct only to refuse them
                schemas[name]["properties"][refused] = False
        schemas["CompletionRequest"]["properties"]["prompt"] = PROMPT
        schemas["Error"] = ERROR
        return dict(schemas)


def _any_json(t: type) -> Schema:
    if t is object:  # a field carried as decoded JSON and forwarded untouched
        return {"description": "any JSON value"}
    raise NotImplementedError


def _content(c: Components, spec: object, stream: bool = False) -> Schema:
    if isinstance(spec, Raw):
        return {media_type: {"schema": spec.schema} for media_type in spec.media_types}
    content: Schema = {JSON: {"schema": c.schema(spec if spec is not None else {})}}
    if stream:
        content["text/event-stream"] = {"schema": SSE_EVENT}
    return content


def _operation(c: Components, op: Op) -> Schema:
    errors = set(op.errors)
    if op.auth != "public":
        errors |= {401, 403} if op.auth == "admin" else {401}
    if op.body is not None or op.params:
        errors.add(400)
    if op.method != "GET":
        errors.add(503)  # every write can meet a store locked by another process (`store_busy`)
    ok: Schema = {"description": "Success"}
    if op.status != 204:
        ok["content"] = _content(c, op.returns, op.stream)
    responses = {str(op.status): ok}
    error = {JSON: {"schema": {"$ref": REF.format(name="Error")}}}
    for code in sorted(errors):
        responses[str(code)] = {"description": ERROR_DESCRIPTIONS[code], "content": error}
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(op.path)
    ]
    for p in op.params:
        param: Schema = {"name": p.name, "in": p.where, "required": False, "schema": p.schema}
        if p.style:
            param.update(style=p.style, explode=True)
        params.append(param)
    out: Schema = {
        "summary": op.summary,
        "operationId": _operation_id(op),
        "tags": [op.auth],
        "security": [] if op.auth == "public" else [{f"{op.auth}Key": []}],
        "responses": responses,
    }
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _content(c, op.body)}
    return out


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _operation_id(op: Op) -> str:
    words = [p.strip("{}").replace("-", "_").replace(".", "_") for p in op.path.split("/") if p]
    return "_".join([op.method.lower(), *words])


def document(settings: Settings) -> Schema:
    c = Components()
    paths: dict[str, Schema] = {}
    for op in operations(settings):
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(c, op)
    bearer = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "loopgate",
            "version": _version(),
            "description": "OpenAI-compatible multi-tenant gateway; errors have the OpenAI shape.",
        },
        "paths": paths,
        "components": {
            "schemas": c.render(),
            "securitySchemes": {
                "tenantKey": {**bearer, "description": "A tenant API key (lg-<id>-<secret>)."},
                "adminKey": {**bearer, "description": "The admin key (LOOPGATE_ADMIN_KEY)."},
            },
        },
    }


def _version() -> str:
    try:
        return version("loopgate")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0"


def route(settings: Settings) -> HTTPRouteHandler:
    """GET /openapi.json: the document, built and encoded once."""
    body = msgspec.json.encode(document(settings))

    @get("/openapi.json", sync_to_thread=False)
    def openapi_json() -> Response[bytes]:
        return Response(body, media_type=JSON)

    return openapi_json
