"""LoRA training of one adapter: TRL's SFTTrainer + peft LoRA on the base's weights (or QLoRA).

The recipe, top to bottom in `train`:
1. resolve the device and the compute dtype (bf16 only where the hardware computes it natively,
   `store.numerics`), pin torch's threads, hash the base weights;
2. load the base: 4-bit NF4 with double quantization for `quantization="nf4"` (QLoRA), else its
   weights as they are in the compute dtype (the job resolved "auto" to what the engine serves);
3. turn conversations into TRL's conversational prompt-completion rows, so the chat template
   is the base's own and only the final assistant turn is in the loss;
4. train with SFTTrainer: linear warmup/decay, eval each epoch, early stopping, best kept;
   with `anchor_weight` > 0 the loss adds KL(base || adapter) on every token (`anchored_loss`);
5. save the LoRA weights only (adapter_config.json + adapter_model.safetensors), atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import msgspec
import torch

from adapters.validation import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    Limits,
    base_model_info,
    validate_folder,
)
from replicas.base_model import nf4_config
from replicas.chat_template import template_text
from store.errors import Unprocessable
from store.numerics import DtypeSetting, choose_cpu_dtype, describe_cpu
from training.chat import ChatMessage, Conversation, prompt_of, text_of, tools_of
from training.trainer_config import ALL_LINEAR, Device, TrainConfig

ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
PREFLIGHT_MAX_BYTES = 512 * 1024 * 1024
TorchDevice = Literal["cpu", "cuda"]


class TrainingError(RuntimeError):
    """Training could not run or produced an unusable adapter (the message says what to fix)."""


class TrainingCancelled(TrainingError):
    """`should_stop()` returned True; training stopped and no adapter folder was left behind."""


@dataclass(frozen=True)
class Progress:
    """One progress report, sent every `logging_steps` optimizer steps and after each eval."""

    step: int
    total_steps: int
    epoch: float
    loss: float | None
    eval_loss: float | None
    tokens_per_s: float
    elapsed_s: float


class TrainResult(msgspec.Struct, frozen=True):
    """What a finished run produced and how it went."""

    adapter_dir: str
    steps: int
    epochs_run: float
    train_tokens: int
    tokens_per_s: float
    seconds: float
    peak_rss_mb: float
    first_loss: float
    final_train_loss: float
    eval_loss: float | None  # the best epoch's (the saved adapter's) eval loss
    loss_history: list[tuple[int, float]]
    base_hash: str
    config: TrainConfig
    seed: int
    compute_dtype: str = ""  # what the base computed in ("bfloat16" / "float32")
    hardware: str = ""  # e.g. "CPU AVX2 (bf16 emulated)" or "CUDA NVIDIA H100 (bf16 native)"


class PromptCompletion(TypedDict):
    """TRL's conversational prompt-completion row: the loss covers `completion` only."""

    prompt: list[ChatMessage]
    completion: list[ChatMessage]
    tools: NotRequired[str | None]  # JSON of the tools offered (the chat template lists them)


# ------------------------------------------------------------------------------------ helpers


def resolve_device(device: Device) -> TorchDevice:
    """'auto' → CUDA when torch sees a GPU, else CPU; asking for CUDA without one is an error."""
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise TrainingError("device='cuda' but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return device


def compute_dtype(device: TorchDevice, setting: DtypeSetting = "auto") -> torch.dtype:
    """The setting's dtype, or ('auto') bf16 where the device computes it natively: a CUDA GPU
    with bf16, a CPU with AVX512-BF16 or AMX (there bf16 trained ~1.4x faster than float32);
    float32 elsewhere (on an AVX2-only CPU a bf16 QLoRA step ran 30x slower: 5 vs 146 tok/s)."""
    if setting != "auto":
        return getattr(torch, setting)  # type: ignore[no-any-return]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, choose_cpu_dtype("auto"))  # type: ignore[no-any-return]


def describe_hardware(device: TorchDevice) -> str:
    """The hardware a figure was measured on, for events and results."""
    if device == "cuda":
        native = "native" if torch.cuda.is_bf16_supported() else "unsupported"
        return f"CUDA {torch.cuda.get_device_name()} (bf16 {native})"
    return describe_cpu()


def hash_base_weights(base_dir: Path) -> str:
    """SHA-256 over the base's safetensors files (names and bytes, in name order)."""
    shards = sorted(base_dir.glob("*.safetensors"))
    if not shards:
        raise TrainingError(f"{base_dir} holds no *.safetensors weights; is it an HF model folder?")
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(shard.name.encode() + b"\0")
        with shard.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def to_prompt_completion(conversations: Sequence[Conversation]) -> list[PromptCompletion]:
    """Split each conversation at its final assistant turn (which must exist and hold text or
    tool calls); a conversation's tools go in its row's `tools` (JSON, as TRL reads it)."""
    rows: list[PromptCompletion] = []
    for index, conversation in enumerate(conversations):
        answer = conversation[-1] if conversation else None
        if answer is None or answer["role"] != "assistant" or not text_of(answer).strip():
            raise TrainingError(
                f"conversation {index} does not end with a non-empty assistant turn; "
                "every training example needs the answer to learn"
            )
        rows.append({"prompt": prompt_of(conversation), "completion": [answer]})
    tools = [tools_of(conversation) for conversation in conversations]
    if any(tools):  # every row gets the column (a dataset takes its columns from the first row)
        for row, offered in zip(rows, tools, strict=True):
            row["tools"] = json.dumps(offered) if offered else None
    return rows


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """No tqdm bars from transformers (weight loading) or datasets (tokenizing) in worker logs."""
    from datasets import utils as ds_tqdm
    from transformers.utils import logging as hf_logging

    hf_was_on = hf_logging.is_progress_bar_enabled()
    ds_was_on = not ds_tqdm.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    ds_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        if hf_was_on:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        if ds_was_on:
            ds_tqdm.enable_progress_bars()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op CPU threads (None: leave torch's setting), restored afterwards."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------- the model


def placement(device: TorchDevice) -> str:
    """Where this process's copy of the model lives: under torchrun/accelerate (data parallel,
    one process per GPU) each process takes the GPU of its LOCAL_RANK."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def load_base(base_dir: Path, config: TrainConfig, device: TorchDevice) -> Any:
    """The base model for training: 4-bit NF4 + double quantization for "nf4", else the folder's
    weights as they are ("none", or an unresolved "auto": `base_dir` is the folder the engine
    serves, the NF4-rounded copy when it serves nf4)."""
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(device, config.compute_dtype)
    quantization = nf4_config(dtype) if config.quantization == "nf4" else None
    return AutoModelForCausalLM.from_pretrained(
        base_dir,
        dtype=dtype,
        quantization_config=quantization,
        # On CPU no device map: the plain from_pretrained path, as the plain TRL recipe takes
        # (benchmarks.train_vs_trl); a map only matters for placing GPUs under torchrun.
        device_map=None if device == "cpu" else {"": placement(device)},
    )


def lora_config(config: TrainConfig) -> Any:
    """peft's LoraConfig for `config` (no biases, no extra trained modules: vLLM serves it)."""
    from peft import LoraConfig

    targets = ALL_LINEAR if config.target_modules == ALL_LINEAR else list(config.target_modules)
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def checkpointing(config: TrainConfig, device: TorchDevice) -> bool:
    """Whether activations are recomputed in backward: as configured, or ('auto') on CUDA only."""
    if isinstance(config.gradient_checkpointing, bool):
        return config.gradient_checkpointing
    return device == "cuda"


def sft_config(
    config: TrainConfig,
    device: TorchDevice,
    checkpoints: Path,
    has_eval: bool,
    *,
    save: bool = False,
) -> Any:
    """TRL's SFTConfig: eval + checkpoint each epoch (best kept), progress via our callback."""
    from trl.trainer.sft_config import SFTConfig

    return SFTConfig(
        **training_arguments(config, device, checkpoints, has_eval, save=save),
        max_length=config.max_seq_length,
    )


def training_arguments(
    config: TrainConfig, device: TorchDevice, checkpoints: Path, has_eval: bool, *, save: bool
) -> dict[str, Any]:
    """The TrainingArguments SFT and DPO share: eval each epoch when there is an eval set (best
    kept, early stopping), a checkpoint each epoch when there is an eval set or `save`."""
    per_epoch = "epoch" if has_eval else "no"
    return dict(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy=per_epoch,
        save_strategy="epoch" if has_eval or save else "no",
        save_only_model=True,
        save_total_limit=2,  # the best and the latest
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=config.seed,
        data_seed=config.seed,
        bf16=compute_dtype(device, config.compute_dtype) == torch.bfloat16,
        fp16=False,
        use_cpu=device == "cpu",
        gradient_checkpointing=checkpointing(config, device),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        report_to="none",
        dataloader_num_workers=0,
    )


# ----------------------------------------------------------------------------------- progress


def _reporter_class() -> type[Any]:
    """The TrainerCallback subclass, built on first use so importing this module stays light."""
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """Turns the Trainer's logs into Progress reports and honours cancellation."""

        def __init__(self, watcher: _Watcher) -> None:
            self.watcher = watcher

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.watcher.started = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.watcher.stop_requested():
                control.should_training_stop = True
                control.should_evaluate = control.should_save = False

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.watcher.cancelled:  # no eval or checkpoint for a cancelled run
                control.should_evaluate = control.should_save = False

        def on_log(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.watcher.logged(state, kw.get("logs") or {})

    return Reporter


@dataclass(frozen=True)
class SavedCheckpoint:
    """An adapter saved at the end of an epoch, with the losses logged up to it."""

    step: int
    epoch: float
    train_loss: float | None
    valid_loss: float | None  # the eval loss at this step (None: no eval set)
    path: str


@dataclass(frozen=True)
class Checkpoints:
    """Where the per-epoch adapters go (`<folder>/step-<N>`), and who hears of each."""

    folder: Path
    on_saved: Callable[[SavedCheckpoint], None] | None = None


def _checkpointer_class() -> type[Any]:
    """The TrainerCallback that keeps each epoch's adapter, built on first use (light import)."""
    from transformers import TrainerCallback

    class Checkpointer(TrainerCallback):
        """On each of the Trainer's (per-epoch) saves, the LoRA weights as the engine loads them;
        the Trainer's own checkpoint folders (optimizer state, rotation) stay its business."""

        def __init__(self, sink: Checkpoints, base_dir: Path, watcher: _Watcher) -> None:
            self.sink, self.base_dir, self.watcher = sink, base_dir, watcher

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.watcher.cancelled:
                return
            saved = save_checkpoint(kw["model"], state, self.sink.folder, self.base_dir)
            if self.sink.on_saved is not None:
                self.sink.on_saved(saved)

    return Checkpointer


def save_checkpoint(model: Any, state: Any, folder: Path, base_dir: Path) -> SavedCheckpoint:
    """Save the adapter at `state`'s step into `folder/step-<N>` (staged, then renamed)."""
    step = int(state.global_step)
    dest = folder / f"step-{step}"
    staged = save_adapter(model, folder / f".step-{step}", base_dir)
    shutil.rmtree(dest, ignore_errors=True)
    staged.rename(dest)
    return SavedCheckpoint(
        step=step,
        epoch=float(state.epoch or 0.0),
        train_loss=_last_logged(state.log_history, "loss", None),
        valid_loss=_last_logged(state.log_history, "eval_loss", step),
        path=str(dest),
    )


def _last_logged(history: list[dict[str, float]], key: str, step: int | None) -> float | None:
    """The latest `key` in the Trainer's log history (at exactly `step` when one is given)."""
    for entry in reversed(history):
        if key in entry and (step is None or int(entry.get("step", -1)) == step):
            return float(entry[key])
    return None


@dataclass
class _Watcher:
    """The state the callback keeps: the loss history, evals, cancellation."""

    on_progress: Callable[[Progress], None] | None
    should_stop: Callable[[], bool] | None
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    history: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)

    def stop_requested(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
        return self.cancelled

    def logged(self, state: Any, logs: dict[str, float]) -> None:
        loss, eval_loss = logs.get("loss"), logs.get("eval_loss")
        if loss is not None:
            self.history.append((int(state.global_step), float(loss)))
        if eval_loss is not None:
            self.eval_losses.append(float(eval_loss))
        if (loss is None and eval_loss is None) or self.on_progress is None:
            return
        elapsed = time.monotonic() - self.started
        self.on_progress(
            Progress(
                step=int(state.global_step),
                total_steps=int(state.max_steps),
                epoch=float(state.epoch or 0.0),
                loss=None if loss is None else float(loss),
                eval_loss=None if eval_loss is None else float(eval_loss),
                tokens_per_s=state.num_input_tokens_seen / elapsed if elapsed > 0 else 0.0,
                elapsed_s=elapsed,
            )
        )


# ------------------------------------------------------------------------------------ anchoring


def anchored_loss(
    logits: torch.Tensor,
    base_logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None,
    weight: float,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy on the answer tokens plus `weight` x KL(base || adapter) on every real token.

    `logits`/`base_logits` are the adapter's and the base's for the same batch ([batch, seq,
    vocab]); position t predicts token t+1. The KL is the mean over real (unpadded) positions;
    the cross-entropy is summed over answer tokens and divided by `num_items` (the Trainer's
    count across gradient accumulation) or by their number in this batch.
    """
    pred, base = logits[:, :-1].float(), base_logits[:, :-1].float()
    target = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    count = num_items if num_items is not None else (target != -100).sum()
    ce = ce / torch.as_tensor(count, device=ce.device).clamp(min=1)
    real = torch.ones_like(target, dtype=torch.bool)
    if attention_mask is not None:
        real = attention_mask[:, 1:].bool()
    log_p, log_q = torch.log_softmax(base, -1), torch.log_softmax(pred, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return ce + weight * (kl * real).sum() / real.sum().clamp(min=1)


def _anchored_trainer_class(weight: float) -> type[Any]:
    """SFTTrainer whose training loss is `anchored_loss`; the base is the model with its adapter
    switched off (peft's `disable_adapter`), so no second copy of the weights is loaded. Eval
    loss stays TRL's (plain answer loss), so early stopping compares like with like."""
    from trl.trainer.sft_trainer import SFTTrainer

    class AnchoredSFTTrainer(SFTTrainer):
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:  # fmt: skip
            if not model.training:
                return super().compute_loss(  # type: ignore[no-untyped-call]
                    model, inputs, return_outputs, num_items_in_batch
                )
            forward = {"input_ids": inputs["input_ids"], "use_cache": False,
                       "attention_mask": inputs.get("attention_mask")}  # fmt: skip
            outputs = model(**forward)
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                base_logits = model(**forward).logits
            loss = anchored_loss(
                outputs.logits, base_logits, inputs["labels"], inputs.get("attention_mask"),
                weight, num_items_in_batch,
            )  # fmt: skip
            return (loss, outputs) if return_outputs else loss

    return AnchoredSFTTrainer


# ------------------------------------------------------------------------------------ training


def chat_tokenizer(base_dir: Path) -> Any:
    """The base's tokenizer, which must have a chat template: the one the engine serves the base
    with (`replicas.chat_template`: loopgate's tool-calling ChatML for the bundled model), else
    the base's own."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    template = template_text(None, base_dir)
    if template is not None:
        tokenizer.chat_template = template
    if not tokenizer.chat_template:
        raise TrainingError(f"the tokenizer in {base_dir} has no chat template; add one to train")
    return tokenizer


def with_early_stopping(callbacks: Sequence[Any], has_eval: bool, config: TrainConfig) -> list[Any]:
    """`callbacks`, plus early stopping on the eval loss when there is an eval set."""
    from transformers import EarlyStoppingCallback

    if has_eval and config.early_stopping_patience > 0:
        return [*callbacks, EarlyStoppingCallback(config.early_stopping_patience)]
    return list(callbacks)


def build_trainer(
    base_dir: Path,
    train: Sequence[Conversation],
    eval: Sequence[Conversation],
    config: TrainConfig,
    checkpoints: Path,
    *,
    callbacks: Sequence[Any] = (),
    save: bool = False,
) -> Any:
    """An SFTTrainer ready to `.train()`: base loaded, LoRA attached, datasets tokenized."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl.trainer.sft_trainer import SFTTrainer

    device = resolve_device(config.device)
    tokenizer = chat_tokenizer(base_dir)
    all_callbacks = with_early_stopping(callbacks, bool(eval), config)
    anchored = config.anchor_weight > 0
    trainer_class = _anchored_trainer_class(config.anchor_weight) if anchored else SFTTrainer
    with quiet_progress_bars():
        trainer = trainer_class(
            model=load_base(base_dir, config, device),
            args=sft_config(config, device, checkpoints, has_eval=bool(eval), save=save),
            train_dataset=Dataset.from_list(list(to_prompt_completion(train))),
            eval_dataset=Dataset.from_list(list(to_prompt_completion(eval))) if eval else None,
            processing_class=tokenizer,
            peft_config=lora_config(config),
            callbacks=all_callbacks,
        )
    trainer.remove_callback(PrinterCallback)  # progress goes through our callback, not stdout
    return trainer


def train(
    base_dir: Path,
    train: Sequence[Conversation],
    eval: Sequence[Conversation],
    out_dir: Path,
    config: TrainConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainResult:
    """Train one LoRA adapter on `train` (early stopping on `eval`) and save it to `out_dir`.

    Synchronous. `out_dir` appears only when training succeeds (it is staged next to it and
    renamed into place); on cancellation (`should_stop()` true) TrainingCancelled is raised
    and nothing is left behind. With `checkpoints`, each epoch's adapter is kept there too.
    """
    _check_destination(Path(out_dir), train)

    def build(work: Path, callbacks: list[Any]) -> Any:
        return build_trainer(
            Path(base_dir), train, eval, config, work, callbacks=callbacks, save=bool(checkpoints)
        )

    return run_trainer(
        build, Path(base_dir), Path(out_dir), config, Hooks(on_progress, should_stop, checkpoints)
    )


@dataclass(frozen=True)
class Hooks:
    """How a run reports (progress, saved checkpoints) and is told to stop."""

    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    checkpoints: Checkpoints | None = None


def run_trainer(
    build: Callable[[Path, list[Any]], Any],
    base_dir: Path,
    out_dir: Path,
    config: TrainConfig,
    hooks: Hooks,
) -> TrainResult:
    """Run the Trainer `build(checkpoint_dir, callbacks)` makes (SFT here, DPO in training.dpo)
    and save its adapter to `out_dir`, staged and renamed into place."""
    base_hash = hash_base_weights(base_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    watcher = _Watcher(hooks.on_progress, hooks.should_stop)
    callbacks = [_reporter_class()(watcher)]
    if hooks.checkpoints is not None:
        hooks.checkpoints.folder.mkdir(parents=True, exist_ok=True)
        callbacks.append(_checkpointer_class()(hooks.checkpoints, base_dir, watcher))
    try:
        with torch_threads(config.torch_threads):
            trainer = build(work / "checkpoints", callbacks)
            started = time.monotonic()
            output = trainer.train()
            seconds = time.monotonic() - started
            if watcher.cancelled:
                raise TrainingCancelled(
                    f"training was cancelled at step {trainer.state.global_step}; no adapter saved"
                )
            staged = save_adapter(trainer.model, work / "adapter", base_dir)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename needs the name free
        staged.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not watcher.history:  # fewer steps than logging_steps: the run's mean loss stands in
        watcher.history.append((int(trainer.state.global_step), float(output.training_loss)))
    return _result(trainer.state, watcher, out_dir, seconds, base_hash, config)


def _check_destination(out_dir: Path, train: Sequence[object]) -> None:
    if not train:
        raise TrainingError("the training set is empty; there is nothing to learn from")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TrainingError(f"{out_dir} already exists and is not empty; pick a new adapter folder")


def _result(
    state: Any,
    watcher: _Watcher,
    out_dir: Path,
    seconds: float,
    base_hash: str,
    config: TrainConfig,
) -> TrainResult:
    tokens = int(state.num_input_tokens_seen)
    best = state.best_metric
    device = resolve_device(config.device)
    return TrainResult(
        adapter_dir=str(out_dir),
        steps=int(state.global_step),
        epochs_run=float(state.epoch or 0.0),
        train_tokens=tokens,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        peak_rss_mb=peak_rss_mb(),
        first_loss=watcher.history[0][1],
        final_train_loss=watcher.history[-1][1],
        eval_loss=float(best) if best is not None else None,
        loss_history=list(watcher.history),
        base_hash=base_hash,
        config=config,
        seed=config.seed,
        compute_dtype=str(compute_dtype(device, config.compute_dtype)).removeprefix("torch."),
        hardware=describe_hardware(device),
    )


def save_adapter(model: Any, dest: Path, base_dir: Path) -> Path:
    """Save only the LoRA weights as the engine loads them: two files, sorted target list."""
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(str(dest), safe_serialization=True)
    for extra in dest.iterdir():  # peft also writes a README.md model card
        if extra.name not in ADAPTER_FILES:
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    # peft keeps target_modules as a set and writes it in hash order, which varies by process.
    config_path = dest / CONFIG_FILE
    saved = json.loads(config_path.read_text())
    saved["target_modules"] = sorted(saved["target_modules"])
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return dest


def preflight(
    adapter_dir: Path, base_dir: Path, base_name: str, max_rank: int = 16
) -> AdapterManifest:
    """Run the gateway's own adapter validation on a trained adapter before it is registered."""
    base = base_model_info(Path(base_dir), base_name)
    try:
        return validate_folder(Path(adapter_dir), base, Limits(PREFLIGHT_MAX_BYTES, max_rank))
    except Unprocessable as exc:
        raise TrainingError(
            f"the adapter in {adapter_dir} would be refused by the gateway: {exc.message}"
        ) from exc
