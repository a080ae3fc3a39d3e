"""Capture's CPU cost per request: the gateway with traffic capture on vs off (issue 4).

Wall-clock throughput on a shared 2-core machine swings by tens of percent between rounds of the
same target, so this benchmark counts the gateway's own CPU instead. Per round and per variant
(capture on, capture off; the order alternates between rounds) a fresh gateway (external engine
mode against `benchmarks.mock_upstream`, a fresh copy of one provisioned data dir, no training
worker) runs pinned to --server-core; a keep-alive asyncio client on --load-core sends a fixed
number of non-streaming and streaming chat requests at --concurrency. The gateway process's
utime + stime (all of its threads, from /proc) over each phase, divided by the requests, is its
CPU per request; at saturation on one core, throughput is 1 / (CPU per request), so the ratio
of CPU off / on is the throughput ratio capture allows. Wall-clock requests/s of the same phases
is printed beside it for reference.

With --callgrind N the same comparison is made in instructions: the gateway runs under
`valgrind --tool=callgrind` (one request at a time, so batches are deterministic), counters are
dumped after N and after 3N more requests, and the difference over 2N requests cancels start-up
and per-phase costs. Instruction counts do not depend on what else the machine is doing.

Run: python -m benchmarks.capture_cost [--rounds 6] [--requests 2000] [--callgrind 100]
     [--gap-ms 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

from benchmarks.client_choice import (
    Processes,
    child_env,
    cpu_seconds,
    free_port,
    idle_share,
    tool,
    wait_ready,
)
from benchmarks.mock_upstream import paced
from benchmarks.rawhttp import RawClient, build_request

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "capture_cost.json"
CHAT_PATH = "/v1/chat/completions"
PROMPT = "Where is my parcel? It was sent to the office on Monday and nobody has seen it since."
VARIANTS = ("on", "off")
KINDS = ("chat", "stream")
CALLGRIND_READY_S = 900.0


@dataclass(frozen=True)
class Options:
    rounds: int
    requests: int
    warmup: int
    concurrency: int
    chunks: int
    load_core: int
    server_core: int
    callgrind: int
    output: Path
    gap_ms: float = 0.0


@dataclass
class Bench:
    opts: Options
    workdir: Path
    procs: Processes
    mock_port: int
    template: Path
    api_key: str


@dataclass
class Phase:
    """One fixed-count phase against one gateway: its CPU and wall time."""

    requests: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_req(self) -> float:
        return self.cpu_s / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s


@dataclass
class Rounds:
    phases: dict[str, dict[str, list[Phase]]] = field(
        default_factory=lambda: {v: {k: [] for k in KINDS} for v in VARIANTS}
    )


# --- the gateway -------------------------------------------------------------------------


def gateway_env(data_dir: Path, mock_port: int, capture: bool, port: int = 8080) -> dict[str, str]:
    return child_env(
        LOOPGATE_CAPTURE_ENABLED="true" if capture else "false",
        LOOPGATE_DATA_DIR=str(data_dir),
        LOOPGATE_ENGINE_MODE="external",
        LOOPGATE_ENGINE_URLS=f"http://127.0.0.1:{mock_port}",
        LOOPGATE_SERVED_MODEL_NAME="mock",
        LOOPGATE_TRAINING_WORKER="false",
        LOOPGATE_EVALS_WORKER="false",  # its start-up would share the gateway's core
        LOOPGATE_PORT=str(port),
        LOOPGATE_LOG_LEVEL="warning",
        PYTHONHASHSEED="0",
    )


def provision(data_dir: Path, mock_port: int) -> str:
    """Create the tenant `bench` and a key for it with the CLI; return the key."""
    env = gateway_env(data_dir, mock_port, capture=True)
    done = None
    for args in (["tenant", "create", "bench"], ["key", "create", "bench"]):
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"loopgate {' '.join(args)} failed:\n{done.stderr}")
    assert done is not None
    return str(json.loads(done.stdout)["key"])


def fresh_data_dir(bench: Bench, name: str) -> Path:
    target = bench.workdir / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(bench.template, target)
    return target


def start_gateway(
    bench: Bench, name: str, capture: bool, prefix: tuple[str, ...] = (), ready_s: float = 60.0
) -> int:
    """A fresh gateway pinned to the server core; returns its port once /ready answers."""
    port = free_port()
    env = gateway_env(fresh_data_dir(bench, name), bench.mock_port, capture, port)
    argv = [*prefix, sys.executable, "-m", "gateway.cli", "serve"]
    bench.procs.start(name, argv, bench.opts.server_core, env)
    raw = build_request(port, "GET", "/ready", b"", {})
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if not bench.procs.alive(name):
            raise RuntimeError(f"{name} exited during start-up:\n{bench.procs.log_tail(name)}")
        with contextlib.suppress(OSError, ValueError), RawClient(port, timeout_s=30) as client:
            if client.exchange(raw).status == 200:
                return port
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready in {ready_s:.0f} s:\n{bench.procs.log_tail(name)}")


# --- the client --------------------------------------------------------------------------


def chat_request(port: int, api_key: str, stream: bool, gap_ms: float = 0.0) -> bytes:
    """A chat request; a stream with `gap_ms` > 0 gets its chunks that far apart (each read
    and relayed on its own, as from an engine, instead of arriving together)."""
    body = json.dumps(
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 16,
            "stream": stream,
            **({"user": paced(gap_ms)} if stream and gap_ms > 0 else {}),
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\nauthorization: Bearer {api_key}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 reply (content-length or chunked); raises unless it is a 200."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        length = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"status {status}: {body[:300]!r}")
    return body


async def drive(port: int, raw: bytes, count: int, concurrency: int) -> None:
    """Send `count` copies of `raw` over `concurrency` keep-alive connections."""
    left = count

    async def worker() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left > 0:
                left -= 1
                writer.write(raw)
                await read_reply(reader)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


def check_replies(port: int, api_key: str, chunks: int) -> None:
    async def both() -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(chat_request(port, api_key, stream=False))
            chat = await read_reply(reader)
            writer.write(chat_request(port, api_key, stream=True))
            return chat, await read_reply(reader)
        finally:
            writer.close()

    chat, stream = uvloop.run(both())
    if b'"model":"smollm2"' not in chat or stream.count(b"data:") != chunks + 1:
        raise RuntimeError(f"unexpected replies: {chat[:200]!r} / {stream[:200]!r}")


def phase(port: int, raw: bytes, count: int, concurrency: int, pid: int) -> Phase:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    uvloop.run(drive(port, raw, count, concurrency))
    return Phase(count, cpu_seconds(pid) - cpu0, time.monotonic() - t0)


# --- CPU-time rounds ---------------------------------------------------------------------


def measure(bench: Bench, variant: str, round_no: int) -> dict[str, Phase]:
    opts = bench.opts
    name = f"gw-{variant}-{round_no}"
    port = start_gateway(bench, name, capture=variant == "on")
    pid = bench.procs.live[name].pid
    try:
        check_replies(port, bench.api_key, opts.chunks)
        raws = {k: chat_request(port, bench.api_key, k == "stream", opts.gap_ms) for k in KINDS}
        for kind in KINDS:
            phase(port, raws[kind], opts.warmup, opts.concurrency, pid)
        return {k: phase(port, raws[k], opts.requests, opts.concurrency, pid) for k in KINDS}
    finally:
        bench.procs.stop(name)


def run_rounds(bench: Bench) -> Rounds:
    rounds = Rounds()
    started = time.monotonic()
    for round_no in range(1, bench.opts.rounds + 1):
        order = VARIANTS if round_no % 2 else VARIANTS[::-1]
        for variant in order:
            for kind, p in measure(bench, variant, round_no).items():
                rounds.phases[variant][kind].append(p)
                print(
                    f"round {round_no} capture {variant:3} {kind:6}: "
                    f"{p.cpu_us_per_req:6.0f} us cpu/req, {p.rps:6.0f} req/s, "
                    f"gateway busy {p.cpu_s / p.wall_s:4.0%}"
                    f"  [{time.monotonic() - started:.0f} s]",
                    flush=True,
                )
    return rounds


def paired(rounds: Rounds, kind: str, value: str) -> list[float]:
    """Per round: on/off for req/s, off/on for CPU per request (both: capture's ratio)."""
    on, off = rounds.phases["on"][kind], rounds.phases["off"][kind]
    if value == "rps":
        return [a.rps / b.rps for a, b in zip(on, off, strict=True)]
    return [b.cpu_us_per_req / a.cpu_us_per_req for a, b in zip(on, off, strict=True)]


def summarize(rounds: Rounds) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        on, off = rounds.phases["on"][kind], rounds.phases["off"][kind]
        cpu_on = statistics.median(p.cpu_us_per_req for p in on)
        cpu_off = statistics.median(p.cpu_us_per_req for p in off)
        out[kind] = {
            "cpu_us_per_req_on": cpu_on,
            "cpu_us_per_req_off": cpu_off,
            "cpu_ratio_off_on": cpu_off / cpu_on,
            "cpu_ratio_paired_min": min(paired(rounds, kind, "cpu")),
            "cpu_ratio_paired_max": max(paired(rounds, kind, "cpu")),
            "rps_on": statistics.median(p.rps for p in on),
            "rps_off": statistics.median(p.rps for p in off),
            "rps_ratio_on_off": statistics.median(paired(rounds, kind, "rps")),
            "rps_ratio_paired_min": min(paired(rounds, kind, "rps")),
            "rps_ratio_paired_max": max(paired(rounds, kind, "rps")),
        }
    return out


def print_table(summary: dict[str, dict[str, float]], opts: Options) -> None:
    print(
        f"\ncapture on vs off: {opts.rounds} interleaved rounds x {opts.requests} requests "
        f"per kind at concurrency {opts.concurrency} (medians; paired per-round range)\n"
    )
    print(
        "| kind | CPU/req on | CPU/req off | implied throughput on/off (CPU off/on) "
        "| wall-clock req/s on / off | wall-clock ratio on/off |"
    )
    print("|---|---|---|---|---|---|")
    for kind, s in summary.items():
        print(
            f"| {kind} | {s['cpu_us_per_req_on']:.0f} us | {s['cpu_us_per_req_off']:.0f} us "
            f"| {s['cpu_ratio_off_on']:.3f} ({s['cpu_ratio_paired_min']:.3f}-"
            f"{s['cpu_ratio_paired_max']:.3f}) "
            f"| {s['rps_on']:.0f} / {s['rps_off']:.0f} "
            f"| {s['rps_ratio_on_off']:.3f} ({s['rps_ratio_paired_min']:.3f}-"
            f"{s['rps_ratio_paired_max']:.3f}) |"
        )


# --- instructions under callgrind --------------------------------------------------------


def callgrind_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def dump_counters(control: str, pid: int, outdir: Path, before: set[Path]) -> int:
    """Dump (and zero) callgrind's counters; return the instructions since the last dump."""
    subprocess.run([control, "-d", str(pid)], capture_output=True, timeout=600, check=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        new = set(outdir.glob("callgrind.out.*")) - before
        if new:
            time.sleep(1.0)  # let valgrind finish writing the file
            before |= new
            return sum(callgrind_total(p) for p in new)
        time.sleep(0.5)
    raise RuntimeError("callgrind wrote no dump")


def instructions(bench: Bench, variant: str) -> dict[str, float]:
    """Instructions per request (3N minus N requests, one at a time) for one variant."""
    n, name = bench.opts.callgrind, f"cg-{variant}"
    outdir = bench.workdir / f"{name}-callgrind"
    outdir.mkdir(parents=True)
    prefix = (
        tool("valgrind"),
        "--tool=callgrind",
        "--dump-instr=no",
        "--instr-atstart=no",  # start-up runs uninstrumented (fast); switched on once ready
        f"--callgrind-out-file={outdir}/callgrind.out.%p",
    )
    port = start_gateway(bench, name, variant == "on", prefix, CALLGRIND_READY_S)
    pid = bench.procs.live[name].pid  # taskset and valgrind exec: the pid is the gateway's
    control = tool("callgrind_control")
    seen = set(outdir.glob("callgrind.out.*"))  # the file written at exit; dumps add .1, .2, ...
    result: dict[str, float] = {}
    try:
        subprocess.run(
            [control, "-i", "on", str(pid)], capture_output=True, timeout=600, check=True
        )
        for kind in KINDS:
            raw = chat_request(port, bench.api_key, kind == "stream", bench.opts.gap_ms)
            uvloop.run(drive(port, raw, 20, 1))  # warm-up
            dump_counters(control, pid, outdir, seen)
            uvloop.run(drive(port, raw, n, 1))
            one = dump_counters(control, pid, outdir, seen)
            uvloop.run(drive(port, raw, 3 * n, 1))
            three = dump_counters(control, pid, outdir, seen)
            result[kind] = (three - one) / (2 * n)
            print(f"callgrind capture {variant:3} {kind:6}: {result[kind]:,.0f} instr/req")
    finally:
        bench.procs.stop(name)
    return result


def run_callgrind(bench: Bench) -> dict[str, dict[str, float]]:
    per_variant = {v: instructions(bench, v) for v in VARIANTS}
    print(f"\ninstructions per request, one request at a time ({bench.opts.callgrind} vs 3x):\n")
    print("| kind | instr/req on | instr/req off | implied throughput on/off |")
    print("|---|---|---|---|")
    for kind in KINDS:
        on, off = per_variant["on"][kind], per_variant["off"][kind]
        print(f"| {kind} | {on:,.0f} | {off:,.0f} | {off / on:.3f} |")
    return per_variant


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.capture_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (on/off each)")
    p.add_argument("--requests", type=int, default=2000, help="requests per kind per round")
    p.add_argument("--warmup", type=int, default=300, help="untimed requests per kind first")
    p.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    p.add_argument("--chunks", type=int, default=16, help="content chunks per mock stream")
    p.add_argument("--load-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument(
        "--callgrind", type=int, default=0, help="also count instructions over N and 3N requests"
    )
    p.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="ms between a stream's chunks (0: they arrive together; > 0: each is relayed alone)",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    a = p.parse_args(argv)
    if not (0 <= a.gap_ms <= 1000):
        p.error("keep --gap-ms in 0..1000")
    if not (0 <= a.rounds <= 50 and 10 <= a.requests <= 100_000 and 0 <= a.callgrind <= 5000):
        p.error("keep --rounds in 0..50, --requests in 10..100000, --callgrind in 0..5000")
    return Options(
        a.rounds,
        a.requests,
        a.warmup,
        a.concurrency,
        a.chunks,
        a.load_core,
        a.server_core,
        a.callgrind,
        a.output,
        a.gap_ms,
    )


@contextmanager
def bench_session(opts: Options) -> Iterator[Bench]:
    """The temp dir, the mock upstream and one provisioned data dir; children end on exit."""
    cpus = os.sched_getaffinity(0)
    if not {opts.load_core, opts.server_core} <= cpus or opts.load_core == opts.server_core:
        raise SystemExit(f"need two distinct usable cores, have {sorted(cpus)}")
    os.sched_setaffinity(0, {opts.load_core})  # the client shares the load core with the mock
    with tempfile.TemporaryDirectory(prefix="loopgate-capture-cost-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir, tool("taskset"))
        try:
            mock_port = free_port()
            mock = [sys.executable, "-m", "benchmarks.mock_upstream", "--port", str(mock_port)]
            procs.start("mock", [*mock, "--chunks", str(opts.chunks)], opts.load_core, child_env())
            wait_ready(procs, "mock", mock_port, "/health")
            template = workdir / "template"
            key = provision(template, mock_port)
            yield Bench(opts, workdir, procs, mock_port, template, key)
        finally:
            procs.stop_all()


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)

    def on_term(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanup of every child

    signal.signal(signal.SIGTERM, on_term)
    idle = idle_share([opts.load_core, opts.server_core])
    if min(idle.values()) < 0.9:
        print(f"note: the machine is busy (idle share {idle}); CPU/request is still comparable")
    results: dict[str, object] = {"options": {**asdict(opts), "output": str(opts.output)}}
    with bench_session(opts) as bench:
        if opts.rounds:
            rounds = run_rounds(bench)
            summary = summarize(rounds)
            print_table(summary, opts)
            results["summary"] = summary
            results["rounds"] = {
                v: {k: [asdict(p) for p in ps] for k, ps in kinds.items()}
                for v, kinds in rounds.phases.items()
            }
        if opts.callgrind:
            results["callgrind"] = run_callgrind(bench)
    results["idle_before"] = idle
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {opts.output}")


if __name__ == "__main__":
    main()
