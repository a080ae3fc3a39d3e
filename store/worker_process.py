"""What every worker process does around its work: settings from the environment, logging to
stderr, the store opened and closed, and SIGTERM/SIGINT asking the worker to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Protocol

from store import Store, open_store
from store.settings import Settings


class Worker(Protocol):
    def stop(self) -> None: ...
    async def run(self) -> None: ...


async def run_worker(settings: Settings, make: Callable[[Store], Worker]) -> None:
    """Open the store, run the worker `make` builds on it until it returns, close the store."""
    store = open_store(settings.store_url)
    await store.open()
    worker = make(store)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await store.close()


def main(serve: Callable[[Settings], Coroutine[object, object, int]]) -> int:
    """A worker process's entry point: `serve` with the settings of the environment."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(serve(settings))
