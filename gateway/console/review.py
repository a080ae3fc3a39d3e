"""The console's review queue: sampled completions a person approves, corrects or rejects.

Admins only. `?tenant=<name>` picks whose queue; the page shows the next completion to review
(`gateway.review.next_item`: negative feedback, low eval grades, disagreement), why it was
picked and how many wait. Each decision is a form (keys a, c, r in static/review.js) recorded
as feedback by `gateway.review.decide`, with the signed-in person as the reviewer; then the
next one is shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlencode

from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from gateway.access import Injected
from gateway.console.pages import AnyRequest, back_to, read_form, render
from gateway.console.session import ConsoleUser
from gateway.review import ReviewItem, decide, next_item
from store import Store, Tenant
from store.errors import NotFound

PAGE = "/console/review"
ADMIN_ONLY = {"admin_only": True}
DONE = {"approve": "Approved.", "correct": "Correction saved.", "reject": "Rejected."}


@dataclass(frozen=True, slots=True)
class ReviewPage:
    tenants: list[Tenant]
    tenant: Tenant | None  # None: none picked yet
    item: ReviewItem | None  # None: nothing waits
    when: str  # when the completion was captured (UTC)
    done: str | None  # what the last decision did


async def tenant_named(store: Store, name: str) -> Tenant:
    found = await store.get_tenant(name) if name else None
    if found is None:
        raise NotFound(f"No tenant named '{name[:64]}'", param="tenant")
    return found


async def review_page(store: Store, tenant: str | None, done: str | None) -> ReviewPage:
    tenants = await store.list_tenants()
    if not tenant:
        return ReviewPage(tenants, None, None, "", None)
    picked = await tenant_named(store, tenant)
    item = await next_item(store, picked.id)
    when = "" if item is None else utc(item.completion.created_at)
    return ReviewPage(tenants, picked, item, when, DONE.get(done or ""))


def utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


@get("/review", opt=ADMIN_ONLY)
async def review(
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    tenant: FromQuery[str | None] = None,
    done: FromQuery[str | None] = None,
) -> Template:
    page = await review_page(store, tenant, done)
    return render(console_user, "review.html", PAGE, {"page": page})


@post("/review/{completion_id:str}", opt=ADMIN_ONLY)
async def review_decision(
    request: AnyRequest,
    console_user: Injected[ConsoleUser],
    store: Injected[Store],
    completion_id: FromPath[str],
) -> Redirect:
    form = await read_form(request, console_user)
    tenant = await tenant_named(store, form.get("tenant", ""))
    decision = form.get("decision", "")
    reviewer = console_user.name
    await decide(store, tenant, completion_id, decision, form.get("correction"), reviewer)
    return back_to(f"{PAGE}?{urlencode({'tenant': tenant.name, 'done': decision})}")


ROUTES: list[HTTPRouteHandler] = [review, review_decision]
