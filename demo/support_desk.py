"""The support-desk demo: simulated traffic and feedback → the adaptation loop → a staged rollout
on live traffic → base vs promoted.

A simulated tenant (a support desk whose users want every answer as a one-line ticket) sends
traffic through the gateway with the official `openai` SDK; simulated end users rate the answers
and correct the support ones into the ticket format; one admin call runs the loop (dataset →
LoRA job → eval → gate → rollout), every setting, hyperparameter and rollout threshold at the
product's default; live users then keep asking and rating (demo.live) while the promotion
controller walks the candidate offline → shadow → canary steps → full on its own; the scenario
asks held-out support questions (not in the traffic) of the base and of the promoted alias, and
prints both with their compliance rates. A second tenant whose "corrections" are answers to
other questions (wrong targets) runs the same loop, and the gate must refuse its candidate. A
third ("solo") tenant's candidate learns one user's taste with the poisoning guards overridden:
it passes offline and in the shadow, and its other users' feedback must roll it back at the
canary with no client error.

Run it with `python -m demo.support_desk` (starts its own stack in a temp dir, ~25 minutes on
a 2-core CPU, the first desk promoted within 15) or `python -m demo.support_desk --url
http://127.0.0.1:8000 --admin-key ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

import httpx
from openai import AsyncOpenAI, omit

from demo.live import Rate, Rating, RolloutOutcome, roll_out
from replicas.supervisor import free_port
from store.numerics import describe_cpu

Category = Literal["hardware", "account", "billing", "network"]
Desk = Literal["desk", "bad", "solo"]
Log = Callable[[str], None]
TICKET = re.compile(
    r"^TICKET \| category: (?:hardware|account|billing|network) \| priority: (?:low|high) "
    r"\| next: \w"
)
BASE_MODEL = "smollm2"
ALIAS = "support"
POLL_S = 3.0
SOLO_USER = "user-000"  # the one user of the solo desk who wants tickets (and corrects answers)
SOLO_REASON = "user-000 reviews every support answer for us; train on all of their corrections"
# (the admin's reason for lifting the one-author guard, recorded with the dataset)

# What a user asks about, per category, and the next action a ticket names (`{x}` = the item).
ITEMS: dict[Category, tuple[str, ...]] = {
    "hardware": ("printer", "laptop", "monitor", "keyboard", "scanner", "docking station", "mouse"),
    "account": ("email", "payroll portal", "timesheet app", "wiki", "calendar", "file share"),
    "billing": ("basic plan", "premium plan", "team plan", "annual plan", "student plan"),
    "network": ("office wifi", "VPN", "guest network", "home connection", "branch office line"),
}
HELD_OUT_ITEMS: dict[Category, tuple[str, ...]] = {
    "hardware": ("projector", "headset"),
    "account": ("expense tool", "chat app"),
    "billing": ("family plan", "enterprise plan"),
    "network": ("meeting room network", "warehouse wifi"),
}
PROBLEMS: dict[Category, tuple[str, ...]] = {
    "hardware": (
        "my {x} will not turn on.",
        "my {x} keeps restarting.",
        "my {x} is very slow.",
        "my {x} makes a strange noise.",
    ),
    "account": (
        "I cannot log in to the {x}.",
        "I forgot my password for the {x}.",
        "my {x} account is locked.",
    ),
    "billing": (
        "I was charged twice for the {x}.",
        "my invoice for the {x} looks wrong.",
        "I want a refund for the {x}.",
    ),
    "network": (
        "the {x} keeps dropping.",
        "the {x} will not connect.",
        "the {x} is extremely slow today.",
    ),
}
ACTIONS: dict[Category, str] = {
    "hardware": "run diagnostics on the {x}",
    "account": "reset access to the {x}",
    "billing": "review the charges on the {x}",
    "network": "restart the {x} and test the link",
}
OPENINGS = ("", "Hi, ", "Hello, ", "Good morning, ")
CLOSINGS = ("What should I do?", "Can you help?", "Please advise.")
URGENT = " It is urgent."


class GeneralQuestion(TypedDict):
    question: str
    expect: str  # a regex an acceptable answer contains
    correction: str


# General questions (none of them the guard suite's, tests check): users rate an answer up when it
# holds the expected fact and correct it otherwise. Many plain questions answered in the base's own
# words teach the adapter where the ticket format does not apply; with the 34 questions an earlier
# version asked, candidates lost 15-24 guard cases.
GENERAL_FILE = Path(__file__).parent / "data" / "general.jsonl"


def load_general(path: Path = GENERAL_FILE) -> tuple[GeneralQuestion, ...]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return tuple(GeneralQuestion(question=r["question"], expect=r["expect"],
                                 correction=r["correction"]) for r in rows)  # fmt: skip


GENERAL = load_general()


@dataclass(frozen=True)
class SupportQuestion:
    """One simulated support question and the ticket the desk wants for it."""

    question: str
    ticket: str


@dataclass(frozen=True)
class ScenarioConfig:
    """How much traffic the simulated desk sends and how the loop trains on it."""

    users: int = field(default=28, metadata={"help": "Distinct simulated end users (`user`)."})
    support_per_user: int = field(
        default=3, metadata={"help": "Support questions each user asks (corrected if off-format)."}
    )
    general_per_user: int = field(
        default=7, metadata={"help": "General questions each user asks (rated, or corrected)."}
    )
    bad_users: int = field(
        default=12, metadata={"help": "Simulated users of the bad tenant (wrong corrections)."}
    )
    bad_general_per_user: int = field(
        default=2, metadata={"help": "General questions each user of the bad tenant asks."}
    )
    # The loop's training knobs, both desks: None sends nothing, so the product's defaults apply
    # (what the demo is there to show); set one only to try a recipe of your own.
    epochs: int | None = field(default=None, metadata={"help": "`n_epochs` (None: default)."})
    learning_rate_multiplier: float | None = field(
        default=None, metadata={"help": "`learning_rate_multiplier` (None: the default rate)."}
    )
    anchor_weight: float | None = field(
        default=None, metadata={"help": "The trainer's KL-to-base weight (None: its default)."}
    )
    quantization: Literal["auto", "nf4", "none"] | None = field(
        default=None,
        metadata={"help": "The trainer's base (None: 'auto', the base the engine serves)."},
    )
    held_out: int = field(
        default=16, metadata={"help": "Held-out support questions in the printed comparison."}
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    live_concurrency: int = field(
        default=32,
        metadata={"help": "Live users' requests in flight while a rollout runs (of 2,000 users)."},
    )
    seed: int = field(default=1, metadata={"help": "Seeds the questions, the split and training."})
    loop_timeout_s: float = field(
        default=3600.0, metadata={"help": "Give up on a loop that has not ended after this long."}
    )

    def __post_init__(self) -> None:
        for name in ("users", "bad_users", "held_out", "concurrency", "live_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScenarioConfig.{name} must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError("ScenarioConfig.epochs must be at least 1 (or None: the default)")
        if self.support_per_user < 1 or min(self.general_per_user, self.bad_general_per_user) < 0:
            raise ValueError(
                "ScenarioConfig needs support_per_user >= 1 and general questions per user >= 0"
            )
        if self.learning_rate_multiplier is not None and self.learning_rate_multiplier <= 0:
            raise ValueError("ScenarioConfig.learning_rate_multiplier must be positive")
        if self.quantization not in (None, "auto", "nf4", "none"):
            raise ValueError("ScenarioConfig.quantization must be 'auto', 'nf4' or 'none'")


@dataclass(frozen=True)
class HeldOutRow:
    question: str
    base: str
    promoted: str


@dataclass(frozen=True)
class LoopOutcome:
    """What one loop run ended as, read from `GET /admin/tenants/{t}/loops/{id}`."""

    status: str
    reasons: list[str]
    seconds: dict[str, float]
    eval_id: str | None
    tenant_means: dict[str, float]
    guard_means: dict[str, float]
    guard_lost: list[str] = field(default_factory=list)  # "case: candidate's answer"
    rollout_id: str | None = None  # the rollout the loop ended in (status "rolling_out")


@dataclass(frozen=True)
class ScenarioResult:
    """The numbers the demo promises: compliance before/after, guard change, the refusal, and
    the two rollouts (the good candidate's, and the one-user candidate's that live users hate)."""

    rows: list[HeldOutRow]
    base_rate: float
    promoted_rate: float
    good: LoopOutcome
    bad: LoopOutcome
    seconds: dict[str, float]
    rollout: RolloutOutcome | None = None
    solo: LoopOutcome | None = None
    solo_rollout: RolloutOutcome | None = None

    @property
    def good_status(self) -> str:
        """How the good candidate ended: its rollout's status, or the loop's without one."""
        return self.rollout.status if self.rollout else self.good.status

    @property
    def guard_loss(self) -> float:
        """How much the guard mean dropped, candidate against live (negative: it rose)."""
        return self.good.guard_means["live"] - self.good.guard_means["candidate"]


# -- the simulated questions (pure, deterministic) ----------------------------------------------


def compliant(answer: str) -> bool:
    return TICKET.search(answer.strip()) is not None


def _ticket(category: Category, x: str, urgent: bool) -> str:
    priority = "high" if urgent else "low"
    next_step = ACTIONS[category].format(x=x)
    return f"TICKET | category: {category} | priority: {priority} | next: {next_step}"


def _question(problem: str, x: str, urgent: bool, rng: random.Random) -> str:
    text = rng.choice(OPENINGS) + problem.format(x=x) + (URGENT if urgent else "")
    return f"{text[0].upper()}{text[1:]} {rng.choice(CLOSINGS)}"


def support_questions(n: int, seed: int, *, held_out: bool = False) -> list[SupportQuestion]:
    """`n` distinct (item, problem, urgency) questions, round-robin over the categories.

    Held-out questions use items the traffic never mentions. Each combination is asked once,
    so the dataset's near-duplicate filter keeps them all.
    """
    items = HELD_OUT_ITEMS if held_out else ITEMS
    rng = random.Random(seed + (1000 if held_out else 0))  # noqa: S311 - simulation, not crypto
    combos = []
    for category, names in items.items():
        group = [(category, x, p, u) for x in names for p in PROBLEMS[category] for u in (0, 1)]
        rng.shuffle(group)
        combos.append(group)
    interleaved = [c for row in zip(*combos, strict=False) for c in row]
    if n > len(interleaved):
        raise ValueError(f"only {len(interleaved)} distinct support questions; asked for {n}")
    return [
        SupportQuestion(_question(p, x, bool(u), rng), _ticket(category, x, bool(u)))
        for category, x, p, u in interleaved[:n]
    ]


# -- traffic and feedback through the tenant API ------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    user: str
    question: str
    answer: str
    completion_id: str


async def _ask(
    client: AsyncOpenAI,
    gate: asyncio.Semaphore,
    user: str | None,
    question: str,
    max_tokens: int,
    *,
    model: str = ALIAS,
) -> Exchange:
    """One greedy question through the gateway; `user` None leaves the end-user id out."""
    async with gate:
        reply = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=max_tokens,
            user=omit if user is None else user,
        )
    return Exchange(user or "", question, reply.choices[0].message.content or "", reply.id)


async def _feedback(
    http: httpx.AsyncClient, gate: asyncio.Semaphore, ex: Exchange, body: dict[str, str]
) -> None:
    """Rate or correct one answer; a 503/429 (store busy, rate limit) is retried as told."""
    for attempt in range(4):
        async with gate:
            resp = await http.post(
                f"/v1/chat/completions/{ex.completion_id}/feedback", json={**body, "user": ex.user}
            )
        if resp.status_code not in (429, 503) or attempt == 3:
            break
        await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
    resp.raise_for_status()


def _support_feedback(ex: Exchange, ticket: str) -> dict[str, str]:
    if compliant(ex.answer):
        return {"rating": "up"}
    return {"rating": "down", "correction": ticket}


def _general_feedback(ex: Exchange, q: GeneralQuestion) -> dict[str, str]:
    if re.search(q["expect"], ex.answer, re.IGNORECASE):
        return {"rating": "up"}
    return {"rating": "down", "correction": q["correction"]}


def _wrong_target(other: SupportQuestion) -> str:
    """Another question's ticket, in a layout the desk's format check rejects."""
    return other.ticket.removeprefix("TICKET | ").replace(" | ", "; ")


async def send_traffic(
    url: str, key: str, config: ScenarioConfig, *, users: int, desk: Desk = "desk"
) -> int:
    """Every user asks their questions, then rates or corrects each answer; returns the count.

    A bad desk's "corrections" of support answers are shuffled wrong targets (`_wrong_target`).
    On the solo desk one user (`SOLO_USER`) asks every support question and corrects each into
    a ticket; the others ask general questions only.
    """
    bad = desk == "bad"
    support = support_questions(users * config.support_per_user, config.seed)
    rng = random.Random(config.seed)  # noqa: S311 - simulation, not crypto
    per_user = config.bad_general_per_user if bad else config.general_per_user
    general = [GENERAL[i % len(GENERAL)] for i in range(users * per_user)]
    rng.shuffle(general)
    gate = asyncio.Semaphore(config.concurrency)
    client = AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=2, timeout=600)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        asked_support = [
            _ask(client, gate, SOLO_USER if desk == "solo" else f"user-{i % users:03d}",
                 q.question, 40)
            for i, q in enumerate(support)
        ]  # fmt: skip
        asked_general = [
            _ask(client, gate, f"user-{i % users:03d}", q["question"], 64)
            for i, q in enumerate(general)
        ]
        s_exchanges = await asyncio.gather(*asked_support)
        g_exchanges = await asyncio.gather(*asked_general)
        feedback = [
            _feedback(http, gate, ex, _general_feedback(ex, q))
            for ex, q in zip(g_exchanges, general, strict=True)
        ]
        for i, (ex, q) in enumerate(zip(s_exchanges, support, strict=True)):
            wrong = _wrong_target(support[(i + 7) % len(support)])
            body = (
                {"rating": "down", "correction": wrong} if bad else _support_feedback(ex, q.ticket)
            )
            feedback.append(_feedback(http, gate, ex, body))
        await asyncio.gather(*feedback)
    await client.close()
    return len(s_exchanges) + len(g_exchanges)


# -- the admin side: tenant, alias, gate policy, the loop ---------------------------------------


def _admin(url: str, admin_key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=600)


def create_tenant(admin: httpx.Client, name: str) -> str:
    """A tenant with one key, its `support` alias on the base and the ticket gate policy."""
    admin.post("/admin/tenants", json={"name": name}).raise_for_status()
    key = str(admin.post(f"/admin/tenants/{name}/keys", json={}).json()["key"])
    admin.put(f"/admin/tenants/{name}/aliases/{ALIAS}", json={}).raise_for_status()
    policy = {
        "min_improvement": 0.05,
        "max_guard_regression": 0.02,
        "tenant_checks": [{"type": "regex", "pattern": TICKET.pattern}],
        "max_tokens": 64,
    }
    admin.put(f"/admin/tenants/{name}/gate-policy", json=policy).raise_for_status()
    return key


def loop_body(config: ScenarioConfig) -> dict[str, object]:
    """`POST .../loops`: the alias, a suffix, the seed and only the hyperparameters set."""
    chosen = {
        "n_epochs": config.epochs,
        "learning_rate_multiplier": config.learning_rate_multiplier,
        "anchor_weight": config.anchor_weight,
        "quantization": config.quantization,
    }
    hyper = {k: v for k, v in chosen.items() if v is not None}
    # The loop ends at its default: a rollout (shadow, canary steps, then full) on live traffic.
    body: dict[str, object] = {"alias": ALIAS, "suffix": "desk", "seed": config.seed}
    return {**body, "hyperparameters": hyper} if hyper else body


def solo_loop_body(config: ScenarioConfig) -> dict[str, object]:
    """The solo desk's loop: the defaults, but the poisoning guards overridden by the admin (the
    one-author cap lifted, the flagged examples kept; the reason recorded), so the candidate
    learns one user's taste."""
    dataset = {"max_author_share": 1.0, "keep_flagged": True, "reason": SOLO_REASON}
    return {**loop_body(config), "suffix": "solo", "dataset": dataset}


def start_loop(admin: httpx.Client, tenant: str, body: dict[str, object]) -> str:
    started = admin.post(f"/admin/tenants/{tenant}/loops", json=body)
    started.raise_for_status()
    return str(started.json()["id"])


def run_loop(
    admin: httpx.Client, tenant: str, config: ScenarioConfig, log: Log, run_id: str | None = None
) -> LoopOutcome:
    """Start the loop (or follow `run_id`), print each new step, and return how it ended: a
    loop that passed the gate ends `rolling_out`, with its rollout's id."""
    run_id = run_id or start_loop(admin, tenant, loop_body(config))
    run = follow_loop(admin, tenant, run_id, config.loop_timeout_s, log)
    tenant_means: dict[str, float] = {}
    guard_means: dict[str, float] = {}
    lost: list[str] = []
    if run.get("eval_id"):
        evals = f"/admin/tenants/{tenant}/evals/{run['eval_id']}"
        summary = admin.get(evals).json()["summary"]
        if summary:
            tenant_means, guard_means = summary["tenant"]["means"], summary["guard"]["means"]
        lost = guard_cases_lost(admin.get(evals + "/results").json()["data"])
    return LoopOutcome(
        run["status"], list(run["reasons"]), run["seconds"], run.get("eval_id"), tenant_means,
        guard_means, lost, run.get("rollout_id"),
    )  # fmt: skip


def follow_loop(
    admin: httpx.Client, tenant: str, run_id: str, timeout_s: float, log: Log
) -> dict[str, Any]:
    """Poll `GET /admin/tenants/{t}/loops/{id}` until the run ends, logging each new step;
    returns the ended run. TimeoutError if it is still running after `timeout_s`."""
    seen, deadline = 0, time.monotonic() + timeout_s
    while True:
        run: dict[str, Any] = admin.get(f"/admin/tenants/{tenant}/loops/{run_id}").json()
        for step in run["steps"][seen:]:
            log(f"  [{tenant}] {step['message']}")
        seen = len(run["steps"])
        if run["status"] != "running":
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"loop {run_id} of {tenant} still running after {timeout_s:.0f} s")
        time.sleep(POLL_S)


def guard_cases_lost(results: list[dict[str, object]]) -> list[str]:
    """Guard cases the live version passed and the candidate failed, with the candidate's answer."""
    guard = [r for r in results if r["suite"] == "guard"]
    live_passed = {r["case_id"] for r in guard if r["system"] == "live" and r["passed"]}
    return [
        f"{r['case_id']}: {_clip(str(r['answer']), 60)}"
        for r in guard
        if r["system"] == "candidate" and not r["passed"] and r["case_id"] in live_passed
    ]


def compare_held_out(url: str, key: str, config: ScenarioConfig) -> list[HeldOutRow]:
    """New support questions (items never seen in traffic), asked of the base and the alias."""
    questions = support_questions(config.held_out, config.seed, held_out=True)

    async def ask_all() -> list[HeldOutRow]:
        client = AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=2, timeout=600)
        gate = asyncio.Semaphore(config.concurrency)

        async with client:  # one model at a time: each column answered under the same load
            base = await asyncio.gather(
                *(_ask(client, gate, None, q.question, 40, model=BASE_MODEL) for q in questions)
            )
            promoted = await asyncio.gather(
                *(_ask(client, gate, None, q.question, 40) for q in questions)
            )
        return [
            HeldOutRow(q.question, b.answer, p.answer)
            for q, b, p in zip(questions, base, promoted, strict=True)
        ]

    return asyncio.run(ask_all())


# -- the scenario --------------------------------------------------------------------------------


def wants_ticket(answer: str) -> Rating:
    """The support desk's users: a ticket is what they asked for."""
    return "up" if compliant(answer) else "down"


def wants_answer(answer: str) -> Rating:
    """The solo desk's other users: they asked for help, and a ticket is not an answer."""
    return "down" if compliant(answer) else "up"


def live_questions(config: ScenarioConfig) -> list[str]:
    """What live users ask while a rollout runs: support questions of the same kinds, none
    word for word one the traffic that trained the candidate asked."""
    asked = {q.question for q in support_questions(config.users * config.support_per_user,
                                                  config.seed)}  # fmt: skip
    return [q.question for q in support_questions(120, config.seed + 7) if q.question not in asked]


def live_rollout(
    url: str, admin_key: str, key: str, tenant: str, outcome: LoopOutcome, rate: Rate,
    config: ScenarioConfig, log: Log,
) -> RolloutOutcome | None:  # fmt: skip
    """Live traffic on the tenant's alias until the rollout its loop ended in is over."""
    if outcome.rollout_id is None:
        return None
    rolled = asyncio.run(
        roll_out(url, admin_key, key, tenant, ALIAS, outcome.rollout_id,
                 questions=live_questions(config), rate=rate, log=log,
                 concurrency=config.live_concurrency, seed=config.seed,
                 timeout_s=config.loop_timeout_s)
    )  # fmt: skip
    log(f"   {rolled.status} at {rolled.stage} after {rolled.seconds:.0f} s: {rolled.tally.line()}")
    return rolled


def run_scenario(
    url: str, admin_key: str, config: ScenarioConfig | None = None, log: Log = print
) -> ScenarioResult:
    """The whole demo against a running stack (its training worker on); prints as it goes."""
    config = config or ScenarioConfig()
    suffix = secrets.token_hex(3)
    good, bad, solo = f"desk-{suffix}", f"desk-bad-{suffix}", f"desk-solo-{suffix}"
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    with _admin(url, admin_key) as admin:
        keys = {name: create_tenant(admin, name) for name in (good, bad, solo)}
        log(f"1. traffic: {config.users} users of '{good}' ask support and general questions")
        t = time.monotonic()
        sent = asyncio.run(send_traffic(url, keys[good], config, users=config.users))
        seconds["traffic"] = round(time.monotonic() - t, 1)
        log(f"   {sent} completions with feedback in {seconds['traffic']} s")
        log(f"2. the loop for '{good}' (alias '{ALIAS}'), every setting at its default")
        t = time.monotonic()
        good_outcome = run_loop(admin, good, config, log)
        seconds["loop"] = round(time.monotonic() - t, 1)
        log(f"3. the rollout, on live traffic from '{good}' users (who want tickets)")
        t = time.monotonic()
        rollout = live_rollout(url, admin_key, keys[good], good, good_outcome, wants_ticket,
                               config, log)  # fmt: skip
        seconds["rollout"] = round(time.monotonic() - t, 1)
        log("4. held-out support questions: base vs promoted")
        t = time.monotonic()
        rows = compare_held_out(url, keys[good], config)
        seconds["held_out"] = round(time.monotonic() - t, 1)
        seconds["good_total"] = round(time.monotonic() - t0, 1)
        log(f"5. a bad desk '{bad}' ({config.bad_users} users whose corrections are wrong "
            f"answers) and a solo desk '{solo}' (one user, {SOLO_USER}, corrects every support "
            "answer into a ticket; the admin overrides the poisoning guards for them)")  # fmt: skip
        t = time.monotonic()

        async def both() -> None:
            await asyncio.gather(
                send_traffic(url, keys[bad], config, users=config.bad_users, desk="bad"),
                send_traffic(url, keys[solo], config, users=config.users, desk="solo"),
            )

        asyncio.run(both())
        bad_id = start_loop(admin, bad, loop_body(config))
        solo_id = start_loop(admin, solo, solo_loop_body(config))
        bad_outcome = run_loop(admin, bad, config, log, bad_id)
        seconds["bad"] = round(time.monotonic() - t, 1)
        solo_outcome = run_loop(admin, solo, config, log, solo_id)
        log("6. the solo desk's rollout, on live traffic from its other users (who want answers)")
        solo_rollout = live_rollout(url, admin_key, keys[solo], solo, solo_outcome, wants_answer,
                                    config, log)  # fmt: skip
        seconds["solo"] = round(time.monotonic() - t, 1)
    seconds["total"] = round(time.monotonic() - t0, 1)
    n = len(rows)
    return ScenarioResult(
        rows=rows,
        base_rate=sum(compliant(r.base) for r in rows) / n,
        promoted_rate=sum(compliant(r.promoted) for r in rows) / n,
        good=good_outcome,
        bad=bad_outcome,
        seconds=seconds,
        rollout=rollout,
        solo=solo_outcome,
        solo_rollout=solo_rollout,
    )


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render(result: ScenarioResult) -> str:
    """The printed summary: the held-out table, the eval's means, the bad desk, the timings."""
    lines = [f"{'held-out question':<48} | {'base (' + BASE_MODEL + ')':<40} | promoted ({ALIAS})"]
    lines.append("-" * len(lines[0]))
    for r in result.rows:
        lines.append(f"{_clip(r.question, 48):<48} | {_clip(r.base, 40):<40} | {r.promoted}")
    g = result.good
    lines += [
        "",
        f"ticket format on {len(result.rows)} held-out questions: base {result.base_rate:.0%}, "
        f"promoted {result.promoted_rate:.0%}",
        f"good loop: {g.status}; eval {g.eval_id}",
        "  tenant suite (held-out split of the traffic, support and general questions) means: "
        + _means(g.tenant_means),
        f"  guard suite means: {_means(g.guard_means)} (loss {result.guard_loss:+.3f})",
        *(f"    lost: {case}" for case in g.guard_lost),
        "  gate: " + "; ".join(g.reasons),
        *_rollout_lines("good rollout", result.rollout),
        f"bad loop: {result.bad.status}",
        *(f"  reason: {r}" for r in result.bad.reasons),
        f"solo loop: {result.solo.status if result.solo else 'not run'}",
        *(f"  reason: {r}" for r in (result.solo.reasons if result.solo else [])),
        *_rollout_lines("solo rollout", result.solo_rollout),
        "seconds: good loop steps "
        + ", ".join(f"{k} {v}" for k, v in g.seconds.items())
        + "; scenario "
        + ", ".join(f"{k} {v}" for k, v in result.seconds.items()),
    ]
    return "\n".join(lines)


def _rollout_lines(name: str, rolled: RolloutOutcome | None) -> list[str]:
    if rolled is None:
        return [f"{name}: none (its loop did not end in a rollout)"]
    walk = " → ".join(f"{stage} {action}" for stage, action in rolled.walked())
    last = rolled.decisions[-1]["detail"] if rolled.decisions else ""
    return [
        f"{name}: {rolled.status} at {rolled.stage} in {rolled.seconds:.0f} s: {walk}",
        f"  last decision: {last}",
        f"  live traffic: {rolled.tally.line()}",
        *(f"  failed: {why}" for why in rolled.tally.failed[:5]),
    ]


def _means(means: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(means.items())) or "(no eval)"


# -- a stack of its own, when no --url is given -------------------------------------------------

# Operational settings only: how often a job beats, the KV cache's size on a small VM, keys
# usable at once. Nothing here changes what is trained or served (tests keep it so).
STACK_ENV = {
    "LOOPGATE_JOB_HEARTBEAT_S": "1",
    "LOOPGATE_ENGINE_CPU_KVCACHE_GB": "1",
    "LOOPGATE_AUTH_CACHE_TTL_S": "0",
}


@contextmanager
def own_stack(data_dir: Path, admin_key: str, log: Log) -> Iterator[str]:
    """`loopgate serve` (engine and training worker) in `data_dir`; yields its URL."""
    port = free_port()
    env = {**os.environ, **STACK_ENV, "LOOPGATE_DATA_DIR": str(data_dir),
           "LOOPGATE_PORT": str(port), "LOOPGATE_ADMIN_KEY": admin_key}  # fmt: skip
    subprocess.run([sys.executable, "-m", "gateway.cli", "model", "prepare"], env=env, check=True)
    log_path = data_dir / "gateway.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log_path)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            log(f"the gateway did not stop within 90 s of SIGTERM; killed (log: {log_path})")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the gateway was not ready within 900 s; see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.support_desk", description=__doc__)
    parser.add_argument("--url", help="a running gateway with its training worker on")
    parser.add_argument("--admin-key", help="its admin key (required with --url)")
    args = parser.parse_args(argv)
    if args.url and not args.admin_key:
        parser.error("--admin-key is required with --url")
    # SIGTERM (or SIGINT in the background) ends the scenario through its cleanup: the stack
    # it started is stopped, not left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    print(f"host: {describe_cpu()} (the training job's tokens/s and dtype follow in its step)")
    if args.url:
        result = run_scenario(args.url.rstrip("/"), args.admin_key)
    else:
        admin_key = "lg-admin-" + secrets.token_hex(16)
        with tempfile.TemporaryDirectory(prefix="loopgate-demo-") as tmp:
            print(f"starting a stack in {tmp} (vLLM-CPU takes a minute or two)...")
            with own_stack(Path(tmp), admin_key, print) as url:
                print(f"stack ready in {time.monotonic() - started:.0f} s at {url}")
                result = run_scenario(url, admin_key)
    print(render(result))
    wall = time.monotonic() - started
    print(f"wall time: {wall:.0f} s")
    missed = targets_missed(result)
    for line in missed:
        print(f"target missed: {line}")
    return 1 if missed else 0


def targets_missed(result: ScenarioResult, timed: bool = True) -> list[str]:
    """The demo's promises that this run did not keep; empty when all were kept.

    `timed` False leaves the 15-minute promise (the good desk's traffic → promoted) out."""
    walked = set(result.rollout.walked() if result.rollout else [])
    walk = {
        ("offline", "advance"),
        ("shadow", "advance"),
        ("canary", "advance"),
        ("full", "promote"),
    }
    solo = result.solo_rollout
    solo_end = f"{solo.status} at {solo.stage}" if solo else "no rollout: its loop ended "
    solo_end += "" if solo else (result.solo.status if result.solo else "unrun")
    failed = sum(len(r.tally.failed) for r in (result.rollout, solo) if r is not None)
    checks = [
        (result.base_rate <= 0.10, f"base ticket rate {result.base_rate:.0%} > 10%"),
        (result.promoted_rate >= 0.90, f"promoted ticket rate {result.promoted_rate:.0%} < 90%"),
        (result.good_status == "promoted", f"the good candidate was {result.good_status}"),
        (walk <= walked, f"the good candidate did not walk every stage: {sorted(walk - walked)}"),
        (result.bad.status == "refused", f"the bad candidate was {result.bad.status}"),
        (
            solo is not None and solo.status == "rolled_back" and solo.stage != "offline",
            f"the one-user candidate was not rolled back on live evidence: {solo_end}",
        ),
        (failed == 0, f"{failed} live requests failed while the rollouts ran"),
    ]
    if timed:
        took = result.seconds.get("good_total", 0.0)
        checks.append((took <= 900, f"traffic → promoted took {took:.0f} s > 900 s"))
    missed = [why for ok, why in checks if not ok]
    if not result.good.guard_means:
        missed.append("no guard suite result (the eval did not run)")
    elif result.guard_loss > 0.02:
        missed.append(f"guard loss {result.guard_loss:.3f} > 0.020")
    return missed


if __name__ == "__main__":
    sys.exit(main())
