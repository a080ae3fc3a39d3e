"""The app factory: `create_app(settings)` wires the routes to one `Gateway` and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide

from gateway import api, completions_api, finetuning_api, metrics, openapi
from gateway.admin_adapters import AdapterController, backends
from gateway.admin_api import AdminController
from gateway.admin_canary import CanaryController
from gateway.admin_evals import EvalController, LoopController
from gateway.admin_limits import LimitsController
from gateway.admin_training import TrainingController
from gateway.request_id import add_request_id, request_context
from gateway.runtime import Gateway
from store.errors import EXCEPTION_HANDLERS
from store.settings import Settings


def create_app(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> Litestar:
    gateway = Gateway(settings, transport)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return Litestar(
        route_handlers=[
            api.chat_completions,
            api.completions,
            api.list_models,
            api.retrieve_model,
            api.health,
            api.ready,
            *completions_api.ROUTES,
            *finetuning_api.routes(settings),
            AdminController,
            AdapterController,
            CanaryController,
            EvalController,
            LoopController,
            LimitsController,
            TrainingController,
            backends,
            *([metrics.route(settings)] if settings.metrics_enabled else []),
            *([openapi.route(settings)] if settings.openapi_enabled else []),
        ],
        dependencies={"gw": Provide(lambda: gateway, sync_to_thread=False, use_cache=True)},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        before_send=[add_request_id],
        middleware=[request_context],
        state=State({"gateway": gateway}),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,  # gateway.openapi serves the document (handlers read raw bodies)
        logging_config=None,  # the entry point configures logging (gateway.logs), not Litestar
        debug=False,
    )
