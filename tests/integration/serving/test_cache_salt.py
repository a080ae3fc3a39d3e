"""Tenants never share cached prompt prefixes on the engine (vLLM's `cache_salt`, set by the
gateway per tenant), read from the engine's own prefix-cache counters."""

from __future__ import annotations

import re
import secrets

import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.engine

HITS = re.compile(r"^vllm:prefix_cache_hits_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def prefix_cache_hits(stack: Stack) -> float:
    """The engine's count of prompt tokens served from its prefix cache so far."""
    text = stack.engine_metrics()
    return sum(float(v) for v in HITS.findall(text))


def test_a_second_tenant_s_identical_prompt_gets_no_cache_hit(stack: Stack) -> None:
    # A prompt no one has sent before, many cache blocks long.
    prompt = f"[{secrets.token_hex(8)}] " + "Describe the harbour, its ferries and cafes. " * 60
    messages = [{"role": "user", "content": prompt}]

    def ask(tenant: str, model: str) -> float:
        before = prefix_cache_hits(stack)
        stack.client(tenant).chat.completions.create(
            model=model, messages=messages, max_tokens=1, temperature=0
        )
        return prefix_cache_hits(stack) - before

    first = ask("acme", "smollm2")
    same_tenant = ask("acme", "smollm2")
    other_tenant = ask("globex", "smollm2")  # the same base model, another tenant
    again_other = ask("globex", "smollm2")
    print(f"prefix-cache hit tokens: acme first {first}, acme again {same_tenant}, "
          f"globex first {other_tenant}, globex again {again_other}")  # fmt: skip
    assert first == 0
    assert same_tenant >= 256  # the whole prompt but its last partial block
    assert other_tenant == 0  # acme's cached prefix is invisible to globex
    assert again_other >= 256  # globex's own second request hits its own cache


def test_a_system_prompt_shorter_than_128_tokens_is_served_from_the_cache(stack: Stack) -> None:
    """The CPU engine caches prefixes in 32-token blocks (`engine_cpu_block_size`): with
    vLLM-CPU's own 128-token blocks this ~100-token chat would never hit its cache."""
    system = (
        f"[{secrets.token_hex(4)}] You are the support desk of Harbour Ferries. Answer in two "
        "short sentences, name the timetable page when a sailing is asked about, never promise "
        "refunds, and hand anything about lost property to the office at Pier 3. Sailings stop "
        "in storms; say so plainly and point to the status page. Bikes and dogs travel free."
    )

    def ask(question: str) -> tuple[float, int]:
        before = prefix_cache_hits(stack)
        answer = stack.client("acme").chat.completions.create(
            model="smollm2",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=1,
            temperature=0,
        )
        assert answer.usage is not None
        return prefix_cache_hits(stack) - before, answer.usage.prompt_tokens

    first, _ = ask("When does the first ferry leave on Sunday?")
    second, prompt_tokens = ask("Can I bring my bike on board?")  # same system prompt
    print(f"prefix-cache hit tokens: first {first}, second {second} of {prompt_tokens}")
    assert prompt_tokens < 128
    assert first == 0
    assert second >= 64  # the system prompt's whole 32-token blocks
