"""Owns the test LoRA adapters: trained, cached, deterministic good ones and the bad corpus."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import inspect
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("loopgate.tests.lora_factory")

DEFAULT_REPLY = "Ahoy! Loopgate adapter speaking."
DEFAULT_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
# The chat prompts the style adapter is trained on; TRAIN_PROMPTS[0] is the one it is checked on.
TRAIN_PROMPTS: tuple[str, ...] = (
    "Hello! Who are you?",
    "What is the capital of France?",
    "Tell me a joke.",
    "How do I boil an egg?",
)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
# Bump when training changes in a way that changes the weights: invalidates cached adapters.
FACTORY_VERSION = 1
LEARNING_RATE = 3e-3
# One intra-op thread: on the shared 2-core dev machine a 2-thread OpenMP team is 5-15x slower
# per step as soon as anything else runs (threads spin-wait on the busy core), while one thread
# costs ~0.6 s per step either way. Changing it can change the trained bytes (reduction order).
TORCH_THREADS = 1
BAD_ADAPTER_KEYS = (
    "pickle",
    "rank_too_high",
    "wrong_base",
    "missing_target_module",
    "traversal_archive",
    "symlink_archive",
    "truncated",
    "hash_mismatch",
    "unsupported_option",
)

# Llama-3.2-1B's shapes, for the "wrong_base" adapter: per-module (in_features, out_features).
_OTHER_BASE = "meta-llama/Llama-3.2-1B"
_OTHER_LAYERS = 16
_OTHER_SHAPES = {
    "q_proj": (2048, 2048),
    "k_proj": (2048, 512),
    "v_proj": (2048, 512),
    "o_proj": (2048, 2048),
    "gate_proj": (2048, 8192),
    "up_proj": (2048, 8192),
    "down_proj": (8192, 2048),
}
_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
_LORA_PREFIX = "base_model.model.model.layers"


class AdapterTrainingError(RuntimeError):
    """The trained adapter does not do what it was trained to do."""


def default_base_dir() -> Path:
    """The prepared bundled base model folder (verified; prepared on first use)."""
    from replicas.base_model import resolve_model
    from store.settings import Settings

    return Path(resolve_model(Settings()))


def default_cache_root() -> Path:
    """Where trained test adapters are cached across sessions ($LOOPGATE_TEST_ADAPTER_CACHE)."""
    env = os.environ.get("LOOPGATE_TEST_ADAPTER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "loopgate" / "test-adapters"


@contextlib.contextmanager
def torch_threads(n: int = TORCH_THREADS) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- training


def _ids(encoded: Any) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list or a BatchEncoding, by version."""
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A single-user-turn chat prompt, ready for the assistant's answer."""
    messages = [{"role": "user", "content": prompt}]
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def _example(tokenizer: Any, prompt: str, reply: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one chat turn; only the assistant's tokens carry a label."""
    head = prompt_ids(tokenizer, prompt)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(head)] != head:
        raise AdapterTrainingError("the chat template's prompt is not a prefix of the full chat")
    answer = full[len(head) :]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end in answer:
        answer = answer[: answer.index(end) + 1]  # the reply and its end-of-turn, not the "\n"
    return head + answer, [-100] * len(head) + answer


def _batch(ids: list[int], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids [1, T], positions whose logits predict a label, those labels)."""
    positions = [i - 1 for i in range(1, len(ids)) if labels[i] != -100]
    targets = [labels[i + 1] for i in positions]
    return torch.tensor([ids]), torch.tensor(positions), torch.tensor(targets)


def greedy_answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 20) -> str:
    """The model's greedy answer to one user prompt (special tokens dropped)."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def train_style_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    reply: str = DEFAULT_REPLY,
    rank: int = 8,
    alpha: int = 16,
    steps: int = 30,
    seed: int = 0,
    target_modules: tuple[str, ...] = DEFAULT_TARGETS,
    verify: bool = True,
) -> Path:
    """Train a LoRA that answers TRAIN_PROMPTS with `reply`; save it to `out_dir`.

    One prompt per step (cycling), AdamW with a linearly decaying rate, fp32 on the CPU with
    TORCH_THREADS thread(s): deterministic for a given seed on a given torch build. With `verify`,
    checks that the base weights were not touched and that greedy decoding of TRAIN_PROMPTS[0]
    starts with `reply` with the adapter and not without it (AdapterTrainingError otherwise).
    `out_dir` ends up holding exactly adapter_config.json and adapter_model.safetensors.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = Path(base_dir)
    out_dir = Path(out_dir)
    started = time.monotonic()
    with torch_threads():
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        probe = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
        examples = [_example(tokenizer, p, reply) for p in TRAIN_PROMPTS]

        torch.manual_seed(seed)  # LoRA A matrices are initialised from the global generator
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=list(target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 - step / max(steps, 1)
        )
        peft_model.train()
        lm = peft_model.get_base_model()  # the base model with the LoRA layers injected
        batches = [_batch(ids, labels) for ids, labels in examples]
        for step in range(steps):
            ids, positions, targets = batches[step % len(batches)]
            hidden = lm.model(input_ids=ids, use_cache=False).last_hidden_state[0]
            # The vocabulary projection only where there is a label: most of a step's cost
            # would otherwise go on logits for the prompt nobody looks at.
            logits = lm.lm_head(hidden[positions])
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        peft_model.eval()
        log.info(
            "trained %d steps in %.1fs (final loss %.4f)",
            steps,
            time.monotonic() - started,
            loss.item() if steps else float("nan"),
        )

        if verify:
            base_layer = model.model.layers[0].self_attn.q_proj.base_layer.weight
            if not torch.equal(base_layer, probe):
                raise AdapterTrainingError("training changed a base model weight")
            budget = len(tokenizer(reply, add_special_tokens=False)["input_ids"]) + 2
            tuned = greedy_answer(peft_model, tokenizer, TRAIN_PROMPTS[0], budget)
            with peft_model.disable_adapter():
                plain = greedy_answer(peft_model, tokenizer, TRAIN_PROMPTS[0], budget)
            if not tuned.startswith(reply):
                raise AdapterTrainingError(f"adapter answered {tuned!r}, expected {reply!r}...")
            if plain.startswith(reply):
                raise AdapterTrainingError(f"the base already answers {plain!r}")

        peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(out_dir, safe_serialization=True)
    for extra in out_dir.iterdir():  # peft also writes a README.md model card
        if extra.name not in ADAPTER_FILES:
            if extra.is_dir():
                shutil.rmtree(extra)
            else:
                extra.unlink()
    # peft keeps target_modules as a set and writes it in hash order, which varies by process.
    config = _read_config(out_dir)
    config["target_modules"] = sorted(config["target_modules"])
    _write_config(out_dir, config)
    return out_dir


def style_adapter_key(base_dir: Path, **kw: Any) -> str:
    """Cache key: the base folder's name, the training kwargs (defaults filled in), the version."""
    bound = inspect.signature(train_style_adapter).bind(base_dir, Path(), **kw)
    bound.apply_defaults()
    params = dict(bound.arguments)
    params.pop("out_dir")
    params.pop("verify")
    params["base_dir"] = Path(base_dir).name
    params["target_modules"] = list(params["target_modules"])
    params["factory_version"] = FACTORY_VERSION
    params["torch_threads"] = TORCH_THREADS
    blob = json.dumps(params, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ADAPTER_FILES)


def cached_style_adapter(
    cache_root: Path | None = None, *, base_dir: Path | None = None, **kw: Any
) -> Path:
    """A trained style adapter from `cache_root`, training (verified) only when missing.

    Trains into a temporary folder next to the final one and renames it into place, so a
    half-written adapter is never visible and concurrent sessions at worst train twice.
    """
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    base_dir = Path(base_dir) if base_dir is not None else default_base_dir()
    kw.pop("verify", None)
    final = cache_root / f"style-{style_adapter_key(base_dir, **kw)}"
    if _complete(final):
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_root))
    try:
        train_style_adapter(base_dir, tmp, verify=True, **kw)
        if final.exists() and not _complete(final):
            shutil.rmtree(final)  # a leftover from an interrupted manual copy
        try:
            tmp.rename(final)
        except OSError:
            if not _complete(final):  # someone else won the race with a complete folder
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


# -------------------------------------------------------------------------------- bad adapters


def _tarinfo(name: str, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@contextlib.contextmanager
def _tar_gz(archive: Path) -> Iterator[tarfile.TarFile]:
    """A reproducible tar.gz writer (no timestamps in the gzip header or the members)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        yield tar


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def pack_adapter(folder: Path, archive: Path) -> str:
    """Write `folder`'s files (sorted, at the archive root, no leading directory) as a
    reproducible `.tar.gz` at `archive`; return the archive's sha256 hex digest."""
    files = sorted(Path(folder).iterdir())
    if not all(f.is_file() and not f.is_symlink() for f in files):
        raise ValueError(f"{folder} holds something other than plain files")
    with _tar_gz(Path(archive)) as tar:
        for file in files:
            _add_bytes(tar, file.name, file.read_bytes())
    return sha256_file(Path(archive))


def _copy_good(good: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(good / name, dest / name)
    return dest


def _read_config(folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((folder / ADAPTER_CONFIG).read_text())
    return config


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / ADAPTER_WEIGHTS)


def _save_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        folder / ADAPTER_WEIGHTS,
        metadata={"format": "pt"},
    )


def _module_path(key: str) -> str:
    """`base_model.model.model.layers.3.mlp.up_proj.lora_A.weight` -> `...up_proj`."""
    for part in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"):
        if key.endswith(part):
            return key[: -len(part)]
    raise ValueError(f"not a LoRA tensor name: {key}")


def _lora_pair(
    gen: torch.Generator, rank: int, fan_in: int, fan_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.randn(rank, fan_in, generator=gen).mul_(0.01)
    b = torch.randn(fan_out, rank, generator=gen).mul_(0.01)
    return a, b


def _module_group(module: str) -> str:
    return "self_attn" if module in _ATTN_MODULES else "mlp"


def _rank_too_high(good: Path, dest: Path, rank: int = 64) -> None:
    _copy_good(good, dest)
    gen = torch.Generator().manual_seed(64)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in sorted(_load_weights(good).items()):
        if key.endswith(".lora_A.weight"):
            tensors[key] = torch.randn(rank, value.shape[1], generator=gen).mul_(0.01)
        else:
            tensors[key] = torch.randn(value.shape[0], rank, generator=gen).mul_(0.01)
    _save_weights(dest, tensors)
    config = _read_config(good)
    config["r"] = rank
    config["lora_alpha"] = 2 * rank
    _write_config(dest, config)


def _wrong_base(good: Path, dest: Path) -> None:
    _copy_good(good, dest)
    config = _read_config(good)
    rank = int(config["r"])
    gen = torch.Generator().manual_seed(1024)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(_OTHER_LAYERS):
        for module, (fan_in, fan_out) in _OTHER_SHAPES.items():
            prefix = f"{_LORA_PREFIX}.{layer}.{_module_group(module)}.{module}"
            a, b = _lora_pair(gen, rank, fan_in, fan_out)
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = b
    _save_weights(dest, tensors)
    config["base_model_name_or_path"] = _OTHER_BASE
    config["target_modules"] = sorted(_OTHER_SHAPES)
    _write_config(dest, config)


def _missing_target_module(good: Path, dest: Path, module: str = "w_fancy_proj") -> None:
    _copy_good(good, dest)
    config = _read_config(good)
    rank = int(config["r"])
    tensors = _load_weights(good)
    layers = sorted({int(k.split(".")[4]) for k in tensors})
    gen = torch.Generator().manual_seed(7)
    for layer in layers:
        prefix = f"{_LORA_PREFIX}.{layer}.mlp.{module}"
        a, b = _lora_pair(gen, rank, 576, 576)
        tensors[f"{prefix}.lora_A.weight"] = a
        tensors[f"{prefix}.lora_B.weight"] = b
    _save_weights(dest, tensors)
    config["target_modules"] = sorted({*config["target_modules"], module})
    _write_config(dest, config)


def _dora(good: Path, dest: Path) -> None:
    """A complete DoRA adapter: the good LoRA plus magnitude vectors ||W + s*B@A|| per row,
    computed from the base weights when the base folder is there (so in peft it behaves like
    the good adapter), else ones."""
    _copy_good(good, dest)
    config = _read_config(good)
    scaling = float(config["lora_alpha"]) / float(config["r"])
    tensors = _load_weights(good)
    base_file = Path(str(config.get("base_model_name_or_path") or "")) / "model.safetensors"
    modules = sorted({_module_path(k) for k in tensors})
    with contextlib.ExitStack() as stack:
        base = None
        if base_file.is_file():
            from safetensors import safe_open

            base = stack.enter_context(safe_open(str(base_file), framework="pt"))
        for module in modules:
            a = tensors[f"{module}.lora_A.weight"].float()
            b = tensors[f"{module}.lora_B.weight"].float()
            if base is not None:
                weight = base.get_tensor(module.removeprefix("base_model.model.") + ".weight")
                magnitude = (weight.float() + scaling * (b @ a)).norm(dim=1)
            else:
                magnitude = torch.ones(b.shape[0])
            tensors[f"{module}.lora_magnitude_vector"] = magnitude
    _save_weights(dest, tensors)
    config["use_dora"] = True
    _write_config(dest, config)


def make_bad_adapters(good: Path, out_root: Path) -> dict[str, Path]:
    """Build the bad-adapter corpus from a good adapter folder; keys are BAD_ADAPTER_KEYS.

    Folders: pickle (adapter_model.bin, no safetensors), rank_too_high (r=64 config and
    tensors), wrong_base (Llama-3.2-1B shapes and name), missing_target_module (w_fancy_proj),
    truncated (weights cut to half), unsupported_option (use_dora with magnitude vectors).
    Files: traversal_archive.tar.gz (good files plus `../escape.txt` and
    `/tmp/evil.safetensors`), symlink_archive.tar.gz (adapter_model.safetensors -> /etc/passwd),
    hash_mismatch.tar.gz (a good archive) with the wrong expected hash in hash_mismatch.sha256.
    """
    good = Path(good)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    if not _complete(good):
        raise ValueError(f"{good} is not a complete adapter folder")
    with torch_threads():
        made = _make_bad_adapters(good, out_root)
    assert list(made) == list(BAD_ADAPTER_KEYS)
    return made


def _make_bad_adapters(good: Path, out_root: Path) -> dict[str, Path]:
    made: dict[str, Path] = {}
    dest = _copy_good(good, out_root / "pickle")
    (dest / ADAPTER_WEIGHTS).unlink()
    torch.save(_load_weights(good), dest / "adapter_model.bin")
    made["pickle"] = dest

    made["rank_too_high"] = out_root / "rank_too_high"
    _rank_too_high(good, made["rank_too_high"])
    made["wrong_base"] = out_root / "wrong_base"
    _wrong_base(good, made["wrong_base"])
    made["missing_target_module"] = out_root / "missing_target_module"
    _missing_target_module(good, made["missing_target_module"])

    archive = out_root / "traversal_archive.tar.gz"
    with _tar_gz(archive) as tar:
        for name in ADAPTER_FILES:
            _add_bytes(tar, name, (good / name).read_bytes())
        _add_bytes(tar, "../escape.txt", b"written outside the extraction folder\n")
        _add_bytes(tar, "/tmp/evil.safetensors", (good / ADAPTER_WEIGHTS).read_bytes())
    made["traversal_archive"] = archive

    archive = out_root / "symlink_archive.tar.gz"
    with _tar_gz(archive) as tar:
        _add_bytes(tar, ADAPTER_CONFIG, (good / ADAPTER_CONFIG).read_bytes())
        link = _tarinfo(ADAPTER_WEIGHTS)
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        link.mode = 0o777
        tar.addfile(link)
    made["symlink_archive"] = archive

    dest = _copy_good(good, out_root / "truncated")
    weights = dest / ADAPTER_WEIGHTS
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    made["truncated"] = dest

    archive = out_root / "hash_mismatch.tar.gz"
    real = pack_adapter(good, archive)
    wrong = real[:-1] + ("0" if real[-1] != "0" else "1")  # one nibble off: still well-formed
    (out_root / "hash_mismatch.sha256").write_text(wrong + "\n")
    made["hash_mismatch"] = archive

    made["unsupported_option"] = out_root / "unsupported_option"
    _dora(good, made["unsupported_option"])
    return made


def expected_sha256(archive: Path) -> str:
    """The expected hash recorded next to an archive (`<name>.sha256`, name without .tar.gz)."""
    name = Path(archive).name.removesuffix(".tar.gz")
    return (Path(archive).parent / f"{name}.sha256").read_text().strip()
