"""The test adapter factory: the trained style adapter works and is deterministic, and every bad
adapter really has the defect it is named for."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from replicas.base_model import verify
from tests.support.lora_factory import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    BAD_ADAPTER_KEYS,
    DEFAULT_REPLY,
    TRAIN_PROMPTS,
    cached_style_adapter,
    default_base_dir,
    default_cache_root,
    expected_sha256,
    greedy_answer,
    make_bad_adapters,
    pack_adapter,
    sha256_file,
    style_adapter_key,
    torch_threads,
    train_style_adapter,
)

PROBE = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="session")
def base_dir() -> Path:
    return default_base_dir()


@pytest.fixture(scope="session")
def style_adapter(base_dir: Path) -> Path:
    return cached_style_adapter(default_cache_root(), base_dir=base_dir)


@pytest.fixture(scope="session")
def bad(style_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_adapters(style_adapter, tmp_path_factory.mktemp("bad-adapters"))


def config_of(folder: Path) -> dict[str, object]:
    config: dict[str, object] = json.loads((folder / ADAPTER_CONFIG).read_text())
    return config


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / ADAPTER_WEIGHTS)


def base_tensor(base_dir: Path, name: str) -> torch.Tensor:
    with safe_open(str(base_dir / "model.safetensors"), framework="pt") as fh:
        return fh.get_tensor(name)


# ------------------------------------------------------------------------------ style adapter


def test_style_adapter_folder(style_adapter: Path, base_dir: Path) -> None:
    assert sorted(p.name for p in style_adapter.iterdir()) == sorted(ADAPTER_FILES)
    config = config_of(style_adapter)
    assert config["base_model_name_or_path"] == str(base_dir)
    assert config["peft_type"] == "LORA"
    assert config["r"] == 8
    assert config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(  # type: ignore[arg-type]
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    tensors = tensors_of(style_adapter)
    assert len(tensors) == 30 * 7 * 2
    b_norms = {k: v.norm().item() for k, v in tensors.items() if ".lora_B." in k}
    assert len(b_norms) == 30 * 7
    assert all(norm > 0 for norm in b_norms.values())  # zero-initialised, so all were trained
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert tuple(tensors[f"{q}.lora_A.weight"].shape) == (8, 576)
    k = "base_model.model.model.layers.0.self_attn.k_proj"
    assert tuple(tensors[f"{k}.lora_B.weight"].shape) == (192, 8)


def test_style_adapter_changes_greedy_output_and_not_the_base(
    style_adapter: Path, base_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = TRAIN_PROMPTS[0]
    with torch_threads():
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        before = model.get_parameter(PROBE).detach().clone()
        assert torch.equal(before, base_tensor(base_dir, PROBE).float())
        plain = greedy_answer(model, tokenizer, prompt, 12)

        tuned_model = PeftModel.from_pretrained(model, style_adapter)
        tuned_model.eval()
        tuned = greedy_answer(tuned_model, tokenizer, prompt, 12)
        with tuned_model.disable_adapter():
            again = greedy_answer(tuned_model, tokenizer, prompt, 12)
        after = tuned_model.get_base_model().get_parameter(
            PROBE.replace(".weight", ".base_layer.weight")
        )

    assert tuned.startswith(DEFAULT_REPLY), tuned
    assert not plain.startswith(DEFAULT_REPLY), plain
    assert again == plain  # the adapter sits beside the base weights, not in them
    assert torch.equal(after, before)
    verify(base_dir)  # and training left the base model's files as prepared


def test_training_is_deterministic(base_dir: Path, tmp_path: Path) -> None:
    kw = {"rank": 4, "steps": 2, "verify": False}
    first = train_style_adapter(base_dir, tmp_path / "one", seed=3, **kw)  # type: ignore[arg-type]
    second = train_style_adapter(base_dir, tmp_path / "two", seed=3, **kw)  # type: ignore[arg-type]
    other = train_style_adapter(base_dir, tmp_path / "six", seed=6, **kw)  # type: ignore[arg-type]
    assert (first / ADAPTER_WEIGHTS).read_bytes() == (second / ADAPTER_WEIGHTS).read_bytes()
    assert (first / ADAPTER_CONFIG).read_bytes() == (second / ADAPTER_CONFIG).read_bytes()
    one, six = tensors_of(first), tensors_of(other)
    assert one.keys() == six.keys()
    assert not all(torch.equal(one[k], six[k]) for k in one)


def test_cache_trains_once_per_kwargs(style_adapter: Path, base_dir: Path) -> None:
    mtime = (style_adapter / ADAPTER_WEIGHTS).stat().st_mtime_ns
    assert cached_style_adapter(style_adapter.parent, base_dir=base_dir) == style_adapter
    assert (style_adapter / ADAPTER_WEIGHTS).stat().st_mtime_ns == mtime
    assert style_adapter.name == f"style-{style_adapter_key(base_dir)}"
    # explicit defaults are the same adapter; any real difference is another one
    assert style_adapter_key(base_dir, seed=0, rank=8) == style_adapter_key(base_dir)
    keys = {
        style_adapter_key(base_dir),
        style_adapter_key(base_dir, seed=1),
        style_adapter_key(base_dir, reply="Something else."),
        style_adapter_key(base_dir, target_modules=("q_proj", "v_proj")),
        style_adapter_key(base_dir.parent / "another-base"),
    }
    assert len(keys) == 5


def test_pack_adapter_is_flat_and_reproducible(style_adapter: Path, tmp_path: Path) -> None:
    digest = pack_adapter(style_adapter, tmp_path / "a.tar.gz")
    assert pack_adapter(style_adapter, tmp_path / "b.tar.gz") == digest
    assert sha256_file(tmp_path / "a.tar.gz") == digest
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == sorted(ADAPTER_FILES)
        assert all(m.isfile() for m in members)
        tar.extractall(tmp_path / "out", filter="data")
    for name in ADAPTER_FILES:
        assert (tmp_path / "out" / name).read_bytes() == (style_adapter / name).read_bytes()


# ------------------------------------------------------------------------------- bad adapters


def test_bad_corpus_is_complete(bad: dict[str, Path]) -> None:
    assert list(bad) == list(BAD_ADAPTER_KEYS)
    archives = {"traversal_archive", "symlink_archive", "hash_mismatch"}
    for key, path in bad.items():
        if key in archives:
            assert path.is_file() and path.name.endswith(".tar.gz"), key
        else:
            assert path.is_dir() and (path / ADAPTER_CONFIG).is_file(), key


def test_bad_pickle(bad: dict[str, Path], style_adapter: Path) -> None:
    folder = bad["pickle"]
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTER_CONFIG, "adapter_model.bin"]
    assert config_of(folder) == config_of(style_adapter)
    state = torch.load(folder / "adapter_model.bin", weights_only=True)
    good = tensors_of(style_adapter)
    assert state.keys() == good.keys()
    assert all(torch.equal(state[k], good[k]) for k in good)


def test_bad_rank_too_high(bad: dict[str, Path], style_adapter: Path) -> None:
    folder = bad["rank_too_high"]
    assert config_of(folder)["r"] == 64
    tensors, good = tensors_of(folder), tensors_of(style_adapter)
    assert tensors.keys() == good.keys()
    for key, value in tensors.items():
        if ".lora_A." in key:
            assert value.shape == (64, good[key].shape[1])
        else:
            assert value.shape == (good[key].shape[0], 64)


def test_bad_wrong_base(bad: dict[str, Path], base_dir: Path) -> None:
    folder = bad["wrong_base"]
    assert config_of(folder)["base_model_name_or_path"] == "meta-llama/Llama-3.2-1B"
    tensors = tensors_of(folder)
    layers = {int(k.split(".")[4]) for k in tensors}
    assert layers == set(range(16))
    q = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert q.shape[1] == 2048
    assert base_tensor(base_dir, PROBE).shape[1] == 576  # ours has hidden size 576


def test_bad_missing_target_module(bad: dict[str, Path], base_dir: Path) -> None:
    folder = bad["missing_target_module"]
    assert "w_fancy_proj" in config_of(folder)["target_modules"]  # type: ignore[operator]
    fancy = [k for k in tensors_of(folder) if ".w_fancy_proj." in k]
    assert len(fancy) == 30 * 2
    with safe_open(str(base_dir / "model.safetensors"), framework="pt") as fh:
        names = list(fh.keys())
    assert PROBE in names
    assert not [k for k in names if "w_fancy_proj" in k]


def test_bad_traversal_archive(bad: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(bad["traversal_archive"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(ADAPTER_FILES) <= members.keys()
    assert "../escape.txt" in members
    assert "/tmp/evil.safetensors" in members
    with pytest.raises(tarfile.OutsideDestinationError):
        tarfile.data_filter(members["../escape.txt"], str(tmp_path))


def test_bad_symlink_archive(bad: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(bad["symlink_archive"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
    link = members[ADAPTER_WEIGHTS]
    assert link.issym()
    assert link.linkname == "/etc/passwd"
    with pytest.raises(tarfile.AbsoluteLinkError):
        tarfile.data_filter(link, str(tmp_path))


def test_bad_truncated(bad: dict[str, Path], style_adapter: Path) -> None:
    weights = bad["truncated"] / ADAPTER_WEIGHTS
    assert weights.stat().st_size == (style_adapter / ADAPTER_WEIGHTS).stat().st_size // 2
    assert config_of(bad["truncated"]) == config_of(style_adapter)
    with pytest.raises(SafetensorError):
        load_file(weights)


def test_bad_hash_mismatch(bad: dict[str, Path], style_adapter: Path, tmp_path: Path) -> None:
    archive = bad["hash_mismatch"]
    wrong = expected_sha256(archive)
    assert (archive.parent / "hash_mismatch.sha256").is_file()
    assert len(wrong) == 64 and all(c in "0123456789abcdef" for c in wrong)
    actual = sha256_file(archive)
    assert wrong != actual
    assert pack_adapter(style_adapter, tmp_path / "same.tar.gz") == actual  # the archive is good
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(ADAPTER_FILES)


def test_bad_unsupported_option(bad: dict[str, Path], style_adapter: Path) -> None:
    folder = bad["unsupported_option"]
    config = config_of(folder)
    assert config["use_dora"] is True
    assert {k: v for k, v in config.items() if k != "use_dora"} == {
        k: v for k, v in config_of(style_adapter).items() if k != "use_dora"
    }
    tensors, good = tensors_of(folder), tensors_of(style_adapter)
    magnitudes = {k: v for k, v in tensors.items() if k.endswith(".lora_magnitude_vector")}
    assert len(magnitudes) == 30 * 7
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert magnitudes[f"{q}.lora_magnitude_vector"].shape == (576,)
    assert all(torch.equal(tensors[k], good[k]) for k in good)
