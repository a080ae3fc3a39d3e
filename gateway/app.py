"""The app factory: `create_app(settings)` builds the services once, injects each by name
(Litestar `Provide`), guards the tenant and admin routes, and starts and stops them all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide

from gateway import api, apidoc, completions_api, console, finetuning_api, metrics, responses_api
from gateway.access import (
    admin_guard,
    provide_actor,
    provide_admin_actor,
    provide_caller,
    tenant_guard,
)
from gateway.admin_adapters import AdapterController, backends
from gateway.admin_api import AdminController
from gateway.admin_canary import CanaryController
from gateway.admin_checkpoints import CheckpointController
from gateway.admin_evals import EvalController, LoopController
from gateway.admin_judges import JudgeController
from gateway.admin_limits import LimitsController, LimitSets
from gateway.admin_rollouts import LoopRolloutController, RolloutController
from gateway.admin_shadow import ShadowController
from gateway.admin_training import TrainingController
from gateway.batches import Batches
from gateway.batches_api import ROUTES as BATCH_ROUTES
from gateway.batches_api import BatchLineController
from gateway.judges import judges_for
from gateway.request_id import add_request_id, request_context
from gateway.runtime import Gateway
from gateway.workers import WorkerRole
from store.errors import EXCEPTION_HANDLERS
from store.settings import Settings


def _constant(value: object) -> Callable[[], object]:
    return lambda: value


def services(gateway: Gateway) -> dict[str, Provide]:
    """Every long-lived service under its own name; a handler names those it uses."""
    g = gateway
    named: dict[str, object] = {
        "settings": g.settings,
        "store": g.store,
        "directory": g.directory,
        "admin": g.admin,
        "serving": g.serving,
        "pool": g.pool,
        "adapters": g.adapters,
        "registry": g.registry,
        "swapper": g.swapper,
        "canaries": g.canaries,
        "rollouts": g.rollouts,
        "shadows": g.shadows,
        "evaluations": g.evaluations,
        "loops": g.loops,
        "finetuning": g.finetuning,
        "quotas": g.quotas,
        "files": g.files,
        "erasure": g.erasure,
        "metrics": g.metrics,
        "capture": g.capture,
        "lifecycle": g.lifecycle,
        "cards": api.Cards(g.settings, g.swapper),
        "limit_sets": LimitSets(g.admin, g.store, g.limits),
        "batches": Batches(g.settings, g.store, g.quotas, g.files, g.serving),
        "judges": judges_for(g.settings, g.store, g.serving),
    }
    provided = {
        name: Provide(_constant(value), use_cache=True, sync_to_thread=False)
        for name, value in named.items()
    }
    provided["caller"] = Provide(provide_caller, sync_to_thread=False)
    provided["actor"] = Provide(provide_actor, sync_to_thread=False)
    provided["admin_actor"] = Provide(provide_admin_actor, sync_to_thread=False)
    return provided


def tenant_routes(gateway: Gateway) -> Router:
    return Router(
        "/",
        route_handlers=[
            api.chat_completions,
            api.completions,
            api.list_models,
            api.retrieve_model,
            *completions_api.ROUTES,
            *responses_api.ROUTES,
            *finetuning_api.routes(gateway.settings),
            *BATCH_ROUTES,
        ],
        guards=[tenant_guard(gateway.directory)],
        security=apidoc.TENANT_KEY,
        tags=["tenant"],
    )


def admin_routes(gateway: Gateway) -> Router:
    return Router(
        "/",
        route_handlers=[
            AdminController,
            AdapterController,
            CanaryController,
            ShadowController,
            EvalController,
            LoopController,
            RolloutController,
            LoopRolloutController,
            JudgeController,
            LimitsController,
            TrainingController,
            CheckpointController,
            BatchLineController,
            backends,
        ],
        guards=[admin_guard(gateway.check_admin)],
        security=apidoc.ADMIN_KEY,
        tags=["admin"],
    )


def public_routes(settings: Settings) -> Router:
    return Router(
        "/",
        route_handlers=[
            api.health,
            api.ready,
            *([metrics.route(settings)] if settings.metrics_enabled else []),
            *([apidoc.document_route()] if settings.openapi_enabled else []),
        ],
        tags=["public"],
    )


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    role: WorkerRole | None = None,
) -> Litestar:
    gateway = Gateway(settings, transport, role)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    routes = [tenant_routes(gateway), admin_routes(gateway), public_routes(settings)]
    if settings.console_enabled:
        routes += [console.console_router(), console.static_router()]
    return Litestar(
        route_handlers=routes,
        dependencies=services(gateway),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        before_send=[add_request_id],
        middleware=[request_context],
        state=State({"gateway": gateway, "console_sessions": console.sessions_for(settings)}),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=apidoc.openapi_config() if settings.openapi_enabled else None,
        plugins=[apidoc.RefusedFields()],
        template_config=console.template_config() if settings.console_enabled else None,
        logging_config=None,  # the entry point configures logging (gateway.logs), not Litestar
        debug=False,
    )
