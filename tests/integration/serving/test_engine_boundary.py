"""The real embedded engine sits behind the gateway's own boundary: it serves on a Unix socket in
an owner-only folder (no TCP port another local process could take first), and its environment,
read back from /proc, holds its own key but none of the gateway's LOOPGATE_* secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.integration.conftest import ADMIN_KEY, Stack

pytestmark = pytest.mark.engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_engine_serves_on_a_private_socket(stack: Stack) -> None:
    sock = Path(str(stack.engine()["socket"]))
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert sock.parent == (stack.data_dir / "run").resolve()
    assert mode(sock.parent) == 0o700 and mode(stack.data_dir) == 0o700
    assert "vllm:" in stack.engine_metrics()  # the engine answers there


def test_the_engine_holds_no_gateway_secret(stack: Stack) -> None:
    pid = int(str(stack.engine()["pid"]))
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    names = {entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry}
    assert [name for name in names if name.startswith("LOOPGATE_")] == []
    assert ADMIN_KEY.encode() not in environ  # the gateway was started with it
    assert "VLLM_API_KEY" in names


def test_what_the_gateway_wrote_is_owner_only(stack: Stack) -> None:
    written = [p for p in stack.data_dir.rglob("*") if p.is_file() and p.name != "gateway.log"]
    assert written
    assert {str(p): oct(mode(p)) for p in written if mode(p) != 0o600} == {}
