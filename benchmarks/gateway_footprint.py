"""The serving process's footprint: `loopgate serve` start-up time and resident memory.

Starts `python -m gateway.cli serve` (external engine mode, in front of the benchmark mock engine,
no training worker) from a given source tree, and reports per run: seconds from spawn to the
first `GET /health` 200, the gateway's VmRSS (/proc/<pid>/status) once started and again after a
handful of requests (tenant, key, chat completions, listings). Prints the median of the runs,
the CPU line (`store.numerics.describe_cpu`) and the tree's git commit.

    python -m benchmarks.gateway_footprint                    # this checkout
    python -m benchmarks.gateway_footprint --tree /tmp/before  # another checkout (same layout)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from store.numerics import describe_cpu

HERE = Path(__file__).resolve().parents[1]
ADMIN = "footprint-admin"


@dataclass(frozen=True)
class Run:
    startup_s: float
    rss_started_mib: float
    rss_after_mib: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    """Poll until `url` answers 200 (or the process dies, or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{url} did not answer 200 in {timeout_s} s")


def gateway_env(tree: Path, data_dir: Path, port: int, engine_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGATE_")}
    return env | {
        "PYTHONPATH": str(tree),
        "LOOPGATE_DATA_DIR": str(data_dir),
        "LOOPGATE_ENGINE_MODE": "external",
        "LOOPGATE_ENGINE_URLS": f"http://127.0.0.1:{engine_port}",
        "LOOPGATE_SERVED_MODEL_NAME": "mock",
        "LOOPGATE_PORT": str(port),
        "LOOPGATE_LOG_LEVEL": "warning",
        "LOOPGATE_TRAINING_WORKER": "false",
        "LOOPGATE_ADMIN_KEY": ADMIN,
    }


def some_requests(base: str) -> None:
    """A handful of requests through the usual routes (tenant, key, completions, listings)."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=base, timeout=30) as c:
        c.post("/admin/tenants", json={"name": "acme"}, headers=admin).raise_for_status()
        key = c.post("/admin/tenants/acme/keys", json={"name": "k"}, headers=admin)
        auth = {"Authorization": f"Bearer {key.raise_for_status().json()['key']}"}
        models = c.get("/v1/models", headers=auth).raise_for_status().json()["data"]
        body = {"model": models[0]["id"], "messages": [{"role": "user", "content": "Hi!"}]}
        for _ in range(5):
            c.post("/v1/chat/completions", json=body, headers=auth).raise_for_status()
        for path in ("/v1/models", "/v1/files", "/v1/datasets", "/v1/fine_tuning/jobs"):
            c.get(path, headers=auth).raise_for_status()


def one_run(tree: Path, engine_port: int) -> Run:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lg-footprint-") as tmp:
        env = gateway_env(tree, Path(tmp), port, engine_port)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            cwd=tree,
            env=env,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            startup = time.monotonic() - started
            rss_started = rss_mib(proc.pid)
            some_requests(f"http://127.0.0.1:{port}")
            return Run(startup, rss_started, rss_mib(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def commit_of(tree: Path) -> str:
    def git(*args: str) -> str:
        argv = [shutil.which("git") or "git", "-C", str(tree), *args]
        done = subprocess.run(argv, check=False, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=HERE, help="the source tree to start")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    engine_port = free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mock_upstream", "--port", str(engine_port)],
        cwd=HERE,
        env=os.environ | {"PYTHONPATH": str(HERE)},
    )
    try:
        wait_http(f"http://127.0.0.1:{engine_port}/health", engine)
        runs = [one_run(args.tree.resolve(), engine_port) for _ in range(args.runs)]
    finally:
        engine.terminate()
        engine.wait(timeout=30)
    print(f"tree: {args.tree.resolve()} (commit {commit_of(args.tree)}); {describe_cpu()}")
    for n, r in enumerate(runs, start=1):
        print(
            f"run {n}: start-up {r.startup_s:.2f} s; RSS {r.rss_started_mib:.1f} MiB started, "
            f"{r.rss_after_mib:.1f} MiB after requests"
        )
    print(
        f"median of {len(runs)}: start-up {statistics.median(r.startup_s for r in runs):.2f} s; "
        f"RSS {statistics.median(r.rss_started_mib for r in runs):.1f} MiB started, "
        f"{statistics.median(r.rss_after_mib for r in runs):.1f} MiB after requests"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
