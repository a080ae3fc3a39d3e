"""The support-desk demo: simulated traffic and feedback → the adaptation loop → base vs promoted.

A simulated tenant (a support desk whose users want every answer as a one-line ticket) sends
traffic through the gateway with the official `openai` SDK; simulated end users rate the answers
and correct the support ones into the ticket format; one admin call runs the loop (dataset →
LoRA job → eval → gate → promote), every setting and hyperparameter at the product's default;
the scenario then asks held-out support questions (not in the traffic) of the base and of the
promoted alias, and prints both with their compliance rates. A second tenant whose
"corrections" are answers to other questions (wrong targets) runs the same loop, and the gate
must refuse its candidate.

Run it with `python -m demo.support_desk` (starts its own stack in a temp dir, ~10-15 minutes on
a 2-core CPU) or `python -m demo.support_desk --url http://127.0.0.1:8000 --admin-key ...`.
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

from replicas.supervisor import free_port
from store.numerics import describe_cpu

Category = Literal["hardware", "account", "billing", "network"]
Log = Callable[[str], None]
TICKET = re.compile(
    r"^TICKET \| category: (?:hardware|account|billing|network) \| priority: (?:low|high) "
    r"\| next: \w"
)
BASE_MODEL = "smollm2"
ALIAS = "support"
POLL_S = 3.0

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
    seed: int = field(default=1, metadata={"help": "Seeds the questions, the split and training."})
    loop_timeout_s: float = field(
        default=3600.0, metadata={"help": "Give up on a loop that has not ended after this long."}
    )

    def __post_init__(self) -> None:
        for name in ("users", "bad_users", "held_out", "concurrency"):
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


@dataclass(frozen=True)
class ScenarioResult:
    """The numbers the demo promises: compliance before/after, guard change, the refusal."""

    rows: list[HeldOutRow]
    base_rate: float
    promoted_rate: float
    good: LoopOutcome
    bad: LoopOutcome
    seconds: dict[str, float]

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


async def send_traffic(url: str, key: str, config: ScenarioConfig, *, users: int, bad: bool) -> int:
    """Every user asks their questions, then rates or corrects each answer; returns the count.

    A bad desk's "corrections" of support answers are shuffled wrong targets (`_wrong_target`).
    """
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
            _ask(client, gate, f"user-{i % users:03d}", q.question, 40)
            for i, q in enumerate(support)
        ]
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
    # The loop's default end is a staged rollout (shadow, canary steps, then full), which
    # advances on live traffic; this scenario sends its traffic before the loop and compares
    # base and promoted right after it, so it asks for the direct promotion through the gate.
    body: dict[str, object] = {
        "alias": ALIAS,
        "suffix": "desk",
        "seed": config.seed,
        "end": "promote",
    }
    return {**body, "hyperparameters": hyper} if hyper else body


def run_loop(admin: httpx.Client, tenant: str, config: ScenarioConfig, log: Log) -> LoopOutcome:
    """Start the loop, print each new step as it happens, and return how it ended."""
    started = admin.post(f"/admin/tenants/{tenant}/loops", json=loop_body(config))
    started.raise_for_status()
    run = follow_loop(admin, tenant, started.json()["id"], config.loop_timeout_s, log)
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
        guard_means, lost,
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


def run_scenario(
    url: str, admin_key: str, config: ScenarioConfig | None = None, log: Log = print
) -> ScenarioResult:
    """The whole demo against a running stack (its training worker on); prints as it goes."""
    config = config or ScenarioConfig()
    suffix = secrets.token_hex(3)
    good, bad = f"desk-{suffix}", f"desk-bad-{suffix}"
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    with _admin(url, admin_key) as admin:
        keys = {name: create_tenant(admin, name) for name in (good, bad)}
        log(f"1. traffic: {config.users} users of '{good}' ask support and general questions")
        t = time.monotonic()
        sent = asyncio.run(send_traffic(url, keys[good], config, users=config.users, bad=False))
        seconds["traffic"] = round(time.monotonic() - t, 1)
        log(f"   {sent} completions with feedback in {seconds['traffic']} s")
        log(f"2. the loop for '{good}' (alias '{ALIAS}')")
        t = time.monotonic()
        good_outcome = run_loop(admin, good, config, log)
        seconds["loop"] = round(time.monotonic() - t, 1)
        log("3. held-out support questions: base vs promoted")
        t = time.monotonic()
        rows = compare_held_out(url, keys[good], config)
        seconds["held_out"] = round(time.monotonic() - t, 1)
        seconds["good_total"] = round(time.monotonic() - t0, 1)
        log(f"4. a bad desk '{bad}': {config.bad_users} users whose corrections are wrong answers")
        t = time.monotonic()
        asyncio.run(send_traffic(url, keys[bad], config, users=config.bad_users, bad=True))
        bad_outcome = run_loop(admin, bad, config, log)
        seconds["bad"] = round(time.monotonic() - t, 1)
    seconds["total"] = round(time.monotonic() - t0, 1)
    n = len(rows)
    return ScenarioResult(
        rows=rows,
        base_rate=sum(compliant(r.base) for r in rows) / n,
        promoted_rate=sum(compliant(r.promoted) for r in rows) / n,
        good=good_outcome,
        bad=bad_outcome,
        seconds=seconds,
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
        f"bad loop: {result.bad.status}",
        *(f"  reason: {r}" for r in result.bad.reasons),
        "seconds: good loop steps "
        + ", ".join(f"{k} {v}" for k, v in g.seconds.items())
        + "; scenario "
        + ", ".join(f"{k} {v}" for k, v in result.seconds.items()),
    ]
    return "\n".join(lines)


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
    missed = targets_missed(result, wall)
    for line in missed:
        print(f"target missed: {line}")
    return 1 if missed else 0


def targets_missed(result: ScenarioResult, wall_s: float | None) -> list[str]:
    """The demo's promises (issue #6) that this run did not keep; empty when all were kept.

    `wall_s` None leaves the 15-minute promise out (the test suite checks behaviour, not speed;
    `python -m demo.support_desk` checks and prints it)."""
    checks = [
        (result.base_rate <= 0.10, f"base ticket rate {result.base_rate:.0%} > 10%"),
        (result.promoted_rate >= 0.90, f"promoted ticket rate {result.promoted_rate:.0%} < 90%"),
        (result.good.status == "promoted", f"the good candidate was {result.good.status}"),
        (result.bad.status == "refused", f"the bad candidate was {result.bad.status}"),
    ]
    if wall_s is not None:
        checks.append((wall_s <= 900, f"wall time {wall_s:.0f} s > 900 s"))
    missed = [why for ok, why in checks if not ok]
    if not result.good.guard_means:
        missed.append("no guard suite result (the eval did not run)")
    elif result.guard_loss > 0.02:
        missed.append(f"guard loss {result.guard_loss:.3f} > 0.020")
    return missed


if __name__ == "__main__":
    sys.exit(main())
