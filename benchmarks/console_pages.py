"""How fast the console's pages render with 10,000 stored completions.

Starts the benchmark mock engine and a real `loopgate serve` (external engine mode, workers
off), fills one tenant with `--completions` chat completions through the API (every 20th with a
thumbs-down, so the review queue has work), signs in to the console with the admin key like a
browser (form, cookie, CSRF), and times each page's GET `--rounds` times. Prints p50 / p95 / max
per page, the CPU line (`store.numerics.describe_cpu`) and the commit.

    python -m benchmarks.console_pages                      # 10,000 completions, 30 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.gateway_footprint import ADMIN, commit_of, free_port, gateway_env, wait_http
from store.numerics import describe_cpu

HERE = Path(__file__).resolve().parents[1]
PAGES = (
    "/console",
    "/console/tenants",
    "/console/tenants/acme",
    "/console/aliases?tenant=acme",
    "/console/evals?tenant=acme",
    "/console/training?tenant=acme",
    "/console/review?tenant=acme",
)


async def fill(base: str, key: str, count: int, concurrency: int = 32) -> float:
    """`count` chat completions through the gateway, then a thumbs-down on every 20th stored
    one (the mock engine names every answer alike, so ids come from the stored list); returns
    the seconds it took."""
    auth = {"Authorization": f"Bearer {key}"}
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=60, limits=limits) as c:

        async def one(i: int) -> None:
            async with gate:
                body = {"model": "smollm2", "messages": [{"role": "user", "content": f"q {i}"}]}
                (await c.post("/v1/chat/completions", json=body)).raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))
        stored: list[str] = []
        after: str | None = None
        while len(stored) < count // 20:
            params = {"limit": "100", **({"after": after} if after else {})}
            page = (await c.get("/v1/chat/completions", params=params)).raise_for_status().json()
            stored += [row["id"] for row in page["data"]]
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]

        async def thumbs_down(cid: str) -> None:
            async with gate:
                fb = {"rating": "down", "comment": "wrong answer"}
                path = f"/v1/chat/completions/{cid}/feedback"
                (await c.post(path, json=fb)).raise_for_status()

        await asyncio.gather(*(thumbs_down(cid) for cid in stored[: count // 20]))
    return time.monotonic() - started


def signed_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30, follow_redirects=True)
    form = client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token, "no sign-in form"
    done = client.post(
        "/console/login", data={"csrf": token.group(1), "key": ADMIN, "name": "bench"}
    )
    done.raise_for_status()
    return client


def time_pages(client: httpx.Client, rounds: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {page: [] for page in PAGES}
    for page in PAGES:
        client.get(page).raise_for_status()  # warm: templates compiled, caches filled
    for _ in range(rounds):
        for page in PAGES:  # interleaved, so drift hits every page alike
            started = time.perf_counter()
            resp = client.get(page)
            timings[page].append((time.perf_counter() - started) * 1000)
            resp.raise_for_status()
    return timings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--completions", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    engine_port, port = free_port(), free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mock_upstream", "--port", str(engine_port)],
        cwd=HERE,
        env=os.environ | {"PYTHONPATH": str(HERE)},
    )
    with tempfile.TemporaryDirectory(prefix="lg-console-") as tmp:
        env = gateway_env(HERE, Path(tmp), port, engine_port) | {"LOOPGATE_EVALS_WORKER": "false"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            cwd=HERE,
            env=env,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{engine_port}/health", engine)
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/health", proc)
            admin = {"Authorization": f"Bearer {ADMIN}"}
            with httpx.Client(base_url=base, headers=admin, timeout=30) as c:
                c.post("/admin/tenants", json={"name": "acme"}).raise_for_status()
                key = c.post("/admin/tenants/acme/keys", json={"name": "k"}).json()["key"]
            took = asyncio.run(fill(base, key, args.completions))
            client = signed_in(base)
            try:
                timings = time_pages(client, args.rounds)
            finally:
                client.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            engine.terminate()
            engine.wait(timeout=30)
    print(f"commit {commit_of(HERE)}; {describe_cpu()}")
    print(f"{args.completions} completions stored in {took:.1f} s; {args.rounds} rounds per page")
    print(f"{'page':<34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for page, ms in timings.items():
        ms.sort()
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        print(f"{page:<34} {statistics.median(ms):>8.1f} {p95:>8.1f} {ms[-1]:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
