"""Who may call: the tenant guard (the caller's key → `Caller`), the admin guard, the actor;
and `Injected[T]`, how a handler names a service that create_app provides.

Guards run before a body is read, so a request without a valid credential is a 401 whatever
it sends. The tenant guard leaves the `Caller` on the connection; handlers name it (`caller`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeAlias, TypeVar

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import HeaderParameter, SkipValidation

from gateway.tenancy import Caller, Directory

T = TypeVar("T")
# A service provided by name, handed over as it is: it was built by create_app, not sent by a
# client, so Litestar does not validate it (it cannot convert a dataclass instance anyway).
Injected: TypeAlias = SkipValidation[NamedDependency[T]]
Connection = ASGIConnection[object, object, object, State]
Guard = Callable[[Connection, BaseRouteHandler], Awaitable[None] | None]
ActorHeader = Annotated[
    str | None, HeaderParameter(name="x-loopgate-actor", description="Who acts (audit trail)")
]


def tenant_guard(directory: Directory) -> Guard:
    async def authenticate(connection: Connection, _: BaseRouteHandler) -> None:
        caller = await directory.authenticate(connection.headers.get("authorization"))
        connection.state.caller = caller

    return authenticate


def admin_guard(check: Callable[[str | None], None]) -> Guard:
    def check_admin(connection: Connection, _: BaseRouteHandler) -> None:
        check(connection.headers.get("authorization"))

    return check_admin


def provide_caller(request: Request[object, object, State]) -> Caller:
    caller: Caller = request.state.caller  # set by the tenant guard
    return caller


def provide_actor(actor_header: ActorHeader = None) -> str:
    """The admin who acts, as the audit trail names them: the header's value, or `admin`."""
    return (actor_header or "admin")[:128]


def provide_admin_actor(actor_header: ActorHeader = None) -> str:
    """`admin`, or `admin:<name>` from X-Loopgate-Actor (fine-tuning job events)."""
    named = (actor_header or "").strip()[:128]
    return f"admin:{named}" if named else "admin"
