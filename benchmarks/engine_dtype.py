"""vLLM-CPU's throughput in bfloat16 and in float32 on this host: the measurement behind the
embedded engine's `LOOPGATE_ENGINE_DTYPE=auto` (`store.numerics`).

For each dtype: one vLLM-CPU process with the bundled model, started with the embedded mode's
own flags (`replicas.supervisor.build_launch`), then closed loops of greedy chat completions at
each concurrency; output tokens per second over the wall time of each run (median of rounds).
The CPU's capability is printed with every figure.

Run: python -m benchmarks.engine_dtype               (about 6 minutes on 2 cores)
     python -m benchmarks.engine_dtype --quick       (one round, c=1 and 16)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from replicas.base_model import resolve_model
from replicas.supervisor import build_launch, free_port
from store.numerics import choose_cpu_dtype, describe_cpu
from store.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle for a child.",
    "List some tips for learning a new language.",
)
READY_TIMEOUT_S = 900.0


def start_engine(dtype: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    settings = Settings(engine_dtype=dtype, engine_device="cpu", engine_cpu_kvcache_gb=1)  # type: ignore[arg-type]
    launch = build_launch(settings, resolve_model(settings), port=free_port())
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            launch.argv, env=launch.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM ({dtype}) exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(launch.url + "/health", timeout=2).status_code == 200:
                return proc, launch.url, launch.api_key
        time.sleep(1)
    raise SystemExit(f"vLLM ({dtype}) not ready in {READY_TIMEOUT_S} s")


def stop_engine(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def run_load(url: str, key: str, concurrency: int, requests: int, max_tokens: int) -> float:
    """Output tokens per second of `requests` greedy completions, `concurrency` at a time."""
    queue = list(range(requests))
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            i = queue.pop()
            body = {
                "model": Settings().base_model_name, "temperature": 0, "max_tokens": max_tokens,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            }  # fmt: skip
            resp = await client.post("/v1/chat/completions", json=body)
            resp.raise_for_status()
            tokens += resp.json()["usage"]["completion_tokens"]

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        started = time.monotonic()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return tokens / (time.monotonic() - started)


def measure(dtype: str, concurrencies: list[int], rounds: int, max_tokens: int) -> dict[str, float]:
    log_path = Path(tempfile.gettempdir()) / f"loopgate-engine-{dtype}.log"
    started = time.monotonic()
    proc, url, key = start_engine(dtype, log_path)
    print(f"  {dtype}: engine ready in {time.monotonic() - started:.0f} s", flush=True)
    try:
        asyncio.run(run_load(url, key, 2, 2, 8))  # warm-up
        figures: dict[str, float] = {}
        for c in concurrencies:
            runs = [asyncio.run(run_load(url, key, c, 2 * c, max_tokens)) for _ in range(rounds)]
            figures[f"c{c}"] = statistics.median(runs)
            print(f"  {dtype}: c={c:<3} {figures[f'c{c}']:7.1f} output tok/s", flush=True)
        return figures
    finally:
        stop_engine(proc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one round")
    p.add_argument("--concurrency", default="1,16", help="comma-separated (1,16)")
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    rounds = 1 if args.quick else 3
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cpu = describe_cpu()
    print(f"vLLM-CPU dtype benchmark on {cpu}; auto picks {choose_cpu_dtype('auto')}", flush=True)
    results = {
        dtype: measure(dtype, concurrencies, rounds, args.max_tokens)
        for dtype in ("bfloat16", "float32")
    }
    print(f"\n{cpu}: output tokens/s (median of {rounds}), float32/bfloat16")
    for c in concurrencies:
        bf, fp = results["bfloat16"][f"c{c}"], results["float32"][f"c{c}"]
        print(f"  c={c:<3} bfloat16 {bf:7.1f}  float32 {fp:7.1f}  ratio {fp / bf:5.2f}x")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"engine-dtype-{stamp}.json"
    out.write_text(json.dumps({"cpu": cpu, "rounds": rounds, "results": results}, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
