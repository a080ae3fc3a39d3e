"""Adapters on real vLLM-CPU replicas through the gateway: output change, isolation, bad
uploads under traffic, hot swap under load, replica loss and reconciliation."""

from __future__ import annotations

import asyncio
import inspect
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.adapters.conftest import AHOY, Replica
from tests.integration.conftest import Stack
from tests.support.lora_factory import TRAIN_PROMPTS, make_bad_adapters
from tests.support.polling import until_sync
from tests.unit.adapter_files import pack

pytestmark = pytest.mark.engine

PROMPT = [{"role": "user", "content": TRAIN_PROMPTS[0]}]


def upload(stack: Stack, folder: Path, name: str, tenant: str = "acme") -> str:
    with stack.admin() as admin:
        resp = admin.post(
            f"/admin/tenants/{tenant}/adapters", params={"name": name}, content=pack(folder)
        )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def promote(stack: Stack, alias: str, version: str, tenant: str = "acme") -> dict[str, object]:
    with stack.admin() as admin:
        resp = admin.post(
            f"/admin/tenants/{tenant}/aliases/{alias}/promote",
            json={"version": version, "require_change": True, "reason": "test", "force": True},
        )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def backends(stack: Stack) -> list[dict[str, object]]:
    with stack.admin() as admin:
        return list(admin.get("/admin/backends").json()["data"])


def greedy(stack: Stack, model: str, tenant: str = "acme") -> str:
    resp = stack.client(tenant).chat.completions.create(
        model=model, messages=PROMPT, temperature=0, max_tokens=12
    )
    return resp.choices[0].message.content or ""


@pytest.fixture(scope="module")
def versions(fleet: Stack, style_adapters: dict[str, Path]) -> dict[str, str]:
    ids = {name: upload(fleet, folder, name) for name, folder in style_adapters.items()}
    promote(fleet, "support", ids["ahoy"])
    return ids


def test_adapter_changes_greedy_output_and_models_are_per_tenant(
    fleet: Stack, versions: dict[str, str]
) -> None:
    assert greedy(fleet, "support").startswith(AHOY)
    assert not greedy(fleet, "smollm2").startswith("Ahoy")
    models = {m.id: m for m in fleet.client("acme").models.list()}
    assert set(models) == {"smollm2", "support"}
    card = models["support"].model_dump()
    assert card["parent"] == "smollm2-135m-instruct"
    assert card["metadata"]["adapter_version"] == versions["ahoy"]
    assert {m.id for m in fleet.client("globex").models.list()} == {"smollm2"}


def test_second_tenant_cannot_reach_the_adapter_in_any_way(
    fleet: Stack, versions: dict[str, str]
) -> None:
    engine_names = [a["engine_name"] for b in backends(fleet) for a in b["adapters"]]  # type: ignore[attr-defined]
    assert engine_names
    globex = fleet.client("globex")
    for model in ["support", versions["ahoy"], *engine_names]:
        with pytest.raises(openai.NotFoundError):
            globex.chat.completions.create(model=model, messages=PROMPT, max_tokens=4)
        with pytest.raises(openai.NotFoundError):
            globex.models.retrieve(model)
    with fleet.admin() as admin:
        resp = admin.post(
            "/admin/tenants/globex/aliases/support/promote", json={"version": versions["ahoy"]}
        )
        assert resp.status_code == 404


class Traffic:
    """Background chat requests on one alias; every outcome recorded."""

    def __init__(self, stack: Stack, alias: str, workers: int):
        self.stack, self.alias, self.workers = stack, alias, workers
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        client = self.stack.client()
        while not self._stop.is_set():
            try:
                client.chat.completions.create(
                    model=self.alias, messages=PROMPT, temperature=0, max_tokens=4
                )
                self.ok += 1
            except openai.OpenAIError as exc:
                self.failures.append(repr(exc))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def test_bad_adapters_are_rejected_before_the_engine_while_traffic_flows(
    fleet: Stack, versions: dict[str, str], style_adapters: dict[str, Path], tmp_path: Path
) -> None:
    corpus = make_bad_adapters(style_adapters["ahoy"], tmp_path / "bad")
    loads_before = backends_loads(fleet)
    rejected: dict[str, str] = {}
    with Traffic(fleet, "support", workers=4) as traffic, fleet.admin() as admin:
        for name, path in corpus.items():
            if name.endswith("_mismatch"):
                continue
            body = path.read_bytes() if path.is_file() else pack(path)
            resp = admin.post("/admin/tenants/acme/adapters", params={"name": name}, content=body)
            assert resp.status_code in (400, 422), (name, resp.status_code, resp.text)
            rejected[name] = resp.json()["error"]["message"]
        mismatch = corpus["hash_mismatch"]
        wrong = (mismatch.parent / "hash_mismatch.sha256").read_text().strip()
        resp = admin.post(
            "/admin/tenants/acme/adapters",
            params={"name": "m", "sha256": wrong},
            content=mismatch.read_bytes(),
        )
        assert resp.status_code == 422 and "SHA-256" in resp.json()["error"]["message"]
        time.sleep(2)
    assert traffic.failures == [] and traffic.ok > 0
    assert backends_loads(fleet) == loads_before  # nothing bad reached an engine
    assert "safetensors" in rejected["pickle"]
    assert "max_lora_rank" in rejected["rank_too_high"]
    assert "trained for base" in rejected["wrong_base"] or "shape" in rejected["wrong_base"]
    assert "do not exist in the base" in rejected["missing_target_module"]
    assert "unsafe path" in rejected["traversal_archive"]
    assert "link" in rejected["symlink_archive"]
    assert "truncated" in rejected["truncated"]
    assert (
        "DoRA" in rejected["unsupported_option"]
        or "not supported" in rejected["unsupported_option"]
    )
    print("\nrejections:", *(f"  {k}: {v}" for k, v in rejected.items()), sep="\n")


def backends_loads(stack: Stack) -> int:
    with stack.admin() as admin:
        return int(admin.get("/admin/backends").json()["loads"])


@dataclass
class Record:
    started: float
    first_token: float | None
    version: str | None
    text: str
    error: str | None = None


@dataclass
class LoadRun:
    records: list[Record] = field(default_factory=list)
    swaps: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, new version
    flipped_after: list[float] = field(default_factory=list)  # each report's flipped_after_s
    staged: list[tuple[float, float]] = field(default_factory=list)  # each promote's load, probe


async def stream_client(stack: Stack, run: LoadRun, stop: asyncio.Event) -> None:
    client = stack.aclient()
    while not stop.is_set():
        started = time.monotonic()
        record = Record(started, None, None, "")
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="support", messages=PROMPT, temperature=0, max_tokens=6, stream=True
            )
            record.version = raw.headers.get("x-loopgate-adapter-version")
            parsed = raw.parse()  # the SDK returns the stream itself here
            stream = await parsed if inspect.isawaitable(parsed) else parsed
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    record.first_token = record.first_token or time.monotonic()
                    record.text += chunk.choices[0].delta.content
        except (openai.OpenAIError, httpx.HTTPError) as exc:  # a broken stream body is httpx's
            record.error = repr(exc)
        run.records.append(record)
    await client.close()


async def swapper(stack: Stack, run: LoadRun, ids: dict[str, str], swaps: int) -> None:
    async with httpx.AsyncClient(
        base_url=stack.url,
        timeout=600,
        headers={"Authorization": "Bearer lg-admin-integration-tests"},
    ) as admin:
        await asyncio.sleep(5)
        for i in range(swaps):
            target = ids["beep"] if i % 2 == 0 else ids["ahoy"]
            start = time.monotonic()
            if i % 4 == 3:  # every fourth swap is a rollback
                resp = await admin.post(
                    "/admin/tenants/acme/aliases/support/rollback", json={"reason": "load test"}
                )
            else:
                resp = await admin.post(
                    "/admin/tenants/acme/aliases/support/promote",
                    json={"version": target, "reason": "load test", "force": True},
                )
            assert resp.status_code == 200, resp.text
            assert resp.json()["to_version"] == target
            run.swaps.append((start, time.monotonic(), target))
            run.flipped_after.append(float(resp.json()["flipped_after_s"]))
            run.staged.append((float(resp.json()["load_s"]), float(resp.json()["probe_s"])))
            await asyncio.sleep(2)


def test_hot_swap_under_load_fails_nothing(fleet: Stack, versions: dict[str, str]) -> None:
    run = LoadRun()

    async def main() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(stream_client(fleet, run, stop)) for _ in range(32)]
        try:
            await swapper(fleet, run, versions, swaps=10)
            await asyncio.sleep(3)
        finally:
            stop.set()
            await asyncio.gather(*clients)

    asyncio.run(main())
    failed = [r for r in run.records if r.error]
    assert failed == [], failed[:5]
    assert len(run.records) > 100
    styles = {versions["ahoy"]: "Ahoy", versions["beep"]: "Beep"}
    for r in run.records:
        assert r.version in styles, r
        assert r.text.startswith(styles[r.version]), r  # served by exactly the version it names
    final = run.swaps[-1][2]

    def held() -> set[str]:
        return {a["version"] for b in backends(fleet) for a in b["adapters"]}  # type: ignore[attr-defined]

    _, p95 = report_swaps(run)
    # the other version was unloaded everywhere (its drain runs after the promote answered)
    until_sync(lambda: held() == {final}, "the replaced version is still loaded", timeout_s=60)
    # The target is 3 s p95 (reported above, not asserted: timing on a shared 2-core
    # host is noisy); this bound catches a return to the old 22-37 s p50 / 81 s p95.
    assert p95 < 15, f"promote-to-first-token p95 {p95:.2f}s"


def report_swaps(run: LoadRun) -> tuple[float, float]:
    """Print the swap figures; return promote-to-first-token p50 and p95 in seconds."""
    latencies = []
    for start, _, version in run.swaps:
        firsts = [
            r.first_token
            for r in run.records
            if r.version == version and r.first_token and r.started >= start
        ]
        latencies.append(min(firsts) - start)
    # what the engine adds after the flip: the first new-version request's own wait
    after_flip = [t - f for t, f in zip(latencies, run.flipped_after, strict=True)]
    in_swap = [r for r in run.records if any(s <= r.started < e for s, e, _ in run.swaps)]
    swap_time = sum(e - s for s, e, _ in run.swaps)
    total = run.records[-1].started - run.records[0].started
    rate_swap = len(in_swap) / swap_time
    rate_other = (len(run.records) - len(in_swap)) / max(total - swap_time, 1e-9)
    failed = sum(1 for r in run.records if r.error)
    loads, probes = [s[0] for s in run.staged], [s[1] for s in run.staged]
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20, method="inclusive")[-1]
    print(
        f"\nhot swap: {len(run.records)} streams, {len(run.swaps)} swaps, {failed} failed; "
        f"promote-to-first-token p50 {p50:.2f}s p95 {p95:.2f}s max {max(latencies):.2f}s "
        f"(each: {' '.join(f'{x:.1f}' for x in latencies)}); promote-to-flip p50 "
        f"{statistics.median(run.flipped_after):.2f}s max {max(run.flipped_after):.2f}s; "
        f"flip-to-first-token p50 {statistics.median(after_flip):.2f}s; first replica's load "
        f"p50 {statistics.median(loads):.2f}s, probe p50 {statistics.median(probes):.2f}s max "
        f"{max(probes):.2f}s; "
        f"swap duration p50 {statistics.median(e - s for s, e, _ in run.swaps):.2f}s; "
        f"requests/s during swaps {rate_swap:.2f} vs {rate_other:.2f} outside "
        f"({rate_swap / rate_other:.2f}x)"
    )
    return p50, p95


def test_replica_loss_is_reconciled_and_routing_prefers_holders(
    fleet: Stack, replicas: list[Replica], versions: dict[str, str], style_adapters: dict[str, Path]
) -> None:
    live = next(iter({a["version"] for b in backends(fleet) for a in b["adapters"]}))  # type: ignore[attr-defined]
    replicas[1].stop()
    deadline = time.monotonic() + 30
    while [b["ready"] for b in backends(fleet)] != [True, False]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    # Promoted while replica-1 is down: the new alias's version lives on replica-0 only.
    promote(fleet, "canary", versions["beep"] if live == versions["ahoy"] else versions["ahoy"])
    for _ in range(6):
        assert greedy(fleet, "support")
        greedy(fleet, "canary")
    replicas[1].start()
    replicas[1].wait_healthy()
    deadline = time.monotonic() + 120
    while True:
        state = {b["name"]: {a["version"] for a in b["adapters"]} for b in backends(fleet)}  # type: ignore[attr-defined]
        if state["replica-1"] >= {versions["ahoy"], versions["beep"]}:
            break  # both pinned versions restored under new engine names
        assert time.monotonic() < deadline, state
        time.sleep(1)
    served = {b["name"]: sum(a["served"] for a in b["adapters"]) for b in backends(fleet)}  # type: ignore[attr-defined]
    assert served["replica-0"] > 0
    for _ in range(8):
        assert greedy(fleet, "canary")
    after = {b["name"]: sum(a["served"] for a in b["adapters"]) for b in backends(fleet)}  # type: ignore[attr-defined]
    assert after["replica-1"] > served["replica-1"]  # the restored replica takes traffic again


def test_tools_and_json_schemas_work_through_an_adapter_alias(
    fleet: Stack, versions: dict[str, str]
) -> None:
    """Guided decoding and tool calls on an adapter's requests, as on the base model's."""
    client = fleet.client()
    schema = {
        "type": "object",
        "properties": {"greeting": {"type": "string", "maxLength": 40}},
        "required": ["greeting"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "Greet me as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "g", "schema": schema, "strict": True},
        },
        temperature=0,
        max_tokens=40,
    )
    assert set(json.loads(answer.choices[0].message.content or "")) == {"greeting"}
    tool = {
        "type": "function",
        "function": {
            "name": "open_ticket",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"priority": {"enum": ["low", "high"]}},
                "required": ["priority"],
                "additionalProperties": False,
            },
        },
    }
    called = client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "My router is on fire."}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_tokens=150,
    )
    calls = called.choices[0].message.tool_calls or []
    assert len(calls) == 1, called.choices[0]
    call = calls[0]
    assert call.function.name == "open_ticket"
    assert json.loads(call.function.arguments)["priority"] in ("low", "high")
    assert called.model == "support"
