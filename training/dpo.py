"""DPO training of one adapter: TRL's DPOTrainer + peft LoRA on the same (4-bit NF4) base as SFT.

The recipe is `training.trainer`'s with the loss swapped:
1. the same device, dtype, base loading, LoRA config and TrainingArguments (eval and a
   checkpoint each epoch, early stopping on the eval loss, best kept);
2. rows are TRL's conversational preference rows {prompt, chosen, rejected}, rendered with the
   base's chat template;
3. the reference policy is the base itself: peft's adapter switched off (TRL does this when it
   gets a peft model and no `ref_model`), so no second copy of the weights is loaded;
4. the loss is DPO's sigmoid loss, -log sigmoid(beta * (margin - reference margin)), where the
   margin is log p(chosen | prompt) - log p(rejected | prompt) summed over answer tokens;
5. the saved adapter is the same two files as SFT's, so preflight and parity run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from training.snapshot import Preference
from training.trainer import (
    Checkpoints,
    Hooks,
    Progress,
    TorchDevice,
    TrainingError,
    TrainResult,
    chat_tokenizer,
    load_base,
    lora_config,
    quiet_progress_bars,
    resolve_device,
    run_trainer,
    training_arguments,
    with_early_stopping,
)
from training.trainer_config import TrainConfig


def dpo_config(
    config: TrainConfig, device: TorchDevice, checkpoints: Path, has_eval: bool, *, save: bool
) -> Any:
    """TRL's DPOConfig: the SFT run's arguments, plus beta and the sequence limit."""
    from trl.trainer.dpo_config import DPOConfig

    return DPOConfig(
        **training_arguments(config, device, checkpoints, has_eval, save=save),
        beta=config.beta,
        max_length=config.max_seq_length,
        loss_type=["sigmoid", "sft"] if config.dpo_sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, config.dpo_sft_weight] if config.dpo_sft_weight > 0 else None,
    )


def preference_rows(pairs: Sequence[Preference]) -> list[dict[str, Any]]:
    """TRL's conversational preference rows; a pair with an empty side is refused (nothing to
    prefer)."""
    for index, pair in enumerate(pairs):
        if not all(m["content"].strip() for m in (*pair.chosen, *pair.rejected)):
            raise TrainingError(f"preference pair {index} has an empty chosen or rejected answer")
    return [msgspec.to_builtins(pair) for pair in pairs]


def build_dpo_trainer(
    base_dir: Path,
    train: Sequence[Preference],
    eval: Sequence[Preference],
    config: TrainConfig,
    checkpoints: Path,
    *,
    callbacks: Sequence[Any] = (),
    save: bool = False,
) -> Any:
    """A DPOTrainer ready to `.train()`: base loaded, LoRA attached, pairs tokenized."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl.trainer.dpo_trainer import DPOTrainer

    device = resolve_device(config.device)
    with quiet_progress_bars():
        trainer = DPOTrainer(
            model=load_base(base_dir, config, device),
            args=dpo_config(config, device, checkpoints, bool(eval), save=save),
            train_dataset=Dataset.from_list(preference_rows(train)),
            eval_dataset=Dataset.from_list(preference_rows(eval)) if eval else None,
            processing_class=chat_tokenizer(base_dir),
            peft_config=lora_config(config),
            callbacks=with_early_stopping(callbacks, bool(eval), config),
        )
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_dpo(
    base_dir: Path,
    train: Sequence[Preference],
    eval: Sequence[Preference],
    out_dir: Path,
    config: TrainConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainResult:
    """Train one LoRA adapter by DPO on `train` (early stopping on `eval`) into `out_dir`; the
    same contract as `training.trainer.train` (staged, nothing left behind on cancel)."""
    if not train:
        raise TrainingError(
            "no preference pairs to train on: DPO needs pairs (an uploaded DPO file, or a "
            "traffic snapshot where corrected answers were also rated down)"
        )
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"{out} already exists and is not empty; pick a new adapter folder")

    def build(work: Path, callbacks: list[Any]) -> Any:
        return build_dpo_trainer(
            Path(base_dir), train, eval, config, work, callbacks=callbacks, save=bool(checkpoints)
        )

    return run_trainer(
        build, Path(base_dir), out, config, Hooks(on_progress, should_stop, checkpoints)
    )
