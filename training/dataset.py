"""Dataset snapshots: captured traffic or an uploaded file → filtered, deduplicated, split examples.

The recipe, in order (each stage's removals are counted in `DatasetStats.counts`):

1. Selection (traffic only): do-not-train completions, opted-out end users, unsupported
   exchanges (legacy completions, non-text content), then feedback: the latest
   correction replaces the answer; otherwise an 'up' rating or a score >= `positive_score` with
   no negative signal keeps the model's answer; any 'down' or low score without a correction
   excludes it; no feedback excludes it unless `include_unrated`. A corrected completion that
   was also rated negative becomes a preference pair (chosen = correction, rejected = answer).
   A reviewer's decision (feedback authored `reviewer:<name>`, which only the console's review
   queue writes) overrides all that: the latest one decides. Approve keeps the model's answer
   whatever users said, reject excludes it (counted as negative) whatever users said, correct
   trains on the reviewer's correction (a pair when a user also rated it negative).
   Uncorrected answers cut by `length` or not `complete` are dropped. An example's author is
   whoever wrote its answer: for a correction, the API key that sent the feedback and the end
   user that key named (a key fixing its own completion without naming one speaks for that
   completion's end user; fixing another key's, only for itself); for a kept model answer, the
   completion's key and end user. An opted-out end user's corrections are excluded too.
2. PII is masked in every message (and in rejected answers).
3. Quality and length: empty or punctuation-only answers, conversations over `max_tokens`.
4. Exact duplicates (after whitespace and case folding), then near-duplicates (MinHash LSH on
   word shingles of prompt + answer): the first example in time order is kept.
5. Poisoning guards (`training.poisoning`), which act: trigger phrases, repeated prompts and
   duplicate clusters that come from few authors, or from a minority of API keys however many
   end users those keys name, are excluded and reported with their reason (`Flag.action`,
   `StageCounts`); other such groups are only noted. When more than `max_flagged_share` (20 %)
   of the examples are flagged, the snapshot's `review` is `needs_review`: it must not be
   trained on (the gateway saves none) unless an admin's `allow_flagged` (train without them) or
   `keep_flagged` (with them) is in the config. Then each author (an end user of a key, or a key
   naming none) keeps at most max(1, floor(max_author_share * N)) examples and, when several
   keys sent examples, each key, all its end users together, max(1, floor(max_key_share * N)).
6. Split by a seeded hash of the prompt, so an example always lands on the same side and one
   prompt (hence its duplicates, all removed in step 4) never sits on both sides.

Tool use is kept: the request's tool and assistant-with-`tool_calls` turns, the answer's tool
calls (a kept tool call is an example whose target is the call) and the tools the request
offered, which go with the example (`Example.tools`, a line's "tools"). A correction is text,
so a corrected tool call trains on the correction.

Everything here is pure and deterministic: the same rows and config give the same snapshot,
whatever their order.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
from datasketch import MinHash, MinHashLSH

from store.privacy import redact
from store.records import Completion, Feedback, tool_calls_of
from store.review_sql import REVIEWER_PREFIX
from training.chat import (
    ChatMessage,
    Conversation,
    Role,
    ToolCall,
    ToolSpec,
    answer_of,
    prompt_of,
    text_of,
    tools_of,
    with_tools,
)
from training.dataset_config import DatasetConfig
from training.poisoning import Flag, Review, guard
from training.snapshot import (
    TOKENIZER_COUNTER,
    WHITESPACE_COUNTER,
    AuthorCount,
    CountTokens,
    DatasetStats,
    Example,
    PreferencePair,
    Provenance,
    Snapshot,
    Source,
    SourceCount,
    Split,
    StageCounts,
    TokenStats,
    read_split,
    write_snapshot,
)

__all__ = [  # the snapshot's records and files live in training.snapshot; re-exported here
    "TOKENIZER_COUNTER",
    "WHITESPACE_COUNTER",
    "AuthorCount",
    "DatasetStats",
    "Snapshot",
    "SourceCount",
    "Split",
    "completion_ids",
    "from_conversations",
    "from_traffic",
    "read_split",
    "write_snapshot",
]
_WORD_RE = re.compile(r"\w+")
_TOP_AUTHORS = 10


@dataclass(slots=True, kw_only=True)
class _Candidate:
    messages: Conversation
    source: Source
    source_id: str
    author: str
    key: str  # the API key the answer came through (a file's uploader for files)
    end_user: str | None = None  # the end user that key named, if any
    created_at: float | None = None
    rejected: str | None = None  # the model's answer when this is also a preference pair
    tools: list[ToolSpec] | None = None  # the tools the request offered
    corrected: bool = False
    feedback_ids: tuple[str, ...] = ()
    alias: str | None = None
    adapter_version: str | None = None
    pii_redacted: bool = False
    tokens: int = 0
    hash: str = ""
    prompt_key: str = ""
    words: list[str] = field(default_factory=list)

    def provenance(self) -> Provenance:
        return Provenance(
            source=self.source,
            source_id=self.source_id,
            author=self.author,
            created_at=self.created_at,
            content_hash=self.hash,
            corrected=self.corrected,
            feedback_ids=self.feedback_ids,
            alias=self.alias,
            adapter_version=self.adapter_version,
            pii_redacted=self.pii_redacted,
            key_id=self.key if self.source == "traffic" else None,
        )

    @property
    def principal(self) -> tuple[str, str | None]:
        """The author as the caps count it: one end user of one key (or the key itself)."""
        return self.key, self.end_user


# ----------------------------------------------------------------------------------- entry points


def from_traffic(
    rows: Sequence[tuple[Completion, Sequence[Feedback]]],
    *,
    opted_out: Collection[str],
    config: DatasetConfig,
    count_tokens: CountTokens | None = None,
) -> Snapshot:
    """Build a snapshot from a tenant's captured completions, each with all of its feedback."""
    counts = StageCounts(input=len(rows))
    ordered = sorted(rows, key=lambda row: (row[0].created_at, row[0].id))
    candidates = [c for row in ordered if (c := _select(row, opted_out, config, counts))]
    return _build(candidates, counts, config, count_tokens, per_author=True)


def from_conversations(
    conversations: Sequence[Conversation],
    *,
    author: str,
    source_id: str,
    config: DatasetConfig,
    count_tokens: CountTokens | None = None,
    rejected: Sequence[str | None] = (),
) -> Snapshot:
    """Build a snapshot from an uploaded file's conversations (see `training.jsonl`).

    The same PII, quality, length, dedup and split stages apply, but not the per-author cap nor
    the trigger-phrase flag: the uploader is the single author of the whole file, so there is
    no crowd to be over-represented in. Provenance ids are `<source_id>:<n>`, n from 1 in order.
    `rejected[n - 1]` (a DPO file's non-preferred answer) makes conversation n also a preference
    pair, as a corrected answer does for traffic.
    """
    counts = StageCounts(input=len(conversations))
    candidates: list[_Candidate] = []
    for n, conversation in enumerate(conversations, start=1):
        if not _is_trainable(conversation):
            counts.unsupported += 1
            continue
        messages: Conversation = [m.copy() for m in conversation]
        candidates.append(
            _Candidate(
                messages=messages,
                tools=tools_of(conversation),
                source="file",
                source_id=f"{source_id}:{n}",
                author=author,
                key=author,
                rejected=rejected[n - 1] if n <= len(rejected) else None,
            )
        )
    return _build(candidates, counts, config, count_tokens, per_author=False)


def completion_ids(snapshot: Snapshot) -> set[str]:
    """The captured completions a snapshot uses (what an erasure must look for)."""
    examples = [*snapshot.train, *snapshot.eval]
    return {e.provenance.source_id for e in examples if e.provenance.source == "traffic"}


# -------------------------------------------------------------------------------- 1. selection


class _Part(msgspec.Struct):
    type: str
    text: str | None = None


class _RequestMessage(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class _StoredRequest(msgspec.Struct):
    messages: list[_RequestMessage]
    tools: list[ToolSpec] | None = None


_request_decoder = msgspec.json.Decoder(_StoredRequest)
_ROLE_MAP: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def _select(
    row: tuple[Completion, Sequence[Feedback]],
    opted_out: Collection[str],
    config: DatasetConfig,
    counts: StageCounts,
) -> _Candidate | None:
    completion, feedback = row
    for f in feedback:
        if f.completion_id != completion.id:
            raise ValueError(
                f"feedback {f.id} is for completion {f.completion_id}, "
                f"not {completion.id}: pass each completion with its own feedback"
            )
    if completion.do_not_train:
        counts.do_not_train += 1
        return None
    if completion.end_user is not None and completion.end_user in opted_out:
        counts.opted_out += 1
        return None
    prompt = _prompt_of_request(completion)
    if prompt is None:
        counts.unsupported += 1
        return None
    return _judge(completion, prompt, feedback, opted_out, config, counts)


def _prompt_of_request(completion: Completion) -> Conversation | None:
    """The request's messages as text chat (tool turns kept, with the tools it offered), or
    None when they cannot be trained on."""
    if completion.kind != "chat" or completion.request is None:
        return None
    try:
        request = _request_decoder.decode(completion.request)
    except msgspec.DecodeError:
        return None
    prompt: Conversation = []
    for message in request.messages:
        turn = _turn(message)
        if turn is None:
            return None
        prompt.append(turn)
    if not any(m["role"] == "user" for m in prompt):
        return None
    return with_tools(prompt, request.tools)


def _turn(message: _RequestMessage) -> ChatMessage | None:
    """One request message as chat, or None when it cannot be trained on."""
    role = _ROLE_MAP.get(message.role)
    text = _text_of(message.content)
    if text is None and message.tool_calls and role == "assistant":
        text = ""  # a bare tool call
    if role is None or text is None or (role == "tool") != (message.tool_call_id is not None):
        return None
    turn: ChatMessage = {"role": role, "content": text}
    if message.tool_calls:
        if role != "assistant":
            return None
        turn["tool_calls"] = message.tool_calls
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    return turn


def _text_of(content: str | list[_Part] | None) -> str | None:
    if isinstance(content, str):
        return content
    if content is None or any(p.type != "text" or p.text is None for p in content):
        return None
    return "\n".join(p.text for p in content if p.text is not None)


def _judge(
    completion: Completion,
    prompt: Conversation,
    feedback: Sequence[Feedback],
    opted_out: Collection[str],
    config: DatasetConfig,
    counts: StageCounts,
) -> _Candidate | None:
    """Apply the feedback rules of the module docstring (step 1)."""
    review = _latest_review(feedback)
    users = [f for f in feedback if not _is_review(f)]
    if review is not None:
        correction = review if _corrects(review) else None
        keep = correction is not None or _approved(completion, review, config, counts)
    else:
        correction = _latest(f for f in users if _corrects(f))
        keep = correction is not None or _kept_by_users(completion, users, config, counts)
    if not keep:
        return None
    key, end_user = _answer_author(completion, correction)
    if end_user is not None and end_user in opted_out:
        counts.opted_out += 1  # the correction is the opted-out end user's own writing
        return None
    negative = any(_is_negative(f, config) for f in users)
    return _Candidate(
        messages=[*prompt, _answer(completion, correction)],
        tools=tools_of(prompt),
        source="traffic",
        source_id=completion.id,
        author=end_user if end_user is not None else key,
        key=key,
        end_user=end_user,
        created_at=completion.created_at,
        rejected=completion.response if correction is not None and negative else None,
        corrected=correction is not None,
        feedback_ids=tuple(sorted(f.id for f in feedback)),
        alias=completion.alias,
        adapter_version=completion.adapter_version,
    )


def _answer(completion: Completion, correction: Feedback | None) -> ChatMessage:
    """The assistant turn trained on: the correction (text), else the model's answer with the
    tool calls it made."""
    if correction is not None:
        return {"role": "assistant", "content": correction.correction or ""}
    answer: ChatMessage = {"role": "assistant", "content": completion.response or ""}
    calls = tool_calls_of(completion.tool_calls)
    if calls:
        answer["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in calls
        ]
    return answer


def _kept_by_users(
    completion: Completion, users: Sequence[Feedback], config: DatasetConfig, counts: StageCounts
) -> bool:
    """Whether users' feedback (no correction among it) keeps the model's answer."""
    if any(_is_negative(f, config) for f in users):
        counts.negative += 1
        return False
    positive = any(f.rating == "up" or _score_at_least(f, config) for f in users)
    if not positive and not config.include_unrated:
        counts.unrated += 1
        return False
    return _complete(completion, counts)


def _approved(
    completion: Completion, review: Feedback, config: DatasetConfig, counts: StageCounts
) -> bool:
    """Whether a reviewer's decision other than a correction keeps the model's answer."""
    if _is_negative(review, config):
        counts.negative += 1  # rejected in review, whatever users said
        return False
    return _complete(completion, counts)


def _complete(completion: Completion, counts: StageCounts) -> bool:
    """An uncorrected answer is trained on only when it was not cut short."""
    if completion.status != "complete" or completion.finish_reason == "length":
        counts.incomplete += 1
        return False
    return True


def _is_review(f: Feedback) -> bool:
    return f.author.startswith(REVIEWER_PREFIX)


def _latest_review(feedback: Sequence[Feedback]) -> Feedback | None:
    """The latest reviewer's decision: a correction, or a rating or score that approves or
    rejects (a reviewer's comment alone decides nothing)."""
    decisions = (
        f
        for f in feedback
        if _is_review(f) and (_corrects(f) or f.rating is not None or f.score is not None)
    )
    return _latest(decisions)


def _latest(feedback: Iterable[Feedback]) -> Feedback | None:
    return max(feedback, key=lambda f: (f.created_at, f.id), default=None)


def _corrects(f: Feedback) -> bool:
    return f.correction is not None and bool(f.correction.strip())


def _answer_author(completion: Completion, correction: Feedback | None) -> tuple[str, str | None]:
    """Who wrote the answer trained on, as (API key, end user or None).

    A correction is written by whoever sent it: the feedback's key, and the end user that key
    named (`user`); a key correcting its own completion without naming one speaks for that
    completion's end user, a key correcting another key's completion only for itself. Feedback
    stored before keys were recorded counts as the completion's key. A kept model answer is the
    completion's (its key and end user chose to keep it).
    """
    if correction is None:
        return completion.key_id, completion.end_user
    key = correction.key_id or completion.key_id
    if correction.end_user is not None:
        return key, correction.end_user
    return key, completion.end_user if key == completion.key_id else None


def _is_negative(f: Feedback, config: DatasetConfig) -> bool:
    return f.rating == "down" or (f.score is not None and f.score < config.positive_score)


def _score_at_least(f: Feedback, config: DatasetConfig) -> bool:
    return f.score is not None and f.score >= config.positive_score


def _is_trainable(conversation: Conversation) -> bool:
    return (
        bool(conversation)
        and conversation[-1]["role"] == "assistant"
        and any(m["role"] == "user" for m in conversation)
    )


# ------------------------------------------------------------------------------------ the build


def _build(
    candidates: list[_Candidate],
    counts: StageCounts,
    config: DatasetConfig,
    count_tokens: CountTokens | None,
    *,
    per_author: bool,
) -> Snapshot:
    spans = _redact_all(candidates) if config.redact_pii else Counter[str]()
    pii_redacted = sum(c.pii_redacted for c in candidates)
    candidates = _filter_quality(candidates, config, counts, count_tokens)
    for c in candidates:
        c.hash = _sha256(_canonical(_hashed(c)))
        c.prompt_key = _sha256(_canonical(_normalized(prompt_of(c.messages))))
        c.words = _WORD_RE.findall(_flatten(c.messages).casefold())
    candidates, clusters = _deduplicate(candidates, config, counts)
    guarded = guard(candidates, clusters, config, per_author=per_author)
    for stage, removed in guarded.removed.items():
        setattr(counts, stage, getattr(counts, stage) + removed)
    counts.kept = len(guarded.kept)
    train, eval_ = _split(guarded.kept, config)
    return _snapshot(
        train,
        eval_,
        counts,
        config,
        (guarded.flags, guarded.review),
        (pii_redacted, spans),
        count_tokens,
    )


def _redact_all(candidates: list[_Candidate]) -> Counter[str]:
    spans: Counter[str] = Counter()
    for c in candidates:
        for m in c.messages:
            result = redact(m["content"])
            m["content"] = result.text
            spans.update({str(kind): n for kind, n in result.counts.items()})
            c.pii_redacted = c.pii_redacted or result.total > 0
            for call in m.get("tool_calls") or []:
                result = redact(call["function"]["arguments"])
                call["function"] = {**call["function"], "arguments": result.text}
                spans.update({str(kind): n for kind, n in result.counts.items()})
                c.pii_redacted = c.pii_redacted or result.total > 0
        if c.rejected is not None:
            result = redact(c.rejected)
            c.rejected = result.text
            spans.update({str(kind): n for kind, n in result.counts.items()})
    return spans


def _filter_quality(
    candidates: list[_Candidate],
    config: DatasetConfig,
    counts: StageCounts,
    count_tokens: CountTokens | None,
) -> list[_Candidate]:
    kept: list[_Candidate] = []
    for c in candidates:
        answer = text_of(c.messages[-1]).strip()
        if len(answer) < config.min_answer_chars or not any(ch.isalnum() for ch in answer):
            counts.low_quality += 1
            continue
        counted = with_tools(c.messages, c.tools)
        c.tokens = count_tokens(counted) if count_tokens else _whitespace_words(c.messages)
        if c.tokens > config.max_tokens:
            counts.too_long += 1
            continue
        kept.append(c)
    return kept


def _whitespace_words(conversation: Conversation) -> int:
    return sum(len(text_of(m).split()) for m in conversation)


# -------------------------------------------------------------------------------- 4. dedup


_Cluster = tuple["_Candidate", list["_Candidate"]]  # a kept example and its removed duplicates
LSH_MAX_THRESHOLD = 0.9


def _deduplicate(
    candidates: list[_Candidate], config: DatasetConfig, counts: StageCounts
) -> tuple[list[_Candidate], list[_Cluster]]:
    """Keep the first of each group of exact or near-duplicates (candidates are in time order)."""
    # A missed pair would let near-duplicates straddle the split while a false candidate only
    # costs a Jaccard check, so the LSH bands are tuned to favour recall. For the same reason
    # they are cut for at most LSH_MAX_THRESHOLD: datasketch finds no two bands above ~0.93
    # (16 permutations) to ~0.99 (128), and the Jaccard check applies the real threshold.
    lsh = MinHashLSH(
        threshold=min(config.near_duplicate_threshold, LSH_MAX_THRESHOLD),
        num_perm=config.num_perm,
        weights=(0.2, 0.8),
    )
    exact: dict[str, int] = {}
    sketches: list[MinHash] = []
    kept: list[_Candidate] = []
    removed: dict[int, list[_Candidate]] = defaultdict(list)
    for c in candidates:
        key = _sha256(_canonical(_normalized(c.messages)))
        if key in exact:
            counts.exact_duplicate += 1
            removed[exact[key]].append(c)
            continue
        sketch = _minhash(c.words, config)
        similar = _most_similar(lsh, sketches, sketch, config.near_duplicate_threshold)
        if similar is not None:
            counts.near_duplicate += 1
            removed[similar].append(c)
            continue
        exact[key] = len(kept)
        lsh.insert(len(kept), sketch)
        sketches.append(sketch)
        kept.append(c)
    return kept, [(kept[i], removed[i]) for i in sorted(removed)]


def _minhash(words: list[str], config: DatasetConfig) -> MinHash:
    k = config.shingle_size
    shingles = {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}
    sketch = MinHash(num_perm=config.num_perm, seed=1)
    sketch.update_batch([s.encode() for s in sorted(shingles)])
    return sketch


def _most_similar(
    lsh: MinHashLSH, sketches: list[MinHash], sketch: MinHash, threshold: float
) -> int | None:
    """The earliest kept example whose estimated Jaccard similarity reaches the threshold."""
    matches = [int(i) for i in lsh.query(sketch) if sketches[i].jaccard(sketch) >= threshold]
    return min(matches) if matches else None


# ------------------------------------------------------------------------------------- 6. split


def _split(
    candidates: list[_Candidate], config: DatasetConfig
) -> tuple[list[_Candidate], list[_Candidate]]:
    """Held out: groups whose seeded hash falls under eval_fraction (one group at least).

    Groups are prompts, so a prompt never sits on both sides; when every example has the same
    prompt, each example is its own group. The only case that looks at the whole set is an
    empty side, fixed by moving the group drawn lowest (to eval) or highest (to train).
    """
    if config.eval_fraction == 0 or len(candidates) < 2:
        return list(candidates), []
    by_prompt = len({c.prompt_key for c in candidates}) > 1

    def group_of(c: _Candidate) -> str:
        return c.prompt_key if by_prompt else c.hash

    draws = {group_of(c): _unit(f"{config.seed}:{group_of(c)}") for c in candidates}
    held = {g for g, u in draws.items() if u < config.eval_fraction}
    order = sorted(draws, key=lambda g: (draws[g], g))
    if not held:
        held = {order[0]}
    if len(held) == len(draws):
        held.discard(order[-1])
    train = [c for c in candidates if group_of(c) not in held]
    return train, [c for c in candidates if group_of(c) in held]


def _unit(text: str) -> float:
    """A uniform draw in [0, 1) from a hash of the text."""
    return int(_sha256(text.encode())[:16], 16) / 2**64


# ---------------------------------------------------------------------------------- assembly


def _snapshot(
    train: list[_Candidate],
    eval_: list[_Candidate],
    counts: StageCounts,
    config: DatasetConfig,
    guards: tuple[list[Flag], Review],
    pii: tuple[int, Counter[str]],
    count_tokens: CountTokens | None,
) -> Snapshot:
    kept = [*train, *eval_]
    sides: tuple[tuple[Split, list[_Candidate]], ...] = (("train", train), ("eval", eval_))
    preferences = [
        pair for split, group in sides for c in group if (pair := _preference(c, split)) is not None
    ]
    stats = DatasetStats(
        counts=counts,
        pii_redacted=pii[0],
        pii_spans=dict(sorted(pii[1].items())),
        corrected=sum(c.corrected for c in kept),
        train=len(train),
        eval=len(eval_),
        preferences=len(preferences),
        tokens=_token_stats([c.tokens for c in kept], count_tokens is not None),
        top_authors=_top_authors(kept),
        sources=_sources(kept),
    )
    content = {
        "config": config,
        "train": [_hashed(c) for c in train],
        "eval": [_hashed(c) for c in eval_],
        "preferences": [[p.prompt, p.chosen, p.rejected] for p in preferences],
    }
    return Snapshot(
        train=[Example(c.messages, c.provenance(), c.tools) for c in train],
        eval=[Example(c.messages, c.provenance(), c.tools) for c in eval_],
        preferences=preferences,
        stats=stats,
        flags=guards[0],
        review=guards[1],
        content_hash=_sha256(_canonical(content)),
        config=config,
    )


def _preference(c: _Candidate, split: Split) -> PreferencePair | None:
    chosen = answer_of(c.messages)
    if c.rejected is None or _fold(c.rejected) in ("", _fold(chosen)):
        return None
    return PreferencePair(
        prompt=prompt_of(c.messages),
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": c.rejected}],
        split=split,
        provenance=c.provenance(),
    )


def _token_stats(lengths: list[int], tokenizer: bool) -> TokenStats:
    counter = TOKENIZER_COUNTER if tokenizer else WHITESPACE_COUNTER
    if not lengths:
        return TokenStats(counter, 0, 0.0, 0, 0, 0)
    ordered = sorted(lengths)

    def rank(p: float) -> int:  # nearest-rank percentile
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    mean = round(sum(ordered) / len(ordered), 2)
    return TokenStats(counter, ordered[0], mean, rank(0.5), rank(0.95), ordered[-1])


def _top_authors(kept: list[_Candidate]) -> list[AuthorCount]:
    tally = Counter((c.author, c.key if c.source == "traffic" else None) for c in kept)
    ranked = sorted(tally.items(), key=lambda item: (-item[1], repr(item[0])))
    return [AuthorCount(author, n, key) for (author, key), n in ranked[:_TOP_AUTHORS]]


def _sources(kept: list[_Candidate]) -> list[SourceCount]:
    tally = Counter((c.source, c.alias, c.adapter_version) for c in kept)
    ranked = sorted(tally.items(), key=lambda item: (-item[1], repr(item[0])))
    return [SourceCount(s, alias, version, n) for (s, alias, version), n in ranked]


# ------------------------------------------------------------------------------------ text bits


def _hashed(c: _Candidate) -> object:
    """What an example's hash covers: its messages, and the tools offered when there are any
    (so an example without tools hashes as it always did)."""
    return {"messages": c.messages, "tools": c.tools} if c.tools else c.messages


def _canonical(value: object) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _normalized(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m["role"], _fold(text_of(m))) for m in conversation]


def _flatten(conversation: Conversation) -> str:
    return "\n".join(text_of(m) for m in conversation)
