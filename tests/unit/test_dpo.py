"""DPO training (training.dpo): a tiny real run on the bundled base moves the preference margin,
and a DPO file's pairs reach the trainer through the dataset builder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.lora_factory import default_base_dir
from training.chat import ChatMessage, Conversation
from training.dataset import from_conversations
from training.dataset_config import DatasetConfig
from training.dpo import preference_rows, train_dpo
from training.jsonl import JsonlError, validate_training_jsonl
from training.snapshot import Preference, read_preferences, write_snapshot
from training.trainer import Checkpoints, SavedCheckpoint, TrainingError
from training.trainer_config import TrainConfig

QUESTIONS = (
    ("What is 2+2?", "4"),
    ("Capital of France?", "Paris"),
    ("Color of the sky?", "blue"),
    ("Opposite of hot?", "cold"),
    ("Largest planet?", "Jupiter"),
    ("Author of Hamlet?", "Shakespeare"),
    ("Days in a week?", "7"),
    ("Currency of Japan?", "yen"),
)


def pair(question: str, answer: str) -> Preference:
    """Chosen: a format the base never writes; rejected: the plain answer it would give."""
    return Preference(
        prompt=[{"role": "user", "content": question}],
        chosen=[{"role": "assistant", "content": f"ANSWER: {answer} ##"}],
        rejected=[{"role": "assistant", "content": f"The answer is {answer}."}],
    )


PAIRS = [pair(q, a) for q, a in QUESTIONS[:4]]
# QLoRA as the worker trains (NF4 base), four pairs per step, two epochs: two steps.
CONFIG = TrainConfig(
    method="dpo",
    beta=0.1,
    learning_rate=1e-3,
    batch_size=4,
    epochs=2,
    max_seq_length=64,
    torch_threads=1,
    gradient_checkpointing=False,
    quantization="nf4",  # the trainer's default loads the folder's weights; QLoRA stays covered
)


def answer_logprob(model: Any, tokenizer: Any, prompt: Conversation, answer: str) -> float:
    """log p(answer | prompt) under `model`, summed over the answer's tokens (chat template)."""
    reply: ChatMessage = {"role": "assistant", "content": answer}
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*prompt, reply], tokenize=False)
    ids = tokenizer(full, return_tensors="pt", add_special_tokens=False).input_ids
    start = len(tokenizer(head, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[0, :-1], -1)  # position t predicts token t+1
    target = ids[0, 1:]
    picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return float(picked[start - 1 :].sum())


def margins(model: Any, tokenizer: Any, pairs: list[Preference]) -> list[float]:
    return [
        answer_logprob(model, tokenizer, p.prompt, p.chosen[0]["content"])
        - answer_logprob(model, tokenizer, p.prompt, p.rejected[0]["content"])
        for p in pairs
    ]


def test_a_tiny_dpo_run_raises_the_chosen_answer_s_margin(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = default_base_dir()
    saved: list[SavedCheckpoint] = []
    result = train_dpo(
        base_dir,
        PAIRS,
        PAIRS[:2],
        tmp_path / "adapter",
        CONFIG,
        checkpoints=Checkpoints(tmp_path / "checkpoints", saved.append),
    )
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    before = margins(base, tokenizer, PAIRS)
    tuned = PeftModel.from_pretrained(base, result.adapter_dir)
    after = margins(tuned, tokenizer, PAIRS)
    gains = [a - b for a, b in zip(after, before, strict=True)]
    print("margin gains (nats):", [round(g, 2) for g in gains])
    assert all(g > 0 for g in gains), gains
    assert sum(gains) / len(gains) > 1.0, gains  # nats: the chosen answer became much likelier
    assert result.config.method == "dpo" and result.eval_loss is not None
    # One adapter per epoch, each with its losses, saved where the job's checkpoints go.
    assert [c.step for c in saved] == [1, 2]
    assert all(c.valid_loss is not None and c.train_loss is not None for c in saved)
    assert all((Path(c.path) / "adapter_model.safetensors").is_file() for c in saved)


def test_dpo_refuses_an_empty_pair_set_and_an_empty_side(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no preference pairs"):
        train_dpo(default_base_dir(), [], [], tmp_path / "a", CONFIG)
    empty = Preference(PAIRS[0].prompt, PAIRS[0].chosen, [{"role": "assistant", "content": " "}])
    with pytest.raises(TrainingError, match="pair 1 has an empty"):
        preference_rows([PAIRS[0], empty])


def dpo_line(question: str, good: str, bad: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


def jsonl(*lines: object) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


LIMITS = {"max_lines": 100, "max_line_bytes": 10_000}


def test_openai_dpo_lines_parse_and_bad_ones_are_named_by_line() -> None:
    lines = validate_training_jsonl(jsonl(dpo_line("Q?", "good", "bad")), **LIMITS)
    assert lines[0].conversation[-1] == {"role": "assistant", "content": "good"}
    assert lines[0].rejected == "bad"
    chat = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]}
    bad = jsonl(
        dpo_line("Q?", "good", "bad"),
        chat,  # line 2: a chat line in a DPO file
        {**dpo_line("Q?", "good", "bad"), "non_preferred_output": []},  # line 3
        dpo_line("Q?", "same", "same"),  # line 4
        {
            "input": {"messages": [{"role": "assistant", "content": "x"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}],
        },
    )
    with pytest.raises(JsonlError) as caught:
        validate_training_jsonl(bad, **LIMITS)
    message = str(caught.value)
    assert "line 2: expected a preference (DPO) example" in message
    assert 'line 3: "non_preferred_output" must be a list of one assistant message' in message
    assert "line 4: preferred_output and non_preferred_output are the same" in message
    assert "line 5: no user message in input.messages" in message
    with pytest.raises(JsonlError, match="line 1: expected a chat example"):
        validate_training_jsonl(jsonl(dpo_line("Q?", "a", "b")), **LIMITS, kind="chat")


def test_a_dpo_file_becomes_a_snapshot_with_its_pairs(tmp_path: Path) -> None:
    data = jsonl(*(dpo_line(f"Question {i}?", f"ANSWER: {i} ##", f"It is {i}.") for i in range(20)))
    lines = validate_training_jsonl(data, **LIMITS)
    snapshot = from_conversations(
        [line.conversation for line in lines],
        author="key:k1",
        source_id="file-x",
        config=DatasetConfig(),
        rejected=[line.rejected for line in lines],
    )
    write_snapshot(snapshot, tmp_path)
    pairs = read_preferences(tmp_path)
    assert len(pairs["train"]) == len(snapshot.train) and len(pairs["eval"]) == len(snapshot.eval)
    assert len(pairs["train"]) + len(pairs["eval"]) == 20
    first = pairs["train"][0]
    assert first.chosen[0]["content"].startswith("ANSWER:")
    assert first.rejected[0]["content"].startswith("It is")
    assert first.prompt[-1]["role"] == "user"
