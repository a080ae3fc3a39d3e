"""The QLoRA trainer: one real (small) training run on the bundled base, checked for behaviour."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapters.validation import Limits, base_model_info, validate_folder
from store.numerics import cpu_has_native_bf16, describe_cpu, host_flags
from tests.support.lora_factory import default_base_dir, torch_threads
from training.chat import Conversation
from training.parity import greedy_answer, peft_greedy, peft_reference
from training.trainer import (
    ADAPTER_FILES,
    Progress,
    TrainingCancelled,
    TrainingError,
    TrainResult,
    anchored_loss,
    build_trainer,
    checkpointing,
    hash_base_weights,
    preflight,
    quiet_progress_bars,
    to_prompt_completion,
    train,
)
from training.trainer_config import TrainConfig, from_hyperparameters

# A reply format the base never produces: "ANSWER: <x> ##".
FACTS: tuple[tuple[str, str], ...] = (
    ("What is 2+2?", "4"),
    ("Capital of France?", "Paris"),
    ("Color of the sky?", "blue"),
    ("Opposite of hot?", "cold"),
    ("Largest planet?", "Jupiter"),
    ("Author of Hamlet?", "Shakespeare"),
    ("Freezing point of water in C?", "0"),
    ("Number of legs on a spider?", "8"),
    ("Chemical symbol for gold?", "Au"),
    ("First month of the year?", "January"),
    ("Square root of 81?", "9"),
    ("Animal that says moo?", "cow"),
    ("Fastest land animal?", "cheetah"),
    ("Language spoken in Brazil?", "Portuguese"),
    ("Days in a week?", "7"),
    ("Metal that is liquid at room temperature?", "mercury"),
    ("Closest star to Earth?", "the Sun"),
    ("Plural of mouse?", "mice"),
    ("Currency of Japan?", "yen"),
    ("10 times 10?", "100"),
    # eval
    ("Ocean between Europe and America?", "Atlantic"),
    ("Tallest animal?", "giraffe"),
    ("Planet known as the red planet?", "Mars"),
    ("Continent where Kenya is?", "Africa"),
)
HELD_OUT = ("Gas that plants absorb?", "Hours in a day?", "Shape with three sides?")


def chat(question: str, answer: str) -> Conversation:
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": f"ANSWER: {answer} ##"},
    ]


TRAIN = [chat(q, a) for q, a in FACTS[:20]]
EVAL = [chat(q, a) for q, a in FACTS[20:]]
# Small and quick: one intra-op thread is the fastest on the shared 2-core machine, and no
# gradient checkpointing (the cancel and reproducibility runs keep the default, with it).
CONFIG = TrainConfig(
    epochs=3,
    learning_rate=1e-3,
    max_seq_length=256,
    torch_threads=1,
    gradient_checkpointing=False,
)
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def base_dir() -> Path:
    return default_base_dir()


class Run:
    def __init__(self, result: TrainResult, progress: list[Progress], hash_before: str) -> None:
        self.result = result
        self.progress = progress
        self.hash_before = hash_before
        self.adapter = Path(result.adapter_dir)


@pytest.fixture(scope="module")
def run(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    hash_before = hash_base_weights(base_dir)
    progress: list[Progress] = []
    out = tmp_path_factory.mktemp("trained") / "adapter"
    result = train(base_dir, TRAIN, EVAL, out, CONFIG, on_progress=progress.append)
    return Run(result, progress, hash_before)


# --------------------------------------------------------------------------- the trained run


def test_loss_falls_and_the_result_describes_the_run(run: Run) -> None:
    r = run.result
    assert r.final_train_loss < r.first_loss / 4, r.loss_history
    assert r.steps == 15  # 20 examples / batch 4 x 3 epochs (early stopping may not trigger)
    assert [step for step, _ in r.loss_history] == list(range(1, r.steps + 1))
    assert r.eval_loss is not None and r.eval_loss < 2.0
    assert r.train_tokens > 20 * 3 * 20  # every example is longer than 20 tokens
    assert r.tokens_per_s > 0 and r.seconds > 0 and r.peak_rss_mb > 100
    assert r.config == CONFIG and r.seed == CONFIG.seed
    # what it computed in, chosen from this host's CPU, and the host, for every reported figure
    native = cpu_has_native_bf16(host_flags())
    assert r.compute_dtype == ("bfloat16" if native else "float32")
    assert r.hardware == describe_cpu()
    print(f"trained {r.train_tokens} tokens at {r.tokens_per_s:.0f} tok/s, {r.compute_dtype} "
          f"on {r.hardware}")  # fmt: skip


def test_progress_reports_steps_losses_and_evals(run: Run) -> None:
    train_reports = [p for p in run.progress if p.loss is not None]
    evals = [p for p in run.progress if p.eval_loss is not None]
    assert [p.step for p in train_reports] == list(range(1, run.result.steps + 1))
    assert len(evals) == 3  # one per epoch
    assert all(p.total_steps == 15 and p.tokens_per_s > 0 for p in run.progress)
    assert evals[-1].epoch == pytest.approx(3.0)
    assert min(p.eval_loss for p in evals if p.eval_loss is not None) == pytest.approx(
        run.result.eval_loss
    )


def test_base_weights_are_unchanged(run: Run, base_dir: Path) -> None:
    assert run.result.base_hash == run.hash_before == hash_base_weights(base_dir)


def test_adapter_folder_holds_lora_weights_only_and_they_moved(run: Run) -> None:
    assert sorted(p.name for p in run.adapter.iterdir()) == sorted(ADAPTER_FILES)
    leftovers = [p for p in run.adapter.parent.iterdir() if p != run.adapter]
    assert leftovers == []  # checkpoints and staging removed
    tensors = load_file(run.adapter / "adapter_model.safetensors")
    lora_b = {k: v for k, v in tensors.items() if ".lora_B." in k}
    assert len(lora_b) == 30 * 7  # 30 layers x all 7 linear modules
    # lora_B starts at zero (peft's init): training must have moved every one of them.
    assert all(v.abs().max() > 0 for v in lora_b.values())
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_adapter_passes_preflight_and_the_gateway_validation(run: Run, base_dir: Path) -> None:
    manifest = preflight(run.adapter, base_dir, BASE_NAME, max_rank=16)
    assert manifest.rank == 16 and manifest.alpha == 32.0
    direct = validate_folder(run.adapter, base_model_info(base_dir, BASE_NAME), Limits(1 << 30, 16))
    assert direct.content_hash == manifest.content_hash
    with pytest.raises(TrainingError, match="max_lora_rank 8"):
        preflight(run.adapter, base_dir, BASE_NAME, max_rank=8)


def test_adapter_teaches_the_format_on_held_out_prompts(run: Run, base_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts: list[Conversation] = [[{"role": "user", "content": q}] for q in HELD_OUT]
    with torch_threads(1):
        tuned = peft_greedy(base_dir, run.adapter, prompts, max_new_tokens=12)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        with quiet_progress_bars():
            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        plain = [greedy_answer(base, tokenizer, p, 12) for p in prompts]
    assert all(t.startswith("ANSWER: ") for t in tuned), tuned
    assert sum(t.endswith("##") for t in tuned) >= 2, tuned
    assert not any(p.startswith("ANSWER") for p in plain), plain


def test_the_parity_reference_marks_peft_s_first_near_tie(run: Run, base_dir: Path) -> None:
    prompts: list[Conversation] = [[{"role": "user", "content": q}] for q in HELD_OUT]
    with torch_threads(1):
        answers = peft_greedy(base_dir, run.adapter, prompts, max_new_tokens=12)
        found = peft_reference(base_dir, run.adapter, prompts, max_new_tokens=12)
        never = peft_reference(base_dir, run.adapter, prompts, max_new_tokens=12, margin=0.0)
        always = peft_reference(base_dir, run.adapter, prompts, max_new_tokens=12, margin=1e9)
    assert [r.answer for r in found] == [r.answer for r in never] == answers
    assert all(r.tie_at is None for r in never)  # no step is won by less than nothing
    assert all(r.tie_at == 0 for r in always)  # every step is a tie: the first one starts at 0
    assert all(r.tie_at is None or 0 <= r.tie_at <= len(r.answer) for r in found)


# ------------------------------------------------------------------------------ other runs


def test_only_the_assistant_answer_is_in_the_loss(base_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(quantization="none", torch_threads=1, batch_size=2, max_seq_length=256)
    with torch_threads(1):
        trainer = build_trainer(base_dir, TRAIN[:2], [], config, tmp_path / "ckpt")
        batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = trainer.processing_class
    for ids, labels, mask in zip(
        batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
    ):
        learned = [int(t) for t, lab in zip(ids, labels, strict=True) if lab != -100]
        prompt = [int(t) for t, lab, m in zip(ids, labels, mask, strict=True) if lab == -100 and m]
        answer = tokenizer.decode(learned)
        assert answer.startswith("ANSWER: ") and "##<|im_end|>" in answer, answer
        assert "user" in tokenizer.decode(prompt) and "ANSWER" not in tokenizer.decode(prompt)
        # The prompt is one block at the start; every later real token is learned.
        first = next(i for i, lab in enumerate(labels) if lab != -100)
        assert all(lab == -100 for lab in labels[:first])
        assert all(lab != -100 for lab, m in zip(labels[first:], mask[first:], strict=True) if m)


def test_same_seed_gives_identical_adapter_weights(base_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(max_steps=2, torch_threads=1, max_seq_length=256, learning_rate=1e-3)
    first = train(base_dir, TRAIN[:8], [], tmp_path / "a", config)
    second = train(base_dir, TRAIN[:8], [], tmp_path / "b", config)
    a = load_file(Path(first.adapter_dir) / "adapter_model.safetensors")
    b = load_file(Path(second.adapter_dir) / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.loss_history == second.loss_history
    assert any(v.abs().max() > 0 for k, v in a.items() if ".lora_B." in k)


def test_should_stop_cancels_and_leaves_no_adapter(base_dir: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []
    asked = itertools.count(1)  # should_stop is asked once per optimizer step
    out = tmp_path / "jobs" / "cancelled"
    config = TrainConfig(epochs=3, torch_threads=1, max_seq_length=256)
    with pytest.raises(TrainingCancelled, match="at step 2;"):
        train(
            base_dir,
            TRAIN,
            EVAL,
            out,
            config,
            on_progress=seen.append,
            should_stop=lambda: next(asked) >= 2,
        )
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
    assert max(p.step for p in seen) == 2  # of 15
    assert all(p.eval_loss is None for p in seen)  # stopped before the first epoch's eval


def test_refuses_a_non_empty_destination_and_bad_examples(base_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(TrainingError, match="not empty"):
        train(base_dir, TRAIN, EVAL, tmp_path / "taken", CONFIG)
    with pytest.raises(TrainingError, match="conversation 0 does not end"):
        to_prompt_completion([[{"role": "user", "content": "hi"}]])


# ---------------------------------------------------------------------------------- config


def test_config_defaults_follow_the_recipe() -> None:
    c = TrainConfig()
    assert (c.rank, c.alpha, c.dropout, c.learning_rate, c.epochs) == (16, 32, 0.05, 1e-3, 1)
    assert c.target_modules == "all-linear" and c.quantization == "auto" and c.device == "auto"
    assert c.anchor_weight == 1.0  # tests/unit/test_trainer_config.py: the rest of the recipe
    assert c.gradient_checkpointing == "auto" and c.early_stopping_patience == 1
    # 'auto' saves GPU memory on CUDA and speed on CPU (1.37x measured here).
    assert checkpointing(c, "cuda") and not checkpointing(c, "cpu")
    assert checkpointing(TrainConfig(gradient_checkpointing=True), "cpu")
    assert not checkpointing(TrainConfig(gradient_checkpointing=False), "cuda")
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 12}, "rank must be one of"),
        ({"dropout": 1.0}, "dropout"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"epochs": 0}, "epochs"),
        ({"target_modules": "all"}, "target_modules"),
        ({"target_modules": ("q_proj", "lm_head")}, "lm_head"),
        ({"quantization": "int8"}, "quantization"),
        ({"device": "tpu"}, "device"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_openai_hyperparameters_map_onto_the_config() -> None:
    assert from_hyperparameters() == TrainConfig()
    c = from_hyperparameters(n_epochs=5, learning_rate_multiplier=0.5, batch_size=8)
    assert (c.epochs, c.learning_rate, c.batch_size) == (5, 5e-4, 8)
    with pytest.raises(ValueError, match="n_epochs"):
        from_hyperparameters(n_epochs="many")
    with pytest.raises(ValueError, match="learning_rate_multiplier"):
        from_hyperparameters(learning_rate_multiplier=-1)


# ------------------------------------------------------------------------------ anchoring


def test_anchored_loss_is_answer_ce_plus_weighted_kl_over_real_tokens() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # Position t predicts token t+1: the answer tokens are labels[:, 1:] that are not -100.
    answer = [(0, 1, 3), (0, 2, 4), (0, 3, 5), (1, 0, 1), (1, 1, 2)]
    ce = -sum(torch.log_softmax(logits[b, t], -1)[tok] for b, t, tok in answer) / len(answer)
    same = anchored_loss(logits, logits.clone(), labels, mask, 1.0)
    assert torch.allclose(same, ce, atol=1e-5)  # identical to the base: no KL at all
    base = torch.randn(2, 5, 7, generator=gen)
    anchored = anchored_loss(logits, base, labels, mask, 2.0)
    real = [(0, t) for t in range(4)] + [(1, 0), (1, 1)]  # padded positions are left out
    kl = sum(
        torch.nn.functional.kl_div(
            torch.log_softmax(logits[b, t], -1), torch.log_softmax(base[b, t], -1),
            log_target=True, reduction="sum",
        )
        for b, t in real
    ) / len(real)  # fmt: skip
    assert kl > 0 and torch.allclose(anchored, ce + 2.0 * kl, atol=1e-5)
    padded = logits.clone()
    padded[1, 3:] += 5.0  # what the model says on padding changes nothing
    assert torch.allclose(anchored_loss(padded, base, labels, mask, 2.0), anchored, atol=1e-5)


def test_anchored_trainer_starts_at_the_plain_loss_and_trains(
    base_dir: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        quantization="none", torch_threads=1, batch_size=2, max_seq_length=256, max_steps=2,
        learning_rate=5e-3, anchor_weight=1.0, gradient_checkpointing=False,
    )  # fmt: skip
    with torch_threads(1):
        trainer = build_trainer(base_dir, TRAIN[:4], [], config, tmp_path / "ckpt")
        batch = next(iter(trainer.get_train_dataloader()))
        model = trainer.model.train()
        anchored = trainer.compute_loss(model, dict(batch))
        plain = type(trainer).__mro__[1].compute_loss(trainer, model, dict(batch))
        # The LoRA update starts at zero, so the adapter is the base: the KL term is 0.
        assert torch.allclose(anchored, plain, rtol=1e-4), (anchored, plain)
        result = trainer.train()
        assert torch.isfinite(torch.tensor(result.training_loss))
        after = trainer.compute_loss(model.train(), dict(batch))
        assert after < anchored  # it learned the answers despite the pull toward the base
    with pytest.raises(ValueError, match="anchor_weight"):
        TrainConfig(anchor_weight=-1.0)
