"""The gateway's background children (the training worker, the evals worker).

They start at a lower CPU priority than the gateway (`worker_nice`, a Unix nice increment): when
they and serving want the same cores, requests and the engines come first. A fresh evals worker
spends ~2.5 s of CPU importing its libraries; sharing the gateway's core at the gateway's
priority, it held a fresh gateway to 470-650 requests/s for its first ~3.5 s, against 1,530-1,900
after (2-core host, concurrency 4). A fine-tuning job's CPU work yields the same way. Where
nothing else wants the CPU, priority changes nothing: a lone job runs as fast as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping

from replicas.child_env import child_env
from store.settings import Settings, to_env

log = logging.getLogger("loopgate.background")

MAX_NICE = 19  # Unix's lowest priority


class BackgroundProcess:
    """One child `python -m <module>`, in a session of its own (a terminal's ^C reaches only
    the gateway, which stops it), `nice` steps below the gateway's priority."""

    def __init__(
        self, name: str, module: str, env: dict[str, str], *, nice: int, stop_timeout_s: float
    ):
        self.name, self.module, self.env = name, module, env
        self.nice, self.stop_timeout_s = nice, stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, start_new_session=True
        )
        if self.nice > 0:  # right after its exec, while Python starts; later threads inherit it
            try:
                mine = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, min(mine + self.nice, MAX_NICE))
            except OSError as exc:  # it exited already (it logs why) or the OS refused
                log.warning("could not lower the %s's CPU priority: %s", self.name, exc)
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    async def stop(self) -> None:
        """SIGTERM (the worker finishes or hands back its work), then SIGKILL after
        `stop_timeout_s`."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), self.stop_timeout_s)
        except TimeoutError:
            log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait)


def worker_env(
    settings: Settings, environ: Mapping[str, str], omit: tuple[str, ...]
) -> dict[str, str]:
    """An embedded worker's environment: the allowlisted part of `environ`
    (replicas.child_env) and its settings, passed explicitly, less the secrets in `omit`."""
    return child_env(
        environ, **to_env(settings, omit=omit), LOOPGATE_WORKER_PARENT=str(os.getpid())
    )


def embedded_worker(
    settings: Settings, name: str, module: str, omit: tuple[str, ...], *, stop_timeout_s: float
) -> BackgroundProcess:
    """A worker child of this gateway, with its settings (less `omit`) and its priority."""
    env = worker_env(settings, os.environ, omit)
    return BackgroundProcess(
        name, module, env, nice=settings.worker_nice, stop_timeout_s=stop_timeout_s
    )
