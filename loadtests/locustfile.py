"""Locust users for loopgate: OpenAI-SDK chat traffic over Zipf-popular tenant models, and swaps.

The plan (tenants, keys, models with their Zipf weights, the aliases to swap, the admin key)
is a JSON file that `python -m loadtests.run` prepares through the admin API; its path comes
in LOOPGATE_LOADTEST_PLAN. Besides each request (named "chat" / "chat stream"), a stream's
time to first token is recorded as "TTFT" and its mean inter-token latency as "ITL", both
with request_type "LLM", so that they land in the CSV and HTML reports like any request.

Run through loadtests/run.py (it sets the plan, the CSV/HTML paths and the SLO checks).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import openai
from locust import HttpUser, User, between, events, task
from locust.env import Environment

PLAN_ENV = "LOOPGATE_LOADTEST_PLAN"
FINAL_ENV = "LOOPGATE_LOADTEST_FINAL"
PROMPTS = (
    "Write a one-line greeting for a new customer.",
    "How do I reset my password?",
    "Summarise: the order shipped late but arrived intact.",
    "Give me three words that describe a calm sea.",
    "What should I pack for a weekend trip?",
)


@dataclass(frozen=True)
class Route:
    """One tenant model that traffic goes to, and how popular it is."""

    tenant: str
    key: str
    model: str
    weight: float


@dataclass(frozen=True)
class Swap:
    """An alias the swapper promotes to `version` and then rolls back."""

    tenant: str
    alias: str
    version: str


@dataclass(frozen=True)
class Plan:
    base_url: str
    admin_key: str
    routes: tuple[Route, ...]
    swaps: tuple[Swap, ...]
    swap_interval_s: float
    stream_share: float
    max_tokens: int


def load_plan(path: Path) -> Plan:
    raw = json.loads(path.read_text())
    return Plan(
        base_url=raw["base_url"],
        admin_key=raw["admin_key"],
        routes=tuple(Route(**r) for r in raw["routes"]),
        swaps=tuple(Swap(**s) for s in raw["swaps"]),
        swap_interval_s=float(raw["swap_interval_s"]),
        stream_share=float(raw["stream_share"]),
        max_tokens=int(raw["max_tokens"]),
    )


def _plan() -> Plan:
    path = os.environ.get(PLAN_ENV)
    if not path:
        raise RuntimeError(f"set {PLAN_ENV} to a plan file (python -m loadtests.run writes one)")
    return load_plan(Path(path))


PLAN = _plan()
# The SDK's HTTP client logs every request at INFO: that would drown locust's own output.
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)
RNG = random.Random()  # noqa: S311 - load generation, not crypto


def fire(
    env: Environment, name: str, seconds: float, length: int, exc: BaseException | None
) -> None:
    env.events.request.fire(  # type: ignore[no-untyped-call]
        request_type="LLM",
        name=name,
        response_time=seconds * 1000,
        response_length=length,
        exception=exc,
        context={},
    )


class ChatUser(User):
    """An application using the official OpenAI SDK against its tenant's models."""

    wait_time = between(0.5, 2.0)
    weight = 10

    def on_start(self) -> None:
        self.clients = {
            r.tenant: openai.OpenAI(
                base_url=PLAN.base_url + "/v1", api_key=r.key, max_retries=0, timeout=120
            )
            for r in PLAN.routes
        }

    def _route(self) -> Route:
        return RNG.choices(PLAN.routes, weights=[r.weight for r in PLAN.routes])[0]

    def _messages(self) -> list[openai.types.chat.ChatCompletionMessageParam]:
        return [{"role": "user", "content": RNG.choice(PROMPTS)}]

    @task
    def chat(self) -> None:
        route = self._route()
        if RNG.random() < PLAN.stream_share:
            self._stream(route)
        else:
            self._complete(route)

    def _complete(self, route: Route) -> None:
        start = time.perf_counter()
        try:
            reply = self.clients[route.tenant].chat.completions.create(
                model=route.model, messages=self._messages(), max_tokens=PLAN.max_tokens
            )
            text = reply.choices[0].message.content or ""
            fire(self.environment, "chat", time.perf_counter() - start, len(text), None)
        except openai.OpenAIError as exc:
            fire(self.environment, "chat", time.perf_counter() - start, 0, exc)

    def _stream(self, route: Route) -> None:
        """A streamed completion: TTFT at the first content delta, ITL between deltas."""
        start = time.perf_counter()
        arrivals: list[float] = []
        try:
            stream = self.clients[route.tenant].chat.completions.create(
                model=route.model,
                messages=self._messages(),
                max_tokens=PLAN.max_tokens,
                stream=True,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.perf_counter())
            if not arrivals:
                raise RuntimeError(f"stream from {route.model} carried no content")
        except (openai.OpenAIError, RuntimeError) as exc:
            fire(self.environment, "chat stream", time.perf_counter() - start, 0, exc)
            return
        fire(self.environment, "chat stream", time.perf_counter() - start, len(arrivals), None)
        fire(self.environment, "TTFT", arrivals[0] - start, 0, None)
        if len(arrivals) > 1:
            itl = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
            fire(self.environment, "ITL", itl, 0, None)


class SwapUser(HttpUser):
    """An operator promoting an alias to another adapter version, then rolling it back."""

    fixed_count = 1
    weight = 1
    host = PLAN.base_url

    def on_start(self) -> None:
        self.headers = {
            "Authorization": f"Bearer {PLAN.admin_key}",
            "x-loopgate-actor": "loadtest",
        }
        self.step = 0

    def wait_time(self) -> float:
        return PLAN.swap_interval_s

    @task
    def swap(self) -> None:
        if not PLAN.swaps:
            return
        # Even steps promote the next alias in turn, odd steps roll that alias back.
        target = PLAN.swaps[(self.step // 2) % len(PLAN.swaps)]
        base = f"/admin/tenants/{target.tenant}/aliases/{target.alias}"
        if self.step % 2 == 0:
            body = {"version": target.version, "force": True, "reason": "load test"}
            self.client.post(f"{base}/promote", json=body, headers=self.headers, name="promote")
        else:
            body = {"reason": "load test"}
            self.client.post(f"{base}/rollback", json=body, headers=self.headers, name="rollback")
        self.step += 1


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _announce(environment: Environment, **_: object) -> None:
    models = ", ".join(f"{r.tenant}/{r.model} {r.weight:.2f}" for r in PLAN.routes)
    print(f"loadtest plan: {models}; {len(PLAN.swaps)} swappable aliases", flush=True)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _final_stats(environment: Environment, **_: object) -> None:
    """Every name's final counts and percentiles, written after in-flight requests finished.

    Locust's CSV is rewritten once a second while the test runs, so requests that complete
    during --stop-timeout can be missing from it; this file has them (the SLOs use it).
    """
    path = os.environ.get(FINAL_ENV)
    if not path:
        return
    stats = environment.stats
    rows = {
        e.name: {
            "type": e.method,
            "requests": e.num_requests,
            "failures": e.num_failures,
            **{f"p{q}": e.get_response_time_percentile(q / 100) for q in (50, 95, 99)},
        }
        for e in [*stats.entries.values(), stats.total]
    }
    Path(path).write_text(json.dumps(rows, indent=2) + "\n")
