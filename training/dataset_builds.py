"""Dataset builds on a training worker: claim a queued build, run the builder, save the dataset.

The gateway only enqueues a build (a `dataset_builds` row) and reads its outcome. Here, in the
worker process, a build is claimed (fair across tenants), its source read (the tenant's captured
traffic and feedback, or an uploaded file), run through `training.dataset` (selection → PII
redaction → quality → dedupe → poisoning guards → split, tokens counted with the base model's
tokenizer), written to `<training_dir>/datasets/<tenant>/<id>/` and recorded with its lineage.
The build then ends `ready` (with the dataset's id), `needs_review` (the guards stopped a
traffic snapshot: nothing saved; an uploaded file is its owner's own data) or `failed` (a
`BuildError`, which the gateway renders as the request's answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec

from replicas.base_model import ModelError, resolve_model
from replicas.chat_template import template_text
from store import Dataset, DatasetBuild, Store, Usage
from store.errors import InvalidRequest, LoopgateError, Unprocessable
from store.settings import Settings
from training.build_records import BuildError, DatasetOverride, DatasetReport, ReviewStop
from training.chat import Conversation, tools_of
from training.dataset import completion_ids, from_conversations, from_traffic
from training.dataset_config import DatasetConfig
from training.jsonl import JsonlError, TrainingLine, validate_training_jsonl
from training.snapshot import CountTokens, Snapshot, write_snapshot
from training.snapshot_erasure import flagged_completion_ids

log = logging.getLogger("loopgate.dataset_builds")
MAX_LINES = 100_000
MAX_LINE_BYTES = 1024 * 1024
KEEP_FINISHED_S = 3600.0  # a finished build's row outlives its caller's wait by this much


@dataclass(frozen=True)
class BuildEnv:
    """What a worker needs to build datasets (from Settings, never from the requester)."""

    worker_id: str
    training_dir: Path
    base_dir: Path | None  # the base model's folder, for its tokenizer; None: count words
    heartbeat_s: float
    stale_after_s: float
    max_requeues: int


def build_env(settings: Settings, worker_id: str) -> BuildEnv:
    try:
        base: Path | None = Path(resolve_model(settings, prepare=False))
    except ModelError:
        base = None
    return BuildEnv(
        worker_id=worker_id,
        training_dir=settings.training_path,
        base_dir=base,
        heartbeat_s=settings.job_heartbeat_s,
        stale_after_s=settings.job_stale_after_s,
        max_requeues=settings.job_max_requeues,
    )


def dataset_id(tenant_id: str, content_hash: str) -> str:
    """Content-addressed within a tenant: two tenants with the same data get different ids."""
    return "ds-" + hashlib.sha256(f"{tenant_id}:{content_hash}".encode()).hexdigest()[:16]


class QuotaPassed(Exception):
    """Saving would pass the tenant's quota named `over` (a `Usage` field)."""

    def __init__(self, over: str):
        super().__init__(over)
        self.over = over


class DatasetBuilder:
    """Claims and runs queued dataset builds; one at a time per builder."""

    def __init__(self, store: Store, env: BuildEnv):
        self.store = store
        self.env = env
        self._tidied_at = -float("inf")  # monotonic time of the last requeue/purge pass

    async def serve(self, stopping: asyncio.Event, poll_s: float = 0.5) -> None:
        """Build until `stopping` is set, polling the queue every `poll_s` when it is empty."""
        while not stopping.is_set():
            try:
                built = await self.run_once()
            except Exception:  # the store hiccupped: try again on the next pass
                log.exception("claiming a dataset build failed")
                built = False
            if not built:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), poll_s)

    async def run_once(self) -> bool:
        """Claim one queued build and run it; False when the queue is empty."""
        if time.monotonic() - self._tidied_at >= self.env.heartbeat_s:
            # Once a heartbeat, not on every poll: each pass is a write transaction, and an idle
            # worker should not keep taking SQLite's write lock from the gateway.
            self._tidied_at = time.monotonic()
            await self._tidy()
        build = await self.store.claim_dataset_build(self.env.worker_id)
        if build is None:
            return False
        log.info("building dataset %s for tenant %s (%s)", build.id, build.tenant_id, build.source)
        beat = asyncio.create_task(self._heartbeat(build))
        try:
            await self._run(build)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return True

    async def _tidy(self) -> None:
        before = time.time() - self.env.stale_after_s
        for build_id, status in await self.store.requeue_stale_builds(
            before, self.env.max_requeues
        ):
            log.warning("dataset build %s lost its worker; now %s", build_id, status)
        await self.store.purge_dataset_builds(time.time() - KEEP_FINISHED_S)

    async def _heartbeat(self, build: DatasetBuild) -> None:
        while True:
            await asyncio.sleep(self.env.heartbeat_s)
            with contextlib.suppress(Exception):  # a missed beat is retried on the next one
                await self.store.heartbeat_dataset_build(build.id, self.env.worker_id)

    async def _run(self, build: DatasetBuild) -> None:
        finish = self.store.finish_dataset_build
        worker = self.env.worker_id
        try:
            snapshot = await self._snapshot(build)
            if build.source == "traffic" and snapshot.review.status == "needs_review":
                stop = msgspec.json.encode(ReviewStop(snapshot.review, snapshot.flags)).decode()
                await finish(build.id, worker, "needs_review", report=stop)
                return
            saved = await self._save(build, snapshot)
        except LoopgateError as exc:
            error = BuildError(exc.status, exc.message, exc.code, exc.param)
            await finish(build.id, worker, "failed", error=_encode(error))
        except QuotaPassed as exc:
            error = BuildError(429, f"quota {exc.over}", "quota_exceeded", over=exc.over)
            await finish(build.id, worker, "failed", error=_encode(error))
        except Exception as exc:  # anything unexpected fails the build, with a clean message
            log.exception("dataset build %s failed", build.id)
            message = f"the dataset build failed unexpectedly ({type(exc).__name__}: {exc})"
            error = BuildError(500, message, "dataset_build_failed")
            await finish(build.id, worker, "failed", error=_encode(error))
        else:
            await finish(build.id, worker, "ready", dataset_id=saved.id)

    # -- 1. the snapshot: the source through the builder (in threads: it is CPU work) ----------

    async def _snapshot(self, build: DatasetBuild) -> Snapshot:
        config = msgspec.json.decode(build.config, type=DatasetConfig)
        counter = await asyncio.to_thread(lambda: self._counter)
        if build.source == "traffic":
            rows = await self.store.export_completions(build.tenant_id)
            opted_out = await self.store.list_optouts(build.tenant_id)
            return await asyncio.to_thread(
                lambda: from_traffic(rows, opted_out=opted_out, config=config, count_tokens=counter)
            )
        f = await self.store.get_file(build.tenant_id, build.file_id or "")
        if f is None:
            raise InvalidRequest(f"invalid training_file: {build.file_id}", param="training_file")
        data = await asyncio.to_thread(Path(f.path).read_bytes)
        lines = await asyncio.to_thread(_validate, data)
        return await asyncio.to_thread(
            lambda: from_conversations(
                [line.conversation for line in lines],
                author=f.created_by,
                source_id=f.id,
                config=config,
                count_tokens=counter,
                rejected=[line.rejected for line in lines],
            )
        )

    @cached_property
    def _tokenizer(self) -> Any:
        if self.env.base_dir is None:
            log.warning("the base model's files are not on this host; counting words")
            return None
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.env.base_dir)
            template = template_text(None, self.env.base_dir)  # the one training renders with
            if template is not None:
                tokenizer.chat_template = template
            return tokenizer
        except (OSError, ValueError):
            log.warning("the base model's tokenizer is not available here; counting words")
            return None

    @cached_property
    def _counter(self) -> CountTokens | None:
        tokenizer = self._tokenizer
        if tokenizer is None:
            return None

        def count(conversation: Conversation) -> int:
            tools = tools_of(conversation)
            encoded = tokenizer.apply_chat_template(list(conversation), tools=tools, tokenize=True)
            ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
            return len(ids)

        return count

    # -- 2. the saved dataset: files first, then the row (within the quota) ---------------------

    async def _save(self, build: DatasetBuild, snapshot: Snapshot) -> Dataset:
        if not snapshot.train:
            raise Unprocessable(
                "no usable training examples: "
                + json.dumps(msgspec.to_builtins(snapshot.stats.counts)),
                code="empty_dataset",
            )
        ds_id = dataset_id(build.tenant_id, snapshot.content_hash)
        existing = await self.store.get_dataset(build.tenant_id, ds_id)
        if existing is not None and existing.tainted_at is None:
            return existing  # the same data again: the same dataset
        if existing is not None:
            ds_id += "-" + secrets.token_hex(3)
        folder = self.env.training_dir / "datasets" / build.tenant_id / ds_id
        await asyncio.to_thread(write_snapshot, snapshot, folder)
        d = _record(build, snapshot, ds_id, folder)
        # Lineage for erasure: the completions it trains on, and those only its flags name.
        flagged = flagged_completion_ids(snapshot) if build.source == "traffic" else set()
        limits = None if build.limits is None else msgspec.json.decode(build.limits, type=Usage)
        over = await self.store.add_dataset(d, completion_ids(snapshot), limits, flagged=flagged)
        if over is not None:  # another snapshot took the room since the gateway's check
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise QuotaPassed(over)
        return d


def _record(build: DatasetBuild, snapshot: Snapshot, ds_id: str, folder: Path) -> Dataset:
    override = (
        None
        if build.override is None
        else msgspec.json.decode(build.override, type=DatasetOverride)
    )
    report = DatasetReport(snapshot.stats, snapshot.flags, snapshot.review, override)
    return Dataset(
        id=ds_id,
        tenant_id=build.tenant_id,
        content_hash=snapshot.content_hash,
        source=build.source,
        source_file_id=build.file_id,
        train_count=len(snapshot.train),
        eval_count=len(snapshot.eval),
        preference_count=len(snapshot.preferences),
        path=str(folder),
        stats=msgspec.json.encode(report).decode(),
        created_by=build.created_by,
        created_at=time.time(),
    )


def _validate(data: bytes) -> list[TrainingLine]:
    try:
        return validate_training_jsonl(data, max_lines=MAX_LINES, max_line_bytes=MAX_LINE_BYTES)
    except JsonlError as exc:
        raise InvalidRequest(str(exc), param="file", code="invalid_file") from None


def _encode(error: BuildError) -> str:
    return msgspec.json.encode(error).decode()
