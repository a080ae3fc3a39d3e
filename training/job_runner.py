"""Runs one claimed fine-tuning job on this worker: dataset → LoRA → preflight → peft outputs.

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
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import msgspec
import torch

from store import Dataset, FineTuningJob, JobChanges, JobCheckpoint, Store
from store.numerics import DtypeSetting
from training.dpo import train_dpo
from training.job_data import (
    PreferenceData,
    SupervisedData,
    checkpoint_name,
    fine_tuned_name,
    preference_data,
    supervised_data,
)
from training.jsonl import JsonlError
from training.parity import PARITY_PROMPTS, peft_reference
from training.trainer import (
    Checkpoints,
    Progress,
    SavedCheckpoint,
    TrainingCancelled,
    TrainingError,
    TrainResult,
    compute_dtype,
    describe_hardware,
    preflight,
    resolve_device,
    train,
)
from training.trainer_config import Device, TrainConfig, describe_base

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


def checkpoints_dir(jobs_dir: Path, job_id: str) -> Path:
    """The job's per-epoch adapters (`step-<N>`), kept after the job's adapter is registered."""
    return job_dir(jobs_dir, job_id) / "checkpoints"


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
        config = train_config(job, env)
        data = await self._data(job, dataset, config)
        if data is None:
            return
        out = job_dir(env.jobs_dir, job.id) / "adapter"
        await asyncio.to_thread(shutil.rmtree, out, True)  # an earlier, interrupted attempt
        await self._clear_checkpoints(job)
        device = resolve_device(config.device)
        dtype = str(compute_dtype(device, config.compute_dtype)).removeprefix("torch.")
        hardware = describe_hardware(device)
        await self._event(
            job,
            f"training started (attempt {job.attempts}, {config.method}): {len(data.train)} "
            f"train / {len(data.eval)} eval examples"
            f"{' (the validation file)' if job.validation_file else ''}, device {device}, "
            f"compute {dtype} on {hardware}; {describe_base(config.quantization)}",
            {
                "quantization": config.quantization,
                "train_examples": len(data.train),
                "eval_examples": len(data.eval),
                "method": config.method,
                "device": device,
                "compute_dtype": dtype,
                "hardware": hardware,
            },
        )
        try:
            result = await self._train(job, data, out, config, stop)
        except TrainingCancelled:
            await self._stopped(job, stop.reason or "cancel")
            return
        except (TrainingError, ValueError) as exc:
            await self._fail(job, "training_failed", str(exc))
            return
        await self._finish_training(job, out, result_json(result), result.train_tokens)

    async def _data(
        self, job: FineTuningJob, dataset: Dataset, config: TrainConfig
    ) -> SupervisedData | PreferenceData | None:
        """The job's train and eval rows (None: the job failed, the reason recorded)."""
        validation: bytes | None = None
        if job.validation_file is not None:
            f = await self.store.get_file(job.tenant_id, job.validation_file)
            if f is None:
                await self._fail(job, "invalid_validation_file", "the validation_file was deleted")
                return None
            validation = await asyncio.to_thread(Path(f.path).read_bytes)
        read = preference_data if config.method == "dpo" else supervised_data
        try:
            return await asyncio.to_thread(read, Path(dataset.path), validation)
        except JsonlError as exc:
            await self._fail(job, "invalid_validation_file", f"the validation_file: {exc}")
            return None

    async def _train(
        self,
        job: FineTuningJob,
        data: SupervisedData | PreferenceData,
        out: Path,
        config: TrainConfig,
        stop: _Stop,
    ) -> TrainResult:
        """Run the trainer for the job's method in a thread; progress and each epoch's adapter
        are recorded in the store as they come."""
        loop = asyncio.get_running_loop()
        name = await self._fine_tuned_name(job)

        def on_progress(p: Progress) -> None:
            asyncio.run_coroutine_threadsafe(self._progress(job, p), loop)

        def on_saved(saved: SavedCheckpoint) -> None:
            recorded = asyncio.run_coroutine_threadsafe(self._checkpoint(job, saved, name), loop)
            recorded.result(timeout=60)  # listed before the next epoch starts

        kept = Checkpoints(checkpoints_dir(self.env.jobs_dir, job.id), on_saved)
        base, stopped = self.env.base_dir, stop.event.is_set
        if isinstance(data, PreferenceData):
            return await asyncio.to_thread(
                lambda: train_dpo(
                    base,
                    data.train,
                    data.eval,
                    out,
                    config,
                    on_progress=on_progress,
                    should_stop=stopped,
                    checkpoints=kept,
                )
            )
        return await asyncio.to_thread(
            lambda: train(
                base,
                data.train,
                data.eval,
                out,
                config,
                on_progress=on_progress,
                should_stop=stopped,
                checkpoints=kept,
            )
        )

    async def _fine_tuned_name(self, job: FineTuningJob) -> str:
        tenant = await self.store.get_tenant(job.tenant_id)
        return fine_tuned_name(
            job.model, tenant.name if tenant else job.tenant_id, job.suffix, job.id
        )

    async def _clear_checkpoints(self, job: FineTuningJob) -> None:
        """An earlier, interrupted attempt's checkpoints: rows and folders."""
        await self.store.clear_job_checkpoints(job.id)
        folder = checkpoints_dir(self.env.jobs_dir, job.id)
        await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _checkpoint(self, job: FineTuningJob, saved: SavedCheckpoint, name: str) -> None:
        checkpoint = JobCheckpoint(
            id="ftckpt_" + secrets.token_hex(12),
            job_id=job.id,
            tenant_id=job.tenant_id,
            step=saved.step,
            epoch=saved.epoch,
            train_loss=saved.train_loss,
            valid_loss=saved.valid_loss,
            path=saved.path,
            fine_tuned_model_checkpoint=checkpoint_name(name, saved.step),
            created_at=time.time(),
        )
        await self.store.add_job_checkpoint(checkpoint)
        valid = "" if saved.valid_loss is None else f", valid loss {saved.valid_loss:.4f}"
        await self._event(job, f"checkpoint {checkpoint.id} saved at step {saved.step}{valid}")

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
            parts.append(f"valid loss {p.eval_loss:.4f}")
            data["valid_loss"] = round(p.eval_loss, 5)  # OpenAI's name for it
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
