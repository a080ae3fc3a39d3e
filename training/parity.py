"""Parity between peft and the engine: fixed prompts, peft-side greedy answers, the comparison.

The engine (vLLM) side is produced by the gateway, which owns the engine; this module gives the
reference answers from the base the engine serves + adapter through peft, in plain (never 4-bit)
weights, and judges agreement. With LOOPGATE_ENGINE_WEIGHTS=nf4 that base folder already holds
the NF4-rounded weights, so the reference is exactly what a QLoRA adapter was trained against.

Agreement rule: greedy decoding in different numerics (vLLM's bf16 kernels vs torch's float32)
can diverge after a few tokens wherever the adapter leaves two tokens nearly tied, so two answers
agree when they are equal, or when one is a prefix of the other, or when they share at least the
first `judge_chars` characters (default 24, about the first 6 tokens of English text). What parity
guards against, an adapter the engine applies differently from peft (wrong scaling, missing
modules, another base), shows in the first tokens. Answers are compared after stripping
whitespace. Measured here: a heavily fitted adapter agreed on 28-78 characters of each answer.

Near-ties: an adapter that leaves two tokens within TIE_MARGIN logits of each other can flip
between them in the engine's numerics at any position, even the first (measured: a correctly
served adapter answered "cat." in peft and "Alec." on vLLM, and failed parity at 67%). So the
peft side also records where its first near-tie starts (`tie_at`, a character offset), and two
answers that agree on everything before it agree: past that point greedy decoding is a coin
toss in either engine, not evidence of a wrongly applied adapter. Measured for the margin: on 80
guard prompts the base's greedy answers in torch bf16 and float32 parted on 17, every time at a
step float32 had won by at most 0.17 logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from training.chat import Conversation
from training.parity_check import (
    JUDGE_CHARS,
    PARITY_PROMPTS,
    ParityReport,
    PromptParity,
    agrees,
    common_prefix_chars,
    compare,
)

__all__ = [  # the pure half lives in training.parity_check; re-exported here
    "JUDGE_CHARS",
    "PARITY_PROMPTS",
    "ParityReport",
    "PromptParity",
    "agrees",
    "common_prefix_chars",
    "compare",
    "greedy_answer",
    "peft_greedy",
    "peft_reference",
]

if TYPE_CHECKING:  # torch loads only when peft outputs are computed (not in the gateway)
    import torch

# A step whose top two logits are closer than this is a near-tie: bf16 (vLLM) and float32 (peft)
# can pick different tokens there.
TIE_MARGIN = 0.5


class Reference(NamedTuple):
    """peft's greedy answer and where its first near-tied token starts (None: nowhere)."""

    answer: str
    tie_at: int | None


def peft_greedy(
    base_dir: Path,
    adapter_dir: Path,
    prompts: Sequence[Conversation] = PARITY_PROMPTS,
    max_new_tokens: int = 24,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Greedy answers of the served base's plain weights + adapter (never a 4-bit model: too slow
    on CPU); float32 unless `dtype` says otherwise."""
    return [r.answer for r in peft_reference(base_dir, adapter_dir, prompts, max_new_tokens, dtype)]


def peft_reference(
    base_dir: Path,
    adapter_dir: Path,
    prompts: Sequence[Conversation] = PARITY_PROMPTS,
    max_new_tokens: int = 24,
    dtype: torch.dtype | None = None,
    margin: float = TIE_MARGIN,
) -> list[Reference]:
    """`peft_greedy`'s answers, each with where its first near-tie starts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.trainer import quiet_progress_bars

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with quiet_progress_bars():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype or torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return [greedy_reference(model, tokenizer, p, max_new_tokens, margin) for p in prompts]


def greedy_answer(model: Any, tokenizer: Any, prompt: Conversation, max_new_tokens: int) -> str:
    """One greedy answer: chat template + generation prompt, new tokens only, specials dropped."""
    return greedy_reference(model, tokenizer, prompt, max_new_tokens, 0.0).answer


def greedy_reference(
    model: Any, tokenizer: Any, prompt: Conversation, max_new_tokens: int, margin: float
) -> Reference:
    """`greedy_answer`, and the offset in it of the first token chosen by less than `margin`
    logits over the runner-up."""
    import torch

    encoded = tokenizer.apply_chat_template(
        list(prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_tokens = out.sequences[0, encoded["input_ids"].shape[1] :]
    answer = str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
    for step, logits in enumerate(out.logits):
        top = logits[0].float().topk(2).values
        if float(top[0] - top[1]) < margin:
            before = str(tokenizer.decode(new_tokens[:step], skip_special_tokens=True)).lstrip()
            return Reference(answer, min(len(before), len(answer)))
    return Reference(answer, None)
