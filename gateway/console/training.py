"""The console's Fine-tuning and datasets:
snapshots with their filter report, jobs with a live loss curve, loops.
"""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

ROUTES: list[HTTPRouteHandler] = []
