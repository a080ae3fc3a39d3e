"""`loopgate adapter ...` against a real (uvicorn-served) gateway with a fake engine behind it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from gateway.app import create_app
from gateway.cli import main
from replicas.supervisor import free_port
from tests.unit.adapter_files import write_adapter
from tests.unit.conftest import make_settings
from tests.unit.fake_engine import FakeEngine


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(make_settings(tmp_path), transport=engine.transport()),
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    monkeypatch.setenv("LOOPGATE_ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("LOOPGATE_DATA_DIR", str(tmp_path))
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True
    thread.join(10)


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, object, str]:
    code = main(["adapter", "--url", url, *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip().startswith(("{", "[")) else out, err


def test_register_promote_rollback_from_the_cli(
    served: tuple[str, FakeEngine], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url, engine = served
    assert main(["tenant", "create", "acme"]) == 0
    capsys.readouterr()
    code, v1, _ = cli(
        capsys,
        url,
        "register",
        "acme",
        str(write_adapter(tmp_path / "a1", seed=1)),
        "--name",
        "one",
    )
    assert code == 0 and v1["status"] == "candidate"  # type: ignore[index]
    _, v2, _ = cli(
        capsys,
        url,
        "register",
        "acme",
        str(write_adapter(tmp_path / "a2", seed=2)),
        "--name",
        "two",
    )
    code, _, err = cli(capsys, url, "promote", "acme", "support", v1["id"])  # type: ignore[index]
    assert code == 1 and "409" in err and "eval" in err  # the gate: no passing eval yet
    code, _, err = cli(capsys, url, "promote", "acme", "support", v1["id"], "--force")  # type: ignore[index]
    assert code == 1 and "reason" in err  # forcing needs a reason
    promote = ("promote", "acme", "support")
    code, report, _ = cli(capsys, url, *promote, v1["id"], "--force", "--reason", "first")  # type: ignore[index]
    assert code == 0 and report["to_version"] == v1["id"]  # type: ignore[index]
    cli(capsys, url, *promote, v2["id"], "--force", "--reason", "second")  # type: ignore[index]
    code, back, _ = cli(capsys, url, "rollback", "acme", "support", "--reason", "regression")
    assert code == 0 and back["to_version"] == v1["id"]  # type: ignore[index]
    code, shown, _ = cli(capsys, url, "show", "acme", v1["id"])  # type: ignore[index]
    assert shown["version"]["status"] == "live" and shown["aliases"][0]["name"] == "support"  # type: ignore[index]
    code, _, err = cli(capsys, url, "delete", "acme", v1["id"])  # type: ignore[index]
    assert code == 1 and "409" in err and "live" in err
    code, listed, _ = cli(capsys, url, "list", "acme")
    assert {a["name"] for a in listed["data"]} == {"one", "two"}  # type: ignore[index]
    assert len(engine.loras) == 1


def test_cli_reports_bad_uploads_and_unreachable_gateways(
    served: tuple[str, FakeEngine], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url, _ = served
    main(["tenant", "create", "acme"])
    capsys.readouterr()
    bad = write_adapter(tmp_path / "bad", rank=64)
    code, _, err = cli(capsys, url, "register", "acme", str(bad))
    assert code == 1 and "422" in err and "max_lora_rank" in err
    code, _, err = cli(capsys, f"http://127.0.0.1:{free_port()}", "list", "acme")
    assert code == 1 and "cannot reach the gateway" in err
