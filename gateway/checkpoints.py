"""A fine-tuning job's per-epoch checkpoints: OpenAI's list, and registering one as a candidate.

The training worker saves each epoch's adapter under the job's folder and records it in the
store (`training.job_runner`). A checkpoint is registered by an admin, through the same registry
path as a job's final adapter (validated, copied, content-addressed) and served under its
`fine_tuned_model_checkpoint` name (`<fine-tuned model>:ckpt-step-<N>`) as a `candidate` version,
ready for the promotion gate. The final adapter's engine parity check runs on the peft outputs
the worker computes for it; a checkpoint has none, so it is validated but not parity-checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from adapters.registry import Registry
from adapters.swap import Swapper
from store import AliasTarget, FineTuningJob, JobCheckpoint, Store, Tenant
from store.errors import NotFound


class Metrics(msgspec.Struct, kw_only=True):
    """OpenAI's checkpoint metrics; loopgate measures the losses (token accuracies: null)."""

    step: float
    train_loss: float | None
    valid_loss: float | None
    full_valid_loss: float | None
    train_mean_token_accuracy: None = None
    valid_mean_token_accuracy: None = None
    full_valid_mean_token_accuracy: None = None


class Checkpoint(msgspec.Struct, kw_only=True):
    """OpenAI's `fine_tuning.job.checkpoint`, plus what loopgate knows of it."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: Metrics
    step_number: int
    epoch: float
    adapter_version: str | None  # once registered as a candidate

    @classmethod
    def of(cls, c: JobCheckpoint) -> Checkpoint:
        # The valid loss is over the whole eval set at each epoch's end: full_valid_loss too.
        metrics = Metrics(
            step=float(c.step),
            train_loss=c.train_loss,
            valid_loss=c.valid_loss,
            full_valid_loss=c.valid_loss,
        )
        return cls(
            id=c.id,
            created_at=int(c.created_at),
            fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
            fine_tuning_job_id=c.job_id,
            metrics=metrics,
            step_number=c.step,
            epoch=round(c.epoch, 3),
            adapter_version=c.adapter_version,
        )


class JobCheckpoints:
    """Lists a tenant's job checkpoints; registers one as a candidate adapter version."""

    def __init__(self, store: Store, registry: Registry, swapper: Swapper):
        self.store = store
        self.registry = registry
        self.swapper = swapper

    async def page(
        self, job: FineTuningJob, after: str | None, limit: int
    ) -> tuple[list[JobCheckpoint], bool]:
        return await self.store.list_job_checkpoints(job.tenant_id, job.id, after, limit)

    async def register(
        self, tenant: Tenant, job: FineTuningJob, checkpoint_id: str, actor: str
    ) -> JobCheckpoint:
        """The checkpoint as a candidate version under its model name (again: the same one)."""
        found = await self.store.get_job_checkpoint(tenant.id, checkpoint_id)
        if found is None or found.job_id != job.id:
            raise NotFound(
                f"No checkpoint '{checkpoint_id}' in job {job.id}", param="checkpoint_id"
            )
        if found.adapter_version is not None:
            return found
        version = await self.registry.import_folder(
            tenant,
            Path(found.path),
            name=f"ft-{job.suffix or 'job'}-{job.id.removeprefix('ftjob-')[:8]}-s{found.step}",
            created_by=f"checkpoint:{found.id}",
            dataset_id=job.dataset_id,
        )
        name = found.fine_tuned_model_checkpoint
        await self.store.set_alias(tenant.id, name, AliasTarget("adapter", version.id))
        self.swapper.forget(tenant.id, name)
        await self.store.set_checkpoint_version(found.id, version.id)
        await self.store.add_job_event(
            job.id,
            "info",
            f"checkpoint {found.id} (step {found.step}) registered as {version.id} (candidate) "
            f"by {actor}; model {name}",
            {"actor": actor},
        )
        return msgspec.structs.replace(found, adapter_version=version.id)
