"""Wire types of the gateway's answers: what clients parse, built from the store's records.

A record in store/records.py is what the store keeps; the struct here is what a client sees
(OpenAI field names, integer timestamps, JSON columns decoded). Field order is the order on the
wire. A value kept in the store as a JSON text is carried as decoded JSON (`object`).
"""

from __future__ import annotations

import json
from typing import Generic, Literal, TypeVar

import msgspec

from gateway.erasure import ErasureReport
from gateway.protocol import ChatMessage
from replicas.pool import Backend
from store import Alias, Completion, Dataset, EvalRun, FileObject, FineTuningJob, JobEvent
from store.records import ToolCall, tool_calls_of
from training.trainer_config import BASE_LEARNING_RATE

T = TypeVar("T")
AnyJSON = object  # decoded JSON, forwarded as it is (a field named `object` shadows the builtin)
REPORT_FILES = {"report.md": "text/markdown", "report.html": "text/html", "report.png": "image/png"}


class ListOf(msgspec.Struct, Generic[T], kw_only=True):
    """OpenAI's list envelope."""

    object: Literal["list"] = "list"
    data: list[T]


class PageOf(msgspec.Struct, Generic[T], kw_only=True):
    """A page of a list: `has_more` says whether another page follows."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool


class CursorPageOf(msgspec.Struct, Generic[T], kw_only=True):
    """A page with its first and last ids (stored chat completions and their messages)."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None
    last_id: str | None


def _json(text: str | None) -> object:
    return json.loads(text) if text else None


# -- health -----------------------------------------------------------------------------------


class Health(msgspec.Struct):
    status: Literal["ok"] = "ok"


class BackendReadiness(msgspec.Struct):
    name: str
    ready: bool


class Ready(msgspec.Struct, kw_only=True):
    status: Literal["ready"] = "ready"
    backends: list[BackendReadiness]


# -- models -----------------------------------------------------------------------------------


class ModelTarget(msgspec.Struct):
    target: str
    adapter_version: str | None


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int
    metadata: ModelTarget


# -- stored chat completions ------------------------------------------------------------------


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET  # only when it called tools


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class CaptureInfo(msgspec.Struct):
    status: str
    adapter_version: str | None
    latency_ms: float | None
    ttft_ms: float | None
    end_user: str | None
    do_not_train: bool


class StoredCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None
    metadata: dict[str, str]
    request_id: str | None
    loopgate: CaptureInfo

    @classmethod
    def of(cls, c: Completion) -> StoredCompletion:
        usage = None
        if c.prompt_tokens is not None and c.completion_tokens is not None:
            usage = Usage(
                c.prompt_tokens, c.completion_tokens, c.prompt_tokens + c.completion_tokens
            )
        calls = tool_calls_of(c.tool_calls)
        content = c.response if c.response or not calls else None  # a bare call has no text
        message = AssistantMessage("assistant", content, calls or msgspec.UNSET)
        info = CaptureInfo(
            c.status, c.adapter_version, c.latency_ms, c.ttft_ms, c.end_user, c.do_not_train
        )
        return cls(
            id=c.id,
            created=int(c.created_at),
            model=c.alias,
            choices=[Choice(0, message, c.finish_reason)],
            usage=usage,
            metadata=c.metadata,
            request_id=c.request_id,
            loopgate=info,
        )


class StoredMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One message of a stored request as it was sent, with its id (`<completion id>-<index>`)."""

    id: str
    role: str
    content: str | list[AnyJSON] | None = None
    name: str | msgspec.UnsetType = msgspec.UNSET
    tool_calls: list[AnyJSON] | msgspec.UnsetType = msgspec.UNSET
    tool_call_id: str | msgspec.UnsetType = msgspec.UNSET


class StoredRequest(msgspec.Struct):
    messages: list[ChatMessage] = msgspec.field(default_factory=list)


def stored_messages(c: Completion) -> list[StoredMessage]:
    sent = msgspec.json.decode(c.request or "{}", type=StoredRequest).messages
    return [
        StoredMessage(
            id=f"{c.id}-{i}",
            role=m.role,
            content=m.content,
            name=m.name,
            tool_calls=m.tool_calls,
            tool_call_id=m.tool_call_id,
        )
        for i, m in enumerate(sent)
    ]


class CompletionDeleted(msgspec.Struct, kw_only=True):
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    id: str
    deleted: bool = True


# -- files, datasets, fine-tuning jobs --------------------------------------------------------


class File(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: None = None
    expires_at: None = None

    @classmethod
    def of(cls, f: FileObject) -> File:
        return cls(
            id=f.id,
            bytes=f.bytes,
            created_at=int(f.created_at),
            filename=f.filename,
            purpose=f.purpose,
        )


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class DatasetSnapshot(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["dataset"] = "dataset"
    created_at: int
    content_hash: str
    source: str
    source_file_id: str | None
    train_examples: int
    eval_examples: int
    preference_pairs: int
    tainted: bool
    taint_reason: str | None
    erasure: str | None  # pending | rewritten | deleted: what became of its files
    erased_examples: int
    report: AnyJSON

    @classmethod
    def of(cls, d: Dataset) -> DatasetSnapshot:
        return cls(
            id=d.id,
            created_at=int(d.created_at),
            content_hash=d.content_hash,
            source=d.source,
            source_file_id=d.source_file_id,
            train_examples=d.train_count,
            eval_examples=d.eval_count,
            preference_pairs=d.preference_count,
            tainted=d.tainted_at is not None,
            taint_reason=d.taint_reason,
            erasure=d.erasure,
            erased_examples=d.erased_examples,
            report=json.loads(d.stats),
        )


class TrainingConfig(msgspec.Struct):
    """The fields of a job's resolved training config (JSON) that its answer shows."""

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: int | float = BASE_LEARNING_RATE
    rank: int | None = None
    alpha: int | float | None = None  # int | float: a number is sent back as it was written
    target_modules: AnyJSON = None
    anchor_weight: int | float | None = None
    quantization: Literal["auto", "nf4", "none"] = "auto"
    method: Literal["supervised", "dpo"] = "supervised"
    beta: float = 0.1


class Hyperparameters(msgspec.Struct):
    n_epochs: int | None
    batch_size: int | None
    learning_rate_multiplier: float
    lora_rank: int | None
    lora_alpha: float | None  # an int stays an int on the wire (encoding keeps the value)
    lora_target_modules: AnyJSON
    anchor_weight: float | None
    quantization: Literal["auto", "nf4", "none"]  # the base the job trained against

    @classmethod
    def of(cls, config_json: str) -> Hyperparameters:
        c = msgspec.json.decode(config_json, type=TrainingConfig)
        return cls(
            c.epochs,
            c.batch_size,
            c.learning_rate / BASE_LEARNING_RATE,
            c.rank,
            c.alpha,
            c.target_modules,
            c.anchor_weight,
            c.quantization,
        )


class Supervised(msgspec.Struct):
    hyperparameters: Hyperparameters


class DpoHyperparameters(Hyperparameters):
    beta: float


class Dpo(msgspec.Struct):
    hyperparameters: DpoHyperparameters


class Method(msgspec.Struct):
    """OpenAI's `method`: the type and that type's hyperparameters (the other one null)."""

    type: Literal["supervised", "dpo"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None

    @classmethod
    def of(cls, config_json: str, hyper: Hyperparameters) -> Method:
        c = msgspec.json.decode(config_json, type=TrainingConfig)
        if c.method == "supervised":
            return cls("supervised", supervised=Supervised(hyper))
        fields = msgspec.structs.asdict(hyper)
        return cls("dpo", dpo=Dpo(DpoHyperparameters(**fields, beta=c.beta)))


class JobProgress(msgspec.Struct):
    stage: str
    dataset_id: str | None
    adapter_version: str | None
    base_adapter: str | None
    attempts: int
    cancel_requested: bool
    result: AnyJSON


class Job(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str] = msgspec.field(default_factory=list)
    status: str
    validation_file: str | None
    training_file: str | None
    hyperparameters: Hyperparameters
    method: Method
    trained_tokens: int | None
    error: AnyJSON
    seed: int
    estimated_finish: None = None
    integrations: list[AnyJSON] = msgspec.field(default_factory=list)
    metadata: None = None
    user_provided_suffix: str | None
    loopgate: JobProgress

    @classmethod
    def of(cls, j: FineTuningJob) -> Job:
        hyper = Hyperparameters.of(j.hyperparameters)
        progress = JobProgress(
            j.stage,
            j.dataset_id,
            j.adapter_version,
            j.base_adapter,
            j.attempts,
            j.cancel_requested,
            _json(j.result),
        )
        return cls(
            id=j.id,
            created_at=int(j.created_at),
            finished_at=int(j.finished_at) if j.finished_at else None,
            model=j.model,
            fine_tuned_model=j.fine_tuned_model,
            organization_id=j.tenant_id,
            status=j.status,
            validation_file=j.validation_file,
            training_file=j.training_file,
            hyperparameters=hyper,
            method=Method.of(j.hyperparameters, hyper),
            trained_tokens=j.trained_tokens,
            error=_json(j.error),
            seed=j.seed,
            user_provided_suffix=j.suffix,
            loopgate=progress,
        )


class Event(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: AnyJSON
    type: Literal["metrics", "message"]

    @classmethod
    def of(cls, e: JobEvent) -> Event:
        kind: Literal["metrics", "message"] = (
            "metrics" if e.data and "step" in e.data else "message"
        )
        return cls(
            id=f"ftevent-{e.seq}",
            created_at=int(e.at),
            level=e.level,
            message=e.message,
            data=_json(e.data),
            type=kind,
        )


# -- admin ------------------------------------------------------------------------------------


class Erased(msgspec.Struct):
    """What an erase reached."""

    erased: int
    end_user: str | None
    datasets: list[str]
    adapter_versions_trained_on_erased: list[str]
    eval_runs: list[str]
    files_pending: list[str]

    @classmethod
    def of(cls, report: ErasureReport) -> Erased:
        done = report.erasure
        return cls(
            done.completions,
            report.end_user,
            list(done.datasets),
            list(done.adapter_versions),
            list(done.eval_runs),
            report.pending,
        )


class OptedOut(msgspec.Struct):
    flagged: int
    end_user: str


class Placement(msgspec.Struct):
    """Where an adapter version is loaded (one replica)."""

    backend: str
    engine_name: str
    state: str
    inflight: int
    served: int
    pinned: bool


class HeldAdapter(msgspec.Struct):
    version: str
    engine_name: str
    state: str
    inflight: int
    served: int
    pinned: bool


class Replica(msgspec.Struct):
    name: str
    ready: bool
    circuit: str  # its circuit breaker: closed, open or half_open (replicas.breaker)
    inflight: int
    adapters: list[HeldAdapter]


class Replicas(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Replica]
    loads: int
    unloads: int


class EvalRunInfo(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["eval.run"] = "eval.run"
    alias: str
    candidate: str
    live: str | None
    status: str
    promote: bool | None
    decision: AnyJSON
    summary: AnyJSON
    report_files: list[str]
    suite_dataset_id: str | None
    erased_at: float | None  # answers to erased cases blanked, report deleted
    error: str | None
    created_by: str
    created_at: float
    finished_at: float | None

    @classmethod
    def of(cls, run: EvalRun) -> EvalRunInfo:
        return cls(
            id=run.id,
            alias=run.alias,
            candidate=run.candidate,
            live=run.live,
            status=run.status,
            promote=run.promote,
            decision=_json(run.decision),
            summary=_json(run.summary),
            report_files=sorted(REPORT_FILES) if run.report_dir else [],
            suite_dataset_id=run.suite_dataset_id,
            erased_at=run.erased_at,
            error=run.error,
            created_by=run.created_by,
            created_at=run.created_at,
            finished_at=run.finished_at,
        )


def model_card(alias: Alias, owner: str, base: str, target: ModelTarget, max_len: int) -> ModelCard:
    adapter = target.target == "adapter"
    return ModelCard(
        id=alias.name,
        created=int(alias.created_at),
        owned_by=owner,
        root=base,
        parent=base if adapter else None,
        max_model_len=max_len,
        metadata=target,
    )


def replica(b: Backend, held: list[HeldAdapter]) -> Replica:
    return Replica(b.name, b.ready, b.breaker.state.value, b.inflight, held)
