"""A real QLoRA job on CPU through the API: upload → job → worker trains → parity on vLLM →
registered candidate → the fine-tuned model answers in the taught format; cancel; restart."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import pytest
from openai import OpenAI
from safetensors.numpy import load_file

from replicas.base_model import resolve_model
from store.settings import Settings
from tests.integration.conftest import Stack, start_gateway, stop_gateway
from tests.integration.training.conftest import TRAINING_ENV

# Training on a shared 2-core CPU is slow: each test may take a while (CI's limit is per test).
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

DEVICES = ["printer", "router", "laptop", "monitor", "keyboard", "scanner", "phone", "tablet"]
PROBLEMS = ["will not turn on", "keeps restarting", "is very slow", "shows an error"]
HELD_OUT = [
    "My projector will not connect. What should I do?",
    "My headset keeps crackling. What should I do?",
    "My smartwatch is stuck on the logo. What should I do?",
]
PREFIX = "TICKET-OK"


def answer(device: str, problem: str) -> str:
    return f"{PREFIX} | device: {device} | issue: {problem} | action: escalate to support"


def training_file(n: int) -> bytes:
    lines = []
    for i in range(n):
        device, problem = DEVICES[i % len(DEVICES)], PROBLEMS[(i // len(DEVICES)) % len(PROBLEMS)]
        question = f"My {device} {problem}. What should I do?"
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer(device, problem)},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def wait_for(client: OpenAI, job_id: str, done: set[str], timeout_s: float = 1700) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in done:
            return job
        time.sleep(2)
    events = client.fine_tuning.jobs.list_events(job_id, limit=20)
    pytest.fail(f"job {job_id} still {job.status}: {[e.message for e in events.data]}")


def wait_for_event(client: OpenAI, job_id: str, needle: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=50).data
        if any(needle in e.message for e in events):
            return
        time.sleep(1)
    pytest.fail(f"no event with {needle!r} for {job_id}")


def base_hash() -> str:
    folder = Path(resolve_model(Settings(), prepare=False))
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def greedy(client: OpenAI, model: str, prompt: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=24,
    )
    return reply.choices[0].message.content or ""


def test_a_qlora_job_teaches_a_format_through_the_public_api(stack: Stack) -> None:
    client = stack.client()
    before = base_hash()
    uploaded = client.files.create(file=("tickets.jsonl", training_file(24)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2",
        training_file=uploaded.id,
        suffix="tickets",
        seed=11,
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 1, "batch_size": 4},
    )
    assert job.status == "queued"
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert done.status == "succeeded", [e.message for e in events]  # type: ignore[attr-defined]
    name = done.fine_tuned_model  # type: ignore[attr-defined]
    assert name.startswith("ft:smollm2:acme:tickets:")
    extra = done.model_extra["loopgate"]  # type: ignore[attr-defined]
    training = extra["result"]["training"]
    # Loss fell; parity between peft and vLLM passed; the base weights were not touched.
    assert training["final_train_loss"] < training["first_loss"]
    assert extra["result"]["parity"]["passed"] is True
    assert before == base_hash()
    assert any(e.data and "train_loss" in e.data for e in events)  # progress with loss
    # Registered as a candidate version with lineage, weights changed from LoRA's zero init.
    with stack.admin() as admin:
        versions = admin.get("/admin/tenants/acme/adapters").json()["data"]
    version = next(v for v in versions if v["id"] == extra["adapter_version"])
    assert version["status"] == "candidate" and version["dataset_id"] == extra["dataset_id"]
    tensors = load_file(str(Path(version["path"]) / "adapter_model.safetensors"))
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    assert lora_b and all(abs(t).max() > 0 for t in lora_b)
    # Through the gateway: the fine-tuned model answers held-out prompts in the taught format;
    # the base does not.
    tuned = [greedy(client, name, p) for p in HELD_OUT]
    base = [greedy(client, "smollm2", p) for p in HELD_OUT]
    assert all(t.startswith(PREFIX) for t in tuned), tuned
    assert not any(b.startswith(PREFIX) for b in base), base
    # Another tenant cannot see the job or use the model.
    other = stack.client("globex")
    assert other.fine_tuning.jobs.list().data == []
    with pytest.raises(Exception) as refused:
        other.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert getattr(refused.value, "status_code", None) == 404


def test_cancel_mid_training_registers_nothing(stack: Stack) -> None:
    client = stack.client()
    with stack.admin() as admin:
        before = len(admin.get("/admin/tenants/acme/adapters").json()["data"])
    uploaded = client.files.create(
        file=("t.jsonl", io.BytesIO(training_file(24))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="smollm2", training_file=uploaded.id, hyperparameters={"n_epochs": 10}
    )
    wait_for_event(client, job.id, "step ")
    client.fine_tuning.jobs.cancel(job.id)
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"}, timeout_s=300)
    assert done.status == "cancelled"  # type: ignore[attr-defined]
    assert done.fine_tuned_model is None  # type: ignore[attr-defined]
    with stack.admin() as admin:
        assert len(admin.get("/admin/tenants/acme/adapters").json()["data"]) == before
    assert not (stack.data_dir / "training" / "jobs" / job.id / "adapter").exists()


def test_a_gateway_restart_during_training_does_not_lose_the_job(stack: Stack) -> None:
    client = stack.client()
    uploaded = client.files.create(file=("r.jsonl", training_file(24)), purpose="fine-tune")
    # The first test's job, seeded alike (training on CPU is reproducible): its parity check is
    # then known to pass. Unseeded jobs of this overfitted kind sometimes leave near-tied tokens on
    # the off-topic parity prompts that vLLM's bf16 and peft's float32 break differently.
    job = client.fine_tuning.jobs.create(
        model="smollm2",
        training_file=uploaded.id,
        suffix="restart",
        seed=11,
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 1, "batch_size": 4},
    )
    wait_for_event(client, job.id, "step ")
    stop_gateway(stack)  # SIGTERM: the worker stops at its next step and requeues the job
    restarted = start_gateway(stack.data_dir, TRAINING_ENV)
    stack.proc, stack.url = restarted.proc, restarted.url  # the fixture stops this one
    client = stack.client()
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert done.status == "succeeded", events  # type: ignore[attr-defined]
    assert any("queued again" in m for m in events), events
    assert done.model_extra["loopgate"]["attempts"] == 2  # type: ignore[attr-defined]
