"""vLLM's torch LoRA ops against loopgate's dense ones (loopgate_engine.lora_ops), per op.

The bundled model's LoRA shapes (SmolLM2-135M: hidden 576, MLP 1536, rank 16, 4 slots: what the
embedded engine serves), at decode-sized batches (8, 32 rows) and a prefill (480 rows: eight
60-token prompts), rows spread over no adapter and every slot. For each op: microseconds per
call, vLLM's (with loopgate's slot fix, as the engine ran it before) and the dense one, and the
largest difference between their results. The engine-level figure (tokens/s of a batch with
adapters, the plugin on and off) is `python -m benchmarks.engine --quick` run with and without
`VLLM_PLUGINS=none`; docs/benchmarks.md has both.

Run: python -m benchmarks.lora_ops [--threads N] [--repeat 50] [--dtype auto|bfloat16|float32]
(auto: the dtype the embedded engine serves on this host, bfloat16 only where the CPU computes it
natively; the weights and the expands' outputs are in it)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from loopgate_engine import lora_ops as dense
from loopgate_engine.lora_slots import skip_unassigned_rows
from store.numerics import choose_cpu_dtype, describe_cpu

SLOTS, RANK = 4, 16
# (op, input width, output width): the shrink's A is [rank, in], an expand's B [out, rank].
SHAPES = (
    ("bgmv_shrink", 576, RANK),  # q/k/v, gate/up, o: input 576
    ("bgmv_shrink", 1536, RANK),  # down: input 1536
    ("bgmv_expand", RANK, 1536),  # gate/up
    ("bgmv_expand_slice", RANK, 576),  # q, o
)
ROWS = (8, 32, 480)


def _time(fn: Callable[[], Any], repeat: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e6


def case(
    op: str, width_in: int, width_out: int, rows: int, repeat: int, model: torch.dtype
) -> dict[str, Any]:
    """One op at one size. vLLM's layout: the weights and the shrink's input in the model's
    dtype, the shrink's output (the expand's input) a float32 buffer, the expand's output in the
    model's dtype."""
    gen = torch.Generator().manual_seed(rows)
    indices = torch.tensor([i % (SLOTS + 1) - 1 for i in range(rows)])  # no adapter, then slots
    shrink = op == "bgmv_shrink"
    x = torch.randn(rows, width_in, generator=gen).to(model if shrink else torch.float32)
    shape = (SLOTS, 1, width_out, width_in)
    w = torch.randn(*shape, generator=gen).to(model)
    out_dtype = torch.float32 if shrink else model
    extra: tuple[Any, ...] = (
        (1.0,) if shrink else ((0, width_out, True) if "slice" in op else (True,))
    )
    vllm_op = skip_unassigned_rows(_vllm_op(op))
    outs = [torch.zeros(rows, width_out, dtype=out_dtype) for _ in range(2)]
    vllm_op(x, w, outs[0], indices, *extra)
    dense.OPS[op](x, w, outs[1], indices, *extra)
    scale = float(outs[0].float().abs().max())
    diff = float((outs[0].float() - outs[1].float()).abs().max())
    sink = torch.zeros(rows, width_out, dtype=out_dtype)
    before = _time(lambda: vllm_op(x, w, sink, indices, *extra), repeat)
    after = _time(lambda: dense.OPS[op](x, w, sink, indices, *extra), repeat)
    return {"rows": rows, "vllm_us": before, "dense_us": after, "speedup": before / after,
            "max_diff": diff, "scale": scale}  # fmt: skip


def _vllm_op(name: str) -> Callable[..., Any]:
    """vLLM's own op, even in a process where the plugin already replaced it."""
    import importlib

    module = importlib.import_module("vllm.lora.ops.torch_ops.lora_ops")
    op = getattr(module, name)
    if getattr(op, dense.DENSE, False):
        raise SystemExit("the dense ops are already in place here; run with VLLM_PLUGINS=none")
    return op  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lora_ops", description=__doc__)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the engine's: 1)")
    p.add_argument("--repeat", type=int, default=50, help="calls timed per case")
    p.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="the model's dtype (auto: what the embedded engine serves on this host)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = getattr(torch, choose_cpu_dtype(args.dtype))
    print(
        f"host: {describe_cpu()}; torch {torch.__version__}, {args.threads} thread(s); "
        f"weights {model}"
    )
    print(f"{'op':<18}{'in':>6}{'out':>6}{'rows':>6}{'vLLM us':>11}{'dense us':>10}"
          f"{'x':>7}{'max diff':>10}{'of':>8}")  # fmt: skip
    for op, width_in, width_out in SHAPES:
        for rows in ROWS:
            r = case(op, width_in, width_out, rows, args.repeat, model)
            print(f"{op:<18}{width_in:>6}{width_out:>6}{rows:>6}{r['vllm_us']:>11.0f}"
                  f"{r['dense_us']:>10.0f}{r['speedup']:>7.1f}{r['max_diff']:>10.2g}"
                  f"{r['scale']:>8.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
