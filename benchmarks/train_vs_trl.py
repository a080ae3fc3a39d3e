"""Benchmark: our trainer vs a plain TRL SFT script, same data, base, LoRA and 4-bit NF4 setup.

Each run is its own subprocess, one after the other, alternating (ours, plain, ours, plain...),
with one CPU thread each (OMP_NUM_THREADS=1). Speed is trained tokens (the non-padding tokens of
every example, times the epochs) over the wall time of `trainer.train()`; memory is the peak RSS
each subprocess reports for itself. Both compute in the dtype our trainer's default picks on this
host (`--dtype auto`: bf16 only where the CPU has it natively); the CPU's capability and that
dtype are printed with the figures. Printed, never asserted.

    python -m benchmarks.train_vs_trl [--rounds 2] [--examples 32] [--epochs 2] [--dtype auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.numerics import choose_cpu_dtype, describe_cpu
from training.chat import Conversation
from training.trainer import to_prompt_completion

BATCH = 4
MAX_LEN = 256


@dataclass(frozen=True)
class Measurement:
    name: str
    train_seconds: float
    peak_rss_mb: float


def conversations(n: int) -> list[Conversation]:
    """Arithmetic questions answered in a format the base never uses."""
    return [
        [
            {"role": "user", "content": f"What is {i} plus {2 * i + 3}?"},
            {"role": "assistant", "content": f"ANSWER: {3 * i + 3} ##"},
        ]
        for i in range(n)
    ]


def trained_tokens(base_dir: Path, convs: list[Conversation], epochs: int) -> int:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(base_dir)
    per_epoch = sum(
        len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])
        for c in convs
    )
    return int(per_epoch) * epochs


def run_ours(
    base_dir: Path, data: Path, out: Path, epochs: int, checkpointing: bool, dtype: str
) -> None:
    """Subprocess body: train with training.trainer and print the measurement as JSON."""
    from training.trainer import peak_rss_mb, train
    from training.trainer_config import TrainConfig

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    convs: list[Conversation] = [row["prompt"] + row["completion"] for row in rows]
    config = TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        max_seq_length=MAX_LEN,
        torch_threads=1,
        gradient_checkpointing=checkpointing,
        compute_dtype=dtype,  # type: ignore[arg-type]  # checked by TrainConfig
    )
    result = train(base_dir, convs, [], out, config)
    print(json.dumps({"train_seconds": result.seconds, "peak_rss_mb": peak_rss_mb()}))


def measure(name: str, command: list[str]) -> Measurement:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(name, figures["train_seconds"], figures["peak_rss_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="ours without gradient checkpointing (faster, more memory)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
        help="compute dtype of both trainers (auto: what our trainer's default picks here)",
    )  # fmt: skip
    parser.add_argument("--ours-child", nargs=3, metavar=("BASE", "DATA", "OUT"))
    args = parser.parse_args()
    args.dtype = choose_cpu_dtype(args.dtype)
    if args.ours_child:
        base, data, out = map(Path, args.ours_child)
        run_ours(base, data, out, args.epochs, args.gradient_checkpointing, args.dtype)
        return
    base_dir = args.base or _default_base()
    convs = conversations(args.examples)
    tokens = trained_tokens(base_dir, convs, args.epochs)
    results: dict[str, list[Measurement]] = {"ours": [], "plain TRL": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in to_prompt_completion(convs)))
        for round_no in range(args.rounds):
            py = sys.executable
            ours = [py, "-m", "benchmarks.train_vs_trl", "--epochs", str(args.epochs)]
            ours += ["--dtype", args.dtype]
            ours += [] if args.gradient_checkpointing else ["--no-gradient-checkpointing"]
            ours += ["--ours-child", str(base_dir), str(data), f"{tmp}/ours-{round_no}"]
            plain = [py, "-m", "benchmarks.plain_trl_sft", str(base_dir), str(data)]
            plain += [f"{tmp}/plain-{round_no}", str(args.epochs), str(BATCH), str(MAX_LEN)]
            plain += [args.dtype]
            results["ours"].append(measure("ours", ours))
            results["plain TRL"].append(measure("plain TRL", plain))
    _print_table(results, tokens, args)


def _default_base() -> Path:
    from replicas.base_model import resolve_model
    from store.settings import Settings

    return Path(resolve_model(Settings()))


def _print_table(
    results: dict[str, list[Measurement]], tokens: int, args: argparse.Namespace
) -> None:
    print(
        f"{args.examples} examples x {args.epochs} epochs = {tokens} trained tokens; batch "
        f"{BATCH}, max_len {MAX_LEN}, r=16 alpha=32, 4-bit NF4 + double quant, {args.dtype} "
        f"compute on {describe_cpu()}, 1 thread; {args.rounds} rounds alternating; ours with "
        "gradient checkpointing: "
        f"{args.gradient_checkpointing} (plain TRL: on, its default)"
    )
    print(f"{'trainer':<10} {'round tok/s':<22} {'median tok/s':>12} {'peak RSS MB':>12}")
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in results.items():
        speeds = [tokens / m.train_seconds for m in runs]
        rss = max(m.peak_rss_mb for m in runs)
        medians[name] = (statistics.median(speeds), rss)
        shown = ", ".join(f"{s:.1f}" for s in speeds)
        print(f"{name:<10} {shown:<22} {medians[name][0]:>12.1f} {rss:>12.0f}")
    (ours_speed, ours_rss), (plain_speed, plain_rss) = medians["ours"], medians["plain TRL"]
    print(
        f"ratio ours/plain: speed {ours_speed / plain_speed:.2f}x (target >= 1.0), "
        f"memory {ours_rss / plain_rss:.2f}x (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
