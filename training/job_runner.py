"""Runs one claimed fine-tuning job on this worker: dataset → QLoRA → preflight → peft outputs.

The job's state lives in the store. Training runs in a thread (torch releases the GIL); the
event loop beats the job's heartbeat, which also tells the worker when the job was cancelled.
A trained job is left in stage `registering`: the gateway, which owns the engines, checks
parity on vLLM and registers the adapter (`gateway.finetuning`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import msgspec
import torch

from store import FineTuningJob, JobChanges, Store
from store.numerics import DtypeSetting
from training.dataset import read_split
from training.parity import PARITY_PROMPTS, peft_reference
from training.trainer import (
    Progress,
    TrainingCancelled,
    TrainingError,
    compute_dtype,
    describe_hardware,
    preflight,
    resolve_device,
    train,
)
from training.trainer_config import Device, TrainConfig

log = logging.getLogger("loopgate.worker")
StopReason = Literal["cancel", "shutdown", "lost"]


@dataclass(frozen=True)
class WorkerEnv:
    """What a worker needs to run jobs (from Settings, never from the job's submitter)."""

    worker_id: str
    base_dir: Path
    base_name: str
    max_rank: int
    jobs_dir: Path
    device: Device
    torch_threads: int | None
    heartbeat_s: float
    compute_dtype: DtypeSetting = "auto"  # for jobs that leave it at "auto"
    serving_dtype: str = "float32"  # what the engine serves in: the parity reference's dtype


def job_dir(jobs_dir: Path, job_id: str) -> Path:
    return jobs_dir / job_id


def train_config(job: FineTuningJob, env: WorkerEnv) -> TrainConfig:
    """The job's resolved hyperparameters, with the device and threads this worker decides."""
    config = msgspec.json.decode(job.hyperparameters, type=TrainConfig)
    dtype = env.compute_dtype if config.compute_dtype == "auto" else config.compute_dtype
    return replace(
        config,
        device=env.device,
        torch_threads=env.torch_threads,
        seed=job.seed,
        compute_dtype=dtype,
    )


class _Stop:
    """The training thread polls this; the event loop sets it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: StopReason | None = None

    def set(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()


class JobRunner:
    def __init__(self, store: Store, env: WorkerEnv):
        self.store = store
        self.env = env
        self.current: _Stop | None = None

    def shutdown(self) -> None:
        """Stop the running job at its next step; it goes back to the queue."""
        if self.current is not None:
            self.current.set("shutdown")

    async def run(self, job: FineTuningJob) -> None:
        stop = _Stop()
        self.current = stop
        beat = asyncio.create_task(self._heartbeat(job, stop))
        try:
            await self._run(job, stop)
        except Exception as exc:  # anything unexpected fails the job, with a clean message
            log.exception("job %s failed", job.id)
            await self._fail(job, "internal_error", f"training failed unexpectedly: {exc}")
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self.current = None

    async def _heartbeat(self, job: FineTuningJob, stop: _Stop) -> None:
        while True:
            await asyncio.sleep(self.env.heartbeat_s)
            try:
                flag = await self.store.heartbeat_job(job.id, self.env.worker_id)
            except Exception:  # the store may be briefly unavailable; the next beat retries
                log.warning("heartbeat for %s failed", job.id, exc_info=True)
                continue
            if flag is None:
                stop.set("lost")  # requeued by someone after a long silence: stop, quietly
            elif flag:
                stop.set("cancel")

    async def _event(
        self, job: FineTuningJob, message: str, data: dict[str, float | int | str] | None = None
    ) -> None:
        await self.store.add_job_event(job.id, "info", message, data)

    async def _run(self, job: FineTuningJob, stop: _Stop) -> None:
        env = self.env
        dataset = (
            await self.store.get_dataset(job.tenant_id, job.dataset_id) if job.dataset_id else None
        )
        if dataset is None:
            await self._fail(job, "invalid_training_file", "the job's dataset no longer exists")
            return
        folder = Path(dataset.path)
        train_rows = await asyncio.to_thread(read_split, folder, "train")
        eval_rows = await asyncio.to_thread(read_split, folder, "eval")
        config = train_config(job, env)
        out = job_dir(env.jobs_dir, job.id) / "adapter"
        await asyncio.to_thread(shutil.rmtree, out, True)  # an earlier, interrupted attempt
        device = resolve_device(config.device)
        dtype = str(compute_dtype(device, config.compute_dtype)).removeprefix("torch.")
        hardware = describe_hardware(device)
        await self._event(
            job,
            f"training started (attempt {job.attempts}): {len(train_rows)} train / "
            f"{len(eval_rows)} eval examples, device {device}, compute {dtype} on {hardware}",
            {
                "train_examples": len(train_rows),
                "eval_examples": len(eval_rows),
                "device": device,
                "compute_dtype": dtype,
                "hardware": hardware,
            },
        )
        loop = asyncio.get_running_loop()

        def on_progress(p: Progress) -> None:
            asyncio.run_coroutine_threadsafe(self._progress(job, p), loop)

        try:
            result = await asyncio.to_thread(
                train,
                env.base_dir,
                train_rows,
                eval_rows,
                out,
                config,
                on_progress=on_progress,
                should_stop=stop.event.is_set,
            )
        except TrainingCancelled:
            await self._stopped(job, stop.reason or "cancel")
            return
        except (TrainingError, ValueError) as exc:
            await self._fail(job, "training_failed", str(exc))
            return
        await self._finish_training(job, out, result_json(result), result.train_tokens)

    async def _progress(self, job: FineTuningJob, p: Progress) -> None:
        parts = [f"step {p.step}/{p.total_steps}", f"epoch {p.epoch:.2f}"]
        data: dict[str, float | int | str] = {
            "step": p.step,
            "total_steps": p.total_steps,
            "epoch": round(p.epoch, 3),
            "tokens_per_s": round(p.tokens_per_s, 1),
            "elapsed_s": round(p.elapsed_s, 1),
        }
        if p.loss is not None:
            parts.append(f"train loss {p.loss:.4f}")
            data["train_loss"] = round(p.loss, 5)
        if p.eval_loss is not None:
            parts.append(f"eval loss {p.eval_loss:.4f}")
            data["eval_loss"] = round(p.eval_loss, 5)
        parts.append(f"{p.tokens_per_s:.0f} tok/s")
        await self.store.add_job_event(job.id, "info", ", ".join(parts), data)

    async def _finish_training(
        self, job: FineTuningJob, out: Path, training: dict[str, object], tokens: int
    ) -> None:
        env = self.env
        try:
            manifest = await asyncio.to_thread(
                preflight, out, env.base_dir, env.base_name, env.max_rank
            )
        except TrainingError as exc:
            await self._fail(job, "preflight_failed", str(exc))
            return
        await self._event(job, "preflight passed; computing the reference (peft) outputs")
        prompts = list(PARITY_PROMPTS)
        reference = await asyncio.to_thread(
            peft_reference, env.base_dir, out, prompts, dtype=getattr(torch, env.serving_dtype)
        )
        result = {
            "training": training,
            "preflight": msgspec.to_builtins(manifest),
            "parity_reference": [r.answer for r in reference],
            "parity_ties": [r.tie_at for r in reference],
        }
        moved = await self.store.update_job(
            job.id,
            JobChanges(
                stage="registering",
                output_dir=str(out),
                result=json.dumps(result),
                trained_tokens=tokens,
                heartbeat_at=time.time(),
            ),
            worker=env.worker_id,
        )
        if moved:
            await self._event(job, "trained; the gateway checks parity on the engine next")

    async def _stopped(self, job: FineTuningJob, reason: StopReason) -> None:
        if reason == "cancel":
            await self.store.update_job(
                job.id,
                JobChanges(status="cancelled", stage="done", finished_at=time.time()),
                worker=self.env.worker_id,
            )
            await self._event(job, "cancelled; no adapter was registered")
        elif reason == "shutdown":
            requeued = await self.store.update_job(
                job.id,
                JobChanges(status="queued", stage="queued", worker=None),
                worker=self.env.worker_id,
            )
            if requeued:
                await self._event(job, "the worker stopped; the job is queued again")

    async def _fail(self, job: FineTuningJob, code: str, message: str) -> None:
        error = json.dumps({"code": code, "message": message, "param": None})
        await self.store.update_job(
            job.id,
            JobChanges(status="failed", stage="done", error=error, finished_at=time.time()),
            worker=self.env.worker_id,
        )
        await self.store.add_job_event(job.id, "error", message)


def result_json(result: object) -> dict[str, object]:
    data = msgspec.to_builtins(result)
    assert isinstance(data, dict)
    return data
