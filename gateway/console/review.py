"""The console's The review queue: sampled completions a person approves, corrects or rejects."""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

ROUTES: list[HTTPRouteHandler] = []
