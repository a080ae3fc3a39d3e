"""Uploads streamed to disk: the multipart body parsed as it arrives, the size limit kept while
streaming (the rest of the body is never read), nothing left behind on a refusal, and the file
checked line by line from disk exactly as the in-memory validator checks bytes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import uploads
from store.errors import InvalidRequest, PayloadTooLarge
from tests.unit.conftest import Env
from tests.unit.test_finetuning_api import GOOD, upload
from training.jsonl import JsonlError, count_chat_jsonl_file, validate_chat_jsonl

BOUNDARY = "lg-test-boundary"


def multipart(file: bytes | None, **fields: str) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    if file is not None:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="train.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
        )
        parts.append(head.encode() + file + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class Body:
    """A request body arriving in chunks, counting how many were read."""

    def __init__(self, data: bytes, chunk: int):
        self.chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] + [b""]
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


async def receive(body: Body, folder: Path, max_bytes: int = 10**6) -> uploads.Received:
    too_large = PayloadTooLarge("too large", param="file")
    return await uploads.receive(
        body.__aiter__(),
        BOUNDARY,
        folder,
        file_field="file",
        max_bytes=max_bytes,
        too_large=too_large,
    )


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
async def test_chunks_split_anywhere_come_out_whole(tmp_path: Path, chunk: int) -> None:
    data = GOOD + b"\r\n--lg-test-boundar" + GOOD  # almost a boundary, inside the file
    got = await receive(Body(multipart(data, purpose="fine-tune"), chunk), tmp_path)
    assert got.path.read_bytes() == data and got.size == len(data)
    assert got.fields == {"purpose": "fine-tune"} and got.filename == "train.jsonl"
    assert got.path.parent == tmp_path and got.path.name.startswith(".upload-")


async def test_a_file_past_the_limit_is_refused_while_it_streams(tmp_path: Path) -> None:
    body = Body(multipart(b"x" * 100_000, purpose="fine-tune"), 1000)
    with pytest.raises(PayloadTooLarge):
        await receive(body, tmp_path, max_bytes=5_000)
    assert body.read < 10 < len(body.chunks)  # refused at the limit: the rest never read
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (multipart(None, purpose="fine-tune"), "multipart form field 'file'"),
        (multipart(GOOD)[:-30], "not valid multipart"),  # cut short
        (multipart(GOOD), ""),  # valid: the control case
        (multipart(GOOD, purpose="x" * 5000), "too long"),
        (b"no boundary here at all", "not valid multipart"),
    ],
)
async def test_bad_bodies_are_400s_and_leave_nothing(
    tmp_path: Path, data: bytes, message: str
) -> None:
    if not message:
        assert (await receive(Body(data, 50), tmp_path)).path.exists()
        return
    with pytest.raises(InvalidRequest, match=message):
        await receive(Body(data, 50), tmp_path)
    assert list(tmp_path.iterdir()) == []


async def test_two_file_parts_are_refused(tmp_path: Path) -> None:
    one = multipart(GOOD).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    with pytest.raises(InvalidRequest, match="one file per upload"):
        await receive(Body(one + multipart(GOOD), 64), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_request_that_is_not_multipart_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="multipart/form-data"):
        uploads.boundary(("application/json", {}), "file")
    with pytest.raises(InvalidRequest):
        uploads.boundary(("multipart/form-data", {}), "file")
    assert uploads.boundary(("multipart/form-data", {"boundary": "b1"}), "file") == "b1"


@pytest.mark.parametrize("overrides", [{"file_max_bytes": len(GOOD) + 10}])
def test_through_the_api_an_over_limit_upload_leaves_no_file(env: Env) -> None:
    refused = upload(env, GOOD + GOOD)  # within the route's body slack: our limit decides
    assert refused["http"] == 413, refused
    assert refused["error"]["type"] == "invalid_request_error"
    assert refused["error"]["param"] == "file"
    folder = Path(env.client.app.state.gateway.settings.training_path) / "files"
    assert [p for p in folder.rglob("*") if p.is_file()] == []
    ok = upload(env, GOOD)
    assert ok["http"] == 200 and ok["bytes"] == len(GOOD)
    kept = [p for p in folder.rglob("*") if p.is_file()]
    assert [p.name for p in kept] == [f"{ok['id']}.jsonl"] and kept[0].read_bytes() == GOOD
    resp = env.client.post("/v1/files", json={"purpose": "fine-tune"}, headers=env.auth())
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file"


LONG = json.dumps({"messages": [{"role": "user", "content": "q" * 3000}]}).encode()


@pytest.mark.parametrize(
    "data",
    [
        GOOD,
        b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n"),  # a BOM, CRLF line ends
        GOOD + b"\n\n   \n",  # blank lines
        GOOD[:200] + b"\n" + LONG + b"\n" + b"not json\n" + LONG,  # too long, bad, too long at EOF
        b"",
        b"[1, 2]\n" * 3,
    ],
)
def test_the_file_check_agrees_with_the_bytes_check(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    limits = {"max_lines": 50, "max_line_bytes": 1000}
    try:
        expected: int | str = len(validate_chat_jsonl(data, **limits))
    except JsonlError as exc:
        expected = str(exc)
    try:
        got: int | str = count_chat_jsonl_file(path, **limits)
    except JsonlError as exc:
        got = str(exc)
    assert got == expected


def test_the_file_check_stops_counting_past_max_lines(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(GOOD * 10)
    with pytest.raises(JsonlError, match="more than 100 examples"):
        count_chat_jsonl_file(path, max_lines=100, max_line_bytes=10_000)
    assert count_chat_jsonl_file(path, max_lines=120, max_line_bytes=10_000) == 120
