"""Signing in and out of the console: the admin key, or a tenant key for a read-only view;
repeated wrong keys from one address are throttled (`throttle`)."""

from __future__ import annotations

import hmac
from typing import Annotated

from litestar import get, post
from litestar.params import QueryParameter
from litestar.response import Redirect, Template

from gateway.access import Injected
from gateway.console.pages import NO_STORE, AnyRequest, back_to, read_form, signed_in_user
from gateway.console.session import COOKIE, LOGIN_COOKIE, ConsoleUser, Sessions
from gateway.console.throttle import throttle_of
from gateway.runtime import Gateway
from gateway.tenancy import Directory
from store.errors import AuthenticationFailed, LoopgateError, PermissionDenied
from store.settings import Settings

PUBLIC = {"console_public": True}
NextParam = Annotated[str | None, QueryParameter(name="next", required=False)]


def _safe_next(target: str | None) -> str:
    """Only a console path (no open redirect to another site)."""
    if not target or not target.startswith("/console") or target.startswith("//"):
        return "/console"
    return target


@get("/login", opt=PUBLIC, sync_to_thread=False)
def login_form(request: AnyRequest, next_: NextParam = None) -> Template:
    return _login_page(request, _safe_next(next_), None, 200)


def _login_page(
    request: AnyRequest,
    target: str,
    error: str | None,
    status: int,
    headers: dict[str, str] | None = None,
) -> Template:
    sessions: Sessions = request.app.state["console_sessions"]
    settings: Settings = request.app.state["gateway"].settings
    token = sessions.login_token()
    page = Template(
        template_name="console/login.html",
        context={"login_csrf": token, "next": target, "error": error, "user": None, "nav": []},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )
    page.set_cookie(
        LOGIN_COOKIE,
        token,
        path="/console/login",
        max_age=1800,
        httponly=True,
        samesite="strict",
        secure=settings.console_cookie_secure,
    )
    return page


@post("/login", opt=PUBLIC, status_code=303)
async def login(
    request: AnyRequest, directory: Injected[Directory], settings: Injected[Settings]
) -> Redirect | Template:
    form = await request.form()
    fields = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    target = _safe_next(fields.get("next"))
    throttle, address = throttle_of(request.app.state), client_address(request)
    if (wait_s := throttle.retry_after(address)) is not None:
        error = f"too many wrong keys from your address: try again in {wait_s} seconds"
        return _login_page(request, target, error, 429, {"retry-after": str(wait_s)})
    sent, expected = fields.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        return _login_page(request, target, "the form expired: try again", 403)
    key = fields.get("key", "").strip()
    name = (fields.get("name", "").strip() or "admin")[:64]
    sessions: Sessions = request.app.state["console_sessions"]
    gateway: Gateway = request.app.state["gateway"]
    try:
        gateway.check_admin(f"Bearer {key}")
        _, cookie = sessions.issue("admin", name)
    except (AuthenticationFailed, PermissionDenied):
        try:
            caller = await directory.authenticate(f"Bearer {key}")
        except LoopgateError:
            throttle.failed(address)
            return _login_page(request, target, "that key is not valid here", 401)
        _, cookie = sessions.issue("tenant", name, caller.tenant_id, caller.tenant_name)
    done = back_to(target)
    done.set_cookie(
        COOKIE,
        cookie,
        path="/console",
        max_age=int(sessions.ttl_s),
        httponly=True,
        samesite="strict",
        secure=settings.console_cookie_secure,
    )
    done.delete_cookie(LOGIN_COOKIE, path="/console/login")
    return done


def client_address(request: AnyRequest) -> str:
    """The connecting address (a proxy's, behind one: see `throttle`)."""
    return request.client.host if request.client else ""


@post("/logout", status_code=303)
async def logout(request: AnyRequest) -> Redirect:
    user: ConsoleUser = signed_in_user(request)
    await read_form(request, user)
    sessions: Sessions = request.app.state["console_sessions"]
    sessions.end(user)
    done = back_to("/console/login")
    done.delete_cookie(COOKIE, path="/console")
    return done


ROUTES = [login_form, login, logout]
