"""The console's Aliases and adapters:
targets and history, versions and lineage, promote, roll back, retire, canaries.
"""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

ROUTES: list[HTTPRouteHandler] = []
