"""The operators' web console at /console: server-rendered pages over the same services as the
API (no second code path), signed in with the admin key or, read-only, with a tenant key.

Each page module owns one part of the navigation and exports its `ROUTES`; `pages` holds what
they share (rendering, forms with CSRF, errors as pages); `session` the signed cookies.
"""

from __future__ import annotations

from litestar import Router
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.base import DefineMiddleware
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from gateway.cache_salt import secret_file
from gateway.console import adapters, evals, overview, review, signin, tenants, training
from gateway.console.pages import (
    STATIC,
    TEMPLATES,
    error_page,
    security_headers,
    signed_in_user,
)
from gateway.console.session import COOKIE, SECRET_FILE, Sessions, require_admin
from store.errors import EXCEPTION_HANDLERS
from store.settings import Settings


def sessions_for(settings: Settings) -> Sessions:
    secret = settings.console_secret or secret_file(settings.data_dir / SECRET_FILE)
    return Sessions(secret, settings.console_session_ttl_s)


def console_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """A valid session on every console route but sign-in; admins only where a route says."""
    if handler.opt.get("console_public"):
        return
    sessions: Sessions = connection.app.state["console_sessions"]
    user = sessions.read(connection.cookies.get(COOKIE))
    connection.state.console_user = user
    if handler.opt.get("admin_only"):
        require_admin(user)


def console_router() -> Router:
    return Router(
        "/console",
        route_handlers=[
            *signin.ROUTES,
            *overview.ROUTES,
            *tenants.ROUTES,
            *adapters.ROUTES,
            *evals.ROUTES,
            *training.ROUTES,
            *review.ROUTES,
        ],
        guards=[console_guard],
        dependencies={"console_user": Provide(signed_in_user, sync_to_thread=False)},
        # every class the app maps to a JSON error (LoopgateError, ...) is a page here instead
        exception_handlers={cls: error_page for cls in EXCEPTION_HANDLERS},
        middleware=[security_headers],
        include_in_schema=False,
    )


def static_router() -> Router:
    return create_static_files_router(
        path="/console/static",
        directories=[STATIC],
        middleware=[DefineMiddleware(security_headers, no_store=False)],
        include_in_schema=False,
    )


def template_config() -> TemplateConfig:  # type: ignore[type-arg]
    from litestar.plugins.jinja import JinjaTemplateEngine

    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine)
