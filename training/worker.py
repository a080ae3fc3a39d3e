"""The training worker process: claims queued jobs from the store and runs them, one at a time,
and beside them queued dataset builds (`training.dataset_builds`), so a build never waits for a
job to finish training.

Started beside the gateway (`LOOPGATE_TRAINING_WORKER=true`, the default) or on its own on a
GPU host (`loopgate worker`), pointed at the same store and shared training folder. One worker
per device and host holds a lock file, so a second one started for the same device exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from replicas.base_model import resolve_model
from replicas.supervisor import served_dtype
from store import Store, worker_process
from store.settings import Settings
from store.worker_process import run_worker
from training.dataset_builds import DatasetBuilder, build_env
from training.job_runner import JobRunner, WorkerEnv

log = logging.getLogger("loopgate.worker")
POLL_S = 1.0


@contextlib.contextmanager
def device_lock(folder: Path, device: str) -> Iterator[bool]:
    """Hold `worker-<host>-<device>.lock`; yields False when another worker holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"worker-{socket.gethostname()}-{device}.lock"
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield True


def worker_env(settings: Settings) -> WorkerEnv:
    threads = settings.training_torch_threads or None
    return WorkerEnv(
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
        base_dir=Path(resolve_model(settings, prepare=False)),
        base_name=settings.base_model_name,
        max_rank=settings.engine_max_lora_rank,
        jobs_dir=settings.training_path / "jobs",
        device=settings.training_device,
        torch_threads=threads,
        heartbeat_s=settings.job_heartbeat_s,
        compute_dtype=settings.training_dtype,
        serving_dtype=served_dtype(settings),
    )


class Worker:
    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.runner = JobRunner(store, worker_env(settings))
        self.builder = DatasetBuilder(store, build_env(settings, self.runner.env.worker_id))
        self.stopping = asyncio.Event()
        self.parent = os.getppid()

    def stop(self) -> None:
        self.stopping.set()
        self.runner.shutdown()

    async def run(self) -> None:
        log.info(
            "worker %s ready (device %s)", self.runner.env.worker_id, self.settings.training_device
        )
        builds = asyncio.create_task(self.builder.serve(self.stopping))
        try:
            await self._jobs()
        finally:
            self.stopping.set()
            await builds

    async def _jobs(self) -> None:
        while not self.stopping.is_set():
            await self._requeue_stale()
            job = await self.store.claim_job(self.runner.env.worker_id)
            if job is not None:
                log.info("running job %s for tenant %s", job.id, job.tenant_id)
                await self.runner.run(job)
                continue
            if self._orphaned():
                log.info("the gateway that started this worker is gone; exiting")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), POLL_S)

    async def _requeue_stale(self) -> None:
        """Jobs whose worker went silent: queued again, or failed past the requeue limit."""
        before = time.time() - self.settings.job_stale_after_s
        limit = self.settings.job_max_requeues
        for job_id, status in await self.store.requeue_stale(before, limit):
            log.warning("job %s lost its worker; now %s", job_id, status)
            failed = status == "failed"
            await self.store.add_job_event(
                job_id,
                "error" if failed else "warn",
                f"the worker running this job went silent; job {status}"
                + (f" (too_many_attempts: queued again {limit} times already)" if failed else ""),
            )

    def _orphaned(self) -> bool:
        """Started by a gateway (not by a user) whose process has died."""
        return os.environ.get("LOOPGATE_WORKER_PARENT") == str(self.parent) and (
            os.getppid() != self.parent
        )


async def serve(settings: Settings) -> int:
    with device_lock(settings.training_path, settings.training_device) as held:
        if not held:
            log.info(
                "another worker already serves %s on this host; exiting", settings.training_device
            )
            return 0
        await run_worker(settings, lambda store: Worker(settings, store))
    return 0


def main(argv: list[str] | None = None) -> int:
    del argv
    return worker_process.main(serve)


if __name__ == "__main__":
    sys.exit(main())
