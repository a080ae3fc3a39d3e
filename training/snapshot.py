"""A dataset snapshot's records (examples, provenance, stats) and its files on disk.

Pure records and plain file I/O, so that the serving side (erasure, evals) can read a written
snapshot without importing the builder (`training.dataset`) and its dependencies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from training.chat import ChatMessage, Conversation, ToolSpec, with_tools
from training.dataset_config import DatasetConfig
from training.poisoning import Flag, Review

Split = Literal["train", "eval"]
Source = Literal["traffic", "file"]
CountTokens = Callable[[Conversation], int]
WHITESPACE_COUNTER = "whitespace words (no tokenizer was given: not model tokens)"
TOKENIZER_COUNTER = "count_tokens (the caller's tokenizer)"


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    """Where one example came from; `content_hash` is the sha256 of its messages."""

    source: Source
    source_id: str  # the completion id, or "<file id>:<line>"
    author: str  # the end user who wrote the answer, else the API key (its id) that sent it
    created_at: float | None
    content_hash: str
    corrected: bool = False
    feedback_ids: tuple[str, ...] = ()
    alias: str | None = None
    adapter_version: str | None = None
    pii_redacted: bool = False
    key_id: str | None = None  # the API key the author's answer came through


class Example(msgspec.Struct, frozen=True):
    messages: list[ChatMessage]
    provenance: Provenance
    tools: list[ToolSpec] | None = None  # the tools its request offered


class PreferencePair(msgspec.Struct, frozen=True):
    """A DPO pair; it follows its corrected example (same split, same provenance)."""

    prompt: list[ChatMessage]
    chosen: list[ChatMessage]
    rejected: list[ChatMessage]
    split: Split
    provenance: Provenance


class StageCounts(msgspec.Struct, kw_only=True):
    """Examples removed at each stage; `input` equals the removals plus `kept`."""

    input: int = 0
    do_not_train: int = 0
    opted_out: int = 0
    unsupported: int = 0
    negative: int = 0
    unrated: int = 0
    incomplete: int = 0
    low_quality: int = 0
    too_long: int = 0
    exact_duplicate: int = 0
    near_duplicate: int = 0
    trigger_phrase: int = 0  # step 5: each example under the first of SUSPICIONS that flags it
    duplicate_cluster: int = 0
    repeated_prompt: int = 0
    author_cap: int = 0
    key_cap: int = 0
    kept: int = 0

    def removed(self) -> int:
        stages: tuple[int, ...] = msgspec.structs.astuple(self)
        return sum(stages) - self.input - self.kept


class TokenStats(msgspec.Struct, frozen=True):
    counter: str
    min: int
    mean: float
    p50: int
    p95: int
    max: int


class AuthorCount(msgspec.Struct, frozen=True):
    author: str
    examples: int
    key_id: str | None = None


class SourceCount(msgspec.Struct, frozen=True):
    source: Source
    alias: str | None
    adapter_version: str | None
    examples: int


class DatasetStats(msgspec.Struct, frozen=True, kw_only=True):
    counts: StageCounts
    pii_redacted: int  # examples in which something was masked (of those reaching that stage)
    pii_spans: dict[str, int]  # masked spans per kind
    corrected: int
    train: int
    eval: int
    preferences: int
    tokens: TokenStats
    top_authors: list[AuthorCount]
    sources: list[SourceCount]


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    train: list[Example]
    eval: list[Example]
    preferences: list[PreferencePair]
    stats: DatasetStats
    flags: list[Flag]
    review: Review
    content_hash: str  # sha256 of the canonical JSON of config, train, eval and preferences
    config: DatasetConfig


class _ChatLine(msgspec.Struct, omit_defaults=True):
    messages: list[ChatMessage]
    tools: list[ToolSpec] | None = None  # OpenAI's top-level "tools" of a chat line


class _PreferenceLine(msgspec.Struct):
    prompt: list[ChatMessage]
    chosen: list[ChatMessage]
    rejected: list[ChatMessage]


class Preference(msgspec.Struct, frozen=True):
    """A DPO training row as TRL takes it (conversational): the prompt, and one assistant
    message on each side."""

    prompt: list[ChatMessage]
    chosen: list[ChatMessage]
    rejected: list[ChatMessage]


class _ProvenanceLine(msgspec.Struct):
    file: str
    line: int
    split: Split
    provenance: Provenance


class _Report(msgspec.Struct):
    content_hash: str
    config: DatasetConfig
    stats: DatasetStats
    flags: list[Flag]
    review: Review


_encoder = msgspec.json.Encoder()
_chat_line_decoder = msgspec.json.Decoder(_ChatLine)
_preference_decoder = msgspec.json.Decoder(Preference)
_provenance_decoder = msgspec.json.Decoder(_ProvenanceLine)


def write_snapshot(snapshot: Snapshot, folder: Path) -> None:
    """Write train/eval.jsonl ({"messages"}, and "tools" when offered), preferences.jsonl
    ({"prompt","chosen","rejected"}), provenance.jsonl (one line per data line: file, line,
    split, provenance) and stats.json."""
    folder.mkdir(parents=True, exist_ok=True)
    provenance: list[_ProvenanceLine] = []
    sides: tuple[tuple[Split, list[Example]], ...] = (
        ("train", snapshot.train),
        ("eval", snapshot.eval),
    )
    for split, examples in sides:
        name = f"{split}.jsonl"
        _write_lines(folder / name, [_ChatLine(e.messages, e.tools) for e in examples])
        provenance += [
            _ProvenanceLine(name, n, split, e.provenance) for n, e in enumerate(examples, start=1)
        ]
    pairs = snapshot.preferences
    _write_lines(
        folder / "preferences.jsonl",
        [_PreferenceLine(p.prompt, p.chosen, p.rejected) for p in pairs],
    )
    provenance += [
        _ProvenanceLine("preferences.jsonl", n, p.split, p.provenance)
        for n, p in enumerate(pairs, start=1)
    ]
    _write_lines(folder / "provenance.jsonl", provenance)
    report = _Report(
        snapshot.content_hash, snapshot.config, snapshot.stats, snapshot.flags, snapshot.review
    )
    (folder / "stats.json").write_bytes(msgspec.json.format(_encoder.encode(report)) + b"\n")


def _write_lines(path: Path, items: Sequence[msgspec.Struct]) -> None:
    path.write_bytes(b"".join(_encoder.encode(item) + b"\n" for item in items))


def read_split(folder: Path, split: Split) -> list[Conversation]:
    """The conversations of a written snapshot's train or eval file (a line with "tools" as a
    `ToolConversation`)."""
    path = folder / f"{split}.jsonl"
    conversations: list[Conversation] = []
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            chat = _chat_line_decoder.decode(line)
            conversations.append(with_tools(chat.messages, chat.tools))
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path}, line {n}: not a chat example ({exc})") from None
    return conversations


def read_preferences(folder: Path) -> dict[Split, list[Preference]]:
    """A written snapshot's preference pairs by split (each pair's split is in provenance.jsonl);
    empty lists for a snapshot without pairs."""
    pairs: dict[Split, list[Preference]] = {"train": [], "eval": []}
    path = folder / "preferences.jsonl"
    if not path.exists():
        return pairs
    splits = {
        line.line: line.split
        for raw in (folder / "provenance.jsonl").read_bytes().splitlines()
        if raw.strip() and (line := _provenance_decoder.decode(raw)).file == path.name
    }
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if raw.strip():
            pairs[splits.get(n, "train")].append(_preference_decoder.decode(raw))
    return pairs
