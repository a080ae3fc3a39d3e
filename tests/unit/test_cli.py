"""The CLI's store commands and its error handling, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOOPGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOPGATE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith(("{", "[")) else out), err


def test_tenant_key_alias_lifecycle(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, tenant, _ = run(capsys, "tenant", "create", "acme")
    assert code == 0 and tenant["name"] == "acme"  # type: ignore[index]
    code, issued, _ = run(capsys, "key", "create", "acme", "--name", "ci")
    key = issued["key"]  # type: ignore[index]
    assert key.startswith("lg-")
    code, keys, _ = run(capsys, "key", "list", "acme")
    assert key not in json.dumps(keys) and keys[0]["name"] == "ci"  # type: ignore[index]
    assert key.encode() not in (data_dir / "loopgate.db").read_bytes()
    code, _, _ = run(capsys, "alias", "set", "acme", "support")
    code, aliases, _ = run(capsys, "alias", "list", "acme")
    assert sorted(a["name"] for a in aliases) == ["smollm2", "support"]  # type: ignore[index, union-attr]
    code, revoked, _ = run(capsys, "key", "revoke", issued["id"])  # type: ignore[index]
    assert code == 0 and revoked["revoked_at"] is not None  # type: ignore[index]
    code, _, _ = run(capsys, "alias", "delete", "acme", "support")
    assert code == 0


def test_errors_are_messages_not_tracebacks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "key", "create", "nobody")
    assert code == 1 and "no tenant 'nobody'" in err and "Traceback" not in err
    run(capsys, "tenant", "create", "acme")
    code, _, err = run(capsys, "tenant", "create", "acme")
    assert code == 1 and "already exists" in err
    monkeypatch.setenv("LOOPGATE_ENGINE_MODE", "nowhere")
    code, _, err = run(capsys, "tenant", "list")
    assert code == 2 and "LOOPGATE_ENGINE_MODE" in err


def test_config_reference(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "--markdown")
    assert code == 0 and "| `LOOPGATE_PORT` | `8080` |" in str(out)


def test_model_verify_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "model", "verify")
    assert code == 1 and "loopgate model prepare" in err


def test_a_taken_port_is_a_clear_error_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for command in ("serve", "up"):
            code, _, err = run(capsys, command, "--port", str(port))
            assert code == 2 and f"127.0.0.1:{port}" in err and "LOOPGATE_PORT" in err
