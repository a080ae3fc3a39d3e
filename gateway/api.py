"""The tenant-facing OpenAI-compatible routes and the health probes (thin handlers)."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Stream

from gateway.request_id import request_id
from gateway.runtime import Gateway
from store import Alias
from store.errors import EngineNotReady, NotFound

GW = NamedDependency[Gateway]

AnyRequest = Request[object, object, State]


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: AnyRequest, gw: GW) -> Response[bytes] | Stream:
    caller = await gw.directory.authenticate(request.headers.get("authorization"))
    return await gw.serving.complete(
        caller, await request.body(), "chat", request_id(request.scope)
    )


@post("/v1/completions", status_code=200)
async def completions(request: AnyRequest, gw: GW) -> Response[bytes] | Stream:
    caller = await gw.directory.authenticate(request.headers.get("authorization"))
    body = await request.body()
    return await gw.serving.complete(caller, body, "completion", request_id(request.scope))


@get("/v1/models")
async def list_models(request: AnyRequest, gw: GW) -> dict[str, object]:
    caller = await gw.directory.authenticate(request.headers.get("authorization"))
    aliases = await gw.store.list_aliases(caller.tenant_id)
    return {"object": "list", "data": [model_card(a, caller.tenant_name, gw) for a in aliases]}


@get("/v1/models/{model_id:str}")
async def retrieve_model(request: AnyRequest, gw: GW, model_id: FromPath[str]) -> dict[str, object]:
    caller = await gw.directory.authenticate(request.headers.get("authorization"))
    alias = await gw.store.get_alias(caller.tenant_id, model_id)
    if alias is None:
        raise NotFound(
            f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )
    return model_card(alias, caller.tenant_name, gw)


def model_card(alias: Alias, owner: str, gw: GW) -> dict[str, object]:
    base = gw.settings.base_model_name
    target = gw.swapper.current(alias)
    adapter = target.kind == "adapter"
    return {
        "id": alias.name,
        "object": "model",
        "created": int(alias.created_at),
        "owned_by": owner,
        "root": base,
        "parent": base if adapter else None,
        "max_model_len": gw.settings.engine_max_model_len,
        "metadata": {"target": target.kind, "adapter_version": target.adapter_version},
    }


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(gw: GW) -> dict[str, object]:
    if gw.draining:
        raise EngineNotReady("the gateway is shutting down")
    if not gw.pool.any_ready:
        raise EngineNotReady("the inference engine is not ready yet")
    return {
        "status": "ready",
        "backends": [{"name": b.name, "ready": b.ready} for b in gw.pool.backends],
    }
