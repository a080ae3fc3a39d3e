"""A relay tap for tests (gateway.relay.Tap): keeps every block it sees and how the stream ended."""

from __future__ import annotations

from gateway.relay import Outcome, Tap


class SeenTap(Tap):
    __slots__ = ("blocks", "outcome")

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.outcome = ""

    def see(self, events: bytes) -> bytes:
        self.blocks.append(events)
        return events

    async def end(self, outcome: Outcome) -> None:
        self.outcome = outcome
