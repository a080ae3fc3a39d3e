"""Owns the throwaway PostgreSQL server for tests: installed if missing, started, torn down."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("loopgate.tests.postgres")

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be installed or started: the tests that need it must fail."""


@dataclass
class PostgresServer:
    """A running throwaway cluster: trust auth for `postgres` on 127.0.0.1 only."""

    bin_dir: Path
    root: Path
    port: int
    started_in_s: float
    installed_in_s: float  # 0.0 when PostgreSQL was already on the machine

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A fresh, empty database with a random name; returns its URL."""
        name = f"t_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries under /usr/lib/postgresql, if any."""
    found = [
        Path(d)
        for d in glob.glob(BIN_GLOB)
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()
    ]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


def ensure_installed() -> tuple[Path, float]:
    """The server's bin dir, installing Debian's `postgresql` first when it is missing."""
    bin_dir = find_bin_dir()
    if bin_dir is not None:
        return bin_dir, 0.0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            f"no PostgreSQL server under {BIN_GLOB}, and it cannot be installed here "
            "(needs root and apt-get): install Debian's `postgresql` package"
        )
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["apt-get", *args]
        log.warning("PostgreSQL is not installed: %s", shlex.join(argv))
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=900, check=False
        )

    install = ("install", "-y", "-q", "--no-install-recommends", "postgresql")
    result = apt(*install)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        apt("update", "-q")
        result = apt(*install)
    bin_dir = find_bin_dir()
    if result.returncode != 0 or bin_dir is None:
        raise PostgresUnavailable(
            f"installing PostgreSQL failed (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return bin_dir, time.monotonic() - started


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Runner:
    """Runs the server's tools as the `postgres` user when we are root (it refuses root)."""

    def __init__(self, bin_dir: Path, root: Path):
        self.bin_dir = bin_dir
        self.root = root
        self.as_root = os.geteuid() == 0

    def __call__(self, tool: str, *args: str, timeout: float = 120) -> None:
        argv = [str(self.bin_dir / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        result = subprocess.run(
            argv, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{shlex.join(argv)} failed (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n{self.server_log()}"
            )

    def server_log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _make_root() -> Path:
    if os.geteuid() != 0:
        return Path(tempfile.mkdtemp(prefix="loopgate-pg-"))
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            f"there is no '{SUPERUSER}' system user to run the server as "
            "(Debian's postgresql package creates it)"
        ) from None
    # Under /tmp, not $TMPDIR: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="loopgate-pg-", dir="/tmp"))
    os.chown(root, user.pw_uid, user.pw_gid)
    return root


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster on a free 127.0.0.1 port for the duration of the block."""
    bin_dir, installed_in_s = ensure_installed()
    started = time.monotonic()
    root = _make_root()
    run = _Runner(bin_dir, root)
    running = False
    try:
        init = ["-D", str(root / "data"), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8"]
        # A real locale (ICU en-US), as production servers have: the store must not depend
        # on the database's collation. Plain C.UTF-8 where this build has no ICU.
        try:
            run("initdb", *init, "--locale-provider=icu", "--icu-locale=en-US", "--locale=C.UTF-8")
        except PostgresUnavailable:
            shutil.rmtree(root / "data", ignore_errors=True)
            run("initdb", *init, "--locale=C.UTF-8")
        for attempt in range(3):
            port = _free_port()
            options = (
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                run(
                    "pg_ctl", "start", "-D", str(root / "data"), "-l", str(root / "server.log"),
                    "-w", "-t", "60", "-o", options,
                )  # fmt: skip
            except PostgresUnavailable:
                if attempt == 2:
                    raise
                continue  # most likely someone took the port meanwhile
            running = True
            break
        _wait_ready(bin_dir, port, run)
        server = PostgresServer(bin_dir, root, port, time.monotonic() - started, installed_in_s)
        log.info("PostgreSQL at %s (started in %.1fs)", server.url(), server.started_in_s)
        yield server
    finally:
        if running:
            with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                run("pg_ctl", "stop", "-D", str(root / "data"), "-m", "fast", "-w", timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(bin_dir: Path, port: int, run: _Runner, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    argv = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    while time.monotonic() < deadline:
        if subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise PostgresUnavailable(
        f"PostgreSQL on port {port} never accepted connections\n{run.server_log()}"
    )


if __name__ == "__main__":  # a server to point a gateway at by hand: LOOPGATE_DATABASE_URL=...
    logging.basicConfig(level=logging.INFO)
    with postgres_server() as pg:
        print(pg.url(), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
