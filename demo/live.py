"""Live traffic while the promotion controller rolls a candidate out (demo.support_desk).

A tenant's end users keep asking support questions through its alias with the official `openai`
SDK, each rating every answer by what they want (`Rate`), while the rollout is followed through
`GET /admin/tenants/{t}/aliases/{a}/rollouts/{id}` and each decision printed as the controller
takes it: offline gate → shadow → canary steps → full, or a roll back. The traffic stops when
the rollout ends; the tally says which version answered how many requests, how they were rated,
and every request a client saw fail (the promise: none).

Users are many (`LIVE_USERS`): a canary step sends a share of *users* to the candidate.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import openai
from openai import AsyncOpenAI

Rating = Literal["up", "down"]
Rate = Callable[[str], Rating]  # an answer to what its user thinks of it
Log = Callable[[str], None]

LIVE_USERS = 2000
MAX_TOKENS = 40
POLL_S = 2.0
HTTP_RETRY = (429, 503)


@dataclass
class LiveTally:
    """What the live traffic saw: answers per serving version, ratings, failures."""

    served: Counter[str] = field(default_factory=Counter)  # version ("base" or an id) → answers
    down: Counter[str] = field(default_factory=Counter)  # version → answers rated down
    failed: list[str] = field(default_factory=list)  # requests a client saw fail
    feedback_failed: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.served.values()) + len(self.failed)

    def line(self) -> str:
        arms = ", ".join(
            f"{v}: {n} answers, {self.down[v] / n:.0%} rated down" for v, n in self.served.items()
        )
        return f"{self.requests} live requests ({arms}); {len(self.failed)} failed"


@dataclass(frozen=True)
class RolloutOutcome:
    status: str  # promoted, rolled_back, aborted, or running (gave up waiting)
    stage: str
    decisions: list[dict[str, Any]]
    tally: LiveTally
    seconds: float

    def walked(self) -> list[tuple[str, str]]:
        """(stage, action) of every decision but the holds, in order."""
        return [(d["stage"], d["action"]) for d in self.decisions if d["action"] != "hold"]


async def _one(
    client: AsyncOpenAI, http: httpx.AsyncClient, user: str, question: str, rate: Rate,
    tally: LiveTally,
) -> None:  # fmt: skip
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="support",
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=MAX_TOKENS,
            user=user,
        )
    except openai.APIError as exc:
        tally.failed.append(f"{type(exc).__name__}: {exc}"[:300])
        return
    version = raw.headers.get("x-loopgate-adapter-version", "?")
    reply = raw.parse()
    answer = reply.choices[0].message.content or ""
    rating = rate(answer)
    tally.served[version] += 1
    tally.down[version] += rating == "down"
    body = {"rating": rating, "user": user}
    try:
        for attempt in range(4):
            resp = await http.post(f"/v1/chat/completions/{reply.id}/feedback", json=body)
            if resp.status_code not in HTTP_RETRY or attempt == 3:
                break
            await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
    except httpx.HTTPError as exc:
        tally.feedback_failed.append(repr(exc)[:300])
        return
    if resp.status_code >= 400:
        tally.feedback_failed.append(f"{resp.status_code}: {resp.text[:200]}")


async def _traffic(
    url: str, key: str, questions: list[str], rate: Rate, stop: asyncio.Event,
    tally: LiveTally, *, concurrency: int, seed: int,
) -> None:  # fmt: skip
    rng = random.Random(seed)  # noqa: S311 - simulation, not crypto
    client = AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=600)
    headers = {"Authorization": f"Bearer {key}"}

    async def user_loop() -> None:
        while not stop.is_set():
            user = f"live-{rng.randrange(LIVE_USERS):04d}"
            await _one(client, http, user, rng.choice(questions), rate, tally)

    async with client, httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        await asyncio.gather(*(user_loop() for _ in range(concurrency)))


async def _follow(
    admin: httpx.AsyncClient, tenant: str, path: str, log: Log, timeout_s: float,
    traffic: asyncio.Task[None],
) -> dict[str, Any]:  # fmt: skip
    seen, loop = 0, asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if traffic.done():  # the traffic itself broke (a bug here): say so, not wait for ever
            traffic.result()
            raise RuntimeError("the live traffic stopped before the rollout ended")
        resp = await admin.get(path)
        resp.raise_for_status()
        rollout: dict[str, Any] = resp.json()
        for d in rollout["decisions"][seen:]:
            log(f"  [{tenant}] rollout {d['stage']}: {d['action']} - {d['detail']}")
        seen = len(rollout["decisions"])
        if rollout["status"] != "running" or loop.time() > deadline:
            return rollout
        await asyncio.sleep(POLL_S)


async def roll_out(
    url: str, admin_key: str, key: str, tenant: str, alias: str, rollout_id: str, *,
    questions: list[str], rate: Rate, log: Log, concurrency: int = 8, seed: int = 1,
    timeout_s: float = 3600.0,
) -> RolloutOutcome:  # fmt: skip
    """Live traffic on `alias` until its rollout `rollout_id` ends (or `timeout_s` passes)."""
    tally, stop = LiveTally(), asyncio.Event()
    path = f"/admin/tenants/{tenant}/aliases/{alias}/rollouts/{rollout_id}"
    loop = asyncio.get_running_loop()
    started = loop.time()
    traffic = asyncio.create_task(
        _traffic(url, key, questions, rate, stop, tally, concurrency=concurrency, seed=seed)
    )
    headers = {"Authorization": f"Bearer {admin_key}"}
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as admin:
            rollout = await _follow(admin, tenant, path, log, timeout_s, traffic)
    finally:
        stop.set()
        await traffic
    return RolloutOutcome(
        rollout["status"], rollout["stage"], rollout["decisions"], tally, loop.time() - started
    )
