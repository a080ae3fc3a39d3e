"""The overhead benchmark: loopgate side by side with LiteLLM proxy and a bare Litestar floor.

Targets, each started fresh per round as a subprocess pinned to --server-core, in interleaved
rounds (the order rotates every round so that drift of the machine is shared out):
  direct     the mock upstream itself (the baseline every "added" number subtracts)
  bare       a bare Litestar pass-through (httpx + aiohttp transport, like loopgate's client)
  loopgate   `loopgate serve` in external mode: auth, routing, limits, capture on
  nocapture  the same with capture off
  workers2   `loopgate serve --workers 2` (capture on) on BOTH cores: the load and the mock
             share the load core with one of its workers (see docs/benchmarks.md)
  litellm    LiteLLM proxy (its own pinned environment, see benchmarks.litellm_env), 1 worker
Per target: sequential keep-alive latency p50/p99; closed-loop throughput (wrk) at each
--concurrency; server CPU per request (at the highest concurrency) and per stream; time to
first chunk and the gaps between chunks of a --chunks stream, at each of --stream-gaps (the mock
spaces a stream's chunks as its request asks). The load side (wrk, the probe, the mock) shares
--load-core. Prints absolute and added-over-direct tables and the ratios
(loopgate vs LiteLLM, loopgate vs bare, capture on vs off); writes JSON and, with --plot, a PNG.

Run: python -m benchmarks.overhead --plot docs/benchmarks.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import litellm_env
from benchmarks.client_choice import (
    Processes,
    child_env,
    core_busy_seconds,
    free_port,
    idle_share,
    pct,
    provision_loopgate,
    tool,
    wait_ready,
    write_wrk_script,
)
from benchmarks.mock_upstream import paced
from benchmarks.rawhttp import RawClient, build_request
from store.numerics import describe_cpu

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "overhead.json"
CHAT_PATH = "/v1/chat/completions"
TARGETS = {
    "direct": "direct to mock",
    "bare": "bare Litestar pass-through",
    "loopgate": "loopgate (capture on)",
    "nocapture": "loopgate (capture off)",
    "workers2": "loopgate, 2 workers (capture on)",
    "litellm": f"LiteLLM {litellm_env.LITELLM_VERSION}",
}
# The targets for loopgate (capture on), checked against each run.
GOAL_ADDED_P50_MS = 1.5
GOAL_CPU_US_PER_REQ = 1500.0
GOAL_RPS = 1000.0
GOAL_RPS_VS_LITELLM = 15.0
GOAL_ADDED_TTFC_MS = 2.0
GOAL_CPU_MS_PER_STREAM = 3.0
GOAL_CAPTURE_RPS = 0.95  # capture on vs off, req/s at the top concurrency
GOAL_CAPTURE_P99 = 1.1  # capture on vs off, loaded p99
GOAL_WORKERS_RPS = 1.6  # 2 workers vs 1, req/s
CONCURRENT_STREAMS = 32  # streams in flight at once, for the CPU per stream under load
GOAL_WORKERS_CPU = 1.1  # 2 workers vs 1, CPU per request


@dataclass(frozen=True)
class Options:
    targets: tuple[str, ...]
    rounds: int
    requests: int
    duration_s: int
    concurrency: tuple[int, ...]
    streams: int
    chunks: int
    chunk_delay_ms: float
    stream_gaps: tuple[float, ...]
    warmup_s: int
    load_core: int
    server_core: int
    output: Path
    plot: Path | None
    profile: Path | None


@dataclass
class Session:
    """What every measurement needs: options, tools, the mock, each target's credentials."""

    opts: Options
    workdir: Path
    procs: Processes
    wrk: str
    mock_port: int
    mock_pid: int
    keys: dict[str, str] = field(default_factory=dict)
    litellm: litellm_env.LiteLLMEnv | None = None


# --- processes ----------------------------------------------------------------------------


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads and of its live descendants' (ns resolution, /proc)."""
    total_ns, todo = 0, [pid]
    while todo:
        current = todo.pop()
        proc = Path(f"/proc/{current}")
        try:
            tasks = list((proc / "task").iterdir())
            children = (proc / "task" / str(current) / "children").read_text().split()
            for task in tasks:
                total_ns += int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue  # exited meanwhile (a thread or the whole process)
        todo.extend(int(c) for c in children)
    return total_ns / 1e9


def mock_argv(port: int, opts: Options) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.mock_upstream",
        "--port",
        str(port),
        "--chunks",
        str(opts.chunks),
        "--chunk-delay-ms",
        str(opts.chunk_delay_ms),
    ]


def loopgate_env(session: Session, port: int, capture: bool) -> dict[str, str]:
    return child_env(
        LOOPGATE_CAPTURE_ENABLED=str(capture).lower(),
        LOOPGATE_DATA_DIR=str(session.workdir / "loopgate-data"),
        LOOPGATE_ENGINE_MODE="external",
        LOOPGATE_ENGINE_URLS=f"http://127.0.0.1:{session.mock_port}",
        LOOPGATE_SERVED_MODEL_NAME="mock",
        LOOPGATE_PORT=str(port),
        LOOPGATE_LOG_LEVEL="warning",
        LOOPGATE_UPSTREAM_TRANSPORT="aiohttp",
        LOOPGATE_TRAINING_WORKER="false",
        LOOPGATE_EVALS_WORKER="false",  # a child whose start-up would count as the proxy's CPU
    )


def target_launch(
    session: Session, target: str, port: int
) -> tuple[list[str], dict[str, str], str]:
    """argv, environment and readiness path of one target."""
    upstream = f"http://127.0.0.1:{session.mock_port}"
    if target == "direct":
        return mock_argv(port, session.opts), child_env(), "/health"
    if target == "bare":
        argv = [sys.executable, "-m", "benchmarks.bare_passthrough", "--port", str(port)]
        return [*argv, "--upstream", upstream, "--transport", "aiohttp"], child_env(), "/health"
    if target in ("loopgate", "nocapture", "workers2"):
        env = loopgate_env(session, port, capture=target != "nocapture")
        if target == "workers2":
            env["LOOPGATE_WORKERS"] = "2"
        return [sys.executable, "-m", "gateway.cli", "serve"], env, "/ready"
    assert session.litellm is not None
    config = litellm_env.write_config(session.workdir / "litellm.yaml", upstream)
    argv = litellm_env.proxy_argv(session.litellm, config, port)
    return argv, child_env(**litellm_env.proxy_env()), litellm_env.READY_PATH


def start_target(session: Session, target: str, port: int) -> int:
    argv, env, ready = target_launch(session, target, port)
    if session.opts.profile is not None and argv[0] == sys.executable:
        prof = session.opts.profile / f"{target}.prof"
        argv = [sys.executable, "-m", "cProfile", "-o", str(prof), *argv[1:]]
    opts = session.opts
    cores = f"{opts.load_core},{opts.server_core}" if target == "workers2" else opts.server_core
    pid = session.procs.start(target, argv, cores, env)
    wait_ready(session.procs, target, port, ready)
    return pid


# --- requests -----------------------------------------------------------------------------


def chat_body(stream: bool, gap_ms: float | None = None, stepped: bool = False) -> bytes:
    body: dict[str, object] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "stream": stream,
    }
    if gap_ms is not None:  # the mock spaces this stream's chunks so (every proxy passes `user`)
        body["user"] = paced(gap_ms, stepped)
    return json.dumps(body, separators=(",", ":")).encode()


def chat_request(
    session: Session,
    target: str,
    port: int,
    stream: bool,
    gap_ms: float | None = None,
    stepped: bool = False,
) -> bytes:
    headers = {"content-type": "application/json"}
    if session.keys.get(target):
        headers["authorization"] = f"Bearer {session.keys[target]}"
    return build_request(port, "POST", CHAT_PATH, chat_body(stream, gap_ms, stepped), headers)


@dataclass(frozen=True)
class StreamTrace:
    first_s: float
    total_s: float
    gaps_s: list[float]
    events: int
    done: bool


def traced_stream(client: RawClient, raw: bytes) -> StreamTrace:
    """One SSE request: when each event-bearing chunk arrived, relative to the send."""
    arrivals: list[float] = []
    start = time.perf_counter()

    def on_chunk(chunk: bytes) -> None:
        if b"data:" in chunk:
            arrivals.append(time.perf_counter())

    reply = client.exchange(raw, on_chunk)
    total = time.perf_counter() - start
    if reply.status != 200 or not arrivals:
        raise RuntimeError(f"stream failed: {reply.status} {reply.body[:300]!r}")
    return StreamTrace(
        first_s=arrivals[0] - start,
        total_s=total,
        gaps_s=[b - a for a, b in itertools.pairwise(arrivals)],
        events=reply.body.count(b"data:"),
        done=b"data: [DONE]" in reply.body,
    )


def check_replies(session: Session, target: str, port: int) -> None:
    """Every target must answer correctly (a completion, a whole stream) before it is timed."""
    with RawClient(port) as client:
        reply = client.exchange(chat_request(session, target, port, stream=False))
        if reply.status != 200 or b'"choices"' not in reply.body:
            raise RuntimeError(f"{target}: bad reply {reply.status}: {reply.body[:300]!r}")
        trace = traced_stream(client, chat_request(session, target, port, stream=True))
    if trace.events < session.opts.chunks + 1 or not trace.done:
        raise RuntimeError(f"{target}: bad stream: {trace.events} events, [DONE]={trace.done}")


def latencies(session: Session, target: str, port: int, count: int) -> list[float]:
    raw = chat_request(session, target, port, stream=False)
    samples = []
    with RawClient(port) as client:
        for _ in range(count):
            start = time.perf_counter()
            reply = client.exchange(raw)
            samples.append(time.perf_counter() - start)
            if reply.status != 200:
                raise RuntimeError(f"{target}: status {reply.status}: {reply.body[:300]!r}")
    return samples


def run_wrk(
    session: Session, port: int, script: Path, concurrency: int, duration_s: int
) -> dict[str, int]:
    argv = [
        session.procs.taskset,
        "-c",
        str(session.opts.load_core),
        session.wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{CHAT_PATH}",
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            report: dict[str, int] = json.loads(line[len("WRKJSON ") :])
            return report
    raise RuntimeError(f"wrk gave no report (rc {done.returncode}):\n{done.stdout}{done.stderr}")


def throughput(
    session: Session, port: int, pid: int, script: Path, concurrency: int
) -> dict[str, float]:
    """wrk closed loop at one concurrency; server CPU per request; anything else on its core."""
    core = session.opts.server_core
    cpu0, busy0, start = tree_cpu_seconds(pid), core_busy_seconds(core), time.monotonic()
    report = run_wrk(session, port, script, concurrency, session.opts.duration_s)
    wall = time.monotonic() - start
    cpu = tree_cpu_seconds(pid) - cpu0
    requests = max(1, report["requests"])
    return {
        "rps": report["requests"] / (report["duration_us"] / 1e6),
        "requests": report["requests"],
        "errors": sum(report[k] for k in ("connect", "read", "write", "status", "timeout")),
        "cpu_us_per_req": cpu / requests * 1e6,
        "server_busy": cpu / wall,
        "server_core_other": max(0.0, core_busy_seconds(core) - busy0 - cpu) / wall,
        "loaded_p50_ms": report["p50_us"] / 1000,
        "loaded_p99_ms": report["p99_us"] / 1000,
    }


def streams(session: Session, target: str, port: int, pid: int) -> dict[str, Any]:
    """Sequential streams at each chunk gap: first chunk, gaps, the proxy's CPU per stream; then
    the CPU per stream with CONCURRENT_STREAMS in flight (as an engine streams a batch)."""
    by_gap: dict[str, dict[str, Any]] = {}
    for gap in session.opts.stream_gaps:
        raw = chat_request(session, target, port, stream=True, gap_ms=gap)
        traces = []
        cpu0 = tree_cpu_seconds(pid)
        with RawClient(port, timeout_s=30.0) as client:
            for _ in range(session.opts.streams):
                traces.append(traced_stream(client, raw))
        cpu = tree_cpu_seconds(pid) - cpu0
        by_gap[f"{gap:g}"] = {
            "ttfc_s": [t.first_s for t in traces],
            "total_s": [t.total_s for t in traces],
            "gaps_s": [g for t in traces for g in t.gaps_s],
            "cpu_ms_per_stream": cpu / len(traces) * 1e3,
            "cpu_ms_per_stream_concurrent": concurrent_stream_cpu(port, pid, raw),
        }
        if gap > 0:  # the same batch on an engine's step clock: its chunks arrive together
            stepped = chat_request(session, target, port, stream=True, gap_ms=gap, stepped=True)
            by_gap[f"{gap:g}"]["cpu_ms_per_stream_stepped"] = concurrent_stream_cpu(
                port, pid, stepped
            )
    return by_gap


def concurrent_stream_cpu(port: int, pid: int, raw: bytes, per_client: int = 2) -> float:
    """The proxy's CPU ms per stream with CONCURRENT_STREAMS streams in flight at once."""

    def client_streams(_: int) -> int:
        with RawClient(port, timeout_s=60.0) as client:
            return sum(traced_stream(client, raw).done for _ in range(per_client))

    cpu0 = tree_cpu_seconds(pid)
    with ThreadPoolExecutor(CONCURRENT_STREAMS) as pool:
        done = sum(pool.map(client_streams, range(CONCURRENT_STREAMS)))
    if done != CONCURRENT_STREAMS * per_client:
        raise RuntimeError(f"{CONCURRENT_STREAMS * per_client - done} concurrent streams broke")
    return (tree_cpu_seconds(pid) - cpu0) / done * 1e3


def measure(session: Session, target: str) -> dict[str, Any]:
    """Start the target fresh, check it, warm it, time it, stop it."""
    opts, port = session.opts, free_port()
    script = session.workdir / f"{target}.lua"
    write_wrk_script(script, session.keys.get(target, ""))
    try:
        pid = start_target(session, target, port)
        check_replies(session, target, port)
        latencies(session, target, port, min(100, opts.requests))
        run_wrk(session, port, script, max(opts.concurrency), opts.warmup_s)
        lat = latencies(session, target, port, opts.requests)
        tput = {c: throughput(session, port, pid, script, c) for c in opts.concurrency}
        by_gap = streams(session, target, port, pid)
    finally:
        session.procs.stop(target)
    if opts.profile is not None and (opts.profile / f"{target}.prof").exists():
        print_profile(opts.profile / f"{target}.prof")
    return {"latency_s": lat, "throughput": tput, "streams": by_gap}


def print_profile(path: Path, top: int = 30) -> None:
    """The functions with the most own time (cProfile), for finding what a target spends on."""
    import pstats

    print(f"\n--- {path.name}: top {top} by own time ---")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


# --- summary ------------------------------------------------------------------------------


def summarize(rounds: list[dict[str, Any]], concurrency: Sequence[int]) -> dict[str, Any]:
    lat = [x for r in rounds for x in r["latency_s"]]
    top = max(concurrency)
    return {
        "lat_p50_ms": pct(lat, 50) * 1e3,
        "lat_p99_ms": pct(lat, 99) * 1e3,
        "rps": {
            c: statistics.median(r["throughput"][c]["rps"] for r in rounds) for c in concurrency
        },
        "loaded_p99_ms": {
            c: statistics.median(r["throughput"][c]["loaded_p99_ms"] for r in rounds)
            for c in concurrency
        },
        "cpu_us_per_req": statistics.median(r["throughput"][top]["cpu_us_per_req"] for r in rounds),
        "server_core_other": statistics.median(
            r["throughput"][top]["server_core_other"] for r in rounds
        ),
        "errors": sum(r["throughput"][c]["errors"] for r in rounds for c in concurrency),
        "streams": {gap: _stream_summary(rounds, gap) for gap in rounds[0]["streams"]},
        "samples": {"latency": len(lat), "rounds": len(rounds)},
    }


def _stream_summary(rounds: list[dict[str, Any]], gap: str) -> dict[str, Any]:
    runs = [r["streams"][gap] for r in rounds]
    ttfc = [x for s in runs for x in s["ttfc_s"]]
    gaps = [x for s in runs for x in s["gaps_s"]] or [0.0]
    return {
        "ttfc_p50_ms": pct(ttfc, 50) * 1e3,
        "ttfc_p99_ms": pct(ttfc, 99) * 1e3,
        "gap_p50_ms": pct(gaps, 50) * 1e3,
        "gap_p99_ms": pct(gaps, 99) * 1e3,
        "stream_p50_ms": pct([x for s in runs for x in s["total_s"]], 50) * 1e3,
        "cpu_ms_per_stream": statistics.median(s["cpu_ms_per_stream"] for s in runs),
        "cpu_ms_per_stream_concurrent": statistics.median(
            s["cpu_ms_per_stream_concurrent"] for s in runs
        ),
        "cpu_ms_per_stream_stepped": (
            statistics.median(s["cpu_ms_per_stream_stepped"] for s in runs)
            if "cpu_ms_per_stream_stepped" in runs[0]
            else None
        ),
        "cpu_ms_per_stream_spread": [
            min(s["cpu_ms_per_stream"] for s in runs),
            max(s["cpu_ms_per_stream"] for s in runs),
        ],
        "streams": len(ttfc),
    }


def added_over(base: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """Cost over direct. CPU is the proxy's own (the mock runs on the other core)."""
    return {
        "lat_p50_ms": s["lat_p50_ms"] - base["lat_p50_ms"],
        "lat_p99_ms": s["lat_p99_ms"] - base["lat_p99_ms"],
        "cpu_us_per_req": s["cpu_us_per_req"],
        "streams": {
            gap: {
                "ttfc_p50_ms": st["ttfc_p50_ms"] - base["streams"][gap]["ttfc_p50_ms"],
                "gap_p99_ms": st["gap_p99_ms"] - base["streams"][gap]["gap_p99_ms"],
                "cpu_ms_per_stream": st["cpu_ms_per_stream"],
                "cpu_ms_per_stream_concurrent": st["cpu_ms_per_stream_concurrent"],
                "cpu_ms_per_stream_stepped": st["cpu_ms_per_stream_stepped"],
            }
            for gap, st in s["streams"].items()
        },
    }


@dataclass(frozen=True)
class Ratio:
    """One comparison row: `value` is how many times better `a` is than `b` on `metric`."""

    comparison: str
    metric: str
    a: float
    b: float
    value: float


def _better(comparison: str, metric: str, a: float, b: float, higher_is_better: bool) -> Ratio:
    if higher_is_better:
        value = a / b if b > 0 else float("inf")
    else:
        value = b / a if a > 0 else float("inf")
    return Ratio(comparison, metric, a, b, value)


def ratios(
    summary: dict[str, dict[str, Any]], added: dict[str, dict[str, Any]], top: int
) -> list[Ratio]:
    """loopgate vs LiteLLM and bare, capture on vs off, 2 workers vs 1: x > 1, the first wins."""
    rows: list[Ratio] = []
    pairs = [
        ("loopgate vs LiteLLM", "loopgate", "litellm"),
        ("loopgate vs bare", "loopgate", "bare"),
        ("capture on vs off", "loopgate", "nocapture"),
        ("2 workers vs 1", "workers2", "loopgate"),
    ]
    for comparison, a, b in pairs:
        if a not in summary or b not in summary:
            continue
        sa, sb = summary[a], summary[b]
        rows.append(_better(comparison, f"req/s c={top}", sa["rps"][top], sb["rps"][top], True))
        rows.append(
            _better(
                comparison,
                f"loaded p99 ms c={top}",
                sa["loaded_p99_ms"][top],
                sb["loaded_p99_ms"][top],
                False,
            )
        )
        if a not in added or b not in added:
            continue
        for metric, label in (("lat_p50_ms", "added p50 ms"), ("cpu_us_per_req", "cpu us/req")):
            rows.append(_better(comparison, label, added[a][metric], added[b][metric], False))
        for gap, st in added[a]["streams"].items():
            other = added[b]["streams"][gap]
            for metric, label in (
                ("ttfc_p50_ms", "added ttfc"),
                ("cpu_ms_per_stream", "cpu/stream"),
            ):
                name = f"{label} gap {gap}"
                rows.append(_better(comparison, name, st[metric], other[metric], False))
    return rows


def goals(
    summary: dict[str, dict[str, Any]], added: dict[str, dict[str, Any]], top: int
) -> list[dict[str, Any]]:
    """The issue's targets for loopgate with capture on: measured value and pass/miss."""
    if "loopgate" not in added:
        return []
    lg, a = summary["loopgate"], added["loopgate"]
    rows: list[tuple[str, float, float, str]] = [
        ("added p50 ms", a["lat_p50_ms"], GOAL_ADDED_P50_MS, "<="),
        ("cpu us/req", a["cpu_us_per_req"], GOAL_CPU_US_PER_REQ, "<="),
        (f"req/s c={top}", lg["rps"][top], GOAL_RPS, ">="),
    ]
    for gap, st in a["streams"].items():
        rows.append((f"added ttfc ms, gap {gap} ms", st["ttfc_p50_ms"], GOAL_ADDED_TTFC_MS, "<="))
        rows.append(
            (f"cpu ms/stream, gap {gap} ms", st["cpu_ms_per_stream"], GOAL_CPU_MS_PER_STREAM, "<=")
        )
        rows.append((
            f"cpu ms/stream, gap {gap} ms, {CONCURRENT_STREAMS} at once",
            st["cpu_ms_per_stream_concurrent"], GOAL_CPU_MS_PER_STREAM, "<=",
        ))  # fmt: skip
        if st["cpu_ms_per_stream_stepped"] is not None:
            rows.append((
                f"cpu ms/stream, gap {gap} ms, {CONCURRENT_STREAMS} at once, engine steps",
                st["cpu_ms_per_stream_stepped"], GOAL_CPU_MS_PER_STREAM, "<=",
            ))  # fmt: skip
    if "litellm" in summary:
        vs = lg["rps"][top] / summary["litellm"]["rps"][top]
        rows.append((f"req/s c={top} vs LiteLLM (x)", vs, GOAL_RPS_VS_LITELLM, ">="))
    if "nocapture" in summary:
        off = summary["nocapture"]
        rows.append(
            ("capture on/off req/s (x)", lg["rps"][top] / off["rps"][top], GOAL_CAPTURE_RPS, ">=")
        )
        p99 = lg["loaded_p99_ms"][top] / off["loaded_p99_ms"][top]
        rows.append(("capture on/off loaded p99 (x)", p99, GOAL_CAPTURE_P99, "<="))
    if "workers2" in summary:
        two = summary["workers2"]
        rows.append(
            ("2 workers/1 req/s (x)", two["rps"][top] / lg["rps"][top], GOAL_WORKERS_RPS, ">=")
        )
        cpu = two["cpu_us_per_req"] / lg["cpu_us_per_req"]
        rows.append(("2 workers/1 cpu per request (x)", cpu, GOAL_WORKERS_CPU, "<="))
    return [
        {
            "metric": m,
            "measured": v,
            "goal": f"{op} {g:g}",
            "met": v <= g if op == "<=" else v >= g,
        }
        for m, v, g, op in rows
    ]


# --- printing -----------------------------------------------------------------------------


def print_tables(
    summary: dict[str, dict[str, Any]],
    added: dict[str, dict[str, Any]],
    rows: list[Ratio],
    checks: list[dict[str, Any]],
    concurrency: Sequence[int],
) -> None:
    rps_head = "".join(f"{'req/s c=' + str(c):>12}" for c in concurrency)
    gaps = list(next(iter(summary.values()))["streams"])
    gap_head = "".join(f"{'ttfc g' + g:>9}{'cpu/str g' + g:>12}" for g in gaps)
    print("\nAbsolute (p50/p99: sequential on one keep-alive connection; req/s: wrk closed loop;")
    print("ttfc and cpu/stream: sequential 64-chunk streams at each chunk gap g, in ms)")
    print(
        f"{'target':<32}{'p50 ms':>8}{'p99 ms':>8}{rps_head}{'cpu us/req':>11}"
        f"{gap_head}{'other':>6}{'errors':>7}"
    )
    for name, s in summary.items():
        rps = "".join(f"{s['rps'][c]:>12.0f}" for c in concurrency)
        per_gap = "".join(
            f"{s['streams'][g]['ttfc_p50_ms']:>9.3f}{s['streams'][g]['cpu_ms_per_stream']:>12.2f}"
            for g in gaps
        )
        print(
            f"{TARGETS[name]:<32}{s['lat_p50_ms']:>8.3f}{s['lat_p99_ms']:>8.3f}{rps}"
            f"{s['cpu_us_per_req']:>11.0f}{per_gap}{s['server_core_other']:>6.0%}{s['errors']:>7}"
        )
    if added:
        print("\nAdded over direct")
        head = "".join(f"{'+ttfc g' + g:>10}{'+gap99 g' + g:>11}" for g in gaps)
        print(f"{'target':<32}{'+p50 ms':>9}{'+p99 ms':>9}{'cpu us/req':>11}{head}")
        for name, a in added.items():
            cols = "".join(
                f"{a['streams'][g]['ttfc_p50_ms']:>10.3f}{a['streams'][g]['gap_p99_ms']:>11.3f}"
                for g in gaps
            )
            print(
                f"{TARGETS[name]:<32}{a['lat_p50_ms']:>9.3f}{a['lat_p99_ms']:>9.3f}"
                f"{a['cpu_us_per_req']:>11.0f}{cols}"
            )
    if rows:
        print("\nRatios (x > 1: the first is better by that factor)")
        print(f"{'comparison':<22}{'metric':<24}{'first':>11}{'second':>11}{'ratio':>9}")
        for r in rows:
            print(f"{r.comparison:<22}{r.metric:<24}{r.a:>11.3f}{r.b:>11.3f}{r.value:>8.2f}x")
    if checks:
        print("\nIssue targets (loopgate, capture on)")
        for c in checks:
            verdict = "met" if c["met"] else "MISSED"
            print(f"  {c['metric']:<36}{c['measured']:>10.2f}  goal {c['goal']:<10}{verdict}")


# --- plot ---------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency percentiles and throughput per target, side by side, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    names = list(summary)
    labels = [TARGETS[n] for n in names]
    conc = [int(c) for c in results["options"]["concurrency"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    gaps = list(summary[names[0]]["streams"])
    metrics: list[tuple[Callable[[dict[str, Any]], float], str]] = [
        (lambda s: float(s["lat_p50_ms"]), "latency p50"),
        (lambda s: float(s["lat_p99_ms"]), "latency p99"),
    ]
    for g in gaps:
        metrics.append((_ttfc_of(g), f"first chunk p50, gap {g} ms"))
    width = 0.8 / len(metrics)
    for i, (value, title) in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        left.bar(xs, [value(summary[n]) for n in names], width, label=title)
    left.set_xticks(range(len(names)), labels, rotation=20, ha="right")
    left.set_ylabel("ms (log)")
    left.set_yscale("log")
    left.set_title("Sequential latency and time to first chunk (64-chunk stream)")
    left.legend(fontsize=8)
    width = 0.8 / len(conc)
    for i, c in enumerate(conc):
        xs = [j + (i - (len(conc) - 1) / 2) * width for j in range(len(names))]
        right.bar(xs, [_by_conc(summary[n]["rps"], c) for n in names], width, label=f"c={c}")
    right.set_xticks(range(len(names)), labels, rotation=20, ha="right")
    right.set_ylabel("requests/s (log)")
    right.set_yscale("log")
    right.set_title("Closed-loop throughput (one core; '2 workers': both)")
    right.legend(fontsize=8)
    env = results["environment"]
    fig.suptitle(
        f"loopgate overhead benchmark, {results['date']}, {env['cpus_online']}x {env['cpu']} "
        f"({env.get('cpu_capability', '?')}), "
        f"load average {env['loadavg_before'][0]:.1f} at the start"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ttfc_of(gap: str) -> Callable[[dict[str, Any]], float]:
    return lambda s: float(s["streams"][gap]["ttfc_p50_ms"])


def _by_conc(values: dict[Any, float], c: int) -> float:
    """Concurrency keys are ints in memory and strings once read back from JSON."""
    return float(values[c] if c in values else values[str(c)])


# --- main ---------------------------------------------------------------------------------


def environment(wrk: str, opts: Options) -> dict[str, Any]:
    packages = ("httpx", "httpx-aiohttp", "aiohttp", "litestar", "uvicorn", "msgspec")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": model,
        "cpu_capability": describe_cpu(),
        "cpus_online": os.cpu_count(),
        "load_core": opts.load_core,
        "server_core": opts.server_core,
        "loadavg_before": os.getloadavg(),
        "wrk": (version.stdout or version.stderr).splitlines()[0],
        "litellm": litellm_env.LITELLM_VERSION,
        "packages": {p: metadata.version(p) for p in packages},
    }


@contextmanager
def bench_session(opts: Options) -> Iterator[Session]:
    """Temp dir, the mock, loopgate's key, LiteLLM's environment; every child ended on exit."""
    taskset, wrk = tool("taskset"), tool("wrk")
    cpus = os.sched_getaffinity(0)
    if not {opts.load_core, opts.server_core} <= cpus or opts.load_core == opts.server_core:
        raise SystemExit(f"need two distinct usable cores, have {sorted(cpus)}")
    lite = litellm_env.ensure_env() if "litellm" in opts.targets else None
    os.sched_setaffinity(0, {opts.load_core})  # the probe client shares the load core
    with tempfile.TemporaryDirectory(prefix="loopgate-overhead-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir, taskset)
        try:
            port = free_port()
            pid = procs.start("mock", mock_argv(port, opts), opts.load_core, child_env())
            wait_ready(procs, "mock", port, "/health")
            session = Session(opts, workdir, procs, wrk, port, pid, litellm=lite)
            if {"loopgate", "nocapture", "workers2"} & set(opts.targets):
                key = provision_loopgate(workdir, port)
                session.keys.update(loopgate=key, nocapture=key, workers2=key)
            session.keys["litellm"] = litellm_env.MASTER_KEY
            yield session
        finally:
            procs.stop_all()


def run(opts: Options) -> dict[str, Any]:
    per_round: dict[str, list[dict[str, Any]]] = {t: [] for t in opts.targets}
    started = time.monotonic()
    idle = idle_share([opts.load_core, opts.server_core])
    if min(idle.values()) < 0.9:
        print(f"WARNING: the machine is busy before the run (idle share {idle}); expect noise")
    with bench_session(opts) as session:
        env = {**environment(session.wrk, opts), "idle_before": idle}
        for round_no in range(opts.rounds):
            shift = round_no % len(opts.targets)
            for target in opts.targets[shift:] + opts.targets[:shift]:
                result = measure(session, target)
                per_round[target].append(result)
                top = result["throughput"][max(opts.concurrency)]
                print(
                    f"round {round_no + 1} {target}: "
                    f"p50 {statistics.median(result['latency_s']) * 1e3:.3f} ms, "
                    f"{top['rps']:.0f} req/s, {top['cpu_us_per_req']:.0f} us cpu/req, "
                    + "".join(
                        f"gap {g}: ttfc p50 {statistics.median(st['ttfc_s']) * 1e3:.2f} ms, "
                        f"{st['cpu_ms_per_stream']:.2f} ms cpu/stream "
                        f"({st['cpu_ms_per_stream_concurrent']:.2f} at c={CONCURRENT_STREAMS}"
                        + (
                            f", {st['cpu_ms_per_stream_stepped']:.2f} on steps"
                            if "cpu_ms_per_stream_stepped" in st
                            else ""
                        )
                        + "); "
                        for g, st in result["streams"].items()
                    )
                    + f"core other {top['server_core_other']:.0%}"
                    f"  [{time.monotonic() - started:.0f} s]",
                    flush=True,
                )
    summary = {t: summarize(r, opts.concurrency) for t, r in per_round.items()}
    added = (
        {t: added_over(summary["direct"], s) for t, s in summary.items() if t != "direct"}
        if "direct" in summary
        else {}
    )
    top = max(opts.concurrency)
    rows, checks = ratios(summary, added, top), goals(summary, added, top)
    print_tables(summary, added, rows, checks, opts.concurrency)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "options": {
            **asdict(opts),
            "output": str(opts.output),
            "plot": str(opts.plot) if opts.plot else None,
            "profile": str(opts.profile) if opts.profile else None,
        },
        "environment": {**env, "loadavg_after": os.getloadavg()},
        "summary": summary,
        "added_over_direct": added,
        "ratios": [asdict(r) for r in rows],
        "goals": checks,
        "rounds": {
            t: [
                {
                    "throughput": r["throughput"],
                    "lat_p50_ms": pct(r["latency_s"], 50) * 1e3,
                    "streams": {
                        g: {
                            "ttfc_p50_ms": pct(st["ttfc_s"], 50) * 1e3,
                            "cpu_ms_per_stream": st["cpu_ms_per_stream"],
                            "cpu_ms_per_stream_concurrent": st["cpu_ms_per_stream_concurrent"],
                            "cpu_ms_per_stream_stepped": st.get("cpu_ms_per_stream_stepped"),
                        }
                        for g, st in r["streams"].items()
                    },
                }
                for r in rounds
            ]
            for t, rounds in per_round.items()
        },
        "wall_s": time.monotonic() - started,
    }


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=500, help="sequential requests per round")
    p.add_argument("--duration", type=int, default=5, help="seconds of wrk per concurrency")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated wrk connections")
    p.add_argument("--streams", type=int, default=20, help="streams timed per round")
    p.add_argument("--chunks", type=int, default=64, help="content chunks per stream")
    p.add_argument(
        "--chunk-delay-ms", type=float, default=1.0, help="the mock's default gap between chunks"
    )
    p.add_argument(
        "--stream-gaps", default="0,20", help="chunk gaps (ms) the timed streams are run at"
    )
    p.add_argument("--warmup", type=int, default=2, help="wrk warm-up, seconds")
    p.add_argument("--load-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run the Python targets under cProfile, write DIR/<target>.prof (distorts timings)",
    )
    p.add_argument("--replot", type=Path, default=None, help="only redraw --plot from this JSON")
    a = p.parse_args(argv)
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    if unknown := [t for t in targets if t not in TARGETS]:
        p.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if not (1 <= a.rounds <= 20 and 10 <= a.requests <= 100_000 and 1 <= a.duration <= 120):
        p.error("keep --rounds in 1..20, --requests in 10..100000, --duration in 1..120")
    if a.replot is not None:
        if a.plot is None:
            p.error("--replot needs --plot")
        plot(json.loads(a.replot.read_text()), a.plot)
        raise SystemExit(0)
    return Options(
        targets,
        a.rounds,
        a.requests,
        a.duration,
        tuple(sorted(int(c) for c in a.concurrency.split(","))),
        a.streams,
        a.chunks,
        a.chunk_delay_ms,
        tuple(float(g) for g in a.stream_gaps.split(",") if g.strip()),
        a.warmup,
        a.load_core,
        a.server_core,
        a.output,
        a.plot,
        a.profile,
    )


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)

    def on_term(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanup of every child

    signal.signal(signal.SIGTERM, on_term)
    results = run(opts)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {opts.output}")
    if opts.plot is not None:
        plot(results, opts.plot)
        print(f"plot: {opts.plot}")


if __name__ == "__main__":
    main()
