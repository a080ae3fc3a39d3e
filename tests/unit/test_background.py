"""The gateway's background children start below its CPU priority (gateway.background)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gateway.background import MAX_NICE, BackgroundProcess
from gateway.evaluations import evals_worker_process
from gateway.finetuning import training_worker_process
from store.settings import ConfigError, Settings

SLEEPER = "tests.support.sleeper"  # a module that sleeps until SIGTERM


def child_env(ready: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "SLEEPER_READY": str(ready),
    }


async def until_ready(ready: Path) -> None:
    async with asyncio.timeout(60):
        while not ready.exists():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("nice", [0, 7, 40])
async def test_a_background_child_runs_nice_steps_below_the_gateway(
    nice: int, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    child = BackgroundProcess("sleeper", SLEEPER, child_env(ready), nice=nice, stop_timeout_s=10)
    child.start()
    assert child.proc is not None
    try:
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        theirs = os.getpriority(os.PRIO_PROCESS, child.proc.pid)
        assert theirs == min(mine + nice, MAX_NICE)
        await until_ready(ready)
    finally:
        await child.stop()
    assert child.proc.returncode == 0  # SIGTERM ended it the way its handler says


async def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    env = child_env(tmp_path / "ready") | {"SLEEPER_IGNORE_TERM": "1"}
    child = BackgroundProcess("stubborn", SLEEPER, env, nice=0, stop_timeout_s=0.5)
    child.start()
    assert child.proc is not None
    await until_ready(tmp_path / "ready")
    await child.stop()
    assert child.proc.returncode == -9


def test_the_embedded_workers_take_the_setting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_nice=12, admin_key="lg-admin-test")
    evals, training = evals_worker_process(settings), training_worker_process(settings)
    assert evals is not None
    assert (evals.nice, training.nice) == (12, 12)
    assert (evals.module, training.module) == ("evals.worker", "training.worker")
    assert Settings(data_dir=tmp_path).worker_nice == 10
    with pytest.raises(ConfigError, match="LOOPGATE_WORKER_NICE"):
        Settings(data_dir=tmp_path, worker_nice=20)


def test_no_evals_worker_without_the_admin_api(tmp_path: Path) -> None:
    """It works through the admin API; without an admin key that API is off."""
    assert evals_worker_process(Settings(data_dir=tmp_path, admin_key="")) is None
    assert training_worker_process(Settings(data_dir=tmp_path, admin_key="")) is not None
