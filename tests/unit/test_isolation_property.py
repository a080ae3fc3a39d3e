"""Tenant isolation as a stateful property: 2-5 tenants, and every name one of them could use.

A hypothesis state machine drives the in-process gateway (vLLM faked at the network edge) through
tenants and keys, aliases on the base model and on adapter versions, promotes, rollbacks and
deletes, fine-tuned `ft:` models, stored completions and feedback, files, datasets and jobs,
keeping a model of what each tenant owns. Every name of every object -- an alias and its case and
whitespace variants, an adapter version id, the engine-side LoRA name vLLM sees, an `ft:` model, a
completion, file, dataset or job id -- is tried by every tenant through each route that takes it,
once when it appears (the sweep) and again at random later. The properties:

1. a tenant's listings hold exactly its own objects, after every step;
2. another tenant's object, by any name, is a 4xx exactly like a name that never existed (never a
   200, never a 5xx), and a cursor naming it behaves like an unknown cursor;
3. the engine never gets a request, nor holds an adapter, of a tenant other than the one served;
4. model names are exact: an alias is served only under its exact spelling (case and surrounding
   whitespace count, as they do in the store), with the same answer on every route, and a name
   that is ambiguous that way cannot be created.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from litestar import Litestar
from litestar.testing import TestClient

from gateway.app import create_app
from store import JobChanges
from tests.support.dataset_worker import dataset_worker
from tests.unit.adapter_files import pack, write_adapter
from tests.unit.conftest import ADMIN, Env, make_settings
from tests.unit.fake_engine import ENGINE_MODEL, FakeEngine
from training.parity import PARITY_PROMPTS

DEFAULT_ALIAS = "smollm2"  # every new tenant gets it, pointing at the base
# Shared by all tenants, so same-named aliases in two tenants (and "support" next to "Support"
# in one) are common.
ALIAS_POOL = ("support", "Support", "a.b@c:d-e", DEFAULT_ALIAS)
WHITESPACE = (" {}", "{} ", "\t{}", "{}\t", "{}\n", " {} ")
UNKNOWN = {
    "completion": "chatcmpl-" + "0" * 24,
    "file": "file-" + "0" * 24,
    "dataset": "ds-" + "0" * 16,
    "job": "ftjob-" + "0" * 24,
    "response": "resp_" + "0" * 48,
    "batch": "batch_" + "0" * 24,
}
NO_MODEL = (404, "not_found_error", "model_not_found")
WORKER = "worker:isolation-test"
HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def variants(name: str) -> list[str]:
    """The other spellings a client might send: case changes and surrounding whitespace."""
    spelled = [name.upper(), name.lower(), name.swapcase(), name.capitalize()]
    spelled += [w.format(name) for w in WHITESPACE]
    return [v for v in dict.fromkeys(spelled) if v != name]


def training_file(topic: str) -> bytes:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"What is {topic} number {i} called?"},
                {"role": "assistant", "content": f"{topic} number {i} is called {topic}-{i}."},
            ]
        }
        for i in range(12)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


# Two contents only: tenants often upload byte-identical training data.
FILES = (training_file("item"), training_file("thing"))


@cache
def archive(seed: int) -> bytes:
    """A small valid adapter, packed (the same seed gives the same bytes in every tenant)."""
    with tempfile.TemporaryDirectory() as tmp:
        return pack(write_adapter(Path(tmp) / "adapter", seed=seed))


def path_part(name: str) -> str:
    return quote(name, safe="")


def error_shape(resp: httpx.Response) -> tuple[int, object, object, object]:
    """What a client can tell apart, besides the message (which echoes the id it sent)."""
    error = resp.json().get("error") or {}
    return resp.status_code, error.get("type"), error.get("code"), error.get("param")


@dataclass
class Owned:
    """What one tenant has, as the test believes it."""

    name: str
    id: str
    key: str
    aliases: dict[str, str | None] = field(default_factory=lambda: {DEFAULT_ALIAS: None})
    gone_aliases: list[str] = field(default_factory=list)
    events: dict[str, list[tuple[str | None, str | None]]] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    gone_completions: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    gone_files: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # id -> status
    responses: dict[str, str] = field(default_factory=dict)  # id -> its captured completion
    gone_responses: list[str] = field(default_factory=list)
    batch_files: list[str] = field(default_factory=list)  # purpose "batch" (no training file)
    batches: list[str] = field(default_factory=list)
    judge: str | None = None  # the alias its LLM judge names (gateway.judges)

    def objects(self) -> list[tuple[str, str]]:
        """(kind, id) of everything it has or had."""
        found = [("completion", c) for c in self.completions + self.gone_completions]
        found += [("response", r) for r in [*self.responses, *self.gone_responses]]
        found += [("file", f) for f in self.files + self.gone_files]
        found += [("dataset", d) for d in self.datasets]
        found += [("file", f) for f in self.batch_files] + [("batch", b) for b in self.batches]
        return found + [("job", j) for j in self.jobs]


class Isolation(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lg-isolation-"))
        self.engine = FakeEngine()
        settings = make_settings(self.tmp, engine_max_loras=64)
        app = create_app(settings, transport=self.engine.transport())
        self.client: TestClient[Litestar] = TestClient(app)
        self.client.__enter__()
        self.builds = dataset_worker(settings)  # dataset builds: the worker's code, in a thread
        self.builds.__enter__()
        self.tenants: dict[str, Owned] = {}
        self.owner: dict[str, str] = {}  # adapter version (or parity-<job>) -> tenant name
        self.swept: set[tuple[str, str]] = set()  # (caller, name or id) tried once already
        self.unknown: dict[tuple[str, str], tuple[int, object, object, object]] = {}
        self.sent: list[str] = []  # the models the engine got during the last call

    def teardown(self) -> None:
        self.builds.__exit__(None, None, None)
        self.client.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- plumbing --------------------------------------------------------------------------

    def call(
        self, who: str, method: str, url: str, *, admin: bool = False, **kw: Any
    ) -> httpx.Response:
        """One request, as tenant `who` (or as the admin acting for it); never a 5xx, and the
        engine serves nothing but `who`'s adapters meanwhile."""
        auth = ADMIN if admin else {"Authorization": f"Bearer {self.tenants[who].key}"}
        headers = {**auth, **kw.pop("headers", {})}
        seen = len(self.engine.requests)
        resp = self.client.request(method, url, headers=headers, **kw)
        assert resp.status_code < 500, f"{method} {url!r} for {who}: {resp.text}"
        self.sent = [json.loads(r.content)["model"] for r in self.engine.requests[seen:]]
        for model in self.sent:
            assert model == ENGINE_MODEL or self.engine_owner(model) == who, (
                f"the engine got {model} on behalf of {who}"
            )
        return resp

    def engine_owner(self, engine_name: str) -> str | None:
        """Engine names are `lg-<run>-<n>-<version>` (adapters/placement.py)."""
        parts = engine_name.split("-", 3)
        return self.owner.get(parts[3]) if parts[0] == "lg" and len(parts) == 4 else None

    def engine_names(self, t: Owned) -> list[str]:
        loaded = [name for op, name in self.engine.lora_log if op == "load"]
        return [n for n in dict.fromkeys(loaded) if self.engine_owner(n) == t.name]

    def model_names(self, t: Owned) -> list[str]:
        """Every name under which someone might try to reach `t`'s models."""
        names: list[str] = []
        for alias in [*t.aliases, *t.gone_aliases]:
            names += [alias, *variants(alias)]
        names += t.versions + self.engine_names(t) + [ENGINE_MODEL]
        return list(dict.fromkeys(names))

    def pick(self, data: st.DataObject, among: Iterable[str] | None = None) -> Owned:
        names = list(self.tenants) if among is None else list(among)
        return self.tenants[data.draw(st.sampled_from(names))]

    def having(self, test: Callable[[Owned], object]) -> list[str]:
        return [n for n, t in self.tenants.items() if test(t)]

    def pair(self, data: st.DataObject) -> tuple[Owned, Owned]:
        caller = self.pick(data)
        return caller, self.pick(data, [n for n in self.tenants if n != caller.name])

    def add_tenant(self) -> None:
        name = f"t{len(self.tenants)}"
        resp = self.client.post("/admin/tenants", json={"name": name}, headers=ADMIN)
        assert resp.status_code == 201, resp.text
        tenant_id = resp.json()["id"]
        resp = self.client.post(f"/admin/tenants/{name}/keys", json={"name": "k"}, headers=ADMIN)
        assert resp.status_code == 201, resp.text
        self.tenants[name] = Owned(name, tenant_id, resp.json()["key"])

    # --- checks every route that takes a model name -----------------------------------------

    def complete(self, t: Owned, name: str, kind: str, stream: bool) -> None:
        """A chat or legacy completion named `name`: served iff `t` has that exact alias."""
        body: dict[str, object] = {"model": name, "max_tokens": 4, "stream": stream}
        body |= {"messages": HI} if kind == "chat" else {"prompt": "hi"}
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        resp = self.call(t.name, "POST", path, json=body)
        if name not in t.aliases:
            assert error_shape(resp)[:3] == NO_MODEL, resp.text
            assert "x-loopgate-adapter-version" not in resp.headers
            assert self.sent == [], f"the refused name {name!r} reached the engine"
            return
        assert resp.status_code == 200, resp.text
        target = t.aliases[name]
        assert resp.headers["x-loopgate-adapter-version"] == (target or "base")
        (model,) = self.sent
        if target is None:
            assert model == ENGINE_MODEL
        else:
            assert model.startswith("lg-") and model.endswith(target)
            assert model not in resp.text, "the engine-side name leaked to the client"
        first = (
            json.loads(resp.text.split("\n", 1)[0].removeprefix("data: "))
            if stream
            else resp.json()
        )
        assert first["model"] == name
        if kind == "chat":
            t.completions.append(first["id"])  # stored by default; the engine's id is the stored id

    def respond(self, t: Owned, name: str) -> None:
        """A Responses-API request naming `name`: served (as a chat completion) iff `t` has
        that exact alias; the response and its captured completion are then `t`'s."""
        body = {"model": name, "input": "hi", "max_output_tokens": 4}
        resp = self.call(t.name, "POST", "/v1/responses", json=body)
        if name not in t.aliases:
            assert error_shape(resp)[:3] == NO_MODEL, resp.text
            assert self.sent == [], f"the refused name {name!r} reached the engine"
            return
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-loopgate-adapter-version"] == (t.aliases[name] or "base")
        got = resp.json()
        assert got["model"] == name and len(self.sent) == 1
        t.responses[got["id"]] = got["loopgate"]["completion_id"]
        t.completions.append(got["loopgate"]["completion_id"])

    def model_card(self, t: Owned, name: str) -> None:
        resp = self.call(t.name, "GET", f"/v1/models/{path_part(name)}")
        if name not in t.aliases:
            assert error_shape(resp)[:3] == NO_MODEL, resp.text
            return
        assert resp.status_code == 200, resp.text
        card = resp.json()
        assert card["id"] == name and card["owned_by"] == t.name
        assert card["metadata"]["adapter_version"] == t.aliases[name]

    def fine_tune_from(self, t: Owned, name: str) -> None:
        """Fine-tuning another tenant's model, by any name, is refused like a missing model."""
        if name in t.aliases or not t.files:
            return
        body = {"model": name, "training_file": t.files[0]}
        resp = self.call(t.name, "POST", "/v1/fine_tuning/jobs", json=body)
        assert error_shape(resp)[:3] == (400, "invalid_request_error", "model_not_found"), resp.text

    def try_name(self, t: Owned, name: str, *, stream: bool = False, every_route: bool) -> None:
        """The sweep uses the two cheapest routes; the random probes use all four."""
        self.complete(t, name, "chat", stream)
        self.model_card(t, name)
        if every_route:
            self.complete(t, name, "completion", stream)
            self.respond(t, name)
            self.fine_tune_from(t, name)
            url = f"/v1/chat/completions?limit=100&model={path_part(name)}"
            found = self.call(t.name, "GET", url).json()["data"]
            assert {c["id"] for c in found} <= set(t.completions)
            assert {c["model"] for c in found} <= {name}

    # --- checks every route that takes an object id ------------------------------------------

    def like_unknown(self, t: Owned, kind: str, method: str, url: str, **kw: Any) -> None:
        """`url` names another tenant's object; the answer must equal the one for an id that
        never existed (same status, type, code and param), and be a 4xx."""
        oid = kw.pop("id")
        resp = self.call(t.name, method, url.format(id=oid), **kw)
        key = (t.name, f"{kind} {method} {url}")
        if key not in self.unknown:
            if "json" in kw:
                kw["json"] = {k: UNKNOWN[kind] if v == oid else v for k, v in kw["json"].items()}
            probe = self.call(t.name, method, url.format(id=UNKNOWN[kind]), **kw)
            self.unknown[key] = error_shape(probe)
        assert 400 <= resp.status_code < 500, f"{method} {url}: {resp.status_code} {resp.text}"
        assert error_shape(resp) == self.unknown[key], resp.text

    def same_page(self, t: Owned, url: str, foreign_id: str, kind: str) -> None:
        """A listing cursor naming another tenant's object reads like an unknown cursor."""
        got = self.call(t.name, "GET", url.format(id=foreign_id)).json()["data"]
        unknown = self.call(t.name, "GET", url.format(id=UNKNOWN[kind])).json()["data"]
        assert [x["id"] for x in got] == [x["id"] for x in unknown], (
            f"{url.format(id=foreign_id)} as {t.name} pages unlike an unknown cursor"
        )

    def try_object(self, t: Owned, kind: str, oid: str) -> None:
        rating = {"rating": "up"}
        metadata = {"metadata": {"probe": "foreign"}}
        if kind == "completion":
            for method, url, kw in (
                ("GET", "/v1/chat/completions/{id}", {}),
                ("GET", "/v1/chat/completions/{id}/messages", {}),
                ("GET", "/v1/chat/completions/{id}/feedback", {}),
                ("POST", "/v1/chat/completions/{id}", {"json": metadata}),
                ("POST", "/v1/chat/completions/{id}/feedback", {"json": rating}),
                ("DELETE", "/v1/chat/completions/{id}", {}),
            ):
                self.like_unknown(t, kind, method, url, id=oid, **kw)
            self.same_page(t, "/v1/chat/completions?after={id}", oid, kind)
        elif kind == "response":
            for method, url in (
                ("GET", "/v1/responses/{id}"),
                ("GET", "/v1/responses/{id}/input_items"),
                ("DELETE", "/v1/responses/{id}"),
            ):
                self.like_unknown(t, kind, method, url, id=oid)
            if t.aliases:  # continuing it: refused like an unknown response, before any engine
                body = {"model": next(iter(t.aliases)), "input": "hi", "previous_response_id": oid}
                self.like_unknown(t, kind, "POST", "/v1/responses", id=oid, json=body)
                assert self.sent == []
        elif kind == "file":
            self.like_unknown(t, kind, "GET", "/v1/files/{id}", id=oid)
            self.like_unknown(t, kind, "GET", "/v1/files/{id}/content", id=oid)
            self.like_unknown(t, kind, "DELETE", "/v1/files/{id}", id=oid)
            # A batch of it: refused like an unknown input file.
            body = {"input_file_id": oid, "endpoint": CHAT, "completion_window": "24h"}
            self.like_unknown(t, kind, "POST", "/v1/batches", id=oid, json=body)
        elif kind == "batch":
            self.like_unknown(t, kind, "GET", "/v1/batches/{id}", id=oid)
            self.like_unknown(t, kind, "POST", "/v1/batches/{id}/cancel", id=oid)
            self.same_page(t, "/v1/batches?after={id}", oid, kind)
        elif kind == "job":
            self.like_unknown(t, kind, "GET", "/v1/fine_tuning/jobs/{id}", id=oid)
            self.like_unknown(t, kind, "GET", "/v1/fine_tuning/jobs/{id}/events", id=oid)
            self.like_unknown(t, kind, "GET", "/v1/fine_tuning/jobs/{id}/checkpoints", id=oid)
            self.like_unknown(t, kind, "POST", "/v1/fine_tuning/jobs/{id}/cancel", id=oid)
            self.same_page(t, "/v1/fine_tuning/jobs?after={id}", oid, kind)
        else:
            self.like_unknown(t, kind, "GET", "/v1/datasets/{id}", id=oid)
        if kind in ("file", "dataset") and t.aliases:
            # Training on it: refused like an unknown training file.
            body = {"model": next(iter(t.aliases)), "training_file": oid}
            self.like_unknown(t, kind, "POST", "/v1/fine_tuning/jobs", id=oid, json=body)

    # --- rules: tenants, aliases, adapters ---------------------------------------------------
    # A rule that needs an object makes one when there is none: hypothesis switches rules off at
    # random per example, and a chain (upload -> promote -> rollback) would rarely be all on.

    @initialize()
    def two_tenants(self) -> None:
        self.add_tenant()
        self.add_tenant()

    @precondition(lambda self: len(self.tenants) < 5)
    @rule()
    def another_tenant(self) -> None:
        self.add_tenant()

    @rule(data=st.data())
    def alias_on_base(self, data: st.DataObject) -> None:
        t = self.pick(data)
        name = data.draw(st.sampled_from([*ALIAS_POOL, *t.aliases]))
        resp = self.call(
            t.name, "PUT", f"/admin/tenants/{t.name}/aliases/{path_part(name)}", admin=True, json={}
        )
        assert resp.status_code == 200, resp.text
        if t.aliases.get(name) is not None:  # an adapter alias goes back to base: a rollback event
            t.events.setdefault(name, []).append((t.aliases[name], None))
        t.aliases[name] = None

    @rule(data=st.data(), seed=st.integers(1, 3))
    def register_adapter(self, data: st.DataObject, seed: int) -> None:
        self.new_version(self.pick(data), seed)

    def new_version(self, t: Owned, seed: int) -> str:
        resp = self.call(
            t.name,
            "POST",
            f"/admin/tenants/{t.name}/adapters?name=style{seed}",
            admin=True,
            content=archive(seed),
            headers={"content-type": "application/gzip"},
        )
        assert resp.status_code == 201, resp.text
        version = resp.json()["id"]
        assert self.owner.setdefault(version, t.name) == t.name, "a version id shared by tenants"
        if version not in t.versions:
            t.versions.append(version)
        return str(version)

    def some_version(self, t: Owned, data: st.DataObject, seed: int) -> str:
        if not t.versions or data.draw(st.booleans()):
            return self.new_version(t, seed)
        return data.draw(st.sampled_from(t.versions))

    @rule(data=st.data(), seed=st.integers(1, 3))
    def promote(self, data: st.DataObject, seed: int) -> None:
        t = self.pick(data)
        name = data.draw(st.sampled_from([*ALIAS_POOL, *t.aliases]))
        self.promote_to(t, name, self.some_version(t, data, seed))

    def promote_to(self, t: Owned, name: str, version: str) -> None:
        resp = self.promote_as_admin(t, name, version)
        current = t.aliases.get(name)
        if name in t.aliases and current == version:
            assert resp.status_code == 409, resp.text
            return
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert (report["from_version"], report["to_version"]) == (current, version)
        t.events.setdefault(name, []).append((current, version))
        t.aliases[name] = version

    def promote_as_admin(self, t: Owned, alias: str, version: str) -> httpx.Response:
        body = {"version": version, "reason": "property test", "force": True}
        url = f"/admin/tenants/{t.name}/aliases/{path_part(alias)}/promote"
        return self.call(t.name, "POST", url, admin=True, json=body)

    @rule(data=st.data(), seed=st.integers(1, 3))
    def rollback(self, data: st.DataObject, seed: int) -> None:
        t = self.pick(data)
        name = data.draw(st.sampled_from(list(dict.fromkeys([*t.events, *ALIAS_POOL]))))
        if name not in t.events:
            self.promote_to(t, name, self.some_version(t, data, seed))
        url = f"/admin/tenants/{t.name}/aliases/{path_part(name)}/rollback"
        resp = self.call(t.name, "POST", url, admin=True, json={"reason": "property test"})
        if name not in t.events:  # the promote above was a no-op (409)
            assert resp.status_code == 404, resp.text
            return
        previous = t.events[name][-1][0]  # what the alias served before its last change
        exists, current = name in t.aliases, t.aliases.get(name)
        if previous is None and not exists:
            assert resp.status_code == 404, resp.text
            return
        if previous is not None and exists and current == previous:
            assert resp.status_code == 409, resp.text
            return
        assert resp.status_code == 200, resp.text
        assert resp.json()["to_version"] == previous
        t.events[name].append((current, previous))
        t.aliases[name] = previous

    @precondition(lambda self: bool(self.having(lambda t: t.aliases)))
    @rule(data=st.data())
    def delete_alias(self, data: st.DataObject) -> None:
        t = self.pick(data, self.having(lambda t: t.aliases))
        name = data.draw(st.sampled_from(list(t.aliases)))
        url = f"/admin/tenants/{t.name}/aliases/{path_part(name)}"
        assert self.call(t.name, "DELETE", url, admin=True).status_code == 204
        del t.aliases[name]
        t.gone_aliases.append(name)

    @rule(data=st.data(), spelling=st.sampled_from(WHITESPACE))
    def ambiguous_alias_names_are_refused(self, data: st.DataObject, spelling: str) -> None:
        """A name that differs from a valid one only by whitespace is never created, by a set or
        by a promote (it would be a second, look-alike model)."""
        t = self.pick(data)
        name = spelling.format(data.draw(st.sampled_from(ALIAS_POOL)))
        url = f"/admin/tenants/{t.name}/aliases/{path_part(name)}"
        resp = self.call(t.name, "PUT", url, admin=True, json={})
        assert error_shape(resp)[:2] == (400, "invalid_request_error"), resp.text
        if t.versions:
            resp = self.promote_as_admin(t, name, t.versions[0])
            assert error_shape(resp)[:2] == (400, "invalid_request_error"), resp.text

    @rule(data=st.data(), seed=st.integers(1, 3))
    def admin_paths_are_scoped_too(self, data: st.DataObject, seed: int) -> None:
        """Another tenant's version id under this tenant's admin paths: 404, nothing changes."""
        t, victim = self.pair(data)
        if not victim.versions:
            self.new_version(victim, seed)
        version = data.draw(st.sampled_from(victim.versions))
        alias = data.draw(st.sampled_from(ALIAS_POOL))
        assert self.promote_as_admin(t, alias, version).status_code == 404
        base = f"/admin/tenants/{t.name}/adapters/{version}"
        assert self.call(t.name, "GET", base, admin=True).status_code == 404
        assert self.call(t.name, "POST", base + "/retire", admin=True).status_code == 404
        assert self.call(t.name, "DELETE", base, admin=True).status_code == 404
        # a shadow of another tenant's version, or of an alias this tenant lacks: 404 all
        shadow = f"/admin/tenants/{t.name}/aliases/{path_part(alias)}/shadow"
        body = {"version": version, "checks": [{"type": "length", "min_chars": 1}]}
        assert self.call(t.name, "PUT", shadow, admin=True, json=body).status_code == 404
        # a rollout or a retrain of another tenant's version, a rollout id it never had: 404
        rollouts = f"/admin/tenants/{t.name}/aliases/{path_part(alias)}/rollouts"
        for url in (rollouts, rollouts.removesuffix("/rollouts") + "/retrain"):
            resp = self.call(t.name, "POST", url, admin=True, json={"version": version})
            assert resp.status_code == 404, resp.text
        unknown = self.call(t.name, "GET", rollouts + "/ro_0000000000000000", admin=True)
        assert unknown.status_code == 404
        for theirs in victim.aliases:
            if theirs not in t.aliases:
                mirror = f"/admin/tenants/{t.name}/aliases/{path_part(theirs)}/shadow"
                for method in ("GET", "DELETE"):
                    assert self.call(t.name, method, mirror, admin=True).status_code == 404

    @rule(data=st.data())
    def judges_stay_with_their_tenant(self, data: st.DataObject) -> None:
        """A judge names only its own tenant's aliases (another's is a 404 like an unknown
        name); one tenant's judge is never another's; a judge call serves only its tenant."""
        t, victim = self.pair(data)
        url = f"/admin/tenants/{t.name}/judge"
        unknown = self.call(t.name, "PUT", url, admin=True, json={"alias": "never-made-judge"})
        for name in sorted(set(victim.aliases) - set(t.aliases)):
            foreign = self.call(t.name, "PUT", url, admin=True, json={"alias": name})
            assert error_shape(foreign) == error_shape(unknown), foreign.text
        if t.aliases:
            own = data.draw(st.sampled_from(sorted(t.aliases)))
            assert self.call(t.name, "PUT", url, admin=True, json={"alias": own}).is_success
            t.judge = own
            ask = {"prompt": "You are grading an answer. Score: ?"}
            reply = self.call(t.name, "POST", url + "/replies", admin=True, json=ask)
            if reply.is_success:  # its call is captured as t's (marked do-not-train)
                stored = self.call(t.name, "GET", "/v1/chat/completions?limit=100").json()
                t.completions += [
                    c["id"]
                    for c in stored["data"]
                    if "loopgate_judge" in c["metadata"] and c["id"] not in t.completions
                ]
        theirs = self.call(victim.name, "GET", f"/admin/tenants/{victim.name}/judge", admin=True)
        if victim.judge is None:
            assert theirs.status_code == 404, theirs.text
        else:
            assert theirs.json()["alias"] == victim.judge

    # --- rules: traffic, feedback --------------------------------------------------------------

    @rule(
        data=st.data(),
        kind=st.sampled_from(["chat", "completion"]),
        stream=st.booleans(),
        respell=st.booleans(),
    )
    def call_own_model(self, data: st.DataObject, kind: str, stream: bool, respell: bool) -> None:
        t = self.pick(data)
        name = data.draw(st.sampled_from([*t.aliases, *ALIAS_POOL]))
        if respell:
            name = data.draw(st.sampled_from(variants(name)))
        self.complete(t, name, kind, stream)

    @precondition(lambda self: bool(self.having(lambda t: t.completions)))
    @rule(data=st.data(), action=st.sampled_from(["feedback", "metadata", "delete"]))
    def use_own_completion(self, data: st.DataObject, action: str) -> None:
        t = self.pick(data, self.having(lambda t: t.completions))
        cid = data.draw(st.sampled_from(t.completions))
        url = f"/v1/chat/completions/{cid}"
        if action == "feedback":
            feedback = {"rating": "down", "correction": "Paris is the capital of France."}
            assert self.call(t.name, "POST", url + "/feedback", json=feedback).status_code == 201
        elif action == "metadata":
            metadata = {"owner": t.name}
            resp = self.call(t.name, "POST", url, json={"metadata": metadata})
            assert resp.json()["metadata"] == metadata
        else:
            assert self.call(t.name, "DELETE", url).status_code == 200
            t.completions.remove(cid)
            t.gone_completions.append(cid)
            for rid in [r for r, c in t.responses.items() if c == cid]:
                del t.responses[rid]  # a response goes with the completion it was captured as
                t.gone_responses.append(rid)

    @rule(data=st.data())
    def create_response(self, data: st.DataObject) -> None:
        t = self.pick(data)
        self.respond(t, data.draw(st.sampled_from([*t.aliases, *ALIAS_POOL])))

    @precondition(lambda self: bool(self.having(lambda t: t.responses)))
    @rule(data=st.data(), action=st.sampled_from(["get", "continue", "delete"]))
    def use_own_response(self, data: st.DataObject, action: str) -> None:
        t = self.pick(data, self.having(lambda t: t.responses))
        rid = data.draw(st.sampled_from(list(t.responses)))
        if action == "get":
            assert self.call(t.name, "GET", f"/v1/responses/{rid}").json()["id"] == rid
            items = self.call(t.name, "GET", f"/v1/responses/{rid}/input_items").json()
            assert len(items["data"]) == 1
        elif action == "continue" and t.aliases:
            self.respond_after(t, rid, data.draw(st.sampled_from(list(t.aliases))))
        elif action == "delete":
            assert self.call(t.name, "DELETE", f"/v1/responses/{rid}").json()["deleted"] is True
            cid = t.responses.pop(rid)
            t.gone_responses.append(rid)
            t.completions.remove(cid)  # its captured completion is deleted with it
            t.gone_completions.append(cid)

    def respond_after(self, t: Owned, rid: str, alias: str) -> None:
        body = {"model": alias, "input": "more", "previous_response_id": rid}
        resp = self.call(t.name, "POST", "/v1/responses", json=body)
        assert resp.status_code == 200, resp.text
        got = resp.json()
        t.responses[got["id"]] = got["loopgate"]["completion_id"]
        t.completions.append(got["loopgate"]["completion_id"])

    # --- rules: files, datasets, jobs, fine-tuned models ---------------------------------------

    @rule(data=st.data(), content=st.sampled_from(FILES))
    def upload_file(self, data: st.DataObject, content: bytes) -> None:
        self.new_file(self.pick(data), content)

    def new_file(self, t: Owned, content: bytes) -> None:
        resp = self.call(
            t.name,
            "POST",
            "/v1/files",
            files={"file": ("train.jsonl", content, "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
        assert resp.status_code == 200, resp.text
        t.files.append(resp.json()["id"])

    @precondition(lambda self: bool(self.having(lambda t: len(t.batches) < 3)))
    @rule(data=st.data())
    def create_batch(self, data: st.DataObject) -> None:
        """A batch (queued: no worker runs here) from the tenant's own input file."""
        t = self.pick(data, self.having(lambda t: len(t.batches) < 3))
        request = {"model": DEFAULT_ALIAS, "messages": HI}
        line = {"custom_id": "a", "method": "POST", "url": CHAT, "body": request}
        upload = {"file": ("batch.jsonl", json.dumps(line).encode() + b"\n", "application/jsonl")}
        resp = self.call(t.name, "POST", "/v1/files", files=upload, data={"purpose": "batch"})
        assert resp.status_code == 200, resp.text
        t.batch_files.append(resp.json()["id"])
        body = {"input_file_id": t.batch_files[-1], "endpoint": CHAT, "completion_window": "24h"}
        resp = self.call(t.name, "POST", "/v1/batches", json=body)
        assert resp.status_code == 200, resp.text
        t.batches.append(resp.json()["id"])

    @precondition(lambda self: bool(self.having(lambda t: t.files)))
    @rule(data=st.data())
    def delete_file(self, data: st.DataObject) -> None:
        t = self.pick(data, self.having(lambda t: t.files))
        fid = data.draw(st.sampled_from(t.files))
        assert self.call(t.name, "DELETE", f"/v1/files/{fid}").json()["deleted"] is True
        t.files.remove(fid)
        t.gone_files.append(fid)

    @precondition(lambda self: bool(self.having(lambda t: t.aliases)))
    @rule(data=st.data(), content=st.sampled_from(FILES))
    def create_job(self, data: st.DataObject, content: bytes) -> None:
        self.new_job(self.pick(data, self.having(lambda t: t.aliases)), data, content)

    def new_job(self, t: Owned, data: st.DataObject, content: bytes) -> str:
        if not (t.files or t.datasets):
            self.new_file(t, content)
        body = {
            "model": data.draw(st.sampled_from(list(t.aliases))),
            "training_file": data.draw(st.sampled_from(t.files + t.datasets)),
            "suffix": "style",
        }
        resp = self.call(t.name, "POST", "/v1/fine_tuning/jobs", json=body)
        assert resp.status_code == 200, resp.text
        job = resp.json()
        t.jobs[job["id"]] = job["status"]
        if job["loopgate"]["dataset_id"] not in t.datasets:
            t.datasets.append(job["loopgate"]["dataset_id"])
        return str(job["id"])

    @rule(data=st.data())
    def dataset_from_traffic(self, data: st.DataObject) -> None:
        t = self.pick(data)
        resp = self.call(t.name, "POST", "/v1/datasets", json={"max_author_share": 0.5})
        assert resp.status_code in (201, 422), resp.text
        if resp.status_code == 201 and resp.json()["id"] not in t.datasets:
            t.datasets.append(resp.json()["id"])

    def queued(self) -> list[str]:
        return [n for n, t in self.tenants.items() if "queued" in t.jobs.values()]

    @precondition(lambda self: bool(self.queued()))
    @rule(data=st.data())
    def cancel_job(self, data: st.DataObject) -> None:
        t = self.pick(data, self.queued())
        job = data.draw(st.sampled_from([j for j, s in t.jobs.items() if s == "queued"]))
        resp = self.call(t.name, "POST", f"/v1/fine_tuning/jobs/{job}/cancel")
        assert resp.json()["status"] == "cancelled", resp.text
        t.jobs[job] = "cancelled"

    @precondition(lambda self: bool(self.having(lambda t: t.aliases)))
    @rule(data=st.data(), seed=st.integers(1, 4), content=st.sampled_from(FILES))
    def job_trains(self, data: st.DataObject, seed: int, content: bytes) -> None:
        """The worker's part, done here: an adapter in the job's output, handed to the
        gateway's real registration (parity on the engine, registry, `ft:` alias)."""
        t = self.pick(data, self.having(lambda t: t.aliases))
        queued = [j for j, s in t.jobs.items() if s == "queued"]
        job_id = data.draw(st.sampled_from(queued)) if queued else self.new_job(t, data, content)
        out = write_adapter(self.tmp / "trained" / job_id / "adapter", seed=seed)
        self.owner[f"parity-{job_id}"] = t.name
        seen = len(self.engine.requests)
        self.client.blocking_portal.call(self.register_trained, job_id, out)
        for request in self.engine.requests[seen:]:
            assert self.engine_owner(json.loads(request.content)["model"]) == t.name
        job = self.call(t.name, "GET", f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        name, version = job["fine_tuned_model"], job["loopgate"]["adapter_version"]
        assert name.startswith("ft:") and f":{t.name}:style:" in name
        assert self.owner.setdefault(version, t.name) == t.name
        if version not in t.versions:
            t.versions.append(version)
        t.jobs[job_id] = "succeeded"
        t.aliases[name] = version

    async def register_trained(self, job_id: str, out: Path) -> None:
        gw = self.client.app.state.gateway
        result = {"parity_reference": [self.engine.reply] * len(PARITY_PROMPTS)}
        changes = JobChanges(
            status="running",
            stage="registering",
            output_dir=str(out),
            result=json.dumps(result),
            worker=WORKER,
        )
        assert await gw.store.update_job(job_id, changes)
        # The gateway's own registration loop may claim it first; then wait for it.
        await gw.finetuning.register(await gw.store.get_job(job_id))
        for _ in range(200):
            job = await gw.store.get_job(job_id)
            if job.stage == "done":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} was not registered")

    # --- rules: other tenants' names, again, after the state moved on --------------------------

    @rule(data=st.data(), stream=st.booleans())
    def someone_elses_model_name(self, data: st.DataObject, stream: bool) -> None:
        t, victim = self.pair(data)
        for name in data.draw(st.lists(st.sampled_from(self.model_names(victim)), max_size=3)):
            self.try_name(t, name, stream=stream, every_route=True)

    @precondition(lambda self: bool(self.having(lambda t: t.objects())))
    @rule(data=st.data())
    def someone_elses_object(self, data: st.DataObject) -> None:
        victim = self.pick(data, self.having(lambda t: t.objects()))
        t = self.pick(data, [n for n in self.tenants if n != victim.name])
        kind, oid = data.draw(st.sampled_from(victim.objects()))
        self.try_object(t, kind, oid)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def every_new_name_is_tried_by_every_tenant(self) -> None:
        """The sweep: each (tenant, name) and (other tenant, object) pair, once, when it first
        exists -- the owner's own case and whitespace spellings included."""
        for victim in self.tenants.values():
            for name in self.model_names(victim):
                for t in self.tenants.values():
                    if (t.name, name) not in self.swept:
                        self.swept.add((t.name, name))
                        self.try_name(t, name, every_route=False)
            for kind, oid in victim.objects():
                for t in self.tenants.values():
                    if t is not victim and (t.name, oid) not in self.swept:
                        self.swept.add((t.name, oid))
                        self.try_object(t, kind, oid)

    @invariant()
    def listings_hold_exactly_own_objects(self) -> None:
        for t in self.tenants.values():
            models = self.call(t.name, "GET", "/v1/models").json()["data"]
            assert {m["id"]: m["metadata"]["adapter_version"] for m in models} == t.aliases
            assert {m["owned_by"] for m in models} <= {t.name}
            stored = self.call(t.name, "GET", "/v1/chat/completions?limit=100").json()
            assert {c["id"] for c in stored["data"]} == set(t.completions)
            assert not stored["has_more"]
            files = self.call(t.name, "GET", "/v1/files").json()["data"]
            assert {f["id"] for f in files} == {*t.files, *t.batch_files}
            batches = self.call(t.name, "GET", "/v1/batches?limit=100").json()["data"]
            assert {b["id"] for b in batches} == set(t.batches)
            datasets = self.call(t.name, "GET", "/v1/datasets").json()["data"]
            assert {d["id"] for d in datasets} == set(t.datasets)
            jobs = self.call(t.name, "GET", "/v1/fine_tuning/jobs?limit=100").json()["data"]
            assert {j["id"]: j["status"] for j in jobs} == t.jobs

    @invariant()
    def the_engine_holds_each_adapter_for_its_owner(self) -> None:
        for engine_name, path in self.engine.loras.items():
            owner = self.engine_owner(engine_name)
            assert owner is not None, f"the engine holds {engine_name}, which nobody owns"
            if not engine_name.split("-", 3)[3].startswith("parity-"):
                assert f"/{self.tenants[owner].id}/" in path, (engine_name, path)


SETTINGS = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    database=None,  # nothing saved between runs: a failure prints the steps that reproduce it
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_no_tenant_reaches_another_tenants_objects_by_any_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)  # thirty gateways' start-up warnings are noise here
    run_state_machine_as_test(Isolation, settings=SETTINGS)


# --- regressions found by the machine above ---------------------------------------------------


def upload_training(env: Env, key: str, content: bytes = FILES[0]) -> str:
    files = {"file": ("train.jsonl", content, "application/jsonl")}
    resp = env.client.post(
        "/v1/files", files=files, data={"purpose": "fine-tune"}, headers=env.auth(key)
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def start_job(env: Env, key: str, content: bytes = FILES[0]) -> dict[str, Any]:
    body = {"model": DEFAULT_ALIAS, "training_file": upload_training(env, key, content)}
    resp = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth(key))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_two_tenants_with_the_same_training_data_get_separate_datasets(env: Env) -> None:
    """Dataset ids were the data's hash alone: the second tenant to train on the same bytes got a
    500 (a duplicate key), which also told it that someone else had that data."""
    acme, globex = start_job(env, env.acme_key), start_job(env, env.globex_key)
    acme_ds, globex_ds = acme["loopgate"]["dataset_id"], globex["loopgate"]["dataset_id"]
    assert acme_ds != globex_ds
    for key, mine, theirs in (
        (env.acme_key, acme_ds, globex_ds),
        (env.globex_key, globex_ds, acme_ds),
    ):
        listed = env.client.get("/v1/datasets", headers=env.auth(key)).json()["data"]
        assert [d["id"] for d in listed] == [mine]
        assert env.client.get(f"/v1/datasets/{theirs}", headers=env.auth(key)).status_code == 404


def test_a_job_cursor_naming_another_tenants_job_is_an_unknown_cursor(env: Env) -> None:
    """The cursor was looked up across tenants: `after=<their job>` listed our older jobs, which
    an unknown id does not, so it told whether their job existed (and when it was made)."""
    start_job(env, env.globex_key, FILES[1])
    theirs = start_job(env, env.acme_key)["id"]
    page = "/v1/fine_tuning/jobs?after={}"
    own = env.auth(env.globex_key)
    unknown = env.client.get(page.format(UNKNOWN["job"]), headers=own).json()["data"]
    foreign = env.client.get(page.format(theirs), headers=own).json()["data"]
    assert foreign == unknown == []


def test_names_that_differ_only_by_whitespace_are_refused(env: Env) -> None:
    """`re.match("...$")` accepts a trailing newline, and a promote created aliases without any
    check: " support" or "support\\n" became second, look-alike models."""
    upload = env.client.post(
        "/admin/tenants/acme/adapters?name=style",
        content=archive(1),
        headers={**ADMIN, "content-type": "application/gzip"},
    )
    version = upload.json()["id"]
    for name in ("support\n", " support", "support\t", "support ", "\tsupport"):
        alias_url = f"/admin/tenants/acme/aliases/{path_part(name)}"
        assert env.client.put(alias_url, json={}, headers=ADMIN).status_code == 400
        body = {"version": version, "force": True, "reason": "t"}
        assert env.client.post(alias_url + "/promote", json=body, headers=ADMIN).status_code == 400
    models = env.client.get("/v1/models", headers=env.auth()).json()["data"]
    assert [m["id"] for m in models] == [DEFAULT_ALIAS]
    assert (
        env.client.post("/admin/tenants", json={"name": "initech\n"}, headers=ADMIN).status_code
        == 400
    )
    named = env.client.post(
        "/admin/tenants/acme/adapters?name=style%0A",
        content=archive(2),
        headers={**ADMIN, "content-type": "application/gzip"},
    )
    assert named.status_code == 400
    body = {"model": DEFAULT_ALIAS, "training_file": upload_training(env, env.acme_key)}
    job = env.client.post(
        "/v1/fine_tuning/jobs", json={**body, "suffix": "style\n"}, headers=env.auth()
    )
    assert job.status_code == 400  # the suffix becomes part of the `ft:` model's name
