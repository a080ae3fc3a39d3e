"""Fine-tuning on the gateway side: dataset snapshots, jobs, and registration.

A dataset is built by a training worker (`training.dataset_builds`), never in this process: a
request that needs one (`POST /v1/datasets`, a job naming a file, the loop) queues a build in the
store and waits for its outcome, at most `LOOPGATE_DATASET_BUILD_TIMEOUT_S`.

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
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import msgspec

from adapters.placement import AdapterPool
from adapters.registry import Registry
from adapters.swap import Swapper
from adapters.validation import validate_folder
from gateway.background import BackgroundProcess, embedded_worker, worker_env
from gateway.checkpoints import JobCheckpoints
from gateway.dataset_policy import BuildDataset, DatasetOverride, DatasetReport, tenant_config
from gateway.quotas import Quotas, bounded, check_examples, refusal
from gateway.tenancy import Caller
from replicas.pool import BackendPool
from store import (
    AdapterVersion,
    AliasTarget,
    Dataset,
    DatasetBuild,
    FileObject,
    FineTuningJob,
    JobChanges,
    Store,
    Usage,
)
from store.errors import (
    InvalidRequest,
    LoopgateError,
    NotFound,
    PayloadTooLarge,
    StoreBusy,
    Unprocessable,
    UpstreamTimeout,
)
from store.settings import Settings
from training.build_records import BuildError, ReviewStop
from training.dataset_config import DatasetConfig
from training.job_data import KINDS, MAX_LINE_BYTES, fine_tuned_name
from training.jsonl import JsonlError, Kind, check_file_kind
from training.parity_check import PARITY_PROMPTS, compare
from training.poisoning import Flag, Review
from training.trainer_config import Method as TrainMethod
from training.trainer_config import (
    Quantization,
    TrainConfig,
    describe_base,
    for_engine,
    from_hyperparameters,
)

log = logging.getLogger("loopgate.finetuning")
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
    quantization: Quantization | None = None  # "auto" (the default): the base the engine serves
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


class DpoHyperparameters(Hyperparameters, forbid_unknown_fields=True):
    """OpenAI's DPO hyperparameters: the supervised ones and `beta` (the pull to the base)."""

    beta: AutoFloat = "auto"


class Dpo(msgspec.Struct):
    hyperparameters: DpoHyperparameters = msgspec.field(default_factory=DpoHyperparameters)


class Method(msgspec.Struct):
    type: str
    supervised: Supervised | None = None
    dpo: Dpo | None = None


class CreateJob(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    training_file: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: SUFFIX | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    validation_file: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    integrations: list[object] | None = None
    metadata: dict[str, str] | None = None


def train_config(h: Hyperparameters, method: TrainMethod = "supervised") -> TrainConfig:
    try:
        config = from_hyperparameters(h.n_epochs, h.learning_rate_multiplier, h.batch_size)
        beta = h.beta if isinstance(h, DpoHyperparameters) else "auto"
        extras: dict[str, Any] = {
            "method": method,
            "beta": None if beta == "auto" else beta,
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


class TrafficBuild(msgspec.Struct, frozen=True):
    """A traffic snapshot built by a worker: its dataset (None: the poisoning guards stopped it
    for review, nothing was saved), and the guards' review and flags."""

    dataset: Dataset | None
    review: Review
    flags: list[Flag]


# A failed build's status, as the error the gateway raises (anything else: a clean 500).
BUILD_ERRORS: dict[int, type[LoopgateError]] = {
    400: InvalidRequest,
    404: NotFound,
    413: PayloadTooLarge,
    422: Unprocessable,
    503: StoreBusy,
}


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
        self.checkpoints = JobCheckpoints(store, registry, swapper)

    # -- datasets: built by a training worker (training.dataset_builds); enqueued and awaited here

    async def build_from_traffic(self, caller: Caller, req: BuildDataset) -> Dataset:
        """POST /v1/datasets: a tenant key's snapshot (see gateway.dataset_policy)."""
        await self.quotas.check(caller.tenant_id, Usage(datasets=1))  # before the costly part
        built = await self.build_traffic(caller, tenant_config(req))
        if built.dataset is None:
            raise Unprocessable(built.review.message, code="dataset_needs_review")
        return built.dataset

    async def build_traffic(
        self, caller: Caller, config: DatasetConfig, override: DatasetOverride | None = None
    ) -> TrafficBuild:
        """The tenant's traffic and feedback through the dataset builder on a worker, saved
        unless the poisoning guards stop it for review (then the result has no dataset)."""
        build = await self._build(caller, "traffic", config, override=override)
        if build.status == "needs_review":
            stop = msgspec.json.decode(build.report or "", type=ReviewStop)
            return TrafficBuild(None, stop.review, stop.flags)
        dataset = await self._built(caller, build)
        report = msgspec.json.decode(dataset.stats, type=DatasetReport)
        return TrafficBuild(dataset, report.review, report.flags)

    async def build_from_file(self, caller: Caller, f: FileObject) -> Dataset:
        build = await self._build(caller, "file", DatasetConfig(), file_id=f.id)
        return await self._built(caller, build)

    async def _build(
        self,
        caller: Caller,
        source: Literal["traffic", "file"],
        config: DatasetConfig,
        *,
        file_id: str | None = None,
        override: DatasetOverride | None = None,
    ) -> DatasetBuild:
        """Queue a build for a worker and wait for its outcome."""
        quotas = await self.quotas.of(caller.tenant_id)
        build = DatasetBuild(
            id="dsb-" + secrets.token_hex(12),
            tenant_id=caller.tenant_id,
            created_by=f"key:{caller.key_id}",
            source=source,
            file_id=file_id,
            config=msgspec.json.encode(config).decode(),
            override=None if override is None else msgspec.json.encode(override).decode(),
            limits=msgspec.json.encode(quotas.limits()).decode(),
            status="queued",
            created_at=time.time(),
        )
        await self.store.add_dataset_build(build)
        return await self._wait(build)

    async def _wait(self, build: DatasetBuild) -> DatasetBuild:
        """Poll the build's row until a worker finishes it, up to the setting's deadline."""
        timeout_s = self.settings.dataset_build_timeout_s
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            found = await self.store.get_dataset_build(build.tenant_id, build.id)
            if found is not None and found.status in ("ready", "needs_review", "failed"):
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamTimeout(
                    f"no training worker finished dataset build {build.id} within {timeout_s:g} s "
                    "(LOOPGATE_DATASET_BUILD_TIMEOUT_S); is a worker running (loopgate worker, "
                    "or LOOPGATE_TRAINING_WORKER=true)?",
                    code="dataset_build_timeout",
                )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    async def _built(self, caller: Caller, build: DatasetBuild) -> Dataset:
        """The dataset a finished build saved, or its failure raised as the request's error."""
        if build.status == "failed":
            raise await self._failure(caller, build)
        found = await self.store.get_dataset(caller.tenant_id, build.dataset_id or "")
        if build.status != "ready" or found is None:
            raise LoopgateError(
                f"dataset build {build.id} ended {build.status} without a dataset",
                code="dataset_build_failed",
            )
        return found

    async def _failure(self, caller: Caller, build: DatasetBuild) -> LoopgateError:
        error = msgspec.json.decode(build.error or "", type=BuildError)
        if error.over is not None:
            return refusal(await self.quotas.of(caller.tenant_id), error.over)
        kind = BUILD_ERRORS.get(error.status, LoopgateError)
        return kind(error.message, param=error.param, code=error.code)

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
        method, hyper = _method(req)
        await self._check_files(caller, req, method)
        quotas = await self.quotas.of(caller.tenant_id)
        config = bounded(train_config(hyper, method), _chosen(hyper), quotas)
        config = for_engine(config, self.settings.engine_weights)  # the job records its base
        if config.rank > self.settings.engine_max_lora_rank:
            raise InvalidRequest(
                f"lora_rank {config.rank} is above what the engine serves "
                f"(LOOPGATE_ENGINE_MAX_LORA_RANK={self.settings.engine_max_lora_rank})",
                param="hyperparameters",
            )
        await self.quotas.check(caller.tenant_id, A_JOB)  # before a file becomes a dataset
        dataset = await self._job_dataset(caller, req.training_file)
        check_examples(dataset, quotas)
        if method == "dpo" and dataset.preference_count == 0:
            raise InvalidRequest(
                f"dataset {dataset.id} holds no preference pairs for DPO: upload a file of "
                '{"input", "preferred_output", "non_preferred_output"} lines, or snapshot traffic '
                "where corrected answers were also rated down",
                param="training_file",
            )
        job_id = "ftjob-" + secrets.token_hex(12)
        job = FineTuningJob(
            id=job_id,
            tenant_id=caller.tenant_id,
            created_by=f"key:{caller.key_id}",
            model=req.model,
            base_model=self.settings.base_model_name,
            base_adapter=alias.target.adapter_version,
            training_file=req.training_file,
            validation_file=req.validation_file,
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

    async def _check_files(self, caller: Caller, req: CreateJob, method: TrainMethod) -> None:
        """An uploaded training file and the validation file must hold `method`'s shape (chat
        lines for supervised, preference lines for DPO): a 400 naming the bad lines."""
        refs = [("training_file", req.training_file), ("validation_file", req.validation_file)]
        for param, ref in refs:
            if ref is None or (param == "training_file" and ref.startswith("ds-")):
                continue
            f = await self.store.get_file(caller.tenant_id, ref)
            if f is None:
                raise InvalidRequest(f"invalid {param}: {ref}", param=param)
            if f.purpose != "fine-tune":  # a batch input or output: not training data
                raise InvalidRequest(
                    f"{param} {ref} has purpose {f.purpose!r}; fine-tuning takes 'fine-tune' files",
                    param=param,
                )
            try:
                await asyncio.to_thread(_check_shape, Path(f.path), KINDS[method])
            except JsonlError as exc:
                raise InvalidRequest(
                    f"{param} {ref} does not fit method '{method}': {exc}", param=param
                ) from None
            except OSError:  # the bytes are gone: the dataset build reports it, cleanly
                continue

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
        return await self.job_of(caller.tenant_id, job_id)

    async def job_of(self, tenant_id: str, job_id: str) -> FineTuningJob:
        found = await self.store.get_job(job_id, tenant_id)
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
        trained = msgspec.json.decode(job.hyperparameters, type=TrainConfig).quantization
        await self.store.add_job_event(
            job.id,
            "info" if report.passed else "error",
            f"parity: vLLM (serving {self.settings.engine_weights} weights) and peft "
            f"({describe_base(trained)}) agree on {report.agreement:.0%} of {len(engine)} prompts",
            {
                "agreement": report.agreement,
                "quantization": trained,
                "engine_weights": self.settings.engine_weights,
            },
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
        name = fine_tuned_name(job.model, tenant.name, job.suffix, job.id)
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
        await asyncio.to_thread(shutil.rmtree, out, True)  # the job's checkpoints stay beside it

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


def _method(req: CreateJob) -> tuple[TrainMethod, Hyperparameters]:
    """The job's method and its hyperparameters (the method's own, else the top-level ones)."""
    method = req.method
    if method is None or method.type == "supervised":
        given = method.supervised if method is not None else None
        return "supervised", given.hyperparameters if given else _top_level(req)
    if method.type == "dpo":
        dpo = method.dpo.hyperparameters if method.dpo else None
        return "dpo", dpo or msgspec.convert(
            msgspec.to_builtins(_top_level(req)), DpoHyperparameters
        )
    raise InvalidRequest(
        f"method {method.type!r} is not supported; use 'supervised' or 'dpo'", param="method"
    )


def _top_level(req: CreateJob) -> Hyperparameters:
    return req.hyperparameters or Hyperparameters()


def _check_shape(path: Path, kind: Kind) -> None:
    """The upload checked every line; here only the first example's shape is read."""
    check_file_kind(path, kind, max_line_bytes=MAX_LINE_BYTES)


# Secrets of the serving side the worker has no use for (it trains; it never serves or
# administers). The store's URL it does need: it claims jobs and writes results there.
WORKER_OMITS = (
    "admin_key",
    "engine_api_key",
    "cache_salt_secret",
    "metrics_key",
    "console_secret",
)


def worker_process_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The embedded worker's environment: the allowlisted part of `environ` (replicas.child_env)
    and its settings, passed explicitly, less the serving side's secrets."""
    return worker_env(settings, environ, WORKER_OMITS)


def training_worker_process(settings: Settings) -> BackgroundProcess:
    """The embedded training worker: a child process with the gateway's settings. Stopped, the
    job it was training goes back to the queue."""
    return embedded_worker(
        settings, "training worker", "training.worker", WORKER_OMITS, stop_timeout_s=60.0
    )
