"""Request validation, the allowlist, and the SSE event cutter."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec
import pytest

from gateway.cache_salt import CacheSalts
from gateway.protocol import decode_chat, decode_completion, encode_for_engine
from gateway.upstream import SSEEvents, rename_model
from store.errors import InvalidRequest
from tests.unit.fake_engine import sse_chunks


def test_chat_round_trip_keeps_allowed_fields_untouched() -> None:
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hé ✓"}]}],
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "response_format": {"type": "json_object"},
        "stop": ["\n"],
        "seed": 7,
    }
    req = decode_chat(json.dumps(body).encode())
    sent = msgspec.json.decode(encode_for_engine(req, "engine-name", "salt-of-acme"))
    assert sent == {**body, "model": "engine-name", "stream": False, "cache_salt": "salt-of-acme"}


def test_gateway_fields_are_not_forwarded() -> None:
    req = decode_chat(
        b'{"model":"a","messages":[{"role":"user","content":"x"}],"store":true,"metadata":{"k":"v"}}'
    )
    assert req.store is True and req.metadata == {"k": "v"}
    sent = msgspec.json.decode(encode_for_engine(req, "e", "s"))
    assert "store" not in sent and "metadata" not in sent


@pytest.mark.parametrize(
    "patch",
    [
        {"max_tokens": 0},
        {"n": 99},
        {"top_p": 0},
        {"metadata": {"k" * 65: "v"}},
        {"stop": 5},
        {"user": 3},
    ],
)
def test_invalid_values_raise_invalid_request(patch: dict[str, object]) -> None:
    body = {"model": "a", "messages": [{"role": "user", "content": "x"}], **patch}
    with pytest.raises(InvalidRequest) as info:
        decode_chat(json.dumps(body).encode())
    assert info.value.param is not None


def test_completion_prompt_forms() -> None:
    for prompt in ("hi", ["a", "b"], [1, 2, 3], [[1], [2]]):
        assert (
            decode_completion(json.dumps({"model": "m", "prompt": prompt}).encode()).prompt
            == prompt
        )
    for bad in ("", [], None):
        with pytest.raises(InvalidRequest):
            decode_completion(json.dumps({"model": "m", "prompt": bad}).encode())


def test_unicode_and_non_object_bodies() -> None:
    with pytest.raises(InvalidRequest):
        decode_chat(b"[1,2]")
    with pytest.raises(InvalidRequest):
        decode_chat(b"\xff\xfe")
    req = decode_chat('{"model":"m","messages":[{"role":"user","content":"日本語 🚀"}]}'.encode())
    assert req.messages[0].content == "日本語 🚀"


@pytest.mark.parametrize("seed", range(20))
def test_sse_events_survive_any_split_and_are_renamed(seed: int) -> None:
    data = b"".join(sse_chunks(["a", "b\n\nc", "d"], model="engine-x"))
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), k=rng.randint(1, 20)))
    pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    events = SSEEvents(b"engine-x", b"alias")
    out = b"".join(events.feed(p) for p in pieces)
    assert events.done and events.buffer == b""
    assert out == data.replace(b'"model":"engine-x"', b'"model":"alias"')
    for part in out.split(b"\n\n")[:-1]:
        assert part.startswith(b"data: ")


def test_sse_without_done_is_detected() -> None:
    events = SSEEvents(b"e", b"a")
    events.feed(b"".join(sse_chunks(["x"], model="e", done=False)))
    assert not events.done


def test_rename_model_touches_only_the_model_field() -> None:
    body = b'{"model":"eng","choices":[{"message":{"content":"\\"model\\":\\"eng\\""}}]}'
    assert rename_model(body, b"eng", b"alias").startswith(b'{"model":"alias"')
    assert rename_model(body, b"eng", b"alias").count(b"alias") == 1


def test_cache_salts_are_per_tenant_secret_and_stable(tmp_path: Path) -> None:
    salts = CacheSalts.for_data_dir("", tmp_path)
    assert (tmp_path / "cache_salt_secret").stat().st_mode & 0o777 == 0o600
    assert salts.of("t1") == salts.of("t1") != salts.of("t2")
    # the same data dir (a restart) keeps them; another secret gives others
    assert CacheSalts.for_data_dir("", tmp_path).of("t1") == salts.of("t1")
    assert CacheSalts.for_data_dir("configured", tmp_path).of("t1") != salts.of("t1")
    assert "t1" not in salts.of("t1")


def test_a_client_cannot_choose_its_cache_salt() -> None:
    body = b'{"model":"a","messages":[{"role":"user","content":"x"}],"cache_salt":"other"}'
    with pytest.raises(InvalidRequest, match="cache_salt"):
        decode_chat(body)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["a"] * 65}, "prompt"),  # more prompts than MAX_PROMPTS
        ({"prompt": ["a"] * 100_000}, "prompt"),
        ({"prompt": ["a", "b"] * 4, "n": 16}, "n"),  # 8 x 16 sequences > MAX_SEQUENCES
        ({"prompt": "a", "n": 2, "best_of": 16, "max_tokens": 1}, None),  # 16: allowed
        ({"prompt": [[1, 2]] * 32, "best_of": 2}, None),  # 64: allowed
        ({"prompt": [[1, 2]] * 32, "best_of": 3}, "n"),
    ],
)
def test_one_request_cannot_ask_the_engine_for_unbounded_work(
    body: dict[str, object], param: str | None
) -> None:
    raw = json.dumps({"model": "m", **body}).encode()
    if param is None:
        decode_completion(raw)
        return
    with pytest.raises(InvalidRequest) as caught:
        decode_completion(raw)
    assert caught.value.param == param
