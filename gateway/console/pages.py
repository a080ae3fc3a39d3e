"""What every console page shares: the signed-in person as a dependency, rendering a page with
the navigation, reading a posted form (CSRF checked), errors as HTML pages, and the security
headers on every console response (`security_headers`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from litestar import Request, Response
from litestar.datastructures import MutableScopeHeaders, State
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.console.session import COOKIE, ConsoleUser, Sessions, SignInRequired, check_csrf
from store import OwnedKind, Store, Tenant
from store.errors import LoopgateError

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
AnyRequest = Request[object, object, State]

# (path, label, admin only): the navigation bar, in order.
NAV: tuple[tuple[str, str, bool], ...] = (
    ("/console", "Overview", False),
    ("/console/tenants", "Tenants", False),
    ("/console/aliases", "Aliases & adapters", False),
    ("/console/evals", "Evals", False),
    ("/console/training", "Fine-tuning & datasets", False),
    ("/console/review", "Review queue", True),
)


def signed_in_user(request: AnyRequest) -> ConsoleUser:
    """The session of the request (the console guard has checked it)."""
    user: ConsoleUser = request.state.console_user
    return user


def render(
    user: ConsoleUser, template: str, active: str, context: Mapping[str, object] | None = None
) -> Template:
    """A page: `console/<template>` extending base.html, with the person and the navigation."""
    nav = [(path, label) for path, label, admin in NAV if user.is_admin or not admin]
    return Template(
        template_name=f"console/{template}",
        context={"user": user, "csrf": user.csrf, "nav": nav, "active": active, **(context or {})},
        headers=NO_STORE,
    )


NO_STORE = {"cache-control": "no-store", "x-frame-options": "DENY"}
# Every script and style is loopgate's own file (no inline script, no event-handler attribute:
# tests/unit/test_console_security.py checks the templates); inline `style=` stays allowed for
# the SVG charts' label colours and a few layout tweaks; `data:` images are harmless.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'"
)
SECURITY = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def security_headers(app: ASGIApp, no_store: bool = True) -> ASGIApp:
    """Middleware: the security headers (and, for pages, `no-store`) on every response of a
    router, error pages and redirects included (Litestar renders those inside its middleware)."""

    async def with_headers(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in SECURITY.items():
                    headers[name] = value
                if no_store:
                    headers["cache-control"] = "no-store"
            await send(message)

        await app(scope, receive, sending)

    return with_headers


async def read_form(request: AnyRequest, user: ConsoleUser) -> dict[str, str]:
    """A posted form's fields (the last value of each), after its CSRF token is checked."""
    form = await request.form()
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    check_csrf(user, fields.pop("csrf", None) or request.headers.get("x-csrf-token"))
    return fields


async def owner_tenant(
    user: ConsoleUser, store: Store, kind: OwnedKind, object_id: str
) -> Tenant | None:
    """Whose object a link naming only its id is about: for an admin its owner (one primary-key
    lookup), for a tenant session its own tenant (another's object is then not found)."""
    tenant_id = await store.owner_of(kind, object_id) if user.is_admin else user.tenant_id
    return await store.get_tenant(tenant_id) if tenant_id else None


def back_to(path: str) -> Redirect:
    """After a form's action: back to a page (POST, redirect, GET)."""
    return Redirect(path, status_code=HTTP_303_SEE_OTHER)


def error_page(request: AnyRequest, exc: Exception) -> Response[object] | Template:
    """Errors as a page a person can read: status and message, never a trace."""
    if isinstance(exc, SignInRequired):
        if request.method == "GET":
            query = f"?{request.url.query}" if request.url.query else ""
            target = quote(request.url.path + query)
            return Redirect(f"/console/login?next={target}", status_code=HTTP_303_SEE_OTHER)
        status, message = 401, "sign in first"
    elif isinstance(exc, LoopgateError):
        status, message = exc.status, exc.message
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:
        status, message = 500, "something went wrong on our side; the gateway's log says what"
        request.logger.exception("console page failed", exc_info=exc)
    user = _user_or_none(request)
    return Template(
        template_name="console/error.html",
        context={"status": status, "message": message, "user": user, "nav": [], "active": ""},
        status_code=status,
        headers=NO_STORE,
    )


def _user_or_none(request: AnyRequest) -> ConsoleUser | None:
    sessions: Sessions = request.app.state["console_sessions"]
    try:
        return sessions.read(request.cookies.get(COOKIE))
    except SignInRequired:
        return None
