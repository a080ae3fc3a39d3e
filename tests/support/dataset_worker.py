"""A training worker's dataset-build loop (`training.dataset_builds`) in a thread, for tests
whose app has no worker process: the real claim → build → save path, on the app's store."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from store import open_store
from store.settings import Settings
from training.dataset_builds import DatasetBuilder, build_env


@contextmanager
def dataset_worker(settings: Settings, poll_s: float = 0.05) -> Iterator[None]:
    """Build queued datasets while the block runs, against `settings.store_url`."""
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    ready = threading.Event()
    failed: list[BaseException] = []

    async def serve() -> None:
        store = open_store(settings.store_url)
        await store.open()
        ready.set()
        try:
            await DatasetBuilder(store, build_env(settings, "test-worker")).serve(stopping, poll_s)
        finally:
            await store.close()

    def main() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surfaced when the block ends
            failed.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="dataset-worker", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # the loop already closed: it failed
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=30)
        if failed:
            raise failed[0]
