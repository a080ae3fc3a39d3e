"""The plain baseline: TRL's basic SFT + LoRA recipe on a 4-bit NF4 base, nothing of ours.

Usage: python -m benchmarks.plain_trl_sft BASE_DIR DATA.jsonl OUT_DIR EPOCHS BATCH MAX_LEN DTYPE
Each line of DATA.jsonl is {"prompt": [...], "completion": [...]} (conversational).
Prints one JSON line: {"train_seconds": ..., "peak_rss_mb": ...}.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from trl.trainer.sft_config import SFTConfig
from trl.trainer.sft_trainer import SFTTrainer


def main() -> None:
    base_dir, data, out_dir, epochs, batch, max_len, dtype_name = sys.argv[1:8]
    dtype = getattr(torch, dtype_name)  # bfloat16 or float32
    dataset = load_dataset("json", data_files=data, split="train")
    quantization = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=quantization, dtype=dtype
    )
    peft_config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    args = SFTConfig(
        output_dir=out_dir,
        num_train_epochs=int(epochs),
        per_device_train_batch_size=int(batch),
        max_length=int(max_len),
        learning_rate=2e-4,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=peft_config)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    trainer.save_model(out_dir)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"train_seconds": seconds, "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
