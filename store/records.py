"""The records the store keeps: tenants, keys, aliases and their targets, adapter versions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

TargetKind = Literal["base", "adapter"]


class Tenant(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: float
    disabled: bool = False
    store_default: bool = True  # `store` when a request does not say
    redact_pii: bool = True  # PII redaction before anything is written
    retention_days: int | None = None  # captured traffic older than this is purged


class ApiKey(msgspec.Struct, frozen=True):
    id: str
    tenant_id: str
    name: str
    key_hash: str
    created_at: float
    revoked_at: float | None = None


class AliasTarget(msgspec.Struct, frozen=True):
    """What an alias serves: the base model, or one immutable adapter version."""

    kind: TargetKind = "base"
    adapter_version: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "base") != (self.adapter_version is None):
            raise ValueError("a base target has no adapter_version; an adapter target needs one")


AdapterStatus = Literal["candidate", "live", "retired"]


class AdapterVersion(msgspec.Struct, frozen=True):
    """One immutable, content-addressed adapter version and its lineage."""

    id: str
    tenant_id: str
    name: str
    content_hash: str
    base_model: str
    base_hash: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    created_by: str
    status: AdapterStatus
    path: str
    size_bytes: int
    created_at: float
    dataset_id: str | None = None
    eval_report_ids: tuple[str, ...] = ()
    # Its dataset held data that was later erased: promoting it needs force and a reason.
    trained_on_erased: bool = False


class AliasEvent(msgspec.Struct, frozen=True):
    """An audited change of what an alias serves (promote, rollback, set)."""

    seq: int
    tenant_id: str
    alias: str
    action: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str | None
    forced: bool
    at: float


class Alias(msgspec.Struct, frozen=True):
    tenant_id: str
    name: str
    target: AliasTarget
    created_at: float
    updated_at: float


# Each entry is applied once, in order, inside one transaction; never edit a shipped one.


CaptureStatus = Literal["in_progress", "complete", "incomplete", "error"]


class ToolFunction(msgspec.Struct, frozen=True):
    name: str
    arguments: str  # JSON text, as the model wrote it (PII-redacted when the tenant asks)


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call of an assistant answer, in OpenAI's shape."""

    id: str
    type: Literal["function"] = "function"
    function: ToolFunction


_tool_calls = msgspec.json.Decoder(list[ToolCall])


def tool_calls_of(text: str | None) -> list[ToolCall]:
    """A completion's `tool_calls` column (JSON of OpenAI's list) decoded; [] when it has none."""
    return _tool_calls.decode(text) if text else []


class Completion(msgspec.Struct, frozen=True):
    """One captured exchange: what was asked, what answered (which exact version), how it went."""

    id: str
    tenant_id: str
    key_id: str
    kind: Literal["chat", "completion"]
    alias: str
    adapter_version: str | None
    backend: str
    stored: bool
    request: str | None  # JSON of messages/prompt + sampling params (None when not stored)
    response: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    ttft_ms: float | None
    status: CaptureStatus
    error: str | None
    end_user: str | None
    metadata: dict[str, str]
    do_not_train: bool
    request_id: str | None
    created_at: float
    completed_at: float | None
    tool_calls: str | None = None  # JSON of the answer's tool calls (OpenAI's list), if any


class Feedback(msgspec.Struct, frozen=True):
    id: str
    completion_id: str
    tenant_id: str
    rating: Literal["up", "down"] | None
    score: float | None
    correction: str | None
    comment: str | None
    tags: tuple[str, ...]
    author: str  # "user:<end user>" when the caller named one, else "key:<key id>"
    created_at: float
    key_id: str | None = None  # the API key that sent it (None: sent before it was recorded)
    end_user: str | None = None  # the end user that key named (`user`), if any


class CaptureFinal(msgspec.Struct, frozen=True):
    """The end of an exchange, written over its `in_progress` row."""

    id: str
    response: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    ttft_ms: float | None
    status: CaptureStatus
    error: str | None
    completed_at: float
    backend: str | None = None  # set when a retry moved the request to another replica
    tool_calls: str | None = None  # JSON of the answer's tool calls (OpenAI's list), if any
    # Response and tool-call arguments still to be PII-redacted: the capture batch's transform
    # does it off the event loop before the row is written (never stored with this still true).
    redact: bool = False


# Makes a capture batch's rows as stored (PII redaction) from its rows as queued; the store runs
# it where its writes run (off the event loop), just before writing them.
CaptureTransform = Callable[
    [list[Completion], list[CaptureFinal]], tuple[list[Completion], list[CaptureFinal]]
]

ResponseStatus = Literal["completed", "incomplete", "failed"]


class StoredResponse(msgspec.Struct, frozen=True):
    """One Responses-API response: the chat completion it was served as (`completion_id`, whose
    captured row names the adapter version), the response it continues, and -- when stored --
    its settings, input items and output items as JSON (typed by gateway.responses_translate)."""

    id: str
    tenant_id: str
    completion_id: str | None  # None when capture is off (or the row was gone when stored)
    previous_response_id: str | None
    model: str  # the alias the caller named
    stored: bool
    status: ResponseStatus
    request: str | None  # JSON: instructions, metadata, sampling, text, tools (None: unstored)
    input_items: str | None
    output: str | None
    input_tokens: int | None
    output_tokens: int | None
    end_user: str | None
    created_at: float


class CompletionQuery(msgspec.Struct, frozen=True):
    """A page of a tenant's stored completions (OpenAI's list parameters)."""

    tenant_id: str
    alias: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    after: str | None = None
    limit: int = 20
    order: Literal["asc", "desc"] = "asc"


# -- training: uploaded files, dataset snapshots, fine-tuning jobs ------------------------------


class FileObject(msgspec.Struct, frozen=True):
    """An uploaded file (purpose 'fine-tune': chat JSONL, validated line by line on upload)."""

    id: str
    tenant_id: str
    purpose: str
    filename: str
    bytes: int
    lines: int
    path: str
    created_by: str
    created_at: float


DatasetSource = Literal["traffic", "file"]
# What an erasure did to a snapshot's files: `pending` until they are rewritten without the
# erased completions (`rewritten`), or removed because nothing was left (`deleted`).
DatasetErasureState = Literal["pending", "rewritten", "deleted"]


class Dataset(msgspec.Struct, frozen=True):
    """A dataset snapshot; `tainted_at` is set when examples it used are later erased, and
    `erasure` says what became of its files (`erased_examples`: data lines removed so far)."""

    id: str
    tenant_id: str
    content_hash: str
    source: DatasetSource
    source_file_id: str | None
    train_count: int
    eval_count: int
    preference_count: int
    path: str
    stats: str  # JSON of the builder's stats report
    created_by: str
    created_at: float
    tainted_at: float | None = None
    taint_reason: str | None = None
    erasure: DatasetErasureState | None = None
    erased_examples: int = 0


BuildStatus = Literal["queued", "building", "ready", "needs_review", "failed"]


class DatasetBuild(msgspec.Struct, frozen=True, kw_only=True):
    """A queued dataset build, claimed and run by a training worker (`training.dataset_builds`).

    `config`, `override` and `limits` are what the gateway asked for (JSON of
    `training.dataset_config.DatasetConfig`, `training.build_records.DatasetOverride` and the
    quota `Usage` the saved dataset must stay within); the worker fills in the outcome:
    `dataset_id` (ready), `report` (needs_review: the guards' review and flags) or `error`
    (failed: JSON of `training.build_records.BuildError`)."""

    id: str
    tenant_id: str
    created_by: str
    source: DatasetSource
    file_id: str | None
    config: str
    override: str | None
    limits: str | None
    status: BuildStatus
    created_at: float
    attempts: int = 0
    worker: str | None = None
    claimed_at: float | None = None
    heartbeat_at: float | None = None
    finished_at: float | None = None
    dataset_id: str | None = None
    report: str | None = None
    error: str | None = None


class DatasetErasure(msgspec.Struct, frozen=True):
    """A snapshot after its files were rewritten without erased completions (or deleted)."""

    state: Literal["rewritten", "deleted"]
    train_count: int
    eval_count: int
    preference_count: int
    stats: str  # the dataset row's `stats` JSON, with erased authors and flags removed


class Erasure(msgspec.Struct, frozen=True):
    """What one erase reached: the completions deleted, the snapshots that held them (their
    files are rewritten next), the adapter versions trained on those snapshots (now marked
    `trained_on_erased`), and the eval runs whose answers to their cases were blanked."""

    completions: int
    datasets: tuple[str, ...] = ()
    adapter_versions: tuple[str, ...] = ()
    eval_runs: tuple[str, ...] = ()


JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
JobStage = Literal["queued", "training", "registering", "done"]
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class FineTuningJob(msgspec.Struct, frozen=True):
    """A fine-tuning job; the store is its only state (workers and gateways come and go)."""

    id: str
    tenant_id: str
    created_by: str
    model: str  # the alias the caller asked to fine-tune
    base_model: str  # the engine-side base model name
    base_adapter: str | None  # the adapter version the alias served (lineage), if any
    training_file: str | None
    validation_file: str | None
    dataset_id: str | None
    hyperparameters: str  # JSON of the resolved training config
    suffix: str | None
    seed: int
    status: JobStatus
    stage: JobStage
    created_at: float
    fine_tuned_model: str | None = None
    adapter_version: str | None = None
    output_dir: str | None = None  # the trained adapter, awaiting registration
    result: str | None = None  # JSON: training metrics, parity report
    error: str | None = None  # JSON: {"code", "message", "param"}
    trained_tokens: int | None = None
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    heartbeat_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


class JobChanges(msgspec.Struct, frozen=True, omit_defaults=True):
    """Columns of a job to change; UNSET fields are left alone."""

    status: JobStatus | msgspec.UnsetType = msgspec.UNSET
    stage: JobStage | msgspec.UnsetType = msgspec.UNSET
    dataset_id: str | msgspec.UnsetType = msgspec.UNSET
    fine_tuned_model: str | msgspec.UnsetType = msgspec.UNSET
    adapter_version: str | msgspec.UnsetType = msgspec.UNSET
    output_dir: str | msgspec.UnsetType | None = msgspec.UNSET
    result: str | msgspec.UnsetType = msgspec.UNSET
    error: str | msgspec.UnsetType | None = msgspec.UNSET
    trained_tokens: int | msgspec.UnsetType = msgspec.UNSET
    worker: str | msgspec.UnsetType | None = msgspec.UNSET
    heartbeat_at: float | msgspec.UnsetType = msgspec.UNSET
    finished_at: float | msgspec.UnsetType = msgspec.UNSET

    def columns(self) -> dict[str, object]:
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not msgspec.UNSET
        }


class JobEvent(msgspec.Struct, frozen=True):
    seq: int
    job_id: str
    level: Literal["info", "warn", "error"]
    message: str
    data: str | None  # JSON of structured metrics (step, loss, tokens/s ...)
    at: float


class JobCheckpoint(msgspec.Struct, frozen=True):
    """An adapter a job saved at the end of an epoch while training (registrable as a candidate
    version by an admin); `adapter_version` once it was registered."""

    id: str  # ftckpt_<hex>
    job_id: str
    tenant_id: str
    step: int
    epoch: float
    train_loss: float | None
    valid_loss: float | None
    path: str
    fine_tuned_model_checkpoint: str  # its model name once registered: `<ft name>:ckpt-step-N`
    created_at: float
    adapter_version: str | None = None


# -- evals, the promotion gate, canaries ----------------------------------------------------------

EvalStatus = Literal["queued", "running", "done", "failed"]


class EvalRun(msgspec.Struct, frozen=True):
    """One comparison of a candidate with the alias's live version and the base."""

    id: str
    tenant_id: str
    alias: str
    candidate: str  # adapter version id
    live: str | None  # the live adapter version (None: the alias served the base)
    status: EvalStatus
    created_by: str
    created_at: float
    promote: bool | None = None  # the gate's verdict, once done
    decision: str | None = None  # JSON: the gate decision with its reasons
    summary: str | None = None  # JSON: per-suite means, deltas, CIs, latency
    report_dir: str | None = None
    error: str | None = None
    finished_at: float | None = None
    suite_dataset_id: str | None = None  # the dataset whose held-out split was the tenant suite
    erased_at: float | None = None  # answers to erased cases blanked, the report to be deleted
    spec: str | None = None  # JSON: what the evals worker needs (evals.spec.RunSpec)
    worker: str | None = None  # the evals worker running it (claimed), with its heartbeat
    heartbeat_at: float | None = None
    attempts: int = 0  # claims so far; a run whose worker went silent is queued again


class LoopRecord(msgspec.Struct, frozen=True):
    """One adaptation loop run, advanced step by step by an evals worker (evals.loop_run).

    `status` is `running` until it ends; a running row with no `worker` waits to be claimed.
    `spec` (the request) and `state` (steps, ids, verdict) are JSON typed by evals.loop_record.
    """

    id: str
    tenant_id: str
    alias: str
    status: str
    spec: str
    state: str
    created_at: float
    worker: str | None = None
    heartbeat_at: float | None = None
    attempts: int = 0
    finished_at: float | None = None


RolloutStatus = Literal["running", "promoted", "rolled_back", "aborted"]


class RolloutRecord(msgspec.Struct, frozen=True):
    """A promotion controller's run on one alias (gateway.rollout): offline gate → shadow →
    canary steps → full. `running` until it ends, advanced by the one gateway process holding
    its lease (`owner` until `lease_until`); `policy` and `state` are JSON typed by
    gateway.rollout_policy."""

    id: str
    tenant_id: str
    alias: str
    version: str
    status: str
    stage: str
    policy: str
    state: str
    actor: str
    created_at: float
    updated_at: float
    owner: str | None = None
    lease_until: float | None = None
    finished_at: float | None = None


class CaseSource(msgspec.Struct, frozen=True):
    """An eval case that came from a captured completion (a held-out example's lineage)."""

    suite: str
    case_id: str
    completion_id: str


class EvalResult(msgspec.Struct, frozen=True):
    run_id: str
    suite: str
    case_id: str
    system: str  # "candidate" | "live" | "base"
    score: float
    passed: bool
    latency_ms: float | None
    answer: str
    reasons: str = ""  # the grader's, one per check, '; '-joined


CanaryStatus = Literal["active", "promoted", "rolled_back", "stopped"]


class Canary(msgspec.Struct, frozen=True):
    """A share of an alias's traffic (sticky per end-user) sent to a candidate version."""

    id: str
    tenant_id: str
    alias: str
    version: str
    percent: float
    thresholds: str  # JSON of the rollback thresholds
    status: CanaryStatus
    actor: str
    started_at: float
    reason: str | None = None
    ended_at: float | None = None


BudgetPeriod = Literal["day", "month"]


class LimitSet(msgspec.Struct, frozen=True):
    """A tenant's (key_id "") or one key's limits; None means unlimited."""

    tenant_id: str
    key_id: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    max_tokens_per_request: int | None = None
    token_budget: int | None = None
    budget_period: BudgetPeriod = "month"
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, or null for unlimited")

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, name) is None for name in LIMIT_FIELDS)


LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent",
    "max_tokens_per_request",
    "token_budget",
)


class Charge(msgspec.Struct, frozen=True):
    """An amount against one fixed-window counter (scope, window), capped at `limit`."""

    scope: str
    window: int
    amount: int
    limit: int
    expires_at: float  # the counter row may be purged after this


class Reservation(msgspec.Struct, frozen=True):
    """All charges granted, or none: `used` per charge (after it when granted, else without
    it); `denied` is the index of the first charge that did not fit."""

    granted: bool
    used: list[int]
    denied: int | None = None


# -- per-tenant fair shares of the training machine: bounds and quotas ---------------------------

QUOTA_FIELDS = (
    "max_epochs",
    "max_batch_size",
    "max_seq_length",
    "max_train_examples",
    "max_queued_jobs",
    "max_jobs_per_day",
    "max_files",
    "max_file_bytes",
    "max_datasets",
    "max_eval_runs_per_day",
    "max_active_batches",
    "max_batch_lines",
)


class TenantQuotas(msgspec.Struct, frozen=True):
    """A tenant's own fine-tuning bounds and quotas, set by the admin; None: the gateway's
    default (`LOOPGATE_TENANT_<NAME>`). See `gateway.quotas`."""

    tenant_id: str
    max_epochs: int | None = None
    max_batch_size: int | None = None
    max_seq_length: int | None = None
    max_train_examples: int | None = None
    max_queued_jobs: int | None = None
    max_jobs_per_day: int | None = None
    max_files: int | None = None
    max_file_bytes: int | None = None
    max_datasets: int | None = None
    max_eval_runs_per_day: int | None = None
    max_active_batches: int | None = None
    max_batch_lines: int | None = None
    updated_at: float = 0.0

    @property
    def unset(self) -> bool:
        return all(getattr(self, name) is None for name in QUOTA_FIELDS)


class Usage(msgspec.Struct, frozen=True):
    """The counts a tenant's quotas cap: what it keeps, and what it started in the last day.

    Also the shape of the caps themselves and of what one new row adds (`over`)."""

    files: int = 0
    file_bytes: int = 0
    datasets: int = 0
    queued_jobs: int = 0
    jobs_last_day: int = 0
    eval_runs_last_day: int = 0
    active_batches: int = 0  # batches not yet ended (validating ... finalizing, cancelling)

    def over(self, limits: Usage, adding: Usage) -> str | None:
        """The first count that `adding` would take past its limit (None: everything fits).
        Only the counts `adding` grows are checked: a tenant at its file quota may still
        start a job."""
        for name in self.__struct_fields__:
            extra = getattr(adding, name)
            if extra > 0 and getattr(self, name) + extra > getattr(limits, name):
                return name
        return None


# -- the Batch API (gateway.batches, evals.batch_runner) -----------------------------------------

BatchStatus = Literal[
    "validating",  # accepted, waiting for an evals worker
    "in_progress",
    "finalizing",  # every line answered: the output and error files are being written
    "completed",
    "failed",
    "expired",
    "cancelling",  # no new line is sent; the partial output is written next
    "cancelled",
]
ACTIVE_BATCH = ("validating", "in_progress", "finalizing", "cancelling")


class BatchRecord(msgspec.Struct, frozen=True):
    """A tenant's batch of requests from an uploaded JSONL file (OpenAI's Batch object)."""

    id: str
    tenant_id: str
    key_id: str  # the creating key: its limits apply to the batch's lines
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    metadata: dict[str, str]
    model: str | None
    total: int
    created_at: float
    expires_at: float
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None  # why the whole batch failed
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    worker: str | None = None
    heartbeat_at: float | None = None
    attempts: int = 0


class BatchResult(msgspec.Struct, frozen=True):
    """The outcome of one input line (1-based `line`): the gateway's answer (status, request id
    and JSON body), or no answer and an error code (e.g. `batch_expired`)."""

    batch_id: str
    line: int
    custom_id: str
    status_code: int | None
    request_id: str | None
    body: str | None
    error_code: str | None = None
    error_message: str | None = None
    created_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# -- the console's overview ---------------------------------------------------------------------


class TrafficBucket(msgspec.Struct, frozen=True):
    """One tenant's captured requests in one time bucket of a window, and how many failed."""

    tenant_id: str
    bucket: int  # the bucket's index from the window's start (0 is the oldest)
    requests: int
    errors: int  # captured with status 'error' or 'incomplete'


class ActiveWork(msgspec.Struct, frozen=True):
    """Work not yet ended, newest first: fine-tuning jobs (queued, training, registering), eval
    runs (queued, running) and loop runs (running)."""

    jobs: list[FineTuningJob]
    evals: list[EvalRun]
    loops: list[LoopRecord]


# The objects the console links to by id alone (`Store.owner_of` says whose each is; a
# fine-tuning job is found by its id already: `Store.get_job`).
OwnedKind = Literal["eval_run", "dataset", "loop_run"]


class ReviewCandidate(msgspec.Struct, frozen=True):
    """A captured completion waiting for a person's review, why it waits, and how many do."""

    completion: Completion
    negative: int  # feedback rating it down or scoring it below the threshold
    positive: int  # feedback rating it up or scoring it at or above the threshold
    low_score: float | None  # the lowest grader score of an eval case taken from it, if low
    waiting: int  # the tenant's completions waiting for review, this one included


# -- canary counts shared by every gateway; shadow evaluation (store.shadow_sql) -----------------

CanaryArm = Literal["canary", "live"]


class ArmCounts(msgspec.Struct, frozen=True):
    """One canary arm's requests, errors and latency histogram (store.latency buckets): one
    gateway's delta since its last flush, or the sum over every gateway."""

    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = msgspec.field(default_factory=dict)  # bucket -> answers


class CanaryDelta(msgspec.Struct, frozen=True):
    canary_id: str
    arm: CanaryArm
    counts: ArmCounts


ShadowStatus = Literal["active", "stopped"]


class Shadow(msgspec.Struct, frozen=True):
    """A share of an alias's live traffic mirrored to a candidate version (never answered to
    the client); `checks` is JSON of the evals.checks list its pairs are graded with."""

    id: str  # sh_<hex>
    tenant_id: str
    alias: str
    version: str
    share: float
    max_inflight: int
    per_minute: int
    checks: str
    status: ShadowStatus
    actor: str
    started_at: float
    skipped: int = 0  # samples skipped for the budget, by every gateway
    ended_at: float | None = None
    reason: str | None = None


ShadowVerdict = Literal["win", "loss", "tie", "ungradable"]


class ShadowPair(msgspec.Struct, frozen=True):
    """A live answer and the candidate's answer to the same request; graded later."""

    id: str  # shp_<hex>
    shadow_id: str
    tenant_id: str
    alias: str
    live_completion_id: str  # the request's ref: its captured completion (deleted with it)
    request_id: str
    live_version: str | None
    candidate_version: str
    live_answer: str
    candidate_answer: str | None  # None: the candidate failed (`candidate_error`)
    candidate_error: str | None
    candidate_latency_ms: float | None
    created_at: float
    verdict: ShadowVerdict | None = None  # None until an evals worker graded it
    live_score: float | None = None
    candidate_score: float | None = None
    reasons: str = ""
    graded_at: float | None = None


class ShadowSummary(msgspec.Struct, frozen=True):
    """Every pair of one alias's shadow of one candidate version (all its runs), counted."""

    pairs: int
    graded: int  # wins + losses + ties
    wins: int
    losses: int  # candidate errors count as losses
    ties: int
    ungradable: int
    candidate_errors: int
    skipped_for_budget: int
    mean_live_score: float | None
    mean_candidate_score: float | None

    @property
    def loss_rate(self) -> float | None:
        return self.losses / self.graded if self.graded else None


JudgeKind = Literal["alias", "external"]


class JudgeConfig(msgspec.Struct, frozen=True):
    """A tenant's LLM judge: one of its aliases (`alias`), or an external OpenAI-compatible
    endpoint (`base_url`, `model`, the API key sealed by gateway.judges; `key_hint` masked)."""

    tenant_id: str
    kind: JudgeKind
    alias: str | None
    base_url: str | None
    model: str | None
    api_key_sealed: str | None
    key_hint: str | None
    max_tokens: int
    timeout_s: float
    created_at: float
    updated_at: float
