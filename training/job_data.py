"""What a fine-tuning job trains and evaluates on: its dataset snapshot's splits (supervised) or
preference pairs (DPO), with its `validation_file`, when it has one, as the eval set.

Without a validation file the eval set is the snapshot's held-out split (for early stopping and
the best epoch). With one, the whole snapshot trains and the file's examples are the eval set:
the caller chose what to measure on, so none of their training data is held back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.chat import Conversation, answer_of, prompt_of
from training.jsonl import Kind, TrainingLine, validate_training_jsonl
from training.snapshot import Preference, read_preferences, read_split
from training.trainer_config import Method

MAX_LINES = 100_000
MAX_LINE_BYTES = 1024 * 1024
KINDS: dict[Method, Kind] = {"supervised": "chat", "dpo": "preference"}


@dataclass(frozen=True)
class SupervisedData:
    train: list[Conversation]
    eval: list[Conversation]


@dataclass(frozen=True)
class PreferenceData:
    train: list[Preference]
    eval: list[Preference]


def supervised_data(folder: Path, validation: bytes | None) -> SupervisedData:
    train, held_out = read_split(folder, "train"), read_split(folder, "eval")
    if validation is None:
        return SupervisedData(train, held_out)
    lines = validation_lines(validation, "supervised")
    return SupervisedData(train + held_out, [line.conversation for line in lines])


def preference_data(folder: Path, validation: bytes | None) -> PreferenceData:
    pairs = read_preferences(folder)
    if validation is None:
        return PreferenceData(pairs["train"], pairs["eval"])
    lines = validation_lines(validation, "dpo")
    return PreferenceData(pairs["train"] + pairs["eval"], [as_preference(line) for line in lines])


def validation_lines(data: bytes, method: Method) -> list[TrainingLine]:
    """A validation file's examples, checked as an upload is, in the shape `method` needs
    (JsonlError naming the bad lines)."""
    return validate_training_jsonl(
        data, max_lines=MAX_LINES, max_line_bytes=MAX_LINE_BYTES, kind=KINDS[method]
    )


def as_preference(line: TrainingLine) -> Preference:
    """A DPO line (input + preferred answer, and the rejected one) as a trainer row."""
    return Preference(
        prompt=prompt_of(line.conversation),
        chosen=[{"role": "assistant", "content": answer_of(line.conversation)}],
        rejected=[{"role": "assistant", "content": line.rejected or ""}],
    )


def fine_tuned_name(job_model: str, tenant_name: str, suffix: str | None, job_id: str) -> str:
    """The model name a job's adapter is served under (OpenAI's `ft:model:org:suffix:id`)."""
    return f"ft:{job_model}:{tenant_name}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def checkpoint_name(fine_tuned: str, step: int) -> str:
    """The model name a job's checkpoint is served under once registered."""
    return f"{fine_tuned}:ckpt-step-{step}"
