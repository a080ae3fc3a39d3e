"""An evals worker (`evals.worker`) for tests whose app has no worker process: the real claim →
answers → grading → statistics → report path, and the loop's steps, run in the app's event loop
against the app itself (its admin API through ASGI, with the admin key; the app's store URL)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
from litestar.testing import TestClient

from evals.gateway_client import GatewayClient
from evals.worker import EvalsWorker
from store import open_store
from store.settings import Settings


@contextlib.contextmanager
def evals_worker(
    client: TestClient,
    settings: Settings,
    poll_s: float = 0.02,  # type: ignore[type-arg]
) -> Iterator[EvalsWorker]:
    """Run queued eval runs and loops while the block runs."""
    portal = client.blocking_portal

    async def make() -> EvalsWorker:
        store = open_store(settings.store_url)
        await store.open()
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=client.app),
            base_url="http://gateway.test",
            headers={"Authorization": f"Bearer {settings.admin_key}"},
        )
        gateway = GatewayClient(http, retry_wait_s=poll_s)
        return EvalsWorker(settings, store, gateway, poll_s=poll_s, loop_poll_s=poll_s)

    async def close(worker: EvalsWorker) -> None:
        await worker.gateway.client.aclose()
        await worker.store.close()

    worker = portal.call(make)
    done = portal.start_task_soon(worker.run)
    try:
        yield worker
    finally:
        with contextlib.suppress(RuntimeError):  # the app (and its portal) already stopped
            portal.call(_stop, worker)
            done.result(timeout=30)
            portal.call(close, worker)


async def _stop(worker: EvalsWorker) -> None:
    worker.stop()
