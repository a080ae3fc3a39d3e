"""Fixes loopgate ships for vLLM itself, as a vLLM general plugin (never a fork).

vLLM calls every `vllm.general_plugins` entry point in each of its processes (API server,
engine core, workers); loopgate's is `register` below (see pyproject.toml). It imports only
vLLM and torch, so it loads wherever vLLM runs, including external replicas on which an
operator has installed loopgate (`pip install loopgate`, no other step). Each fix checks
first whether the running vLLM needs it and does nothing where it is already correct.
"""

from __future__ import annotations


def register() -> None:
    """The entry point vLLM calls (possibly several times per process: each fix is idempotent).

    The dense LoRA ops (`lora_ops`: the speed) skip rows with no adapter by construction, so the
    slot fix (`lora_slots`: the correctness) only acts where they could not be put in place.
    `idle_wait` stops a CPU engine's processes from spinning while they wait for each other."""
    from loopgate_engine import idle_wait, lora_ops, lora_slots

    lora_ops.apply()
    lora_slots.apply()
    idle_wait.apply()
