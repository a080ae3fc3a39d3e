"""The slim gateway image starts. No Docker engine here, so the Dockerfile's `gateway` target is
replayed step by step: its COPY lines build a context, its `pip install` line runs in a fresh
Python 3.11 venv, its ENV is the environment; `loopgate serve` from that venv, in front of the
fake engine (tests.support.mock_engine), must answer /health and a chat completion, and torch,
transformers, scipy and the rest of the workers' stack must not even be importable there (the
base install is the gateway's).

Slow (a real pip install; the pip cache makes reruns quicker), but it needs no vLLM engine."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from replicas.supervisor import free_port
from tests.support.mock_engine import MockEngine, mock_engine

pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parents[3]
TARGET = "gateway"
# The workers' and the engine's stacks: none of them is installed by the base.
MUST_BE_ABSENT = (
    *("vllm", "torch", "transformers", "peft", "trl", "scipy", "matplotlib"),
    *("datasketch", "rouge_score"),
)
ADMIN_KEY = "lg-admin-image-test"
INSTALL_TIMEOUT_S = 1200


@dataclass
class Stage:
    """What a Dockerfile stage does, as far as this test replays it."""

    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, destination)
    installs: list[list[str]] = field(default_factory=list)  # `pip install ...` argument lists


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        pending = ""
        yield instruction.upper(), args.strip()


def stage_name(from_args: str) -> str:
    words = from_args.split()
    return words[2] if len(words) == 3 and words[1].lower() == "as" else ""


def pip_installs(run_args: str) -> list[list[str]]:
    """The `pip install` commands of a RUN line, minus --no-cache-dir (the cache speeds reruns)."""
    commands = [shlex.split(part) for part in run_args.split("&&")]
    return [
        [word for word in words[2:] if word != "--no-cache-dir"]
        for words in commands
        if words[:2] == ["pip", "install"]
    ]


def parse_stage(dockerfile: str, target: str) -> Stage:
    stage, current = Stage(), ""
    for instruction, args in instructions(dockerfile):
        if instruction == "FROM":
            current = stage_name(args)
        elif current != target:
            continue
        elif instruction == "ENV":
            stage.env.update(word.split("=", 1) for word in shlex.split(args))  # type: ignore[misc]
        elif instruction == "COPY":
            *sources, destination = [w for w in shlex.split(args) if not w.startswith("--")]
            stage.copies.append((sources, destination))
        elif instruction == "RUN":
            stage.installs += pip_installs(args)
    return stage


def build_context(stage: Stage, workdir: Path) -> None:
    """The COPY lines, into `workdir` (the image's WORKDIR)."""
    for sources, destination in stage.copies:
        target = workdir / destination
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a child at the dev venv or at our
    own settings."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("LOOPGATE_")
    }
    return {**env, **extra}


def install(stage: Stage, workdir: Path, venv: Path, log: Path) -> None:
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    for args in stage.installs:
        with log.open("ab") as out:
            done = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", *args],
                check=False,
                cwd=workdir,
                env=clean_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT_S,
            )
        if done.returncode != 0:
            pytest.fail(f"pip install {shlex.join(args)} failed:\n{log.read_text()[-4000:]}")


def importable(venv: Path, modules: tuple[str, ...], cwd: Path) -> list[str]:
    """The modules of `modules` the venv's interpreter can find (run outside the source tree)."""
    probe = f"import importlib.util as u; print(*[m for m in {modules!r} if u.find_spec(m)])"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"loopgate serve exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"loopgate serve not healthy within 120 s:\n{log.read_text()[-6000:]}")


def serve(
    stage: Stage, venv: Path, engine: MockEngine, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """`loopgate serve` from the venv with the stage's ENV, on loopback; (process, its URL)."""
    port = free_port()
    here = dict(
        LOOPGATE_HOST="127.0.0.1",
        LOOPGATE_PORT=str(port),
        LOOPGATE_DATA_DIR=str(tmp_path / "data"),
        LOOPGATE_CACHE_DIR=str(tmp_path / "cache"),
        LOOPGATE_ENGINE_MODE="external",
        LOOPGATE_ENGINE_URLS=engine.url,
        LOOPGATE_SERVED_MODEL_NAME="mock",
        LOOPGATE_ADMIN_KEY=ADMIN_KEY,
        PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
    )
    env = clean_env(**{**stage.env, **here})  # the image's ENV, then this machine's paths
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "loopgate"), "serve"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


def children(pid: int) -> list[str]:
    """The pids of a process's children (any of its threads may have started them)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [child for task in tasks for child in (task / "children").read_text().split()]


def chat_through(url: str) -> httpx.Response:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        client.post("/admin/tenants", json={"name": "acme"}, headers=admin).raise_for_status()
        key = client.post("/admin/tenants/acme/keys", json={}, headers=admin).json()["key"]
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "hello"}]}
        return client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )


def test_the_gateway_image_installs_only_the_base_and_serves(tmp_path: Path) -> None:
    stage = parse_stage((ROOT / "Dockerfile").read_text(), TARGET)
    assert stage.copies and stage.installs, f"no COPY or `pip install` in the {TARGET!r} target"
    workdir, venv = tmp_path / "context", tmp_path / "venv"
    build_context(stage, workdir)
    install(stage, workdir, venv, tmp_path / "pip.log")
    assert importable(venv, MUST_BE_ABSENT, tmp_path) == []  # the heavy stack stayed out
    assert importable(venv, ("gateway", "litestar"), tmp_path) == ["gateway", "litestar"]
    with mock_engine(chunks=4, delay_ms=0) as engine:
        proc, url = serve(stage, venv, engine, tmp_path)
        try:
            wait_healthy(proc, url, tmp_path / "gateway.log")
            resp = chat_through(url)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"] == "tok " * 4
            assert engine.stats()["requests"] == 1  # answered by the engine, through the gateway
            # The console's templates and assets are in the installed package, not only here.
            login = httpx.get(url + "/console/login", timeout=30)
            assert login.status_code == 200 and "Sign in" in login.text, login.text[:2000]
            for asset in ("console.css", "console.js", "review.js", "training.js"):
                assert httpx.get(f"{url}/console/static/{asset}", timeout=30).status_code == 200
            log = (tmp_path / "gateway.log").read_text()
            assert children(proc.pid) == [], f"the image's gateway started workers:\n{log}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
