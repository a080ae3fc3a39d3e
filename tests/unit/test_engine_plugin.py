"""loopgate's vLLM plugin: base rows (LoRA slot -1) skip every slot in vLLM's torch LoRA ops.

These check the ops themselves on small tensors; `tests/integration/serving/test_lora_isolation.py`
checks a real engine, token for token."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops

from loopgate_engine.lora_slots import skip_unassigned_rows, uses_last_slot_for_unassigned

SLOTS, RANK, HIDDEN, OUT = 3, 4, 6, 5


def stacked(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


INDICES = torch.tensor([0, -1, 2, -1, 1])  # two base rows among three adapter rows


def test_vllm_0_32_has_the_defect_the_plugin_fixes() -> None:
    # If this fails, vLLM fixed its ops and the plugin's probe turns it into a no-op.
    assert uses_last_slot_for_unassigned(lora_ops.bgmv_shrink)
    assert not uses_last_slot_for_unassigned(skip_unassigned_rows(lora_ops.bgmv_shrink))


def test_shrink_gives_base_rows_zero_and_adapter_rows_what_vllm_gives() -> None:
    x, a = stacked((5, HIDDEN), 0), stacked((SLOTS, 1, RANK, HIDDEN), 1)
    want, got = torch.zeros(5, RANK), torch.full((5, RANK), 7.0)
    lora_ops.bgmv_shrink(x, a, want, INDICES.clamp(min=0), 0.5)
    skip_unassigned_rows(lora_ops.bgmv_shrink)(x, a, got, INDICES, 0.5)
    assert torch.equal(got[INDICES < 0], torch.zeros(2, RANK))
    assert torch.equal(got[INDICES >= 0], want[INDICES >= 0])


@pytest.mark.parametrize("op", ["bgmv_expand", "bgmv_expand_slice"])
def test_expands_add_nothing_to_base_rows(op: str) -> None:
    x, b = stacked((5, RANK), 2), stacked((SLOTS, 1, OUT, RANK), 3)
    base_out = stacked((5, OUT + 2), 4)
    extra = (1, OUT) if op == "bgmv_expand_slice" else ()  # slice offset, size
    want, got = base_out.clone(), base_out.clone()
    getattr(lora_ops, op)(x, b, want, INDICES.clamp(min=0), *extra, True)
    skip_unassigned_rows(getattr(lora_ops, op))(x, b, got, INDICES, *extra, True)
    assert torch.equal(got[INDICES < 0], base_out[INDICES < 0])  # bit for bit the base layer
    assert torch.equal(got[INDICES >= 0], want[INDICES >= 0])
    assert not torch.equal(want[INDICES < 0], base_out[INDICES < 0])  # unfixed: slot 2 added


def test_the_entry_point_patches_every_lookup_site_once() -> None:
    points = metadata.entry_points(group="vllm.general_plugins")
    assert [(p.name, p.value) for p in points if p.name == "loopgate"] == [
        ("loopgate", "loopgate_engine:register")
    ]
    script = """
import loopgate_engine
from loopgate_engine import lora_slots
from vllm.lora.ops import torch_ops
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu
loopgate_engine.register(); first = punica_cpu.bgmv_expand
loopgate_engine.register()  # vLLM may call it again: no double wrap
assert punica_cpu.bgmv_expand is first
for module in (torch_ops, lora_ops, punica_cpu):
    for name in lora_slots.OPS:
        assert getattr(getattr(module, name), lora_slots.FIXED, False), (module, name)
assert not lora_slots.uses_last_slot_for_unassigned(punica_cpu.bgmv_shrink)
print("patched")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("patched")
