"""The console's Overview:
replicas, traffic and errors per tenant over the last hour, running work.
"""

from __future__ import annotations

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Template

from gateway.access import Injected
from gateway.console.pages import render
from gateway.console.session import ConsoleUser


@get("/", sync_to_thread=False)
def overview(console_user: Injected[ConsoleUser]) -> Template:
    return render(console_user, "overview.html", "/console")


ROUTES: list[HTTPRouteHandler] = [overview]
