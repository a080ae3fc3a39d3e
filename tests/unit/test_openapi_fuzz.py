"""The gateway's OpenAPI document against the router, and Schemathesis against the in-process
gateway (fake engine at the network edge, real SQLite store): ≥ 2,000 generated requests, each
answer documented (status, content type, body schema), never a server error."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.unit.conftest import ADMIN, Env
from tests.unit.test_finetuning_api import GOOD, upload

MIN_CASES = 2000
EXAMPLES = 15  # per operation and pass
HOT = {"POST /v1/chat/completions": 150, "POST /v1/completions": 150}  # the public hot path
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
BASE = "http://testserver"
SEND = ("method", "url", "headers", "params", "data", "json", "files")


def test_document_describes_exactly_the_routes_served(env: Env) -> None:
    resp = env.client.get("/openapi.json")  # no credential: it is the public shape
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    document = resp.json()
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 meta-schema
    served = {
        f"{method} {route.path.replace(':str', '')}"
        for route in env.client.app.routes
        for method in getattr(route, "methods", ())
        if method not in ("OPTIONS", "HEAD")
    }
    documented = {f"{m.upper()} {path}" for path, ops in document["paths"].items() for m in ops}
    assert documented == served
    schemas = document["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["required"] == ["model", "messages"]
    assert schemas["ChatCompletionRequest"]["properties"]["chat_template"] is False
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            secured = bool(op["security"])
            assert secured == (path.startswith(("/v1/", "/admin/"))), (method, path)
            if secured:
                assert "401" in op["responses"], (method, path)


@dataclass
class Fixtures:
    """Things that exist, so that targeted cases get past 'not found'."""

    path: dict[str, str]
    body: dict[str, str]  # top-level body fields set in targeted cases


def make_fixtures(env: Env) -> Fixtures:
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "store": True}
    assert env.client.post("/v1/chat/completions", json=chat, headers=env.auth()).is_success
    stored = env.client.get("/v1/chat/completions", headers=env.auth()).json()["data"]
    file_id = upload(env, GOOD)["id"]
    job = {"model": "smollm2", "training_file": file_id}
    created = env.client.post("/v1/fine_tuning/jobs", json=job, headers=env.auth()).json()
    keys = env.client.get("/admin/tenants/globex/keys", headers=ADMIN).json()["data"]
    return Fixtures(
        {
            "completion_id": stored[0]["id"],
            "file_id": file_id,
            "job_id": created["id"],
            "dataset_id": created["loopgate"]["dataset_id"],
            "tenant": "globex",  # admin routes work on the other tenant: limits stay off acme
            "key_id": keys[0]["id"],
            "alias": "smollm2",
            "name": "smollm2",
            "model_id": "smollm2",
        },
        {"model": "smollm2", "training_file": file_id},
    )


@dataclass
class Report:
    cases: Counter[str] = field(default_factory=Counter)  # per pass
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # first report of each distinct one

    def record(self, case: Case, mode: str, response: httpx.Response) -> None:
        self.cases[mode] += 1
        self.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:  # a FailureGroup is a BaseExceptionGroup
            title = f"{case.operation.label} [{mode}] {response.status_code}: {type(exc).__name__}"
            self.failures.setdefault(title, str(exc))
        if "Traceback" in response.text:
            self.failures.setdefault(f"{case.operation.label}: traceback", response.text[:2000])


def send(env: Env, case: Case, authorization: str | None) -> httpx.Response:
    """The case as Schemathesis serialises it (through `requests`), sent to the test client."""
    kwargs = case.as_transport_kwargs(base_url=BASE)
    request = requests.Request(**{k: v for k, v in kwargs.items() if k in SEND})
    prepared = request.prepare()
    headers = dict(prepared.headers)
    for name in [h for h in headers if h.lower() == "authorization"]:
        del headers[name]  # Schemathesis generates random bearer tokens
    if authorization is not None:
        headers["Authorization"] = authorization
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return env.client.request(
        str(prepared.method), str(prepared.url), content=body, headers=headers
    )


def run_pass(
    env: Env,
    operation: schemathesis.APIOperation,
    mode: str,
    fixtures: Fixtures | None,
    examples: int,
    report: Report,
    query: dict[str, object] | None = None,
) -> None:
    authorization = None
    if operation.path.startswith("/v1/"):
        authorization = f"Bearer {env.acme_key}"
    elif operation.path.startswith("/admin/"):
        authorization = ADMIN["Authorization"]
    generation = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE
    known = {}
    if fixtures is not None:
        names = [p.name for p in operation.path_parameters]
        known = {n: fixtures.path[n] for n in names if n in fixtures.path}

    # The credential is fixed, so a negative case negates the request, not the key.
    headers = {"Authorization": authorization} if authorization else None
    strategy = operation.as_strategy(
        generation, path_parameters=known, headers=headers, query=query
    )

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Case) -> None:
        if fixtures is not None and isinstance(case.body, dict):
            case.body.update({k: v for k, v in fixtures.body.items() if k in case.body})
        report.record(case, mode, send(env, case, authorization))

    with contextlib.suppress(Unsatisfiable):  # nothing to negate: any string is a valid id
        fuzz()


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(env: Env) -> None:
    fixtures = make_fixtures(env)
    document = env.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    report = Report()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = HOT.get(operation.label, EXAMPLES)
        raw = document["paths"][operation.path][operation.method.lower()]
        run_pass(env, operation, "positive", None, examples, report)
        params = raw.get("parameters", ())
        if "requestBody" in raw or any(p["in"] != "path" for p in params):
            # A deepObject's values are strings on the wire whatever was generated (`null`
            # arrives as "null"): negating them proves nothing, so they stay empty.
            fixed = {p["name"]: {} for p in params if p.get("style") == "deepObject"}
            run_pass(env, operation, "negative", None, examples, report, fixed or None)
        if operation.method.upper() != "DELETE":  # keep the fixtures for every other operation
            run_pass(env, operation, "targeted", fixtures, examples, report)
    elapsed = time.monotonic() - started
    total = sum(report.cases.values())
    print(
        f"\nschemathesis: {total} cases in {elapsed:.1f}s ({dict(report.cases)}); "
        f"statuses {dict(sorted(report.statuses.items()))}"
    )
    assert not report.failures, "\n\n".join(f"{k}\n{v}" for k, v in report.failures.items())
    assert total >= MIN_CASES


def test_what_the_fuzzer_found_stays_fixed(env: Env) -> None:
    job_id = make_fixtures(env).path["job_id"]
    events = f"/v1/fine_tuning/jobs/{job_id}/events"
    for url, status in [
        (f"{events}?after=999999999999999999999999999999", 400),  # was 500: SQLite overflow
        (f"{events}?after=ftevent-{2**63}", 400),
        (f"{events}?after=ftevent-{2**63 - 1}", 200),
        (f"{events}?after=ftevent-0", 200),
        ("/v1/chat/completions?limit=", 400),  # was 200: an empty limit read as the default
        ("/v1/fine_tuning/jobs?limit=", 400),
    ]:
        resp = env.client.get(url, headers=env.auth())
        assert resp.status_code == status, (url, resp.text)
    # was 500: datasketch cannot band a near-duplicate threshold near 1
    body = {"near_duplicate_threshold": 1.0, "include_unrated": True}
    resp = env.client.post("/v1/datasets", json=body, headers=env.auth())
    assert resp.status_code == 201, resp.text
