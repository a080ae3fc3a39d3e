"""The embedded engine: one vLLM child process, started, watched, restarted and stopped.

vLLM listens on a Unix socket, `<data_dir>/run/engine.sock`, in a folder only the gateway's user
can enter (0700), and wants a random API key only the gateway knows: no other local user can
reach the engine (or its runtime-LoRA routes), and none can stand in for it. A TCP port would
not give that: the port had to be picked free, released and then bound by vLLM tens of seconds
later (the import takes that long), and any local process that bound it in between would have
received the gateway's engine key and every tenant's prompts. LOOPGATE_ENGINE_PORT still asks
for TCP on 127.0.0.1 (the port is then the operator's to keep free).

The child's environment is an allowlist (`replicas.child_env`): vLLM's, torch's, CUDA's and the
locale's variables, never the admin key, the store URL or other secrets of the gateway's own
environment. It runs in its own process group, which is what gets signalled on stop, so vLLM's
own engine-core processes go with it; on Linux the child also receives SIGTERM if the gateway
dies without cleaning up (PR_SET_PDEATHSIG), so no engine outlives its gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from replicas.chat_template import template_for
from replicas.child_env import child_env
from store.numerics import choose_cpu_dtype, describe_cpu
from store.private_files import private_dir
from store.settings import ConfigError, Settings

log = logging.getLogger("loopgate.engine")

PR_SET_PDEATHSIG = 1
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one a NUL
SOCKET_URL = "http://engine"  # over the socket, the host only names the engine in Host headers


class EngineState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"  # died; waiting before the next start


@dataclass(frozen=True)
class EngineLaunch:
    """Everything needed to start the child: pure data, built from Settings."""

    argv: list[str]
    env: dict[str, str]
    url: str
    api_key: str
    log_path: Path
    state_path: Path | None = None  # {"pid", "url", "socket", "dtype"} of the child, for operators
    dtype: str = "auto"  # the --dtype it was given
    socket: Path | None = None  # the Unix socket it serves on; None: TCP at `url`

    @property
    def address(self) -> str:
        """Where the engine listens, for people: `unix:<path>` or the URL."""
        return f"unix:{self.socket}" if self.socket is not None else self.url


def detect_device(setting: str) -> str:
    if setting != "auto":
        return setting
    # CUDA build of vLLM on a GPU host; the CPU build everywhere else.
    has_gpu = shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()
    return "cuda" if has_gpu else "cpu"


def engine_dtype(settings: Settings, device: str) -> str:
    """vLLM's --dtype: the setting when it names one; on CPU (auto) bf16 only where the CPU
    computes it natively (`store.numerics`); on CUDA (auto) vLLM's own choice for the GPU."""
    if device == "cpu":
        return choose_cpu_dtype(settings.engine_dtype)
    return settings.engine_dtype


def served_dtype(settings: Settings) -> str:
    """The dtype the engine computes in, named (CUDA's 'auto' is the bundled model's bf16): what
    the parity reference and the NF4-rounded base are made in, to match what is served."""
    dtype = engine_dtype(settings, detect_device(settings.engine_device))
    return "bfloat16" if dtype == "auto" else dtype


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def engine_socket(settings: Settings) -> Path | None:
    """The embedded engine's Unix socket; None when LOOPGATE_ENGINE_PORT asks for TCP."""
    if settings.engine_port:
        return None
    path = settings.data_dir.resolve() / "run" / "engine.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"the engine's socket path {path} is longer than a Unix socket allows "
            f"({MAX_SOCKET_PATH} bytes): use a shorter LOOPGATE_DATA_DIR, or set "
            "LOOPGATE_ENGINE_PORT to serve the engine on 127.0.0.1 instead"
        )
    return path


def listen_args(settings: Settings, port: int | None) -> tuple[list[str], str, Path | None]:
    """vLLM's listen arguments, the URL the gateway sends to, and the socket (if any).

    Over the socket the URL's host is only the Host header: the transport dials the socket."""
    sock = None if port else engine_socket(settings)
    if sock is not None:
        return ["--uds", str(sock)], SOCKET_URL, sock
    port = port or settings.engine_port
    return ["--host", "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}", None


def build_launch(settings: Settings, model: str, *, port: int | None = None) -> EngineLaunch:
    """The embedded engine's launch: on its Unix socket, or on 127.0.0.1:`port` when one is
    given (here or as LOOPGATE_ENGINE_PORT; tests and benchmarks run replicas that way)."""
    device = detect_device(settings.engine_device)
    listen, url, sock = listen_args(settings, port)
    api_key = secrets.token_urlsafe(32)
    dtype = engine_dtype(settings, device)
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        settings.base_model_name,
        *listen,
        "--enable-lora",
        "--max-loras",
        str(settings.engine_max_loras),
        "--max-lora-rank",
        str(settings.engine_max_lora_rank),
        "--max-model-len",
        str(settings.engine_max_model_len),
        "--dtype",
        dtype,
        "--scheduling-policy",
        settings.engine_scheduling_policy,
        *block_size_args(settings, device),
        "--disable-uvicorn-access-log",
        *chat_args(settings, model),
        *settings.engine_extra_args,
    ]
    env = child_env(
        os.environ,
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
        HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        # The key travels by environment, not argv, so `ps` does not show it.
        VLLM_API_KEY=api_key,
    )
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.engine_cpu_kvcache_gb)
    log_path = settings.data_dir / "logs" / "engine.log"
    state_path = settings.data_dir / "run" / "engine.json"
    return EngineLaunch(argv, env, url, api_key, log_path, state_path, dtype, sock)


def block_size_args(settings: Settings, device: str) -> list[str]:
    """A CPU engine's KV-cache block size (`engine_cpu_block_size`): also the step at which
    prompt prefixes are cached. GPU engines keep vLLM's own (16 for most models)."""
    if device != "cpu" or not settings.engine_cpu_block_size:
        return []
    return ["--block-size", str(settings.engine_cpu_block_size)]


def chat_args(settings: Settings, model: str) -> list[str]:
    """The chat template the engine renders with (`replicas.chat_template`: the trainer uses the
    same) and the tool-call parser behind `tool_choice: "auto"`."""
    args: list[str] = []
    template = template_for(settings, Path(model))
    if template is not None:
        args += ["--chat-template", str(template)]
    if settings.engine_tool_parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", settings.engine_tool_parser]
    return args


def _die_with_parent() -> None:
    """Runs in the child before exec: new process group, SIGTERM when the parent dies."""
    os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineSupervisor:
    """Keeps one vLLM child alive: start, wait ready, restart with backoff, stop cleanly."""

    def __init__(
        self,
        launch: EngineLaunch,
        *,
        start_timeout_s: float,
        max_backoff_s: float,
        on_state: Callable[[EngineState], None] | None = None,
    ):
        self.launch = launch
        self.start_timeout_s = start_timeout_s
        self.max_backoff_s = max_backoff_s
        self.state = EngineState.STOPPED
        self.restarts = 0
        self._on_state = on_state
        self._proc: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _set(self, state: EngineState) -> None:
        self.state = state
        if state is EngineState.READY:
            self._ready.set()
        else:
            self._ready.clear()
        if self._on_state:
            self._on_state(state)

    async def start(self) -> None:
        """Start the watch loop; returns at once (use wait_ready to block)."""
        self._stopping = False
        self._task = asyncio.create_task(self._watch(), name="engine-supervisor")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s or self.start_timeout_s)

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            self._spawn()
            try:
                await self._await_ready()
            except (TimeoutError, EngineExited) as exc:
                log.error("engine did not become ready: %s (log: %s)", exc, self.launch.log_path)
            else:
                self._set(EngineState.READY)
                log.info(
                    "engine ready at %s after %.0f s",
                    self.launch.address,
                    time.monotonic() - started,
                )
                await self._wait_exit()
            if self._stopping:
                break
            await asyncio.to_thread(self._kill_group)
            self.restarts += 1
            # A run that stayed up for a while resets the backoff; a crash loop doubles it.
            backoff = (
                1.0 if time.monotonic() - started > 120 else min(backoff * 2, self.max_backoff_s)
            )
            self._set(EngineState.BACKOFF)
            log.warning("engine exited; restart %d in %.0f s", self.restarts, backoff)
            await asyncio.sleep(backoff)

    def _spawn(self) -> None:
        self.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.launch.socket is not None:
            private_dir(self.launch.socket.parent)
            # A dead engine leaves its socket file behind, and vLLM cannot bind over it.
            self.launch.socket.unlink(missing_ok=True)
        log_file = self.launch.log_path.open("ab")
        log.info(
            "starting vLLM engine on %s, --dtype %s on %s (log: %s)",
            self.launch.address,
            self.launch.dtype,
            describe_cpu(),
            self.launch.log_path,
        )
        self._set(EngineState.STARTING)
        self._proc = subprocess.Popen(
            self.launch.argv,
            env=self.launch.env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - needed for the process group/pdeathsig
        )
        log_file.close()
        if self.launch.state_path is not None:
            private_dir(self.launch.state_path.parent)
            state = {
                "pid": self._proc.pid,
                "url": self.launch.url,
                "socket": str(self.launch.socket) if self.launch.socket else None,
                "dtype": self.launch.dtype,
            }
            self.launch.state_path.write_text(json.dumps(state))

    async def _await_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last_note = time.monotonic()
        sock = str(self.launch.socket) if self.launch.socket else None
        transport = httpx.AsyncHTTPTransport(uds=sock)
        async with httpx.AsyncClient(transport=transport, timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    raise EngineExited(f"exit code {self._proc.returncode if self._proc else '?'}")
                with contextlib.suppress(httpx.HTTPError):
                    resp = await client.get(self.launch.url + "/health")
                    if resp.status_code == 200:
                        return
                if time.monotonic() - last_note > 15:
                    last_note = time.monotonic()
                    waited = self.start_timeout_s - (deadline - time.monotonic())
                    log.info("waiting for the engine to load the model... %.0f s", waited)
                await asyncio.sleep(0.5)
        raise TimeoutError(f"not ready within {self.start_timeout_s:.0f} s")

    async def _wait_exit(self) -> None:
        """Return as soon as the child exits: a pidfd wakes the loop at once (Linux >= 5.3),
        so requests stop being routed to a dead engine within milliseconds."""
        proc = self._proc
        if proc is None:
            return
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            fd = None
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        if fd is not None:
            loop.add_reader(fd, exited.set)
        try:
            while proc.poll() is None and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(exited.wait(), 0.5)  # the poll is the fallback
        finally:
            if fd is not None:
                loop.remove_reader(fd)
                os.close(fd)

    def _kill_group(self, grace_s: float = 15.0) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("engine ignored SIGTERM for %.0f s; killing", grace_s)
        # Whatever is left in the group (engine-core workers) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._kill_group)
        self._set(EngineState.STOPPED)
        log.info("engine stopped")


class EngineExited(RuntimeError):
    pass
