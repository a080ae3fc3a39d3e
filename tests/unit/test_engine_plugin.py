"""loopgate's vLLM plugin: base rows (LoRA slot -1) skip every slot in vLLM's torch LoRA ops, and
the dense ops that replace them (`loopgate_engine.lora_ops`) compute what vLLM's compute.

These check the ops themselves on small tensors; `tests/integration/serving/test_lora_isolation.py`
checks a real engine, token for token."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops

from loopgate_engine import lora_ops as dense
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
from loopgate_engine import lora_ops as dense
for module in (torch_ops, lora_ops, punica_cpu):
    for name in lora_slots.OPS:
        assert getattr(getattr(module, name), lora_slots.FIXED, False), (module, name)
        assert getattr(module, name) is dense.OPS[name], (module, name)
assert not lora_slots.uses_last_slot_for_unassigned(punica_cpu.bgmv_shrink)
print("patched")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("patched")


# -- the dense ops: what vLLM's ops (with the slot fix) compute, on every layout vLLM passes ----


def fixed(name: str) -> object:
    return skip_unassigned_rows(getattr(lora_ops, name))


@pytest.mark.parametrize("rows", [1, 5, 37])
@pytest.mark.parametrize("four_d", [True, False])
def test_dense_shrink_matches_vllms(rows: int, four_d: bool) -> None:
    indices = torch.tensor([i % (SLOTS + 1) - 1 for i in range(rows)])  # -1 and every slot
    x = stacked((rows, HIDDEN), 5)
    a = stacked((SLOTS, 1, RANK, HIDDEN) if four_d else (SLOTS, RANK, HIDDEN), 6)
    want, got = torch.zeros(rows, RANK + 1), torch.full((rows, RANK + 1), 7.0)
    fixed("bgmv_shrink")(x, a, want, indices, 0.5)  # type: ignore[operator]
    got[:, RANK:] = 0.0  # vLLM's op leaves the columns past the rank alone; so does ours
    dense.bgmv_shrink(x, a, got, indices, 0.5)
    torch.testing.assert_close(got[:, :RANK], want[:, :RANK], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[indices < 0, :RANK], torch.zeros(int((indices < 0).sum()), RANK))


@pytest.mark.parametrize("add", [True, False])
@pytest.mark.parametrize("rows", [1, 5, 37])
def test_dense_expands_match_vllms(add: bool, rows: int) -> None:
    indices = torch.tensor([(i * 2) % (SLOTS + 1) - 1 for i in range(rows)])
    x, b = stacked((rows, RANK), 7), stacked((SLOTS, 1, OUT, RANK), 8)
    base_out = stacked((rows, OUT + 2), 9)
    for name, extra in (("bgmv_expand", ()), ("bgmv_expand_slice", (1, OUT))):
        want, got = base_out.clone(), base_out.clone()
        fixed(name)(x, b, want, indices, *extra, add)  # type: ignore[operator]
        dense.OPS[name](x, b, got, indices, *extra, add)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        if add:  # a base row is the base layer's output, bit for bit
            assert torch.equal(got[indices < 0], base_out[indices < 0])


def test_dense_ops_keep_vllms_dtypes_and_one_row_broadcast() -> None:
    """bfloat16 weights and inputs with a float32 shrink buffer (vLLM's layout), and an expand
    whose one-row result vLLM spreads over every output row."""
    indices = torch.tensor([2, -1, 0, 1])
    x = stacked((4, HIDDEN), 10).bfloat16()
    a = stacked((SLOTS, 1, RANK, HIDDEN), 11).bfloat16()
    want, got = torch.zeros(4, RANK), torch.zeros(4, RANK)
    fixed("bgmv_shrink")(x, a, want, indices, 1.0)  # type: ignore[operator]
    dense.bgmv_shrink(x, a, got, indices, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    b = stacked((SLOTS, 1, OUT, RANK), 12).bfloat16()
    one, idx1 = stacked((1, RANK), 13), torch.tensor([1])
    want_b, got_b = (
        torch.zeros(3, OUT, dtype=torch.bfloat16),
        torch.zeros(3, OUT, dtype=torch.bfloat16),
    )
    lora_ops.bgmv_expand(one, b, want_b, idx1, True)
    dense.bgmv_expand(one, b, got_b, idx1, True)
    assert got_b.dtype == torch.bfloat16
    torch.testing.assert_close(got_b, want_b, rtol=1e-2, atol=1e-2)  # bfloat16's own rounding
    assert torch.equal(got_b[0], got_b[2])  # the one row, spread


def test_prefills_sgmv_ops_go_through_the_dense_ones_once_applied() -> None:
    script = """
import torch
import loopgate_engine
from vllm.lora.ops.torch_ops import lora_ops
from loopgate_engine import lora_ops as dense
real = dense.OPS["bgmv_shrink"]
loopgate_engine.register()
assert lora_ops.bgmv_shrink is real
x, a, y = torch.ones(6, 4), torch.ones(2, 1, 3, 4), torch.zeros(6, 3)
# two sequences of 3 tokens: the first on no adapter, the second on slot 1
lora_ops.sgmv_shrink(x, a, y, torch.tensor([0, 3]), torch.tensor([3, 3]), torch.tensor([-1, 1]),
                     2, 3, 6, 1.0)
assert torch.equal(y[:3], torch.zeros(3, 3)) and torch.equal(y[3:], torch.full((3, 3), 4.0)), y
print("dense")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("dense")


# -- what the dense ops keep between calls: each stacked weight's layout, each batch's mask -----


def test_a_kept_weight_layout_is_reused_until_vllm_writes_a_slot() -> None:
    """The expand's transposed B is made once per weight tensor and made again after an in-place
    write (vLLM's `set_lora` / `reset_lora`, inside inference mode as in the engine)."""
    b = stacked((SLOTS, 1, OUT, RANK), 20)
    x, indices = stacked((4, RANK), 21), torch.tensor([0, 1, 2, -1])
    first = dense._expand_weights(b, torch.float32)
    assert dense._expand_weights(b, torch.float32) is first  # kept, not rebuilt per call
    with torch.inference_mode():  # set_lora: an adapter copied into slot 1
        b[1, 0, :, :].copy_(stacked((OUT, RANK), 22))
    assert dense._expand_weights(b, torch.float32) is not first
    want, got = torch.zeros(4, OUT), torch.zeros(4, OUT)
    fixed("bgmv_expand")(x, b, want, indices, True)  # type: ignore[operator]
    dense.bgmv_expand(x, b, got, indices, True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():  # reset_lora: the slot zeroed
        b[1] = 0
    dense.bgmv_expand(x, b, got.zero_(), indices, True)
    assert torch.equal(got[1], torch.zeros(OUT))


def test_inference_mode_weights_are_used_as_they_are_each_call() -> None:
    """A tensor made in inference mode keeps no version counter: nothing is kept for it, and a
    write to it is still seen by the next call."""
    with torch.inference_mode():
        a = stacked((SLOTS, 1, RANK, HIDDEN), 23).bfloat16()
        x, indices = stacked((3, HIDDEN), 24), torch.tensor([2, 0, -1])
        got = torch.zeros(3, RANK)
        dense.bgmv_shrink(x, a, got, indices, 1.0)
        a[2] = 0
        dense.bgmv_shrink(x, a, got, indices, 1.0)
    assert not hasattr(a, dense.PREPARED)
    assert torch.equal(got[0], torch.zeros(RANK)) and torch.equal(got[2], torch.zeros(RANK))
    assert got[1].abs().sum() > 0


def test_the_wrappers_batch_mask_follows_each_new_mapping() -> None:
    """vLLM's CPU Punica wrapper with the plugin's methods computes a two-slice LoRA linear (q and
    v, say) as vLLM's own methods do, over batches with different mappings (two of the same size):
    the mask made for one batch is not used for the next."""
    script = """
import torch
import loopgate_engine
from loopgate_engine import lora_ops as dense
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
originals = {name: getattr(PunicaWrapperCPU, name) for name in dense.METHODS}
loopgate_engine.register()
loopgate_engine.register()
assert all(getattr(getattr(PunicaWrapperCPU, n), dense.DENSE, False) for n in dense.METHODS)
patched = {name: getattr(PunicaWrapperCPU, name) for name in dense.METHODS}
g = torch.Generator().manual_seed(0)
slots, rank, hidden, outs = 3, 4, 6, (5, 3)
a = tuple(torch.randn(slots, 1, rank, hidden, generator=g) for _ in outs)
b = tuple(torch.randn(slots, 1, o, rank, generator=g) for o in outs)
ids = [11, 12, 13]  # lora id per slot
wrapper = PunicaWrapperCPU(64, 8, "cpu")
def run(methods, tokens):
    for name, method in methods.items():
        setattr(PunicaWrapperCPU, name, method)
    mapping = LoRAMapping(tokens, tokens, is_prefill=True)
    wrapper.update_metadata(mapping, ids, slots, 100)
    x = torch.randn(len(tokens), hidden, generator=torch.Generator().manual_seed(len(tokens)))
    y = torch.ones(len(tokens), sum(outs))
    wrapper.add_lora_linear(y, x, a, b, 1.0, outs)
    return y
for tokens in ((11, 11, 0, 13, 13, 12), (13, 13, 13, 0, 0, 11), (0, 12, 12, 11, 0)):
    want, got = run(originals, tokens), run(patched, tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    base = [i for i, t in enumerate(tokens) if t == 0]
    assert torch.equal(got[base], torch.ones(len(base), sum(outs)))  # base rows: nothing added
print("masks", len(wrapper.__dict__[dense.STEP_MASKS]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("masks 1")  # one mask (float32), rebuilt per mapping


def test_the_engines_queue_waits_nap_instead_of_spinning_on_cpu() -> None:
    """vLLM's shared-memory queue waits between checks with `sched_yield` (a spinning core while
    a CPU worker computes a step); with the plugin they sleep NAP_S: the wait takes wall time
    and next to no CPU."""
    script = """
import time
import loopgate_engine
from loopgate_engine import idle_wait
from vllm.distributed.device_communicators import shm_broadcast
assert idle_wait.on_cpu()
loopgate_engine.register()
loopgate_engine.register()  # vLLM may call it again: still the one nap
assert shm_broadcast.sched_yield is idle_wait.nap
cpu, wall = time.process_time(), time.monotonic()
for _ in range(500):
    shm_broadcast.sched_yield()
cpu, wall = time.process_time() - cpu, time.monotonic() - wall
assert wall >= 500 * idle_wait.NAP_S, wall
assert cpu < 0.5 * wall, (cpu, wall)
print("naps")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("naps")
