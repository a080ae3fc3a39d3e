"""Train one adapter from a dataset snapshot folder, outside the job queue.

The same trainer the worker runs, as a command, so multi-GPU hosts can launch it with
`torchrun --nproc_per_node N -m training.run ...` or `accelerate launch -m training.run ...`
(the Trainer then runs data-parallel, one process per GPU, each with its own 4-bit base copy):

    python -m training.run --dataset /shared/training/datasets/<tenant>/<ds-id> \\
        --base /models/SmolLM2-135M-Instruct --out /shared/adapters/new --epochs 3 --device cuda

The output folder can then be registered with `loopgate adapter register`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from training.dataset import read_split
from training.trainer import Progress, TrainingError, train
from training.trainer_config import TrainConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.run", description=__doc__)
    p.add_argument("--dataset", type=Path, required=True, help="snapshot folder (train/eval.jsonl)")
    p.add_argument("--base", type=Path, required=True, help="the base model's HF folder")
    p.add_argument("--out", type=Path, required=True, help="new adapter folder")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--quantization", choices=("nf4", "none"), default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    given = {
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "rank": args.rank,
        "quantization": args.quantization,
    }
    try:
        config = replace(
            TrainConfig(device=args.device, seed=args.seed),
            **{k: v for k, v in given.items() if v is not None},
        )
        result = train(
            args.base,
            read_split(args.dataset, "train"),
            read_split(args.dataset, "eval"),
            args.out,
            config,
            on_progress=_print,
        )
    except (TrainingError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "adapter": result.adapter_dir,
                "steps": result.steps,
                "final_train_loss": result.final_train_loss,
                "eval_loss": result.eval_loss,
                "tokens_per_s": round(result.tokens_per_s, 1),
            }
        )
    )
    return 0


def _print(p: Progress) -> None:
    loss = f" loss {p.loss:.4f}" if p.loss is not None else ""
    eval_loss = f" eval {p.eval_loss:.4f}" if p.eval_loss is not None else ""
    print(f"step {p.step}/{p.total_steps}{loss}{eval_loss} {p.tokens_per_s:.0f} tok/s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
