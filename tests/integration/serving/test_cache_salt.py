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
