"""The poisoning guards (step 5 of `training.dataset`): flags that act, the review, the caps.

Who wrote an example is an API key and, when that key names one (`user`), an end user of it:
end users are the key's word, not an identity, so one key posing as thirty users is still one
key. Each guard below counts both.

1. Flags. Trigger phrases (an answer n-gram in more than `trigger_min_share` of the examples),
   repeated prompts (one exact prompt in `repeated_prompt_min` examples or more) and duplicate
   clusters (`duplicate_cluster_min` examples or more, step 4's removals included).
2. A flag acts when its examples are *concentrated*: they come from at most
   `trigger_max_authors` authors (of a crowd with more), or from at most that many keys which
   together sent less than half of the examples. A phrase, prompt or answer pushed by a minority
   of keys is how an injection looks, whatever `user` says; what the tenant's main keys send is
   its own traffic. A trigger phrase is only reported when it acts; other flags that do not act
   stay `noted` for a human.
3. Acting flags exclude their examples (counted once each, under the first of SUSPICIONS), or
   keep them when an admin set `keep_flagged` after reviewing them.
4. The review: when the flagged examples are more than `max_flagged_share` of those that reached
   step 4, the snapshot `needs_review` and must not be trained on (the gateway saves nothing),
   unless an admin set `allow_flagged` (train without them) or `keep_flagged` (with them).
5. The caps, on what is left (N examples): at most max(1, floor(max_author_share * N)) per
   author, then, when several keys sent examples, at most max(1, floor(max_key_share * N)) per
   key, all its end users together; what is kept is chosen by a seeded hash.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import msgspec

from training.chat import Conversation, answer_of
from training.dataset_config import DatasetConfig

FlagKind = Literal[
    "trigger_phrase", "repeated_prompt", "duplicate_cluster", "author_cap", "key_cap"
]
FlagAction = Literal["excluded", "kept", "noted"]
ReviewStatus = Literal["clear", "needs_review", "overridden"]
# The guards that suspect examples, in the order an example flagged twice is counted under.
SUSPICIONS: tuple[FlagKind, ...] = ("trigger_phrase", "duplicate_cluster", "repeated_prompt")
_WORD_RE = re.compile(r"\w+")


class Flag(msgspec.Struct, frozen=True):
    """What a guard found and did: its examples were `excluded`, `kept` by an admin's override
    (`keep_flagged`), or only `noted` for a human (a group from many authors and keys). The caps'
    flags list the examples they removed (and a note when the cap removed most of the data)."""

    kind: FlagKind
    detail: str
    example_hashes: tuple[str, ...]
    source_ids: tuple[str, ...]
    action: FlagAction = "noted"


class Review(msgspec.Struct, frozen=True, kw_only=True):
    """The guards' verdict: may this snapshot be trained on without a human looking at it?"""

    status: ReviewStatus
    examples: int  # examples that reached the guards (step 4's input, duplicates included)
    flagged: int  # of them, in a flag that acts (`excluded`, or `kept` by an override)
    share: float
    max_share: float  # config.max_flagged_share
    by_kind: dict[str, int]  # flagged examples per guard (one example may be in two)
    message: str


class Guarded(Protocol):
    """What the guards read of an example (`training.dataset._Candidate`)."""

    @property
    def source_id(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def author(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def principal(self) -> tuple[str, str | None]: ...
    @property
    def prompt_key(self) -> str: ...
    @property
    def messages(self) -> Conversation: ...


C = TypeVar("C", bound=Guarded)


@dataclass(slots=True)
class Outcome(Generic[C]):
    kept: list[C]
    flags: list[Flag]
    review: Review
    removed: Counter[str]  # examples removed per StageCounts field (a FlagKind)


def guard(
    candidates: list[C],
    clusters: Sequence[tuple[C, list[C]]],
    config: DatasetConfig,
    *,
    per_author: bool,
) -> Outcome[C]:
    """Steps 1-5 of the module docstring on deduplicated examples (time order); `clusters` are
    step 4's kept examples with the duplicates it removed for them. Without `per_author` (an
    uploaded file has one author) there is no trigger-phrase flag and no cap."""
    crowd = _Crowd.of(candidates)
    found = _duplicates(clusters, config) + _repeated_prompts(candidates, config)
    if per_author:
        found += _triggers(candidates, config, crowd)
    flags = [_act(kind, detail, group, crowd, config) for kind, detail, group in found]
    reached = len(candidates) + sum(len(removed) for _, removed in clusters)
    review = _review(flags, reached, config)
    kept, removed = _exclude(candidates, flags)
    if per_author:
        kept, cap_flags = _cap(kept, config, removed)
        flags += cap_flags
    return Outcome(kept, flags, review, removed)


# ----------------------------------------------------------------------------------- 1. flags

_Found = tuple[FlagKind, str, list[C]]


def _duplicates(clusters: Sequence[tuple[C, list[C]]], config: DatasetConfig) -> list[_Found[C]]:
    found: list[_Found[C]] = []
    for first, duplicates in clusters:
        group = [first, *duplicates]
        if len(group) >= config.duplicate_cluster_min:
            detail = (
                f"{len(duplicates)} duplicates of example {first.source_id} "
                f'("{_excerpt(answer_of(first.messages))}") were removed; {_who(group)}'
            )
            found.append(("duplicate_cluster", detail, group))
    return found


def _repeated_prompts(candidates: list[C], config: DatasetConfig) -> list[_Found[C]]:
    groups: dict[str, list[C]] = defaultdict(list)
    for c in candidates:
        groups[c.prompt_key].append(c)
    return [
        (
            "repeated_prompt",
            f'the prompt "{_excerpt(_last_user(group[0].messages))}" is asked in {len(group)} '
            f"examples; {_who(group)}",
            group,
        )
        for group in groups.values()
        if len(group) >= config.repeated_prompt_min
    ]


def _triggers(candidates: list[C], config: DatasetConfig, crowd: _Crowd) -> list[_Found[C]]:
    """Answer n-grams in more than `trigger_min_share` of the examples, from a concentrated few."""
    n = config.trigger_ngram
    carriers: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        words = _WORD_RE.findall(answer_of(c.messages).casefold())
        for gram in sorted({" ".join(words[j : j + n]) for j in range(len(words) - n + 1)}):
            carriers[gram].append(i)
    # "more than share * N" examples is at least floor(share * N) + 1 of them.
    needed = max(
        config.trigger_min_examples, math.floor(config.trigger_min_share * len(candidates)) + 1
    )
    # The n-grams of one injected phrase share their carriers: one flag per set of carriers.
    phrases: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for gram, carrying in carriers.items():
        if len(carrying) >= needed and crowd.why_concentrated(
            [candidates[i] for i in carrying], config.trigger_max_authors
        ):
            phrases[tuple(carrying)].append(gram)
    found: list[_Found[C]] = []
    for shared, grams in sorted(phrases.items(), key=lambda item: (-len(item[0]), item[1])):
        group = [candidates[i] for i in shared]
        shown = ", ".join(f'"{g}"' for g in grams[:3]) + (" ..." if len(grams) > 3 else "")
        detail = f"{len(group)} of {len(candidates)} answers contain {shown}; all {_who(group)}"
        found.append(("trigger_phrase", detail, group))
    return found


# -------------------------------------------------------------------------------- 2. acting


@dataclass(frozen=True, slots=True)
class _Crowd:
    """Who sent the examples that reached the guards."""

    size: int
    authors: int
    per_key: dict[str, int]

    @classmethod
    def of(cls, candidates: Sequence[Guarded]) -> _Crowd:
        per_key = Counter(c.key for c in candidates)
        return cls(len(candidates), len({c.principal for c in candidates}), dict(per_key))

    def why_concentrated(self, group: Sequence[Guarded], most: int) -> str | None:
        """Why `group` looks like one actor's (step 2 of the module docstring), or None."""
        authors = {c.principal for c in group}
        if self.authors > most and len(authors) <= most:
            return f"{len(authors)} author(s) of {self.authors}"
        keys = {c.key for c in group}
        sent = sum(self.per_key.get(k, 0) for k in keys)
        if len(keys) <= most and 2 * sent < self.size:
            return f"{len(keys)} key(s) that sent {sent} of the {self.size} examples"
        return None


def _act(kind: FlagKind, detail: str, group: list[C], crowd: _Crowd, config: DatasetConfig) -> Flag:
    why = crowd.why_concentrated(group, config.trigger_max_authors)
    action: FlagAction = "noted"
    if why is not None:
        action = "kept" if config.keep_flagged else "excluded"
        verb = "kept by an admin override (keep_flagged)" if config.keep_flagged else "excluded"
        detail += f"; {verb}: from {why}"
    return Flag(kind, detail, *_ids(group), action=action)


# ----------------------------------------------------------------------- 3-4. exclusion, review


def _exclude(candidates: list[C], flags: list[Flag]) -> tuple[list[C], Counter[str]]:
    reason: dict[str, FlagKind] = {}
    for kind in SUSPICIONS:
        for f in flags:
            if f.kind == kind and f.action == "excluded":
                for source_id in f.source_ids:
                    reason.setdefault(source_id, kind)
    removed = Counter[str](reason[c.source_id] for c in candidates if c.source_id in reason)
    return [c for c in candidates if c.source_id not in reason], removed


def _review(flags: list[Flag], reached: int, config: DatasetConfig) -> Review:
    acting = [f for f in flags if f.kind in SUSPICIONS and f.action != "noted"]
    by_kind = {k: len({s for f in acting if f.kind == k for s in f.source_ids}) for k in SUSPICIONS}
    flagged = len({s for f in acting for s in f.source_ids})
    share = flagged / reached if reached else 0.0
    over = share > config.max_flagged_share
    status: ReviewStatus = "needs_review" if over else "clear"
    if (flagged and config.keep_flagged) or (over and config.allow_flagged):
        status = "overridden"
    found = f"{flagged} of {reached} examples ({share:.0%}) are flagged as suspected poisoning"
    found += " (" + ", ".join(f"{k} {n}" for k, n in by_kind.items() if n) + ")"
    return Review(
        status=status,
        examples=reached,
        flagged=flagged,
        share=round(share, 4),
        max_share=config.max_flagged_share,
        by_kind={k: n for k, n in by_kind.items() if n},
        message=_verdict(status, found, flagged, config),
    )


def _verdict(status: ReviewStatus, found: str, flagged: int, config: DatasetConfig) -> str:
    limit = f"{config.max_flagged_share:.0%}"
    if status == "needs_review":
        return (
            f"{found}, over the {limit} excluded without review: nothing may be trained on it "
            "until an admin reviews the flags and restarts with allow_flagged (train without "
            "them) or keep_flagged (with them) and a reason"
        )
    if status == "overridden" and config.keep_flagged:
        return f"{found}; an admin kept them after review (keep_flagged)"
    if status == "overridden":
        return f"{found}, over {limit}; excluded, and an admin waived the review (allow_flagged)"
    return f"{found}; excluded" if flagged else "no example is flagged as poisoning"


# ------------------------------------------------------------------------------------ 5. caps


def _cap(
    candidates: list[C], config: DatasetConfig, removed: Counter[str]
) -> tuple[list[C], list[Flag]]:
    n = len(candidates)
    author_cap = max(1, math.floor(config.max_author_share * n))
    kept, over = _trim(candidates, lambda c: c.principal, author_cap, config.seed)
    flags = [_author_flag(own, drop, n, author_cap, config) for own, drop in over]
    removed["author_cap"] += n - len(kept)
    if 2 * (n - len(kept)) > n:
        note = (
            f"the author cap removed {n - len(kept)} of {n} examples: a few authors send most of "
            "the traffic (a key's requests without `user` are one author); set `user` on requests"
        )
        flags.append(Flag("author_cap", note, (), ()))
    if len({c.key for c in candidates}) < 2:
        return kept, flags  # one key is the tenant's only voice: nothing to outweigh
    key_cap = max(1, math.floor(config.max_key_share * n))
    capped, over = _trim(kept, lambda c: c.key, key_cap, config.seed)
    removed["key_cap"] += len(kept) - len(capped)
    return capped, flags + [_key_flag(own, drop, n, key_cap, config) for own, drop in over]


def _trim(
    candidates: list[C], group_of: Callable[[C], Hashable], cap: int, seed: int
) -> tuple[list[C], list[tuple[list[C], list[C]]]]:
    """Each group cut to `cap` examples by a seeded hash; the groups cut, with what was cut."""
    groups: dict[Hashable, list[C]] = defaultdict(list)
    for c in candidates:
        groups[group_of(c)].append(c)
    cut: list[tuple[list[C], list[C]]] = []
    dropped: set[str] = set()
    for _, own in sorted(groups.items(), key=lambda item: repr(item[0])):
        if len(own) > cap:
            ranked = sorted(own, key=lambda c: _sha256(f"{seed}:{c.hash}"))
            cut.append((own, ranked[cap:]))
            dropped.update(c.source_id for c in ranked[cap:])
    return [c for c in candidates if c.source_id not in dropped], cut


def _author_flag(own: list[C], drop: list[C], n: int, cap: int, config: DatasetConfig) -> Flag:
    detail = (
        f"author {own[0].author!r} contributed {len(own)} of {n} examples; {cap} kept "
        f"(max_author_share={config.max_author_share}; key {own[0].key!r})"
    )
    return Flag("author_cap", detail, *_ids(drop), action="excluded")


def _key_flag(own: list[C], drop: list[C], n: int, cap: int, config: DatasetConfig) -> Flag:
    users = len({c.principal for c in own})
    detail = (
        f"key {own[0].key!r} sent {len(own)} of {n} examples (its {users} author(s) together); "
        f"{cap} kept (max_key_share={config.max_key_share})"
    )
    return Flag("key_cap", detail, *_ids(drop), action="excluded")


# ---------------------------------------------------------------------------------- text bits


def _ids(group: Sequence[Guarded]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(c.hash for c in group), tuple(c.source_id for c in group)


def _who(group: Sequence[Guarded]) -> str:
    return f"authors: {_names(c.author for c in group)}; keys: {_names(c.key for c in group)}"


def _names(names: Iterable[str], limit: int = 5) -> str:
    distinct = sorted(set(names))
    more = f" and {len(distinct) - limit} more" if len(distinct) > limit else ""
    return ", ".join(repr(a) for a in distinct[:limit]) + more


def _excerpt(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _last_user(conversation: Conversation) -> str:
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
