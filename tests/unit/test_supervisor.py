"""The supervisor against a real stand-in process: ready, restart after death, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest

from replicas.pool import make_client
from replicas.supervisor import EngineLaunch, EngineState, EngineSupervisor, build_launch, free_port
from store.settings import ConfigError, Settings

STUB = Path(__file__).with_name("engine_stub.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_start_restart_and_stop_leave_no_processes(tmp_path: Path) -> None:
    port = free_port()
    grandchild_file = tmp_path / "grandchild.pid"
    launch = EngineLaunch(
        [sys.executable, str(STUB), str(port), str(grandchild_file)],
        dict(os.environ),
        f"http://127.0.0.1:{port}",
        "k",
        tmp_path / "engine.log",
    )
    states: list[EngineState] = []
    sup = EngineSupervisor(launch, start_timeout_s=30, max_backoff_s=1, on_state=states.append)
    await sup.start()
    await sup.wait_ready()
    first_pid = sup.pid
    assert first_pid is not None and alive(first_pid)
    await wait_for(grandchild_file.exists)
    first_grandchild = int(grandchild_file.read_text())

    os.kill(first_pid, signal.SIGKILL)  # the engine dies
    await wait_for(lambda: sup.state is EngineState.BACKOFF)
    await wait_for(lambda: not alive(first_grandchild), timeout=5)  # its whole group went too
    await sup.wait_ready(timeout_s=30)
    assert sup.restarts == 1 and sup.pid != first_pid
    await wait_for(
        lambda: grandchild_file.exists() and int(grandchild_file.read_text()) != first_grandchild
    )
    second_pid, second_grandchild = sup.pid, int(grandchild_file.read_text())

    await sup.stop()
    assert sup.state is EngineState.STOPPED
    assert second_pid is not None and not alive(second_pid)
    await wait_for(lambda: not alive(second_grandchild), timeout=5)
    assert states[:2] == [EngineState.STARTING, EngineState.READY]
    assert EngineState.BACKOFF in states


async def test_engine_that_never_gets_ready_is_retried(tmp_path: Path) -> None:
    launch = EngineLaunch(
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        dict(os.environ),
        f"http://127.0.0.1:{free_port()}",
        "k",
        tmp_path / "engine.log",
    )
    sup = EngineSupervisor(launch, start_timeout_s=5, max_backoff_s=0.5)
    await sup.start()
    await wait_for(lambda: sup.restarts >= 2)
    await sup.stop()
    assert sup.state is EngineState.STOPPED


def test_launch_is_loopback_with_a_secret_key_out_of_argv(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, engine_device="cpu", engine_extra_args=("--seed", "1"))
    launch = build_launch(settings, "/models/x", port=12345)
    argv = launch.argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--enable-lora" in argv and argv[-2:] == ["--seed", "1"]
    assert launch.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert len(launch.api_key) >= 32 and launch.api_key not in " ".join(argv)
    assert launch.env["VLLM_API_KEY"] == launch.api_key
    assert build_launch(settings, "/m").api_key != launch.api_key


def test_engine_serves_on_a_unix_socket_in_the_data_dir(tmp_path: Path) -> None:
    launch = build_launch(Settings(data_dir=tmp_path, engine_device="cpu"), "/models/x")
    sock = tmp_path.resolve() / "run" / "engine.sock"
    assert launch.socket == sock
    assert launch.argv[launch.argv.index("--uds") + 1] == str(sock)
    assert "--port" not in launch.argv and "--host" not in launch.argv
    # A configured port asks for TCP on loopback instead.
    tcp = build_launch(Settings(data_dir=tmp_path, engine_port=8123), "/models/x")
    assert tcp.socket is None and tcp.url == "http://127.0.0.1:8123"
    assert tcp.argv[tcp.argv.index("--port") + 1] == "8123"


def test_a_data_dir_too_deep_for_a_socket_is_a_config_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ConfigError, match="LOOPGATE_ENGINE_PORT"):
        build_launch(Settings(data_dir=deep, engine_device="cpu"), "/models/x")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_the_gateway_reaches_the_engine_over_its_private_socket(
    tmp_path: Path, transport: str
) -> None:
    launch = build_launch(Settings(data_dir=tmp_path, engine_device="cpu"), "/models/x")
    assert launch.socket is not None
    # What a killed engine leaves behind: a socket file nobody listens on (vLLM cannot bind it).
    launch.socket.parent.mkdir(mode=0o755)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(launch.socket))
    stub = EngineLaunch(
        [sys.executable, str(STUB), str(launch.socket), str(tmp_path / "grandchild.pid")],
        dict(os.environ),
        launch.url,
        "k",
        tmp_path / "engine.log",
        tmp_path / "run" / "engine.json",
        socket=launch.socket,
    )
    sup = EngineSupervisor(stub, start_timeout_s=30, max_backoff_s=1)
    await sup.start()
    try:
        await sup.wait_ready()
        assert sup.restarts == 0
        assert stat.S_IMODE(launch.socket.parent.stat().st_mode) == 0o700  # only we get in
        state = json.loads((tmp_path / "run" / "engine.json").read_text())
        assert state["socket"] == str(launch.socket)
        async with make_client(5, 5, transport, uds=str(launch.socket)) as client:
            assert (await client.get(launch.url + "/health")).status_code == 200
    finally:
        await sup.stop()


def test_the_engine_renders_chats_as_the_trainer_does_and_parses_tool_calls(
    tmp_path: Path,
) -> None:
    from replicas.chat_template import BUNDLED_TEMPLATE

    def flags(**kw: object) -> list[str]:
        settings = Settings(data_dir=tmp_path, engine_device="cpu", **kw)  # type: ignore[arg-type]
        return build_launch(settings, "/models/smollm2", port=free_port()).argv

    default = flags()
    assert default[default.index("--chat-template") + 1] == str(BUNDLED_TEMPLATE)
    assert BUNDLED_TEMPLATE.is_file()
    assert default[default.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in default
    own = flags(engine_chat_template="model", engine_tool_parser="")
    assert "--chat-template" not in own and "--enable-auto-tool-choice" not in own
    other = flags(base_model=str(tmp_path / "another-model"), engine_tool_parser="llama3_json")
    assert "--chat-template" not in other  # another base keeps its own template
    assert other[other.index("--tool-call-parser") + 1] == "llama3_json"
    chosen = flags(engine_chat_template=str(tmp_path / "mine.jinja"))
    assert chosen[chosen.index("--chat-template") + 1] == str(tmp_path / "mine.jinja")


def test_a_cpu_engine_caches_prefixes_in_32_token_blocks(tmp_path: Path) -> None:
    """vLLM-CPU's own 128-token blocks cache no prompt prefix shorter than 128 tokens."""

    def block_size(**kw: object) -> str | None:
        settings = Settings(data_dir=tmp_path, **kw)  # type: ignore[arg-type]
        argv = build_launch(settings, "/models/x", port=free_port()).argv
        sizes = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--block-size"]
        return sizes[-1] if sizes else None  # vLLM's parser keeps the last one given

    assert block_size(engine_device="cpu") == "32"
    assert block_size(engine_device="cpu", engine_cpu_block_size=128) == "128"
    assert block_size(engine_device="cpu", engine_cpu_block_size=0) is None  # vLLM's default
    assert block_size(engine_device="cuda") is None  # a GPU keeps vLLM's 16
    extra = ("--block-size", "64")
    assert block_size(engine_device="cpu", engine_extra_args=extra) == "64"  # extra args win
