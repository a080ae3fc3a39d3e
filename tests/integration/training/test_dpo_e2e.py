"""A real DPO job on CPU through the API (issue #23): preference pairs in OpenAI's shape and a
validation file → the worker trains with TRL's DPOTrainer (QLoRA) → parity on vLLM → candidate;
the preferred answer's rate through vLLM goes up; per-epoch checkpoints are listed with their
losses and one registers as a candidate the engine serves."""

from __future__ import annotations

import json
from urllib.parse import quote

from openai import OpenAI

from tests.integration.conftest import Stack
from tests.integration.training.test_finetuning_e2e import (
    DEVICES,
    HELD_OUT,
    PREFIX,
    PROBLEMS,
    answer,
    pytestmark,  # noqa: F401  (engine-marked, long timeout: as the SFT tests)
    wait_for,
)

SAMPLES = 4  # per held-out prompt, at temperature 0.7


def preference_file(n: int, offset: int = 0) -> bytes:
    """Preferred: the ticket format; rejected: the chatty answer the base gives by itself."""
    lines = []
    for i in range(offset, offset + n):
        device, problem = DEVICES[i % len(DEVICES)], PROBLEMS[(i // len(DEVICES)) % len(PROBLEMS)]
        question = f"My {device} {problem}. What should I do?"
        lines.append(
            json.dumps(
                {
                    "input": {"messages": [{"role": "user", "content": question}]},
                    "preferred_output": [{"role": "assistant", "content": answer(device, problem)}],
                    "non_preferred_output": [
                        {
                            "role": "assistant",
                            "content": f"Sorry to hear your {device} {problem}! Try restarting "
                            "it, and check the cables.",
                        }
                    ],
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def preferred_rate(client: OpenAI, model: str) -> float:
    """The share of sampled answers to held-out prompts that take the preferred format."""
    hits = 0
    for prompt in HELD_OUT:
        for seed in range(SAMPLES):
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0.7,
                max_tokens=16,
                seed=seed,
            )
            hits += (reply.choices[0].message.content or "").startswith(PREFIX)
    return hits / (len(HELD_OUT) * SAMPLES)


def test_a_dpo_job_raises_the_preferred_answer_s_rate_through_vllm(stack: Stack) -> None:
    client = stack.client()
    train = client.files.create(file=("pairs.jsonl", preference_file(24)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", preference_file(4, 24)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2",
        training_file=train.id,
        validation_file=valid.id,
        suffix="dpo",
        seed=3,
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": 0.1,
                    "n_epochs": 2,
                    "batch_size": 4,
                    "learning_rate_multiplier": 1,
                }
            },
        },
    )
    assert job.method is not None and job.method.type == "dpo"
    assert job.validation_file == valid.id and job.seed == 3
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert done.status == "succeeded", [e.message for e in events]  # type: ignore[attr-defined]
    extra = done.model_extra["loopgate"]  # type: ignore[attr-defined]
    assert extra["result"]["parity"]["passed"] is True
    assert extra["result"]["training"]["config"]["method"] == "dpo"
    assert any(isinstance(e.data, dict) and "valid_loss" in e.data for e in events)
    name = done.fine_tuned_model  # type: ignore[attr-defined]
    base_rate, tuned_rate = preferred_rate(client, "smollm2"), preferred_rate(client, name)
    print(f"preferred-format rate through vLLM: base {base_rate:.0%}, DPO {tuned_rate:.0%}")
    assert tuned_rate >= base_rate + 0.5, (base_rate, tuned_rate)
    # One checkpoint per epoch, newest first, with its losses; one registers and is served.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 2 and checkpoints[0].step_number > checkpoints[1].step_number
    assert all(c.metrics.valid_loss is not None for c in checkpoints)
    first = checkpoints[-1]
    with stack.admin() as admin:
        path = f"/admin/tenants/acme/fine_tuning/jobs/{job.id}/checkpoints/{first.id}/register"
        registered = admin.post(path)
        assert registered.status_code == 200, registered.text
    reply = client.chat.completions.create(
        model=first.fine_tuned_model_checkpoint,
        messages=[{"role": "user", "content": HELD_OUT[0]}],
        temperature=0,
        max_tokens=16,
    )
    assert reply.choices[0].message.content
    # Hand the engine's LoRA slots back: every alias keeps its adapter loaded (pinned), and the
    # training tests after this one share the engine and its few slots.
    with stack.admin() as admin:
        for model in (first.fine_tuned_model_checkpoint, name):
            resp = admin.put(f"/admin/tenants/acme/aliases/{quote(model, safe='')}", json={})
            assert resp.status_code == 200, resp.text
