"""Fine-tuning on the gateway side: dataset snapshots, jobs, and registration.

Uploaded files are `gateway.files`; each tenant's bounds on a job and quotas on snapshots and
jobs are `gateway.quotas`, checked here as a job or snapshot is created.

Jobs are rows in the store; a worker process (training/worker.py) claims and trains them. A
trained job comes back here in stage `registering`: the adapter is validated, loaded on a
replica under a temporary name, its greedy outputs compared with the worker's peft outputs
(parity), and only then registered as a `candidate` version with an alias named after the
job's fine-tuned model (`ft:<base>:<tenant>:<suffix>:<id>`).

A traffic snapshot is stored with its lineage: the completions it uses as examples and those
its flags name. An erase of one of them rewrites the snapshot's files, and marks the versions
trained on it `trained_on_erased` (gateway.erasure); a tainted snapshot trains no new job.

The embedded worker process gets its settings explicitly (LOOPGATE_* variables rebuilt from the
gateway's Settings, the store URL among them) and an allowlisted rest of the environment: never
the admin key, the engine key, the metrics key or the cache-salt secret (`replicas.child_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import msgspec

from adapters.placement import AdapterPool
from adapters.registry import Registry
from adapters.swap import Swapper
from adapters.validation import validate_folder
from gateway.dataset_policy import BuildDataset, DatasetOverride, DatasetReport, tenant_config
from gateway.quotas import Quotas, bounded, check_examples, refusal
from gateway.tenancy import Caller
from replicas.base_model import ModelError, resolve_model
from replicas.child_env import child_env
from replicas.pool import BackendPool
from store import (
    AdapterVersion,
    AliasTarget,
    Dataset,
    FileObject,
    FineTuningJob,
    JobChanges,
    Store,
    Tenant,
    Usage,
)
from store.errors import InvalidRequest, NotFound, Unprocessable
from store.settings import Settings, to_env
from training.chat import Conversation
from training.dataset import (
    Snapshot,
    completion_ids,
    from_conversations,
    from_traffic,
    write_snapshot,
)
from training.dataset_config import DatasetConfig
from training.jsonl import JsonlError, validate_chat_jsonl
from training.parity import PARITY_PROMPTS, compare
from training.snapshot_erasure import flagged_completion_ids
from training.trainer_config import TrainConfig, from_hyperparameters

log = logging.getLogger("loopgate.finetuning")
MAX_LINES = 100_000
MAX_LINE_BYTES = 1024 * 1024
SUFFIX = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}\Z")]  # not $: "\n"
AutoInt = int | Literal["auto"]
AutoFloat = float | Literal["auto"]


class Hyperparameters(msgspec.Struct, forbid_unknown_fields=True):
    """OpenAI's names, plus loopgate's LoRA extensions."""

    n_epochs: AutoInt = "auto"
    batch_size: AutoInt = "auto"
    learning_rate_multiplier: AutoFloat = "auto"
    lora_rank: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    anchor_weight: float | None = None  # bounds checked by TrainConfig (one place)
    max_seq_length: int | None = None
    quantization: Literal["nf4", "none"] | None = None
    # Module names to put LoRA on (e.g. ["q_proj", "v_proj"]); default every linear layer.
    lora_target_modules: (
        Annotated[
            list[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")]],
            msgspec.Meta(min_length=1, max_length=32),
        ]
        | None
    ) = None


class Supervised(msgspec.Struct):
    hyperparameters: Hyperparameters = msgspec.field(default_factory=Hyperparameters)


class Method(msgspec.Struct):
    type: str
    supervised: Supervised | None = None


class CreateJob(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    training_file: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: SUFFIX | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    validation_file: str | None = None
    integrations: list[object] | None = None
    metadata: dict[str, str] | None = None


def train_config(h: Hyperparameters) -> TrainConfig:
    try:
        config = from_hyperparameters(h.n_epochs, h.learning_rate_multiplier, h.batch_size)
        extras: dict[str, Any] = {
            "rank": h.lora_rank,
            "alpha": h.lora_alpha,
            "dropout": h.lora_dropout,
            "anchor_weight": h.anchor_weight,
            "max_seq_length": h.max_seq_length,
            "quantization": h.quantization,
            "target_modules": tuple(h.lora_target_modules) if h.lora_target_modules else None,
        }
        return replace(config, **{k: v for k, v in extras.items() if v is not None})
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="hyperparameters") from None


def fine_tuned_name(job_model: str, tenant: Tenant, suffix: str | None, job_id: str) -> str:
    return f"ft:{job_model}:{tenant.name}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def dataset_id(tenant_id: str, content_hash: str) -> str:
    """Content-addressed within a tenant: two tenants with the same data get different ids."""
    return "ds-" + hashlib.sha256(f"{tenant_id}:{content_hash}".encode()).hexdigest()[:16]


class FineTuning:
    """Files, datasets and jobs for the API; the registration loop for trained jobs."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        adapters: AdapterPool,
        swapper: Swapper,
        pool: BackendPool,
        client: httpx.AsyncClient,
        quotas: Quotas,
    ):
        self.settings = settings
        self.store = store
        self.quotas = quotas
        self.registry = registry
        self.adapters = adapters
        self.swapper = swapper
        self.pool = pool
        self.client = client
        self.root = settings.training_path
        self.id = f"gateway:{os.getpid()}:{secrets.token_hex(3)}"

    # -- datasets ---------------------------------------------------------------------------

    @cached_property
    def _tokenizer(self) -> Any:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(resolve_model(self.settings, prepare=False))
        except (ModelError, OSError, ValueError):
            log.warning("the base model's tokenizer is not available here; counting words")
            return None

    def _count_tokens(self, conversation: Conversation) -> int:
        encoded = self._tokenizer.apply_chat_template(list(conversation), tokenize=True)
        ids = (
            encoded["input_ids"]
            if isinstance(encoded, dict) or hasattr(encoded, "keys")
            else encoded
        )
        return len(ids)

    def _counter(self) -> Any:
        return self._count_tokens if self._tokenizer is not None else None

    async def build_from_traffic(self, caller: Caller, req: BuildDataset) -> Dataset:
        """POST /v1/datasets: a tenant key's snapshot (see gateway.dataset_policy)."""
        await self.quotas.check(caller.tenant_id, Usage(datasets=1))  # before the costly part
        snapshot = await self.snapshot_traffic(caller, tenant_config(req))
        return await self.save_traffic(caller, snapshot)

    async def snapshot_traffic(self, caller: Caller, config: DatasetConfig) -> Snapshot:
        """The tenant's traffic and feedback through the dataset builder; nothing is saved."""
        rows = await self.store.export_completions(caller.tenant_id)
        opted_out = await self.store.list_optouts(caller.tenant_id)
        counter = await asyncio.to_thread(self._counter)
        return await asyncio.to_thread(
            lambda: from_traffic(rows, opted_out=opted_out, config=config, count_tokens=counter)
        )

    async def save_traffic(
        self, caller: Caller, snapshot: Snapshot, override: DatasetOverride | None = None
    ) -> Dataset:
        """Save a traffic snapshot; one that the poisoning guards stopped for review is refused."""
        if snapshot.review.status == "needs_review":
            raise Unprocessable(snapshot.review.message, code="dataset_needs_review")
        return await self._save(caller, snapshot, "traffic", None, override)

    async def build_from_file(self, caller: Caller, f: FileObject) -> Dataset:
        data = await asyncio.to_thread(Path(f.path).read_bytes)
        conversations = await asyncio.to_thread(_validate, data)
        counter = await asyncio.to_thread(self._counter)
        snapshot = await asyncio.to_thread(
            lambda: from_conversations(
                conversations,
                author=f.created_by,
                source_id=f.id,
                config=DatasetConfig(),
                count_tokens=counter,
            )
        )
        return await self._save(caller, snapshot, "file", f.id)

    async def _save(
        self,
        caller: Caller,
        snapshot: Snapshot,
        source: Literal["traffic", "file"],
        file_id: str | None,
        override: DatasetOverride | None = None,
    ) -> Dataset:
        if not snapshot.train:
            raise Unprocessable(
                "no usable training examples: "
                + json.dumps(msgspec.to_builtins(snapshot.stats.counts)),
                code="empty_dataset",
            )
        ds_id = dataset_id(caller.tenant_id, snapshot.content_hash)
        existing = await self.store.get_dataset(caller.tenant_id, ds_id)
        if existing is not None and existing.tainted_at is None:
            return existing
        if existing is not None:
            ds_id += "-" + secrets.token_hex(3)
        quotas = (await self.quotas.check(caller.tenant_id, Usage(datasets=1))).quotas
        folder = self.root / "datasets" / caller.tenant_id / ds_id
        await asyncio.to_thread(write_snapshot, snapshot, folder)
        report = DatasetReport(snapshot.stats, snapshot.flags, snapshot.review, override)
        d = Dataset(
            id=ds_id,
            tenant_id=caller.tenant_id,
            content_hash=snapshot.content_hash,
            source=source,
            source_file_id=file_id,
            train_count=len(snapshot.train),
            eval_count=len(snapshot.eval),
            preference_count=len(snapshot.preferences),
            path=str(folder),
            stats=msgspec.json.encode(report).decode(),
            created_by=f"key:{caller.key_id}",
            created_at=time.time(),
        )
        # Lineage for erasure: the completions it trains on, and those only its flags name.
        flagged = flagged_completion_ids(snapshot) if source == "traffic" else set()
        over = await self.store.add_dataset(
            d, completion_ids(snapshot), quotas.limits(), flagged=flagged
        )
        if over is not None:  # another snapshot took the room since the first check
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise refusal(quotas, over)
        return d

    async def dataset(self, caller: Caller, dataset_id: str) -> Dataset:
        found = await self.store.get_dataset(caller.tenant_id, dataset_id)
        if found is None:
            raise NotFound(f"No such dataset: {dataset_id}", param="dataset_id")
        return found

    # -- jobs -------------------------------------------------------------------------------

    async def create_job(self, caller: Caller, req: CreateJob) -> FineTuningJob:
        tenant = await self.store.get_tenant(caller.tenant_id)
        assert tenant is not None
        alias = await self.store.get_alias(caller.tenant_id, req.model)
        if alias is None:
            raise InvalidRequest(
                f"The model '{req.model}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if req.validation_file is not None:
            raise InvalidRequest(
                "validation_file is not supported: the eval split comes from the training data "
                "(held out deterministically)",
                param="validation_file",
            )
        hyper = _hyperparameters(req)
        quotas = await self.quotas.of(caller.tenant_id)
        config = bounded(train_config(hyper), _chosen(hyper), quotas)
        if config.rank > self.settings.engine_max_lora_rank:
            raise InvalidRequest(
                f"lora_rank {config.rank} is above what the engine serves "
                f"(LOOPGATE_ENGINE_MAX_LORA_RANK={self.settings.engine_max_lora_rank})",
                param="hyperparameters",
            )
        await self.quotas.check(caller.tenant_id, A_JOB)  # before a file becomes a dataset
        dataset = await self._job_dataset(caller, req.training_file)
        check_examples(dataset, quotas)
        job_id = "ftjob-" + secrets.token_hex(12)
        job = FineTuningJob(
            id=job_id,
            tenant_id=caller.tenant_id,
            created_by=f"key:{caller.key_id}",
            model=req.model,
            base_model=self.settings.base_model_name,
            base_adapter=alias.target.adapter_version,
            training_file=req.training_file,
            validation_file=None,
            dataset_id=dataset.id,
            hyperparameters=msgspec.json.encode(config).decode(),
            suffix=req.suffix,
            seed=req.seed if req.seed is not None else secrets.randbelow(2**31),
            status="queued",
            stage="queued",
            created_at=time.time(),
        )
        over = await self.store.create_job(job, quotas.limits())
        if over is not None:
            raise refusal(quotas, over)
        await self.store.add_job_event(
            job_id,
            "info",
            f"job created on dataset {dataset.id} ({dataset.train_count} train / "
            f"{dataset.eval_count} eval examples); queued",
        )
        return job

    async def _job_dataset(self, caller: Caller, ref: str) -> Dataset:
        if ref.startswith("ds-"):
            dataset = await self.dataset(caller, ref)
            if dataset.tainted_at is not None:
                raise InvalidRequest(
                    f"dataset {ref} used data that was later erased ({dataset.taint_reason}); "
                    "build a new one",
                    param="training_file",
                )
            return dataset
        f = await self.store.get_file(caller.tenant_id, ref)
        if f is None:
            raise InvalidRequest(f"invalid training_file: {ref}", param="training_file")
        return await self.build_from_file(caller, f)

    async def job(self, caller: Caller, job_id: str) -> FineTuningJob:
        found = await self.store.get_job(job_id, caller.tenant_id)
        if found is None:
            raise NotFound(
                f"No fine-tuning job found with id '{job_id}'", param="fine_tuning_job_id"
            )
        return found

    async def cancel(self, tenant_id: str, job_id: str, actor: str) -> FineTuningJob:
        """Cancel a tenant's job: a queued one at once, a running one at its next step (the
        worker sees the flag on its heartbeat). `actor` (a key, or the admin) is recorded."""
        job = await self.store.get_job(job_id, tenant_id)
        if job is None:
            raise NotFound(
                f"No fine-tuning job found with id '{job_id}'", param="fine_tuning_job_id"
            )
        if job.status in ("succeeded", "failed", "cancelled"):
            raise InvalidRequest(
                f"job {job_id} has already {job.status}", param="fine_tuning_job_id"
            )
        updated = await self.store.request_cancel(tenant_id, job_id)
        assert updated is not None
        done = "cancelled" if updated.status == "cancelled" else "cancellation requested"
        await self.store.add_job_event(job_id, "info", f"{done} by {actor}", {"actor": actor})
        return updated

    # -- registration of trained jobs ---------------------------------------------------------

    async def registration_loop(self, interval_s: float = 2.0) -> None:
        while True:
            try:
                for job in await self.store.jobs_in_stage("registering"):
                    await self.register(job)
            except Exception:
                log.exception("registering trained jobs failed; retrying")
            await asyncio.sleep(interval_s)

    async def register(self, job: FineTuningJob) -> None:
        """Parity on the engine, then the registry and the alias; once per job (claimed)."""
        if not any(b.ready for b in self.pool.backends):
            return  # the engine is not up: try again on the next pass
        if not await self.store.update_job(job.id, JobChanges(worker=self.id), worker=job.worker):
            return  # another gateway took it
        try:
            await self._register(job)
        except Exception as exc:
            log.exception("registering job %s failed", job.id)
            await self._fail(job, "registration_failed", f"registration failed: {exc}")

    async def _register(self, job: FineTuningJob) -> None:
        tenant = await self.store.get_tenant(job.tenant_id)
        fresh = await self.store.get_job(job.id)
        if tenant is None or fresh is None or job.output_dir is None:
            return
        out = Path(job.output_dir)
        if fresh.cancel_requested:
            await self._finish(job, JobChanges(status="cancelled"), "cancelled; not registered")
            await asyncio.to_thread(shutil.rmtree, out, True)
            return
        result = json.loads(job.result or "{}")
        try:
            await asyncio.to_thread(validate_folder, out, self.registry.base, self.registry.limits)
        except Unprocessable as exc:
            await self._fail(
                job, "invalid_adapter", f"the trained adapter was refused: {exc.message}"
            )
            return
        engine = await self._engine_outputs(job, out)
        report = compare(
            result.get("parity_reference", []),
            engine,
            self.settings.parity_min_agreement,
            ties=result.get("parity_ties"),  # absent in results of jobs trained before it existed
        )
        result["parity"] = msgspec.to_builtins(report)
        await self.store.add_job_event(
            job.id,
            "info" if report.passed else "error",
            f"parity: vLLM and peft agree on {report.agreement:.0%} of {len(engine)} prompts",
            {"agreement": report.agreement},
        )
        if not report.passed:
            await self.store.update_job(job.id, JobChanges(result=json.dumps(result)))
            await self._fail(
                job,
                "parity_failed",
                f"the engine's outputs differ from peft's (agreement {report.agreement:.0%} < "
                f"{self.settings.parity_min_agreement:.0%}); the adapter was not registered",
            )
            return
        name = fine_tuned_name(job.model, tenant, job.suffix, job.id)
        version = await self.registry.import_folder(
            tenant,
            out,
            name=f"ft-{job.suffix or 'job'}-{job.id.removeprefix('ftjob-')[:8]}",
            created_by=f"job:{job.id}",
            dataset_id=job.dataset_id,
        )
        await self.store.set_alias(job.tenant_id, name, AliasTarget("adapter", version.id))
        self.swapper.forget(job.tenant_id, name)
        changes = JobChanges(
            status="succeeded",
            fine_tuned_model=name,
            adapter_version=version.id,
            result=json.dumps(result),
            output_dir=None,
        )
        await self._finish(job, changes, f"registered {version.id} as candidate; model {name}")
        await asyncio.to_thread(shutil.rmtree, out.parent, True)

    async def _engine_outputs(self, job: FineTuningJob, out: Path) -> list[str]:
        backend = next(b for b in self.pool.backends if b.ready)
        temp = AdapterVersion(
            id=f"parity-{job.id}",
            tenant_id=job.tenant_id,
            name="parity",
            content_hash="",
            base_model=self.settings.base_model_name,
            base_hash="",
            rank=0,
            alpha=0.0,
            target_modules=(),
            created_by="parity",
            status="candidate",
            path=str(out),
            size_bytes=0,
            created_at=time.time(),
        )
        placement = await self.adapters.load(backend, temp, pinned=True)
        try:
            outputs = []
            for prompt in PARITY_PROMPTS:
                body = {
                    "model": placement.engine_name,
                    "messages": list(prompt),
                    "temperature": 0.0,
                    "max_tokens": 24,
                }
                resp = await self.client.post(
                    backend.url + "/v1/chat/completions", json=body, headers=backend.headers
                )
                resp.raise_for_status()
                outputs.append(str(resp.json()["choices"][0]["message"]["content"]).strip())
            return outputs
        finally:
            await self.adapters.unload(placement, drain_timeout_s=30.0)

    async def _finish(self, job: FineTuningJob, changes: JobChanges, message: str) -> None:
        done = replace_changes(changes, stage="done", finished_at=time.time())
        await self.store.update_job(job.id, done, worker=self.id)
        await self.store.add_job_event(job.id, "info", message)

    async def _fail(self, job: FineTuningJob, code: str, message: str) -> None:
        error = json.dumps({"code": code, "message": message, "param": None})
        await self._finish(job, JobChanges(status="failed", error=error), message)


def replace_changes(changes: JobChanges, **more: object) -> JobChanges:
    return msgspec.structs.replace(changes, **more)


A_JOB = Usage(queued_jobs=1, jobs_last_day=1)


def _chosen(h: Hyperparameters) -> set[str]:
    """The bounded hyperparameters the caller set (the rest are at their defaults)."""
    given = {"n_epochs": h.n_epochs, "batch_size": h.batch_size, "max_seq_length": h.max_seq_length}
    return {name for name, value in given.items() if value not in ("auto", None)}


def _hyperparameters(req: CreateJob) -> Hyperparameters:
    if req.method is not None:
        if req.method.type != "supervised":
            raise InvalidRequest(
                f"method {req.method.type!r} is not supported; use 'supervised'", param="method"
            )
        if req.method.supervised is not None:
            return req.method.supervised.hyperparameters
    return req.hyperparameters or Hyperparameters()


def _validate(data: bytes) -> list[Conversation]:
    try:
        return validate_chat_jsonl(data, max_lines=MAX_LINES, max_line_bytes=MAX_LINE_BYTES)
    except JsonlError as exc:
        raise InvalidRequest(str(exc), param="file", code="invalid_file") from None


# Secrets of the serving side the worker has no use for (it trains; it never serves or
# administers). The store's URL it does need: it claims jobs and writes results there.
WORKER_OMITS = ("admin_key", "engine_api_key", "cache_salt_secret", "metrics_key")


def worker_process_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The embedded worker's environment: the allowlisted part of `environ` (replicas.child_env)
    and its settings, passed explicitly, less the serving side's secrets."""
    return child_env(
        environ,
        **to_env(settings, omit=WORKER_OMITS),
        LOOPGATE_WORKER_PARENT=str(os.getpid()),
    )


class WorkerProcess:
    """The embedded training worker: a child process with the gateway's settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = worker_process_env(self.settings, os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training.worker"], env=env, start_new_session=True
        )
        log.info("training worker started (pid %d)", self.proc.pid)

    async def stop(self, timeout_s: float = 60.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # the job in training goes back to the queue
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout_s)
        except TimeoutError:
            log.warning("training worker did not stop in %.0f s; killing it", timeout_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait)
