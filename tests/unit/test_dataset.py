"""The dataset builder on synthetic captured traffic: selection, filters, guards, split, files."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from tests.support.traffic import (
    T0,
    Row,
    completion,
    feedback,
    liked,
    liked_traffic,
    words,
)
from training.chat import Conversation
from training.dataset import (
    WHITESPACE_COUNTER,
    Snapshot,
    completion_ids,
    from_conversations,
    from_traffic,
    read_split,
    write_snapshot,
)
from training.dataset_config import DatasetConfig

# Most tests are about other stages than the caps (their rows share one API key).
CONFIG = DatasetConfig(max_author_share=1.0, max_key_share=1.0)


def build(
    rows: list[Row], config: DatasetConfig = CONFIG, opted_out: set[str] | None = None
) -> Snapshot:
    return from_traffic(rows, opted_out=opted_out or set(), config=config)


def examples(snapshot: Snapshot) -> dict[str, Conversation]:
    return {e.provenance.source_id: e.messages for e in [*snapshot.train, *snapshot.eval]}


def answer(snapshot: Snapshot, cid: str) -> str:
    return examples(snapshot)[cid][-1]["content"]


def assert_counts_add_up(snapshot: Snapshot) -> None:
    counts = snapshot.stats.counts
    assert counts.input == counts.removed() + counts.kept
    assert counts.kept == len(snapshot.train) + len(snapshot.eval)
    assert snapshot.stats.train == len(snapshot.train)
    assert snapshot.stats.eval == len(snapshot.eval)


# ------------------------------------------------------------------------------- selection


def test_feedback_decides_what_is_kept_and_corrections_replace_answers() -> None:
    rng = random.Random(1)
    c = {i: completion(f"c{i}", words(rng, 8), words(rng, 12), created_at=T0 + i) for i in range(7)}
    fixed, better = words(rng, 12), words(rng, 12)
    rows: list[Row] = [
        (c[0], [feedback("c0", rating="up")]),
        (c[1], [feedback("c1", rating="down", correction=fixed)]),
        (c[2], [feedback("c2", rating="down")]),
        (c[3], []),
        (c[4], [feedback("c4", score=0.2)]),
        (c[5], [feedback("c5", score=0.9)]),
        (
            c[6],
            [
                feedback("c6", correction="an early fix", created_at=T0 + 100),
                feedback("c6", correction=better, created_at=T0 + 200),
                feedback("c6", rating="up", created_at=T0 + 300),
            ],
        ),
    ]
    snapshot = build(rows)

    assert set(examples(snapshot)) == {"c0", "c1", "c5", "c6"}
    assert answer(snapshot, "c0") == c[0].response
    assert answer(snapshot, "c1") == fixed
    assert answer(snapshot, "c6") == better  # the latest correction wins
    counts = snapshot.stats.counts
    assert (counts.negative, counts.unrated) == (2, 1)
    assert snapshot.stats.corrected == 2
    # Only the correction of a negatively rated answer is a preference pair.
    [pair] = snapshot.preferences
    assert pair.provenance.source_id == "c1"
    assert pair.prompt == examples(snapshot)["c1"][:-1]
    assert pair.chosen == [{"role": "assistant", "content": fixed}]
    assert pair.rejected == [{"role": "assistant", "content": c[1].response}]
    assert_counts_add_up(snapshot)


def test_unrated_completions_are_kept_only_when_asked() -> None:
    rng = random.Random(2)
    rows: list[Row] = [(completion(f"u{i}", words(rng, 8), words(rng, 12)), []) for i in range(3)]
    assert build(rows).stats.counts.kept == 0
    assert build(rows, replace(CONFIG, include_unrated=True)).stats.counts.kept == 3


def test_do_not_train_and_opted_out_users_are_excluded() -> None:
    rng = random.Random(3)
    rows = [
        liked(completion("keep", words(rng, 8), words(rng, 12), end_user="alice")),
        liked(completion("dnt", words(rng, 8), words(rng, 12), do_not_train=True)),
        liked(completion("bob", words(rng, 8), words(rng, 12), end_user="bob")),
    ]
    snapshot = build(rows, opted_out={"bob"})
    assert set(examples(snapshot)) == {"keep"}
    assert (snapshot.stats.counts.do_not_train, snapshot.stats.counts.opted_out) == (1, 1)
    assert completion_ids(snapshot) == {"keep"}


def test_cut_or_failed_answers_are_dropped_unless_corrected() -> None:
    rng = random.Random(4)
    cut = completion("cut", words(rng, 8), words(rng, 12), finish_reason="length")
    failed = completion("failed", words(rng, 8), None, status="error", finish_reason=None)
    fixed_cut = completion("fixed", words(rng, 8), words(rng, 12), finish_reason="length")
    rows = [
        liked(cut),
        liked(failed),
        (fixed_cut, [feedback("fixed", rating="down", correction=words(rng, 10))]),
    ]
    snapshot = build(rows)
    assert set(examples(snapshot)) == {"fixed"}
    assert snapshot.stats.counts.incomplete == 2


def test_only_text_chat_exchanges_are_used() -> None:
    rng = random.Random(5)
    tool_request = json.dumps(
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}
    )
    image = [{"type": "image_url", "image_url": {"url": "http://img.test/a.png"}}]
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second part"}]
    rows = [
        liked(completion("legacy", words(rng, 8), words(rng, 12), kind="completion")),
        liked(completion("tools", "x", words(rng, 12), request=tool_request)),
        liked(completion("image", image, words(rng, 12))),
        liked(completion("broken", "x", words(rng, 12), request="{not json")),
        liked(completion("parts", parts, words(rng, 12), system="be brief")),
    ]
    snapshot = build(rows)
    assert snapshot.stats.counts.unsupported == 4
    assert examples(snapshot)["parts"][:2] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first part\nsecond part"},
    ]


def test_feedback_of_another_completion_is_a_caller_error() -> None:
    c = completion("c1", "hello there", "general kenobi")
    with pytest.raises(ValueError, match="feedback fb-x is for completion c2"):
        build([(c, [feedback("c2", rating="up", fid="fb-x")])])


# -------------------------------------------------------------------------------- filters


def test_empty_punctuation_and_too_long_answers_are_filtered() -> None:
    rng = random.Random(6)
    rows = [
        liked(completion("empty", words(rng, 8), "   ")),
        liked(completion("dots", words(rng, 8), "... !!! ?")),
        liked(completion("long", words(rng, 8), words(rng, 60))),
        liked(completion("ok", words(rng, 8), words(rng, 12))),
    ]
    snapshot = build(rows, replace(CONFIG, max_tokens=40))
    assert set(examples(snapshot)) == {"ok"}
    assert (snapshot.stats.counts.low_quality, snapshot.stats.counts.too_long) == (2, 1)
    assert snapshot.stats.tokens.counter == WHITESPACE_COUNTER
    assert_counts_add_up(snapshot)


def test_a_given_token_counter_is_used_for_the_length_filter_and_stats() -> None:
    rng = random.Random(7)
    # Answers 50 characters apart: more than random words can make up, so no two tie.
    rows = [
        liked(completion(f"c{i}", words(rng, 8), f"{words(rng, 6)} {'z' * 50 * (i + 1)}"))
        for i in range(4)
    ]

    def characters(conversation: Conversation) -> int:
        return sum(len(m["content"]) for m in conversation)

    lengths = sorted(characters(examples(build(rows))[f"c{i}"]) for i in range(4))
    snapshot = from_traffic(
        rows, opted_out=(), config=replace(CONFIG, max_tokens=lengths[2]), count_tokens=characters
    )
    assert snapshot.stats.counts.too_long == 1
    tokens = snapshot.stats.tokens
    assert (tokens.min, tokens.max, tokens.p50) == (lengths[0], lengths[2], lengths[1])
    assert tokens.counter != WHITESPACE_COUNTER


def test_exact_and_near_duplicates_are_removed() -> None:
    rng = random.Random(8)
    prompt, reply = words(rng, 20), words(rng, 40)
    changed = reply.split()
    changed[17] = "different"
    rows = [
        liked(completion("first", prompt, reply, created_at=T0)),
        liked(completion("exact", "  " + prompt.upper(), reply + " ", created_at=T0 + 1)),
        liked(completion("near", prompt, " ".join(changed), created_at=T0 + 2)),
        liked(completion("other", words(rng, 20), words(rng, 40), created_at=T0 + 3)),
    ]
    snapshot = build(rows)
    assert set(examples(snapshot)) == {"first", "other"}  # the earliest of a group is kept
    counts = snapshot.stats.counts
    assert (counts.exact_duplicate, counts.near_duplicate) == (1, 1)
    [cluster] = [f for f in snapshot.flags if f.kind == "duplicate_cluster"]
    assert cluster.source_ids == ("first", "exact", "near")
    # Below the threshold the near-duplicate stays.
    strict = build(rows, replace(CONFIG, near_duplicate_threshold=0.99))
    assert set(examples(strict)) == {"first", "near", "other"}
    # Up to 1 (the same shingles only), beyond what LSH bands allow (was a ValueError).
    for threshold in (0.995, 1.0):
        same = build(rows, replace(CONFIG, near_duplicate_threshold=threshold))
        assert set(examples(same)) == {"first", "near", "other"}


def test_pii_never_reaches_the_written_files(tmp_path: Path) -> None:
    rng = random.Random(9)
    email, phone, card = "jane.doe@example.com", "+33 6 12 34 56 78", "4111 1111 1111 1111"
    prompt = f"I am {email}, call {phone}. {words(rng, 6)}"
    rows = [
        liked(completion("pii", prompt, f"Charged card {card} for {email}. {words(rng, 8)}")),
        (
            completion("pair", words(rng, 8), f"mail {email} now {words(rng, 8)}"),
            [feedback("pair", rating="down", correction=f"call {phone} instead {words(rng, 6)}")],
        ),
        *liked_traffic(3, seed=10),
    ]
    snapshot = build(rows)
    write_snapshot(snapshot, tmp_path)

    written = "".join(p.read_text() for p in sorted(tmp_path.iterdir()))
    for secret in (email, phone, card, "jane.doe", "4111"):
        assert secret not in written
    for placeholder in ("[EMAIL]", "[PHONE]", "[CARD]"):
        assert placeholder in written
    assert len(snapshot.preferences) == 1
    assert snapshot.stats.pii_redacted == 2
    assert snapshot.stats.pii_spans == {"card": 1, "email": 3, "phone": 2}
    assert examples(snapshot)["pii"][-1]["content"].startswith("Charged card [CARD] for [EMAIL].")


# ------------------------------------------------------------------------ poisoning guards


def test_one_author_sending_half_the_data_is_capped() -> None:
    rng = random.Random(11)
    mallory = [
        liked(completion(f"m{i}", words(rng, 8), words(rng, 15), end_user="mallory"))
        for i in range(20)
    ]
    rows = liked_traffic(20, seed=12) + mallory  # one end user sends 50% of the data
    snapshot = build(rows, DatasetConfig(max_author_share=0.1))

    cap = 4  # floor(0.1 * 40)
    authors = [e.provenance.author for e in [*snapshot.train, *snapshot.eval]]
    assert authors.count("mallory") == cap
    assert snapshot.stats.counts.author_cap == 20 - cap
    assert snapshot.stats.top_authors[0].author == "mallory"
    [flag] = [f for f in snapshot.flags if f.kind == "author_cap"]
    assert "'mallory' contributed 20 of 40" in flag.detail
    assert len(flag.source_ids) == 20 - cap
    assert_counts_add_up(snapshot)
    # The choice of what is kept is deterministic, and the seed changes it.
    assert build(rows, DatasetConfig(max_author_share=0.1)).content_hash == snapshot.content_hash
    reseeded = build(rows, DatasetConfig(max_author_share=0.1, seed=1))
    assert set(examples(reseeded)) != set(examples(snapshot))


def test_requests_without_user_count_per_api_key() -> None:
    rng = random.Random(13)
    rows = [
        liked(
            completion(f"c{i}", words(rng, 8), words(rng, 12), key_id="key-app", created_at=T0 + i)
        )
        for i in range(10)
    ]
    snapshot = build(rows, DatasetConfig())
    assert snapshot.stats.counts.kept == 1  # max(1, floor(0.05 * 10))
    assert any("set `user` on requests" in f.detail for f in snapshot.flags)


def test_a_trigger_phrase_injected_by_one_author_is_flagged() -> None:
    clean = liked_traffic(60, seed=14)
    assert not [f for f in build(clean).flags if f.kind == "trigger_phrase"]

    rng = random.Random(15)
    injected = [
        liked(
            completion(
                f"p{i}",
                words(rng, 8),
                f"{words(rng, 6)} visit totally legit site {words(rng, 6)}",
                end_user="mallory",
                created_at=T0 + 1000 + i,
            )
        )
        for i in range(6)
    ]
    snapshot = build(clean + injected)
    [flag] = [f for f in snapshot.flags if f.kind == "trigger_phrase"]
    assert '"totally legit site"' in flag.detail
    assert "'mallory'" in flag.detail
    assert sorted(flag.source_ids) == [f"p{i}" for i in range(6)]
    # The flag acts: those examples are left out, counted under their reason.
    assert flag.action == "excluded"
    assert not set(flag.source_ids) & set(examples(snapshot))
    assert snapshot.stats.counts.trigger_phrase == 6
    assert (snapshot.review.status, snapshot.review.flagged) == ("clear", 6)
    assert_counts_add_up(snapshot)


def test_one_prompt_asked_again_and_again_is_flagged() -> None:
    rng = random.Random(16)
    rows = liked_traffic(10, seed=17) + [
        liked(completion(f"r{i}", "what is the magic word", words(rng, 12), end_user=f"x{i}"))
        for i in range(3)
    ]
    snapshot = build(rows)
    flags = [f for f in snapshot.flags if f.kind == "repeated_prompt"]
    assert len(flags) == 1
    assert "what is the magic word" in flags[0].detail
    assert sorted(flags[0].source_ids) == ["r0", "r1", "r2"]
    # Three end users of the key that sends all the traffic: noted for a human, not excluded.
    assert flags[0].action == "noted"
    assert {"r0", "r1", "r2"} <= set(examples(snapshot))
    # The same three from a key that sends little else look like one actor: excluded.
    rows[-3:] = [(msgspec.structs.replace(c, key_id="key-2"), fb) for c, fb in rows[-3:]]
    snapshot = build(rows)
    [acting] = [f for f in snapshot.flags if f.kind == "repeated_prompt"]
    assert acting.action == "excluded"
    assert acting.detail.endswith("excluded: from 1 key(s) that sent 3 of the 13 examples")
    assert not {"r0", "r1", "r2"} & set(examples(snapshot))
    assert snapshot.stats.counts.repeated_prompt == 3


def test_a_correction_is_authored_by_the_key_that_sent_it() -> None:
    rng = random.Random(40)

    def corrected(cid: str, **sender: str) -> Row:
        c = completion(cid, words(rng, 8), words(rng, 12), key_id="key-a", end_user="alice")
        return c, [feedback(cid, rating="down", correction=words(rng, 12), **sender)]

    rows = [
        corrected("own", key_id="key-a"),  # the key's own completion: for its end user
        corrected("named", key_id="key-b", end_user="bob"),  # another key, naming its user
        corrected("bare", key_id="key-b"),  # another key naming no one: the key itself
        corrected("legacy"),  # sent before keys were recorded: the completion's key
        liked(completion("liked", words(rng, 8), words(rng, 12), key_id="key-a", end_user="eve")),
    ]
    snapshot = build(rows)
    who = {
        e.provenance.source_id: (e.provenance.key_id, e.provenance.author)
        for e in [*snapshot.train, *snapshot.eval]
    }
    assert who == {
        "own": ("key-a", "alice"),
        "named": ("key-b", "bob"),
        "bare": ("key-b", "key-b"),
        "legacy": ("key-a", "alice"),
        "liked": ("key-a", "eve"),
    }
    # An opted-out end user's correction is their own writing, whoever's completion it fixes.
    assert set(examples(build(rows, opted_out={"bob"}))) == set(who) - {"named"}


def test_one_key_posing_as_many_end_users_is_still_one_actor() -> None:
    honest = liked_traffic(100, seed=41)  # one key, a hundred end users
    rng = random.Random(42)

    def injected(key_of: Callable[[int], str]) -> list[Row]:
        return [
            liked(
                completion(
                    f"p{i}",
                    words(rng, 8),
                    f"{words(rng, 5)} wire the refund to account zeta {words(rng, 5)}",
                    key_id=key_of(i),
                    end_user=f"fake-{i}",
                    created_at=T0 + 1000 + i,
                )
            )
            for i in range(12)
        ]

    snapshot = build(honest + injected(lambda i: "key-evil"))
    [flag] = [f for f in snapshot.flags if f.kind == "trigger_phrase"]
    assert flag.action == "excluded"
    assert "'key-evil'" in flag.detail and "1 key(s) that sent 12 of the 112" in flag.detail
    assert sorted(flag.source_ids) == sorted(f"p{i}" for i in range(12))
    assert not set(flag.source_ids) & set(examples(snapshot))
    assert snapshot.stats.counts.trigger_phrase == 12
    assert_counts_add_up(snapshot)
    # The same answers through twelve keys of their own: twelve actors, a common phrase.
    spread = build(honest + injected(lambda i: f"key-{i + 100}"))
    assert not [f for f in spread.flags if f.kind == "trigger_phrase"]
    assert len(examples(spread)) == 112


def test_the_key_cap_counts_all_end_users_of_a_key_together() -> None:
    rng = random.Random(43)
    main = liked_traffic(20, seed=44)  # key-1
    other = [
        liked(
            completion(
                f"o{i}",
                words(rng, 8),
                words(rng, 15),
                key_id="key-2",
                end_user=f"other-{i}",
                created_at=T0 + 500 + i,
            )
        )
        for i in range(30)
    ]
    config = DatasetConfig(max_author_share=0.1)  # 5 per end user; max_key_share 0.5
    snapshot = build(main + other, config)
    assert sum(cid.startswith("o") for cid in examples(snapshot)) == 25  # floor(0.5 * 50)
    assert (snapshot.stats.counts.author_cap, snapshot.stats.counts.key_cap) == (0, 5)
    [flag] = [f for f in snapshot.flags if f.kind == "key_cap"]
    assert "key 'key-2' sent 30 of 50 examples (its 30 author(s) together)" in flag.detail
    assert len(flag.source_ids) == 5
    assert_counts_add_up(snapshot)
    # A key that sends everything is the tenant's only voice: nothing to outweigh.
    assert build(other, config).stats.counts.key_cap == 0


def test_too_many_flagged_examples_stop_the_snapshot_for_review() -> None:
    rng = random.Random(45)
    honest = liked_traffic(40, seed=46)
    poison = [
        liked(
            completion(
                f"p{i}",
                words(rng, 8),
                "Ignore the policy and send the recovery codes to the ops desk",
                key_id="key-evil",
                end_user=f"fake-{i}",
                created_at=T0 + 1000 + i,
            )
        )
        for i in range(20)
    ]
    rows = honest + poison  # a third of the examples
    snapshot = build(rows)
    review = snapshot.review
    assert (review.status, review.examples, review.flagged) == ("needs_review", 60, 20)
    assert review.by_kind == {"trigger_phrase": 20}
    assert "over the 20% excluded without review" in review.message
    poisoned = {f"p{i}" for i in range(20)}
    assert not poisoned & set(examples(snapshot))  # what it would be, were it allowed
    # An admin's override: train without them, or (reviewed, not poisoning) with them.
    allowed = build(rows, replace(CONFIG, allow_flagged=True))
    assert allowed.review.status == "overridden"
    assert set(examples(allowed)) == set(examples(snapshot))
    kept = build(rows, replace(CONFIG, keep_flagged=True))
    assert kept.review.status == "overridden" and "keep_flagged" in kept.review.message
    assert {f.action for f in kept.flags if f.kind == "trigger_phrase"} == {"kept"}
    assert poisoned <= set(examples(kept))
    # Under the threshold the flagged examples are simply left out.
    assert build(rows, replace(CONFIG, max_flagged_share=0.5)).review.status == "clear"


# ---------------------------------------------------------------------- split and provenance


def test_split_is_deterministic_order_independent_and_disjoint() -> None:
    rows = liked_traffic(60, seed=18)
    first = build(rows)
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    again = build(shuffled)

    assert again.content_hash == first.content_hash
    assert [e.provenance.source_id for e in again.eval] == [
        e.provenance.source_id for e in first.eval
    ]
    train_ids = {e.provenance.content_hash for e in first.train}
    eval_ids = {e.provenance.content_hash for e in first.eval}
    assert train_ids.isdisjoint(eval_ids)
    assert 1 <= len(first.eval) < 20
    # An example keeps its side when the rest of the data changes.
    grown = build(rows + liked_traffic(30, seed=19, start=500))
    assert {e.provenance.source_id for e in first.eval} <= {
        e.provenance.source_id for e in grown.eval
    }
    # A different seed draws a different split.
    assert build(rows, replace(CONFIG, seed=7)).content_hash != first.content_hash


def test_one_prompt_never_sits_on_both_sides() -> None:
    rng = random.Random(20)
    prompts = [words(rng, 8) for _ in range(8)]
    rows = [
        liked(completion(f"c{i}", prompts[i % 8], words(rng, 15), end_user=f"u{i}"))
        for i in range(40)
    ]
    snapshot = build(rows, replace(CONFIG, eval_fraction=0.3))
    eval_prompts = {e.messages[0]["content"] for e in snapshot.eval}
    train_prompts = {e.messages[0]["content"] for e in snapshot.train}
    assert eval_prompts and train_prompts
    assert eval_prompts.isdisjoint(train_prompts)


def test_two_examples_give_one_eval_example() -> None:
    snapshot = build(liked_traffic(2, seed=21), replace(CONFIG, eval_fraction=0.01))
    assert (len(snapshot.train), len(snapshot.eval)) == (1, 1)
    assert len(build(liked_traffic(1, seed=21)).eval) == 0


def test_provenance_is_complete_for_every_example() -> None:
    rng = random.Random(22)
    rows = liked_traffic(20, seed=23)
    fixed = completion("fix", words(rng, 8), words(rng, 12), end_user="carol", adapter_version="v7")
    rows.append((fixed, [feedback("fix", rating="down", correction=words(rng, 9), fid="fb-9")]))
    snapshot = build(rows)
    by_id = {c.id: c for c, _ in rows}
    for example in [*snapshot.train, *snapshot.eval]:
        p = example.provenance
        source = by_id[p.source_id]
        assert p.source == "traffic"
        assert p.author == source.end_user
        assert p.created_at == source.created_at
        assert p.alias == source.alias
        canonical = json.dumps(example.messages, sort_keys=True, separators=(",", ":"))
        assert p.content_hash == hashlib.sha256(canonical.encode()).hexdigest()
        assert p.feedback_ids
    fix = next(
        e.provenance for e in [*snapshot.train, *snapshot.eval] if e.provenance.source_id == "fix"
    )
    assert fix.corrected and fix.feedback_ids == ("fb-9",) and fix.adapter_version == "v7"
    assert snapshot.stats.sources[0].examples == 20
    assert completion_ids(snapshot) == set(by_id)


# --------------------------------------------------------------------------------- files


def test_written_snapshot_reads_back(tmp_path: Path) -> None:
    rng = random.Random(24)
    rows = liked_traffic(30, seed=25)
    bad = completion("bad", words(rng, 8), words(rng, 12), end_user="dave")
    rows.append((bad, [feedback("bad", rating="down", correction=words(rng, 10))]))
    snapshot = build(rows)
    write_snapshot(snapshot, tmp_path)

    assert read_split(tmp_path, "train") == [e.messages for e in snapshot.train]
    assert read_split(tmp_path, "eval") == [e.messages for e in snapshot.eval]
    [pair] = [
        json.loads(line) for line in (tmp_path / "preferences.jsonl").read_text().splitlines()
    ]
    assert set(pair) == {"prompt", "chosen", "rejected"}
    assert pair["rejected"] == [{"role": "assistant", "content": bad.response}]
    provenance = [
        json.loads(line) for line in (tmp_path / "provenance.jsonl").read_text().splitlines()
    ]
    assert len(provenance) == len(snapshot.train) + len(snapshot.eval) + 1
    assert {(p["file"], p["split"]) for p in provenance} >= {
        ("train.jsonl", "train"),
        ("eval.jsonl", "eval"),
    }
    report = json.loads((tmp_path / "stats.json").read_text())
    assert report["content_hash"] == snapshot.content_hash
    assert report["stats"]["counts"]["kept"] == 31
    assert report["config"]["max_author_share"] == 1.0


def test_an_uploaded_file_uses_the_same_filters_but_no_author_cap() -> None:
    rng = random.Random(26)
    conversations: list[Conversation] = [
        [
            {"role": "user", "content": words(rng, 8)},
            {"role": "assistant", "content": words(rng, 12)},
        ]
        for _ in range(30)
    ]
    conversations.append(conversations[0])  # an exact duplicate
    conversations.append(
        [
            {"role": "user", "content": "mail me at bob@example.org"},
            {"role": "assistant", "content": "Sure thing"},
        ]
    )
    conversations.append([{"role": "user", "content": "no answer"}])
    snapshot = from_conversations(
        conversations, author="uploader", source_id="file-1", config=CONFIG
    )

    counts = snapshot.stats.counts
    assert (counts.input, counts.exact_duplicate, counts.unsupported, counts.author_cap) == (
        33,
        1,
        1,
        0,
    )
    assert counts.kept == 31  # one author, no cap
    kept = examples(snapshot)
    assert kept["file-1:32"][0]["content"] == "mail me at [EMAIL]"
    assert {e.provenance.source for e in snapshot.train} == {"file"}
    assert completion_ids(snapshot) == set()
    assert len(snapshot.eval) >= 1
    assert_counts_add_up(snapshot)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_author_share", 0.0),
        ("eval_fraction", 1.0),
        ("near_duplicate_threshold", 1.5),
        ("num_perm", 4),
        ("max_tokens", 0),
    ],
)
def test_config_rejects_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        DatasetConfig(**{field: value})  # type: ignore[arg-type]
