"""A tenant's LLM judge through the admin API: configuration, the sealed key, and judge calls
through the serving path (an alias) or to an external endpoint (a local HTTP server)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.unit.conftest import ADMIN, Env
from tests.unit.fake_engine import ENGINE_MODEL, chat_body

KEY = "sk-test-0123456789abcdefSECRET"
JUDGE = "/admin/tenants/acme/judge"
PROMPT = "You are grading an assistant's answer.\n\nScore: ?"


@dataclass
class ExternalJudge:
    """An OpenAI-compatible endpoint on 127.0.0.1: answers `reply` with `status`."""

    url: str = ""
    status: int = 200
    reply: str = "Looks right.\nScore: 7"
    error_body: str = ""
    got: list[tuple[dict[str, str], dict[str, object]]] = field(default_factory=list)


@pytest.fixture
def external() -> Iterator[ExternalJudge]:
    judge = ExternalJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            judge.got.append((dict(self.headers), body))
            ok = judge.status == 200 and self.path == "/v1/chat/completions"
            reply = json.dumps(chat_body(judge.reply, model=body["model"]) if ok else {})
            data = (reply if ok else judge.error_body).encode()
            self.send_response(judge.status if self.path == "/v1/chat/completions" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    judge.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield judge
    server.shutdown()
    server.server_close()


def put(env: Env, body: dict[str, object], tenant: str = "acme") -> dict[str, object]:
    resp = env.client.put(f"/admin/tenants/{tenant}/judge", json=body, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def ask(env: Env, tenant: str = "acme", prompt: str = PROMPT) -> object:
    body = {"prompt": prompt, "run_id": "ev-test"}
    return env.client.post(f"/admin/tenants/{tenant}/judge/replies", json=body, headers=ADMIN)


def error_of(resp: object) -> tuple[int, str | None, str | None]:
    error = resp.json()["error"]  # type: ignore[attr-defined]
    return resp.status_code, error["type"], error["param"]  # type: ignore[attr-defined]


def test_judge_configuration_is_validated_with_openai_errors(env: Env) -> None:
    for body, param in (
        ({}, "alias"),
        ({"alias": "smollm2", "base_url": "https://x.test/v1", "model": "m"}, "alias"),
        ({"base_url": "ftp://judge.test/v1", "model": "m"}, "base_url"),
        ({"base_url": "https:///v1", "model": "m"}, "base_url"),
        ({"base_url": "https://user:pw@judge.test/v1", "model": "m"}, "base_url"),
        ({"base_url": "https://judge.test/v1", "model": "  "}, "model"),
        ({"base_url": "https://judge.test/v1"}, "model"),
        ({"base_url": "https://judge.test/v1", "model": "m", "api_key": " "}, "api_key"),
    ):
        resp = env.client.put(JUDGE, json=body, headers=ADMIN)
        assert error_of(resp) == (400, "invalid_request_error", param), (body, resp.text)
    bad = env.client.put(JUDGE, json={"alias": "smollm2", "max_tokens": 0}, headers=ADMIN)
    assert bad.status_code == 400
    unknown = env.client.put(JUDGE, json={"alias": "nope"}, headers=ADMIN)
    assert error_of(unknown) == (404, "not_found_error", "alias")
    # globex's alias is no alias of acme's: the same 404 as a name that never existed
    foreign = env.client.put(JUDGE, json={"alias": "globex-private"}, headers=ADMIN)
    assert error_of(foreign) == error_of(unknown)
    assert env.client.get(JUDGE, headers=ADMIN).status_code == 404


def test_a_judge_is_set_shown_masked_replaced_and_deleted(env: Env, tmp_path: Path) -> None:
    shown = put(env, {"base_url": "https://judge.test/v1/", "model": "judge-1", "api_key": KEY})
    assert shown["kind"] == "external" and shown["base_url"] == "https://judge.test/v1"
    assert shown["api_key"] == "sk-…CRET" and KEY not in json.dumps(shown)
    assert shown["limits"]["max_concurrent"] == 4  # the judge's own limit set, by default
    got = env.client.get(JUDGE, headers=ADMIN)
    assert got.json() == shown and KEY not in got.text
    assert env.client.get("/admin/tenants/globex/judge", headers=ADMIN).status_code == 404
    # at rest the key is sealed: not in the database file, nor anywhere under data_dir
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    key_file = tmp_path / "judge_secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    replaced = put(env, {"alias": "smollm2", "limits": {"requests_per_minute": 5}})
    assert replaced["kind"] == "alias" and replaced["api_key"] is None
    assert replaced["limits"]["requests_per_minute"] == 5
    assert replaced["created_at"] == shown["created_at"]
    assert env.client.delete(JUDGE, headers=ADMIN).status_code == 204
    assert env.client.get(JUDGE, headers=ADMIN).status_code == 404
    assert env.client.delete(JUDGE, headers=ADMIN).status_code == 404
    assert ask(env).status_code == 404  # type: ignore[attr-defined]


def test_an_alias_judge_is_served_like_traffic_under_its_own_limits(env: Env) -> None:
    env.engine.judge_reply = lambda prompt: "Fine.\nScore: 9"
    put(env, {"alias": "smollm2", "max_tokens": 50, "limits": {"requests_per_minute": 2}})
    # the tenant's users have spent their own limit: the judge is not starved by them
    env.client.put("/admin/tenants/acme/limits", json={"requests_per_minute": 1}, headers=ADMIN)
    user = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
    assert env.client.post("/v1/chat/completions", json=user, headers=env.auth()).status_code == 200
    assert env.client.post("/v1/chat/completions", json=user, headers=env.auth()).status_code == 429
    reply = ask(env)
    assert reply.status_code == 200, reply.text  # type: ignore[attr-defined]
    assert reply.json()["content"].endswith("Score: 9")  # type: ignore[attr-defined]
    assert reply.json()["judge"] == "alias:smollm2"  # type: ignore[attr-defined]
    sent = env.engine.bodies()[-1]
    assert sent["model"] == ENGINE_MODEL and sent["temperature"] == 0.0
    assert sent["max_tokens"] == 50 and sent.get("cache_salt")  # the tenant's salt, as traffic
    # ... nor does it starve them: its limit is its own
    assert ask(env).status_code == 200  # type: ignore[attr-defined]
    limited = ask(env)
    assert limited.status_code == 429  # type: ignore[attr-defined]
    assert "judge-" in limited.json()["error"]["message"]  # type: ignore[attr-defined]
    # captured as the judge's, marked, and never trained on
    rows = env.client.get("/v1/chat/completions?limit=100", headers=env.auth()).json()["data"]
    judged = [r for r in rows if r["metadata"].get("loopgate_judge") == "ev-test"]
    assert len(judged) == 2 and all(r["loopgate"]["do_not_train"] for r in judged)
    users = [r for r in rows if "loopgate_judge" not in r["metadata"]]
    assert users and not any(r["loopgate"]["do_not_train"] for r in users)


def test_judge_calls_never_reach_a_dataset(env: Env) -> None:
    env.engine.judge_reply = lambda prompt: "Score: 9"
    put(env, {"alias": "smollm2"})
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Where is Paris?"}]}
    user = env.client.post("/v1/chat/completions", json=body, headers=env.auth()).json()["id"]
    assert ask(env, prompt=PROMPT + " Where is Paris?").status_code == 200  # type: ignore[attr-defined]
    rows = env.client.get("/v1/chat/completions?limit=100", headers=env.auth()).json()["data"]
    (judged,) = [r["id"] for r in rows if r["id"] != user]
    for cid in (user, judged):  # both corrected, so both would be kept if they could be
        fix = {"correction": "Paris is in France, on the Seine."}
        resp = env.client.post(f"/v1/chat/completions/{cid}/feedback", json=fix, headers=env.auth())
        assert resp.status_code == 201, resp.text
    built = env.client.post("/v1/datasets", json={}, headers=env.auth())
    assert built.status_code == 201, built.text
    counts = built.json()["report"]["stats"]["counts"]
    assert counts["do_not_train"] == 1 and counts["input"] == 2


def test_an_external_judge_gets_its_key_and_no_one_else_does(
    env: Env, external: ExternalJudge, log_output: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    put(env, {"base_url": external.url, "model": "judge-1", "api_key": KEY, "max_tokens": 32})
    seen = len(env.engine.requests)
    reply = ask(env)
    assert reply.status_code == 200, reply.text  # type: ignore[attr-defined]
    assert reply.json() | {"latency_ms": 0} == {  # type: ignore[attr-defined]
        "content": "Looks right.\nScore: 7",
        "judge": "external:judge-1",
        "latency_ms": 0,
    }
    headers, body = external.got[-1]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body["model"] == "judge-1" and body["temperature"] == 0.0 and body["max_tokens"] == 32
    assert len(env.engine.requests) == seen  # the engine never saw the call (nor the key)
    assert all(KEY not in r.content.decode() for r in env.engine.requests)
    # a refusal echoing the key: a 409 (not retried) with the key blanked
    external.status, external.error_body = 401, f'{{"error": "bad key {KEY}"}}'
    refused = ask(env)
    assert refused.status_code == 409 and KEY not in refused.text  # type: ignore[attr-defined]
    assert refused.json()["error"]["code"] == "judge_refused"  # type: ignore[attr-defined]
    external.status = 503
    assert ask(env).status_code == 502  # type: ignore[attr-defined]
    external.status = 429
    assert ask(env).status_code == 429  # type: ignore[attr-defined]
    assert KEY not in caplog.text and KEY not in log_output.getvalue()


def test_an_unreachable_or_slow_external_judge_is_a_gateway_error(
    env: Env, external: ExternalJudge
) -> None:
    put(env, {"base_url": "http://127.0.0.1:9/v1", "model": "judge-1", "timeout_s": 2})
    assert error_of(ask(env))[:2] == (502, "upstream_error")


def test_the_cli_reads_the_key_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import _parser
    from gateway.cli_judges import set_body

    monkeypatch.setenv("JUDGE_KEY", KEY)
    args = _parser().parse_args(
        [
            *("judge", "set", "acme", "--base-url", "https://j.test/v1", "--model", "m"),
            *("--api-key-env", "JUDGE_KEY", "--requests-per-minute", "30"),
        ]
    )
    body = set_body(args)
    assert body["api_key"] == KEY and body["base_url"] == "https://j.test/v1"
    assert body["limits"] == {"max_concurrent": 4, "requests_per_minute": 30}
    alias = set_body(_parser().parse_args(["judge", "set", "acme", "--alias", "smollm2"]))
    assert alias["alias"] == "smollm2" and "api_key" not in alias
