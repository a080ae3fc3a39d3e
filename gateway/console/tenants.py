"""The console's Tenants: keys, limits and budgets with usage, gate policy, opt-outs, erasure."""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

ROUTES: list[HTTPRouteHandler] = []
