"""The console's Evals:
runs, candidate vs live vs base per suite, the per-case table and the plot.
"""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

ROUTES: list[HTTPRouteHandler] = []
