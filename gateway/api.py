"""The tenant-facing OpenAI-compatible routes and the health probes (thin handlers)."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from adapters.swap import Swapper
from gateway import apidoc
from gateway.access import Injected
from gateway.bodies import Raw
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.request_id import request_id
from gateway.responses import BackendReadiness, Health, ListOf, ModelCard, ModelTarget, Ready
from gateway.responses import model_card as card
from gateway.runtime import Lifecycle
from gateway.serving import Serving
from gateway.tenancy import Caller
from replicas.pool import BackendPool
from store import Alias, Store
from store.errors import EngineNotReady, NotFound
from store.settings import Settings

AnyRequest = Request[object, object, State]
CHAT = {"type": "object", "required": ["id", "object", "model", "choices"]}
COMPLETION = {"type": "object", "required": ["id", "object", "model", "choices"]}


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="Create a chat completion",
    dto=Raw[ChatCompletionRequest],
    return_dto=None,
    responses=apidoc.tenant(*apidoc.ENGINE),
    operation_class=apidoc.streamed(CHAT),
)
async def chat_completions(
    request: AnyRequest,
    caller: Injected[Caller],
    serving: Injected[Serving],
    data: JSONBody[bytes] = b"",
) -> Response[bytes] | Stream:
    return await serving.complete(caller, data, "chat", request_id(request.scope))


@post(
    "/v1/completions",
    status_code=200,
    summary="Create a (legacy) completion",
    dto=Raw[CompletionRequest],
    return_dto=None,
    responses=apidoc.tenant(*apidoc.ENGINE),
    operation_class=apidoc.streamed(COMPLETION),
)
async def completions(
    request: AnyRequest,
    caller: Injected[Caller],
    serving: Injected[Serving],
    data: JSONBody[bytes] = b"",
) -> Response[bytes] | Stream:
    return await serving.complete(caller, data, "completion", request_id(request.scope))


class Cards:
    """Model cards of a tenant's aliases: the alias, what it serves now, the base it runs on."""

    def __init__(self, settings: Settings, swapper: Swapper) -> None:
        self.base = settings.base_model_name
        self.max_len = settings.engine_max_model_len
        self.swapper = swapper

    def of(self, alias: Alias, owner: str) -> ModelCard:
        target = self.swapper.current(alias)
        where = ModelTarget(target.kind, target.adapter_version)
        return card(alias, owner, self.base, where, self.max_len)


@get("/v1/models", summary="List the caller's models", responses=apidoc.tenant())
async def list_models(
    caller: Injected[Caller], store: Injected[Store], cards: Injected[Cards]
) -> ListOf[ModelCard]:
    aliases = await store.list_aliases(caller.tenant_id)
    return ListOf(data=[cards.of(a, caller.tenant_name) for a in aliases])


@get("/v1/models/{model_id:str}", summary="Retrieve a model", responses=apidoc.tenant(404))
async def retrieve_model(
    caller: Injected[Caller],
    store: Injected[Store],
    cards: Injected[Cards],
    model_id: FromPath[str],
) -> ModelCard:
    alias = await store.get_alias(caller.tenant_id, model_id)
    if alias is None:
        raise NotFound(
            f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )
    return cards.of(alias, caller.tenant_name)


@get("/health", summary="Liveness")
async def health() -> Health:
    return Health()


@get("/ready", summary="Readiness: an engine replica can serve", responses=apidoc.errors(503))
async def ready(lifecycle: Injected[Lifecycle], pool: Injected[BackendPool]) -> Ready:
    if lifecycle.draining:
        raise EngineNotReady("the gateway is shutting down")
    if not pool.any_ready:
        raise EngineNotReady("the inference engine is not ready yet")
    return Ready(backends=[BackendReadiness(b.name, b.ready) for b in pool.backends])
