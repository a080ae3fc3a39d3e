"""What the gateway writes is its user's alone: a 0700 data dir, 0600 files (the SQLite store and
its -wal/-shm among them), whatever the umask of the shell that started it."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from replicas.supervisor import free_port
from store.private_files import owner_only


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """The usual shell umask (022) for the test; the test process's own one back afterwards."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("shell_umask")
def test_everything_written_after_owner_only_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    owner_only(data)
    assert mode(data) == 0o700
    (data / "logs").mkdir()
    (data / "logs" / "engine.log").write_text("x")
    db = sqlite3.connect(data / "loopgate.db")
    db.execute("pragma journal_mode=wal")
    db.execute("create table t (x)")
    db.commit()
    try:
        assert mode(data / "logs") == 0o700
        assert mode(data / "logs" / "engine.log") == 0o600
        for name in ("loopgate.db", "loopgate.db-wal", "loopgate.db-shm"):
            assert mode(data / name) == 0o600, name
    finally:
        db.close()


@pytest.mark.usefixtures("shell_umask")
def test_a_data_dir_open_to_others_is_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    with caplog.at_level(logging.WARNING, logger="loopgate"):
        owner_only(data)
    assert mode(data) == 0o700
    assert "open to other users" in caplog.text


@pytest.mark.usefixtures("shell_umask")
def test_loopgate_serve_keeps_its_data_dir_private(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    env = {
        **os.environ,
        "LOOPGATE_DATA_DIR": str(data),
        "LOOPGATE_CACHE_DIR": str(tmp_path / "cache"),
        "LOOPGATE_PORT": str(port),
        "LOOPGATE_ENGINE_MODE": "external",
        "LOOPGATE_ENGINE_URLS": f"http://127.0.0.1:{free_port()}",  # nobody there: fine here
        "LOOPGATE_TRAINING_WORKER": "false",
        "LOOPGATE_ADMIN_KEY": "admin-secret",
    }
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/health", tmp_path / "gateway.log")
        assert mode(data) == 0o700
        assert mode(data / "loopgate.db") == 0o600
        written = [p for p in data.rglob("*") if p.is_file()]
        assert written and all(mode(p) == 0o600 for p in written), {
            str(p): oct(mode(p)) for p in written
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"gateway not healthy in time:\n{log.read_text()}")
