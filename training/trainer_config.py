"""The LoRA trainer's settings: one validated, frozen dataclass, the OpenAI name mapping and
which base a job trains against (`for_engine`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from store.numerics import DtypeSetting
from store.settings import EngineWeights

Quantization = Literal["auto", "nf4", "none"]
TrainedBase = Literal["nf4", "none"]
Device = Literal["auto", "cpu", "cuda"]
Method = Literal["supervised", "dpo"]
METHODS: tuple[str, ...] = ("supervised", "dpo")
MAX_BETA = 10.0
ALL_LINEAR: Literal["all-linear"] = "all-linear"
QUANTIZATIONS: tuple[str, ...] = ("auto", "nf4", "none")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# The ranks the engine (vLLM) can serve; it is started with --max-lora-rank 16.
SERVABLE_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
AUTO = "auto"
BASE_LEARNING_RATE = 1e-3  # what learning_rate_multiplier multiplies


@dataclass(frozen=True)
class TrainConfig:
    """How one LoRA adapter is trained. The defaults are the product's recipe: LoRA against the
    base the engine serves, one epoch at 1e-3, a KL anchor to the base (docs/fine-tuning.md)."""

    rank: int = field(default=16, metadata={"help": "LoRA rank r (the engine serves r <= 16)."})
    alpha: int = field(
        default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha/r."}
    )
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    learning_rate: float = field(
        default=BASE_LEARNING_RATE,
        metadata={
            "help": "Peak AdamW learning rate (`learning_rate_multiplier` scales it). LoRA's best "
            "rate sits about 10x above full fine-tuning's; 1e-3 for one epoch is what the demo "
            "needed to learn a format (2e-4 was a QLoRA recipe for 7B+ bases)."
        },
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata={"help": "Fraction of the steps spent warming the rate up, in [0, 1)."},
    )
    epochs: int = field(
        default=1,
        metadata={
            "help": "Passes over the training set (at most). One pass at the default rate learns "
            "a tenant's format from a few hundred examples; more passes cost general answers "
            "(measured on the demo) and training time."
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Conversations per forward pass."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Forward passes per optimizer step."}
    )
    max_seq_length: int = field(
        default=1024, metadata={"help": "Tokens kept per conversation (the rest is cut off)."}
    )
    target_modules: tuple[str, ...] | Literal["all-linear"] = field(
        default=ALL_LINEAR,
        metadata={"help": "'all-linear' (every linear layer but the LM head) or module names."},
    )
    quantization: Quantization = field(
        default="auto",
        metadata={
            "help": "The base the adapter learns against. 'auto': the one the engine serves "
            "(LOOPGATE_ENGINE_WEIGHTS full: LoRA on the full weights in the compute dtype; nf4: "
            "QLoRA on the NF4 base), resolved when the job is created; 'nf4': QLoRA on a 4-bit "
            "NF4 base (fits big bases in a GPU; serve it with engine_weights nf4); 'none': LoRA "
            "on the weights as they are."
        },
    )
    device: Device = field(
        default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu' or 'cuda'."}
    )
    compute_dtype: DtypeSetting = field(
        default="auto",
        metadata={
            "help": "Dtype the base computes in. 'auto': bfloat16 on a CUDA GPU with bf16 or a "
            "CPU with native bf16 (AVX512-BF16, AMX), float32 elsewhere (emulated bf16 trained "
            "30x slower on an AVX2-only CPU)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seeds LoRA init, shuffling and dropout."})
    early_stopping_patience: int = field(
        default=1,
        metadata={"help": "Epochs without a better eval loss before training stops (0: never)."},
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "CPU threads for torch (None: leave torch's setting)."}
    )
    logging_steps: int = field(
        default=1, metadata={"help": "Optimizer steps between progress reports."}
    )
    gradient_checkpointing: bool | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "Recompute activations in backward: less memory, slower steps. 'auto': on "
            "for CUDA (GPU memory is what runs out), off on CPU (measured on the 2-core CPU with "
            "SmolLM2-135M: off trains 1.37x faster for 1.13x peak memory)."
        },
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (None: by epochs)."}
    )
    anchor_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of a KL(base || adapter) term on every token of every example, added "
            "to the answer loss: keeps the adapter's next-token distributions close to the base's "
            "wherever the data does not ask for a change (guards against forgetting; one extra "
            "forward pass per step). 0: plain SFT. 1.0 (the default): the demo kept the general "
            "answers within its 2-point guard (measured without it: 13 guard cases lost)."
        },
    )

    method: Method = field(
        default="supervised",
        metadata={
            "help": "'supervised': SFT on the final answers; 'dpo': DPO on preference pairs "
            "(chosen over rejected answers), the base with the adapter off as the reference."
        },
    )
    beta: float = field(
        default=0.1,
        metadata={
            "help": "DPO's beta, in (0, 10]: the weight of the pull toward the reference (higher "
            "stays closer to the base). Used by method 'dpo' only."
        },
    )
    dpo_sft_weight: float = field(
        default=1.0,
        metadata={
            "help": "DPO only: the weight of a supervised term on the preferred answer added to "
            "DPO's loss (TRL loss_type ['sigmoid', 'sft'], as in RPO). DPO alone widens the "
            "margin between the two answers but can leave a preferred answer the base never "
            "writes still unlikely; the term makes the model write it. 0: plain DPO."
        },
    )

    def __post_init__(self) -> None:
        self._check_lora()
        self._check_schedule()
        self._check_runtime()

    def _check_lora(self) -> None:
        if self.rank not in SERVABLE_RANKS:
            raise ValueError(
                f"rank must be one of {SERVABLE_RANKS} (the engine's ranks); got {self.rank}"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive; got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != ALL_LINEAR:
                raise ValueError(
                    f"target_modules must be '{ALL_LINEAR}' or a tuple of module names; "
                    f"got {targets!r}"
                )
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError("target_modules must name at least one module (e.g. ('q_proj',))")
        elif "lm_head" in targets:
            raise ValueError("target_modules must not include lm_head (the engine cannot serve it)")

    def _check_schedule(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1); got {self.warmup_ratio}")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.max_seq_length < 16:
            raise ValueError(f"max_seq_length must be at least 16; got {self.max_seq_length}")
        if self.early_stopping_patience < 0:
            raise ValueError(
                f"early_stopping_patience must be >= 0; got {self.early_stopping_patience}"
            )
        if not 0.0 <= self.anchor_weight <= 100.0:
            raise ValueError(f"anchor_weight must be in [0, 100]; got {self.anchor_weight}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 or None; got {self.max_steps}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if not 0.0 <= self.dpo_sft_weight <= 10.0:
            raise ValueError(f"dpo_sft_weight must be in [0, 10]; got {self.dpo_sft_weight}")
        if not 0.0 < self.beta <= MAX_BETA:
            raise ValueError(f"beta must be in (0, {MAX_BETA:g}]; got {self.beta}")

    def _check_runtime(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}; got {self.quantization!r}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {self.device!r}")
        if self.compute_dtype not in get_args(DtypeSetting):
            raise ValueError(
                f"compute_dtype must be one of {get_args(DtypeSetting)}; got {self.compute_dtype!r}"
            )
        checkpointing = self.gradient_checkpointing
        if not isinstance(checkpointing, bool) and checkpointing != AUTO:
            raise ValueError(
                f"gradient_checkpointing must be true, false or 'auto'; got {checkpointing!r}"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1 or None; got {self.torch_threads}")


def trained_base(quantization: Quantization, engine_weights: EngineWeights) -> TrainedBase:
    """The base a job learns against: 'auto' follows the engine (an adapter served on other
    weights than it learned against over-corrects: 0/16 tickets or 3.4-4.2 guard points lost
    when QLoRA adapters were served on full weights); 'nf4' and 'none' are kept as asked."""
    if quantization != AUTO:
        return "nf4" if quantization == "nf4" else "none"
    return "nf4" if engine_weights == "nf4" else "none"


def for_engine(config: TrainConfig, engine_weights: EngineWeights) -> TrainConfig:
    """`config` with its quantization resolved against what the engine serves."""
    return replace(config, quantization=trained_base(config.quantization, engine_weights))


def describe_base(quantization: Quantization) -> str:
    """How a job's events and parity report name the base it trained against."""
    if quantization == "nf4":
        return "QLoRA on the NF4-rounded base"
    if quantization == "none":
        return "LoRA on the base's weights"
    return "LoRA on the base folder's weights as they are ('auto' not resolved)"


def from_hyperparameters(
    n_epochs: int | str = AUTO,
    learning_rate_multiplier: float | str = AUTO,
    batch_size: int | str = AUTO,
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Map OpenAI fine-tuning `hyperparameters` onto a TrainConfig ("auto" keeps the default).

    The learning rate is `learning_rate_multiplier` times the base config's rate.
    """
    config = base if base is not None else TrainConfig()
    return replace(
        config,
        epochs=_auto_int("n_epochs", n_epochs, config.epochs),
        learning_rate=config.learning_rate * _auto_float(learning_rate_multiplier),
        batch_size=_auto_int("batch_size", batch_size, config.batch_size),
    )


def _auto_int(name: str, value: int | str, default: int) -> int:
    if value == AUTO:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"hyperparameters.{name} must be 'auto' or an integer; got {value!r}")
    return value


def _auto_float(value: float | str) -> float:
    if value == AUTO:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(
            f"hyperparameters.learning_rate_multiplier must be 'auto' or a positive number; "
            f"got {value!r}"
        )
    return float(value)
