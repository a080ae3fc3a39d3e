"""Chooses loopgate's upstream HTTP client by measurement (httpx's own transport vs httpx-aiohttp).

Targets, each started fresh per round as a pinned subprocess, measured in interleaved rounds:
  A direct to the mock upstream (baseline)      B bare Litestar pass-through, httpx transport
  C bare pass-through, httpx-aiohttp transport  D loopgate (external mode), httpx
  E loopgate, aiohttp
Per target: sequential keep-alive latency, closed-loop throughput (wrk), server CPU per request,
and time to the first event of a stream. The server under test runs alone on --server-core;
the load generator (this process and wrk) and the upstream mock share --load-core.

Run: python -m benchmarks.client_choice [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from benchmarks.rawhttp import RawClient, build_request, timed_stream

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "client_choice.json"
CHAT_PATH = "/v1/chat/completions"
MODEL = "smollm2"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

Kind = Literal["mock", "bare", "loopgate"]


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    kind: Kind
    transport: str


TARGETS = (
    Target("A", "direct to mock", "mock", "-"),
    Target("B", "bare Litestar + httpx", "bare", "httpx"),
    Target("C", "bare Litestar + aiohttp", "bare", "aiohttp"),
    Target("D", "loopgate + httpx", "loopgate", "httpx"),
    Target("E", "loopgate + aiohttp", "loopgate", "aiohttp"),
    # The same gateway with traffic capture off: E / F is capture's cost (issue 4: >= 0.95x).
    Target("F", "loopgate + aiohttp, capture off", "loopgate", "aiohttp+nocapture"),
)


@dataclass(frozen=True)
class Options:
    requests: int
    rounds: int
    duration_s: int
    concurrency: int
    streams: int
    chunks: int
    chunk_delay_ms: float
    warmup_s: int
    load_core: int
    server_core: int
    targets: str
    output: Path


@dataclass
class Bench:
    """What every measurement needs: options, tools, the upstream mock, loopgate's key."""

    opts: Options
    workdir: Path
    procs: Processes
    wrk: str
    mock_port: int
    mock_pid: int
    api_key: str
    wrk_script: Path


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class Processes:
    """Every child this run starts; each is ended (TERM, then KILL) by pid, even on errors."""

    def __init__(self, workdir: Path, taskset: str):
        self.workdir = workdir
        self.taskset = taskset
        self.live: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], core: int | str, env: dict[str, str]) -> int:
        """Start `argv` pinned to `core` (a CPU number or a taskset list such as "0,1")."""
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [self.taskset, "-c", str(core), *argv],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.live[name] = proc
        return proc.pid

    def alive(self, name: str) -> bool:
        return self.live[name].poll() is None

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, name: str) -> None:
        proc = self.live.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        for name in list(self.live):
            self.stop(name)


def wait_ready(procs: Processes, name: str, port: int, path: str) -> None:
    raw = build_request(port, "GET", path, b"", {})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not procs.alive(name):
            raise RuntimeError(f"{name} exited during start-up:\n{procs.log_tail(name)}")
        try:
            with RawClient(port, timeout_s=2.0) as client:
                if client.exchange(raw).status == 200:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"{name} not ready on {path} in {READY_TIMEOUT_S:.0f} s:\n{procs.log_tail(name)}"
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy_seconds(core: int) -> float:
    """Non-idle time of one CPU (anyone's, kernel and steal included), from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(x) for x in line.split()[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK  # minus idle and iowait
    raise RuntimeError(f"cpu{core} not in /proc/stat")


def idle_share(cores: Sequence[int], seconds: float = 2.0) -> dict[int, float]:
    """How idle each core is right now: a check that nothing else is loading the machine."""
    before = {c: core_busy_seconds(c) for c in cores}
    time.sleep(seconds)
    return {c: 1 - (core_busy_seconds(c) - before[c]) / seconds for c in cores}


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


def loopgate_env(bench: Bench, port: int, transport: str) -> dict[str, str]:
    transport, _, variant = transport.partition("+")
    return child_env(
        LOOPGATE_CAPTURE_ENABLED="false" if variant == "nocapture" else "true",
        LOOPGATE_DATA_DIR=str(bench.workdir / "loopgate-data"),
        LOOPGATE_ENGINE_MODE="external",
        LOOPGATE_ENGINE_URLS=f"http://127.0.0.1:{bench.mock_port}",
        LOOPGATE_SERVED_MODEL_NAME="mock",
        LOOPGATE_PORT=str(port),
        LOOPGATE_LOG_LEVEL="warning",
        LOOPGATE_UPSTREAM_TRANSPORT=transport,
    )


def provision_loopgate(workdir: Path, mock_port: int) -> str:
    """Create the tenant `bench` and a key for it with the CLI; return the key."""
    env = child_env(
        LOOPGATE_DATA_DIR=str(workdir / "loopgate-data"),
        LOOPGATE_ENGINE_MODE="external",
        LOOPGATE_ENGINE_URLS=f"http://127.0.0.1:{mock_port}",
        LOOPGATE_SERVED_MODEL_NAME="mock",
        LOOPGATE_LOG_LEVEL="warning",
    )
    cli = [sys.executable, "-m", "gateway.cli"]
    for args in (["tenant", "create", "bench"], ["key", "create", "bench"]):
        done = subprocess.run(
            [*cli, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"loopgate {' '.join(args)} failed:\n{done.stderr}")
    return str(json.loads(done.stdout)["key"])


def start_target(bench: Bench, target: Target, port: int) -> int:
    """Start the server under test on the server core; return its pid once it is ready."""
    opts = bench.opts
    upstream = f"http://127.0.0.1:{bench.mock_port}"
    if target.kind == "mock":
        argv, env, ready = mock_argv(port, opts), child_env(), "/health"
    elif target.kind == "bare":
        argv = [
            sys.executable,
            "-m",
            "benchmarks.bare_passthrough",
            "--port",
            str(port),
            "--upstream",
            upstream,
            "--transport",
            target.transport,
        ]
        env, ready = child_env(), "/health"
    else:
        argv = [sys.executable, "-m", "gateway.cli", "serve"]
        env, ready = loopgate_env(bench, port, target.transport), "/ready"
    pid = bench.procs.start(target.name, argv, opts.server_core, env)
    wait_ready(bench.procs, target.name, port, ready)
    return pid


# --- measurements -------------------------------------------------------------------------


def chat_body(stream: bool) -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "stream": stream,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def chat_request(bench: Bench, port: int, stream: bool) -> bytes:
    headers = {"content-type": "application/json", "authorization": f"Bearer {bench.api_key}"}
    return build_request(port, "POST", CHAT_PATH, chat_body(stream), headers)


def write_wrk_script(path: Path, api_key: str) -> None:
    report = (
        '"WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,'
        '\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}\\n"'
    )
    path.write_text(
        f'wrk.method = "POST"\n'
        f"wrk.body = [==[{chat_body(False).decode()}]==]\n"
        f'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {api_key}"\n'
        "done = function(s, latency, requests)\n"
        "  local e = s.errors\n"
        f"  io.write(string.format({report}, s.requests, s.duration, e.connect, e.read,\n"
        "    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))\n"
        "end\n"
    )


def run_wrk(bench: Bench, port: int, duration_s: int) -> tuple[dict[str, int], float]:
    """One closed-loop wrk run; returns its report and the CPU seconds wrk itself used."""
    argv = [
        bench.procs.taskset,
        "-c",
        str(bench.opts.load_core),
        bench.wrk,
        "-t1",
        f"-c{bench.opts.concurrency}",
        f"-d{duration_s}s",
        "--timeout",
        "5s",
        "-s",
        str(bench.wrk_script),
        f"http://127.0.0.1:{port}{CHAT_PATH}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :]), used
    raise RuntimeError(f"wrk gave no report (rc {done.returncode}):\n{done.stdout}{done.stderr}")


def check_replies(bench: Bench, port: int) -> None:
    """Every target must answer the same request correctly before it is timed."""
    expected_model = f'"model":"{MODEL}"'.encode()
    with RawClient(port) as client:
        reply = client.exchange(chat_request(bench, port, stream=False))
        if reply.status != 200 or expected_model not in reply.body:
            raise RuntimeError(f"bad reply {reply.status}: {reply.body[:300]!r}")
        timing = timed_stream(client, chat_request(bench, port, stream=True))
    if timing.events != bench.opts.chunks + 1 or not timing.done:
        raise RuntimeError(f"bad stream: {timing.events} events, [DONE]={timing.done}")


def latencies(bench: Bench, port: int, count: int) -> list[float]:
    raw = chat_request(bench, port, stream=False)
    samples = []
    with RawClient(port) as client:
        for _ in range(count):
            start = time.perf_counter()
            reply = client.exchange(raw)
            samples.append(time.perf_counter() - start)
            if reply.status != 200:
                raise RuntimeError(f"status {reply.status}: {reply.body[:300]!r}")
    return samples


def throughput(bench: Bench, port: int, server_pid: int) -> dict[str, float]:
    """wrk at --concurrency; CPU of the server, of the load side, and of anything else."""
    cores = (bench.opts.server_core, bench.opts.load_core)
    server0, mock0 = cpu_seconds(server_pid), cpu_seconds(bench.mock_pid)
    busy0, start = [core_busy_seconds(c) for c in cores], time.monotonic()
    report, wrk_cpu = run_wrk(bench, port, bench.opts.duration_s)
    wall = time.monotonic() - start
    server_cpu = cpu_seconds(server_pid) - server0
    load_cpu = wrk_cpu + cpu_seconds(bench.mock_pid) - mock0
    server_core, load_core = (core_busy_seconds(c) - b for c, b in zip(cores, busy0, strict=True))
    requests = max(1, report["requests"])
    return {
        "rps": report["requests"] / (report["duration_us"] / 1e6),
        "requests": report["requests"],
        "errors": sum(report[k] for k in ("connect", "read", "write", "status", "timeout")),
        "server_cpu_us_per_req": server_cpu / requests * 1e6,
        "server_busy": server_cpu / wall,
        "server_core_other": max(0.0, server_core - server_cpu) / wall,
        "load_core_busy": load_cpu / wall,
        "load_core_other": max(0.0, load_core - load_cpu) / wall,
        "loaded_p50_ms": report["p50_us"] / 1000,
        "loaded_p99_ms": report["p99_us"] / 1000,
    }


def streams(bench: Bench, port: int, count: int) -> tuple[list[float], list[float]]:
    raw = chat_request(bench, port, stream=True)
    first, total = [], []
    with RawClient(port, timeout_s=30.0) as client:
        for _ in range(count):
            timing = timed_stream(client, raw)
            first.append(timing.first_event_s)
            total.append(timing.total_s)
    return first, total


def warm_up(bench: Bench, port: int) -> None:
    latencies(bench, port, min(200, bench.opts.requests))
    run_wrk(bench, port, bench.opts.warmup_s)
    streams(bench, port, 2)


def measure(bench: Bench, target: Target) -> dict[str, Any]:
    """Start the target fresh, check it, warm it, time it, stop it."""
    port = free_port()
    try:
        pid = start_target(bench, target, port)
        check_replies(bench, port)
        warm_up(bench, port)
        lat = latencies(bench, port, bench.opts.requests)
        tput = throughput(bench, port, pid)
        ttfc, stream_total = streams(bench, port, bench.opts.streams)
    finally:
        bench.procs.stop(target.name)
    return {"latency_s": lat, "throughput": tput, "ttfc_s": ttfc, "stream_total_s": stream_total}


# --- summary ------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in rounds for x in r["latency_s"]]
    ttfc = [x for r in rounds for x in r["ttfc_s"]]
    total = [x for r in rounds for x in r["stream_total_s"]]
    tput = [r["throughput"] for r in rounds]
    rps = [t["rps"] for t in tput]
    return {
        "lat_p50_ms": pct(lat, 50) * 1e3,
        "lat_p99_ms": pct(lat, 99) * 1e3,
        "rps_median": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "cpu_us_per_req": statistics.median(t["server_cpu_us_per_req"] for t in tput),
        "server_busy": statistics.median(t["server_busy"] for t in tput),
        "server_core_other": statistics.median(t["server_core_other"] for t in tput),
        "load_core_busy": statistics.median(t["load_core_busy"] for t in tput),
        "load_core_other": statistics.median(t["load_core_other"] for t in tput),
        "loaded_p99_ms": statistics.median(t["loaded_p99_ms"] for t in tput),
        "errors": sum(t["errors"] for t in tput),
        "ttfc_p50_ms": pct(ttfc, 50) * 1e3,
        "ttfc_p99_ms": pct(ttfc, 99) * 1e3,
        "stream_p50_ms": pct(total, 50) * 1e3,
        "samples": {"latency": len(lat), "streams": len(ttfc), "rounds": len(rounds)},
    }


def added_over(base: dict[str, Any], s: dict[str, Any]) -> dict[str, float]:
    """Cost over direct. CPU: a proxy's own CPU is all added (the mock's runs elsewhere)."""
    return {
        "lat_p50_ms": s["lat_p50_ms"] - base["lat_p50_ms"],
        "lat_p99_ms": s["lat_p99_ms"] - base["lat_p99_ms"],
        "us_per_req_at_saturation": (1 / s["rps_median"] - 1 / base["rps_median"]) * 1e6,
        "cpu_us_per_req": s["cpu_us_per_req"],
        "ttfc_p50_ms": s["ttfc_p50_ms"] - base["ttfc_p50_ms"],
        "stream_p50_ms": s["stream_p50_ms"] - base["stream_p50_ms"],
    }


def print_tables(summary: dict[str, dict[str, Any]], added: dict[str, dict[str, float]]) -> None:
    labels = {t.name: f"{t.name} {t.label}" for t in TARGETS}
    print(
        "\nAbsolute (p50/p99: sequential, one keep-alive connection; req/s: wrk closed loop;"
        "\n srv busy: server CPU / wall; other: anything else on that core;"
        "\n load: wrk + mock on the load core; l.oth: anything else on the load core)"
    )
    print(
        f"{'target':<28}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>9}{'(min-max)':>15}"
        f"{'cpu us/req':>11}{'srv busy':>9}{'other':>6}{'load':>6}{'l.oth':>6}"
        f"{'ttfc p50':>9}{'ttfc p99':>9}{'stream p50':>11}{'errors':>7}"
    )
    for name, s in summary.items():
        span = f"{s['rps_min']:.0f}-{s['rps_max']:.0f}"
        print(
            f"{labels[name]:<28}{s['lat_p50_ms']:>8.3f}{s['lat_p99_ms']:>8.3f}"
            f"{s['rps_median']:>9.0f}{span:>15}{s['cpu_us_per_req']:>11.0f}"
            f"{s['server_busy']:>9.0%}{s['server_core_other']:>6.0%}{s['load_core_busy']:>6.0%}"
            f"{s['load_core_other']:>6.0%}"
            f"{s['ttfc_p50_ms']:>9.3f}"
            f"{s['ttfc_p99_ms']:>9.3f}{s['stream_p50_ms']:>11.2f}{s['errors']:>7}"
        )
    if not added:
        return
    print("\nAdded over A (direct)")
    print(
        f"{'target':<28}{'+p50 ms':>9}{'+p99 ms':>9}{'+us/req @sat':>13}{'proxy cpu us/req':>17}"
        f"{'+ttfc p50 ms':>13}{'+stream p50 ms':>15}"
    )
    for name, a in added.items():
        print(
            f"{labels[name]:<28}{a['lat_p50_ms']:>9.3f}{a['lat_p99_ms']:>9.3f}"
            f"{a['us_per_req_at_saturation']:>13.0f}{a['cpu_us_per_req']:>17.0f}"
            f"{a['ttfc_p50_ms']:>13.3f}{a['stream_p50_ms']:>15.2f}"
        )


def transport_effect(
    summary: dict[str, dict[str, Any]], per_round: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """aiohttp relative to httpx: in the bare pass-through (C/B) and in loopgate (E/D).

    Besides the summaries, each round's pair is compared on its own: the two ran minutes
    apart at most, so drift of the machine cancels out of the ratio.
    """
    effect: dict[str, dict[str, Any]] = {}
    for httpx_t, aio_t in (("B", "C"), ("D", "E")):
        if httpx_t not in summary or aio_t not in summary:
            continue
        h, a = summary[httpx_t], summary[aio_t]
        pairs = list(zip(per_round[httpx_t], per_round[aio_t], strict=True))
        effect[f"{aio_t}_vs_{httpx_t}"] = {
            "rps_change_pct": (a["rps_median"] / h["rps_median"] - 1) * 100,
            "cpu_us_per_req_change": a["cpu_us_per_req"] - h["cpu_us_per_req"],
            "lat_p50_ms_change": a["lat_p50_ms"] - h["lat_p50_ms"],
            "lat_p99_ms_change": a["lat_p99_ms"] - h["lat_p99_ms"],
            "ttfc_p50_ms_change": a["ttfc_p50_ms"] - h["ttfc_p50_ms"],
            "per_round_rps_ratio": [
                y["throughput"]["rps"] / x["throughput"]["rps"] for x, y in pairs
            ],
            "per_round_cpu_ratio": [
                y["throughput"]["server_cpu_us_per_req"] / x["throughput"]["server_cpu_us_per_req"]
                for x, y in pairs
            ],
        }
    for key, e in effect.items():
        rps_r, cpu_r = e["per_round_rps_ratio"], e["per_round_cpu_ratio"]
        print(
            f"\naiohttp vs httpx ({key.replace('_vs_', ' vs ')}): "
            f"throughput {e['rps_change_pct']:+.1f}%, cpu/req "
            f"{e['cpu_us_per_req_change']:+.0f} us, p50 {e['lat_p50_ms_change']:+.3f} ms, "
            f"p99 {e['lat_p99_ms_change']:+.3f} ms, ttfc p50 {e['ttfc_p50_ms_change']:+.3f} ms"
            f"\n  paired by round: req/s x{min(rps_r):.2f}..x{max(rps_r):.2f}, "
            f"cpu/req x{min(cpu_r):.2f}..x{max(cpu_r):.2f}"
        )
    return effect


def environment(wrk: str, opts: Options) -> dict[str, Any]:
    packages = ("httpx", "httpx-aiohttp", "aiohttp", "litestar", "uvicorn", "uvloop", "httptools")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    wrk_version = subprocess.run(
        [wrk, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": model,
        "cpus_online": os.cpu_count(),
        "load_core": opts.load_core,
        "server_core": opts.server_core,
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0],
        "packages": {p: metadata.version(p) for p in packages},
    }


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.client_choice",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--requests", type=int, default=1000, help="sequential requests per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="throughput phase, seconds")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--streams", type=int, default=20, help="streams timed per round")
    p.add_argument("--chunks", type=int, default=64, help="content chunks per stream")
    p.add_argument("--chunk-delay-ms", type=float, default=1.0, help="mock gap between chunks")
    p.add_argument("--warmup", type=int, default=2, help="wrk warm-up, seconds")
    p.add_argument("--load-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument("--targets", default="ABCDEF", help="subset of ABCDEF")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    a = p.parse_args(argv)
    if not (1 <= a.rounds <= 20 and 10 <= a.requests <= 100_000 and 1 <= a.duration <= 120):
        p.error("keep --rounds in 1..20, --requests in 10..100000, --duration in 1..120")
    return Options(
        a.requests,
        a.rounds,
        a.duration,
        a.concurrency,
        a.streams,
        a.chunks,
        a.chunk_delay_ms,
        a.warmup,
        a.load_core,
        a.server_core,
        "".join(t for t in "ABCDEF" if t in a.targets.upper()),
        a.output,
    )


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found (Debian: apt-get install -y {name})")
    return path


@contextmanager
def bench_session(opts: Options) -> Iterator[Bench]:
    """The temp dir, the upstream mock and loopgate's key; every child is ended on exit."""
    taskset, wrk = tool("taskset"), tool("wrk")
    cpus = os.sched_getaffinity(0)
    if not {opts.load_core, opts.server_core} <= cpus or opts.load_core == opts.server_core:
        raise SystemExit(f"need two distinct usable cores, have {sorted(cpus)}")
    os.sched_setaffinity(0, {opts.load_core})  # the probe client shares the load core
    with tempfile.TemporaryDirectory(prefix="loopgate-bench-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir, taskset)
        try:
            mock_port = free_port()
            mock_pid = procs.start("mock", mock_argv(mock_port, opts), opts.load_core, child_env())
            wait_ready(procs, "mock", mock_port, "/health")
            key = (
                provision_loopgate(workdir, mock_port)
                if set(opts.targets) & {"D", "E", "F"}
                else ""
            )
            script = workdir / "post.lua"
            write_wrk_script(script, key)
            yield Bench(opts, workdir, procs, wrk, mock_port, mock_pid, key, script)
        finally:
            procs.stop_all()


def run(opts: Options) -> dict[str, Any]:
    targets = [t for t in TARGETS if t.name in opts.targets]
    per_round: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    started = time.monotonic()
    idle = idle_share([opts.load_core, opts.server_core])
    if min(idle.values()) < 0.9:
        print(f"WARNING: the machine is busy before the run (idle share {idle}); expect noise")
    with bench_session(opts) as bench:
        env = {**environment(bench.wrk, opts), "idle_before": idle}
        for round_no in range(1, opts.rounds + 1):
            for target in targets:
                result = measure(bench, target)
                per_round[target.name].append(result)
                t = result["throughput"]
                print(
                    f"round {round_no} {target.name}: "
                    f"p50 {statistics.median(result['latency_s']) * 1e3:.3f} ms, "
                    f"{t['rps']:.0f} req/s, {t['server_cpu_us_per_req']:.0f} us cpu/req, "
                    f"server busy {t['server_busy']:.0%} (other {t['server_core_other']:.0%}), "
                    f"load core busy {t['load_core_busy']:.0%} "
                    f"(other {t['load_core_other']:.0%})"
                    f"  [{time.monotonic() - started:.0f} s]",
                    flush=True,
                )
    summary = {name: summarize(rounds) for name, rounds in per_round.items()}
    added = (
        {n: added_over(summary["A"], s) for n, s in summary.items() if n != "A"}
        if "A" in summary
        else {}
    )
    print_tables(summary, added)
    effect = transport_effect(summary, per_round)
    return {
        "options": {**asdict(opts), "output": str(opts.output)},
        "environment": env,
        "targets": {t.name: asdict(t) for t in targets},
        "summary": summary,
        "added_over_direct": added,
        "aiohttp_vs_httpx": effect,
        "rounds": {
            name: [
                {
                    "throughput": r["throughput"],
                    "lat_p50_ms": pct(r["latency_s"], 50) * 1e3,
                    "lat_p99_ms": pct(r["latency_s"], 99) * 1e3,
                    "ttfc_p50_ms": pct(r["ttfc_s"], 50) * 1e3,
                    "stream_p50_ms": pct(r["stream_total_s"], 50) * 1e3,
                }
                for r in rounds
            ]
            for name, rounds in per_round.items()
        },
        "wall_s": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)

    def on_term(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanup of every child

    signal.signal(signal.SIGTERM, on_term)
    results = run(opts)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {opts.output}")


if __name__ == "__main__":
    main()
