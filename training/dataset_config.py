"""The dataset builder's settings: selection, filters, dedup, poisoning guards and the split."""

from __future__ import annotations

from dataclasses import dataclass, field


def _check_fraction(name: str, value: float, *, low_open: bool, high_open: bool) -> None:
    low_ok = value > 0.0 if low_open else value >= 0.0
    high_ok = value < 1.0 if high_open else value <= 1.0
    if not (low_ok and high_ok):
        low = "(0" if low_open else "[0"
        high = "1)" if high_open else "1]"
        raise ValueError(f"{name} must be in {low}, {high}, got {value!r}")


def _check_at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """How a snapshot is built from captured traffic or an uploaded file (part of its hash)."""

    include_unrated: bool = field(
        default=False,
        metadata={"help": "Keep completions nobody rated (default: only rated or corrected ones)."},
    )
    positive_score: float = field(
        default=0.5,
        metadata={"help": "A feedback score at or above this is positive, below it negative."},
    )
    redact_pii: bool = field(
        default=True,
        metadata={"help": "Mask emails, phones, cards, IBANs, IPs and secrets in every message."},
    )
    min_answer_chars: int = field(
        default=1,
        metadata={"help": "Drop examples whose answer has fewer non-blank characters than this."},
    )
    max_tokens: int = field(
        default=2048,
        metadata={"help": "Drop examples longer than this (tokens of the whole conversation)."},
    )
    near_duplicate_threshold: float = field(
        default=0.8,
        metadata={
            "help": "Estimated Jaccard similarity (word shingles) at which two examples "
            "are near-duplicates and only the first is kept."
        },
    )
    num_perm: int = field(
        default=128, metadata={"help": "MinHash permutations (more: finer similarity estimates)."}
    )
    shingle_size: int = field(
        default=3, metadata={"help": "Words per shingle for near-duplicate detection."}
    )
    max_author_share: float = field(
        default=0.05,
        metadata={
            "help": "Poisoning guard: one author (an end user of one API key; a key's requests "
            "without `user` together) keeps at most max(1, floor(share * N)) of the N examples "
            "that pass the other filters."
        },
    )
    max_key_share: float = field(
        default=0.5,
        metadata={
            "help": "Poisoning guard: one API key, all its end users together, keeps at most "
            "max(1, floor(share * N)) of them when several keys sent examples."
        },
    )
    trigger_ngram: int = field(
        default=3, metadata={"help": "Words per n-gram when looking for trigger phrases."}
    )
    trigger_min_share: float = field(
        default=0.05,
        metadata={"help": "Flag an answer n-gram found in more than this share of examples..."},
    )
    trigger_max_authors: int = field(
        default=2, metadata={"help": "...when all of those examples come from this many authors."}
    )
    trigger_min_examples: int = field(
        default=3, metadata={"help": "Never flag an n-gram seen in fewer examples than this."}
    )
    repeated_prompt_min: int = field(
        default=3, metadata={"help": "Flag one exact prompt asked in at least this many examples."}
    )
    duplicate_cluster_min: int = field(
        default=3,
        metadata={"help": "Flag a group of (near-)duplicates of at least this many examples."},
    )
    max_flagged_share: float = field(
        default=0.2,
        metadata={
            "help": "Flagged examples are excluded; when more than this share of the examples "
            "reaching the guards is flagged, the snapshot needs a human review instead."
        },
    )
    allow_flagged: bool = field(
        default=False,
        metadata={"help": "Admin override: no review stop; flagged examples are still excluded."},
    )
    keep_flagged: bool = field(
        default=False,
        metadata={"help": "Admin override: flagged examples are kept (reviewed: not poisoning)."},
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of prompts held out for eval (at least one example when N >= 2)."},
    )
    seed: int = field(default=0, metadata={"help": "Salts the split hash and the author cap."})

    def __post_init__(self) -> None:
        _check_fraction("positive_score", self.positive_score, low_open=False, high_open=False)
        _check_fraction(
            "near_duplicate_threshold",
            self.near_duplicate_threshold,
            low_open=True,
            high_open=False,
        )
        _check_fraction("max_author_share", self.max_author_share, low_open=True, high_open=False)
        _check_fraction("max_key_share", self.max_key_share, low_open=True, high_open=False)
        _check_fraction(
            "max_flagged_share", self.max_flagged_share, low_open=False, high_open=False
        )
        _check_fraction("trigger_min_share", self.trigger_min_share, low_open=False, high_open=True)
        _check_fraction("eval_fraction", self.eval_fraction, low_open=False, high_open=True)
        _check_at_least("min_answer_chars", self.min_answer_chars, 1)
        _check_at_least("max_tokens", self.max_tokens, 1)
        _check_at_least("num_perm", self.num_perm, 16)
        _check_at_least("shingle_size", self.shingle_size, 1)
        _check_at_least("trigger_ngram", self.trigger_ngram, 1)
        _check_at_least("trigger_max_authors", self.trigger_max_authors, 1)
        _check_at_least("trigger_min_examples", self.trigger_min_examples, 2)
        _check_at_least("repeated_prompt_min", self.repeated_prompt_min, 2)
        _check_at_least("duplicate_cluster_min", self.duplicate_cluster_min, 2)
