"""LOOPGATE_ENGINE_WEIGHTS=nf4: the served base is the bundled base rounded to NF4, once.

The checks do not go through bitsandbytes' own dequantization: a rounded projection must hold,
in every block of 64 weights, only the 16 NF4 levels scaled by the block's largest magnitude
(the NF4 table of the QLoRA paper, Dettmers et al. 2023), and stay near the original weights;
what QLoRA never quantizes (embeddings, norms) must be untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from replicas.base_model import (
    ModelError,
    nf4_config,
    nf4_dir,
    prepare_in_child,
    prepare_nf4,
    resolve_model,
)
from replicas.supervisor import served_dtype
from store.settings import Settings
from tests.support.lora_factory import default_base_dir

NF4_LEVELS = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]
)  # fmt: skip
PROJECTION = "model.layers.3.mlp.down_proj.weight"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def level_error(rounded: torch.Tensor) -> float:
    """How far the weights are from the NF4 grid: per block of 64, |w / max|w|| against the
    nearest level (0 when every weight sits on the grid up to bf16 rounding)."""
    blocks = rounded.float().flatten().reshape(-1, 64)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    normalised = (blocks / scale).unsqueeze(-1)
    return float((normalised - NF4_LEVELS).abs().amin(dim=-1).max())


@pytest.fixture(scope="module")
def source() -> Path:
    return default_base_dir()


@pytest.fixture(scope="module")
def rounded(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_nf4(str(source), tmp_path_factory.mktemp("nf4") / "base-nf4")


def test_projections_sit_on_the_nf4_grid_and_the_rest_is_untouched(
    source: Path, rounded: Path
) -> None:
    before, after = weights(source), weights(rounded)
    assert set(after) <= set(before) and PROJECTION in after
    projections = [name for name in after if name.endswith("proj.weight")]
    assert len(projections) == 30 * 7  # 30 layers x (q, k, v, o, gate, up, down)
    for name in projections:
        assert after[name].dtype == torch.bfloat16
        assert level_error(after[name]) < 0.01, name
        assert level_error(before[name]) > 0.05, name  # the source was not on the grid
        change = (after[name].float() - before[name].float()).norm() / before[name].float().norm()
        assert 0.01 < float(change) < 0.2, name
    for name in set(after) - set(projections):
        assert torch.equal(after[name], before[name]), name
    manifest = json.loads((rounded / "loopgate-model.json").read_text())
    assert manifest["source"] == str(source) and "nf4" in manifest["rounding"]
    assert (rounded / "tokenizer.json").is_file() and (rounded / "config.json").is_file()
    assert "quantization_config" not in json.loads((rounded / "config.json").read_text())


def test_a_qlora_job_on_the_rounded_base_sees_what_the_engine_serves(rounded: Path) -> None:
    """The trainer quantizes its base again; on the rounded folder that must give back the
    served weights (NF4 of an NF4-rounded block is the same block), else the train/serve gap
    the rounding exists to close would reopen."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(rounded), dtype=torch.bfloat16, quantization_config=nf4_config(torch.bfloat16)
    )
    trained_on = model.dequantize(dtype=torch.bfloat16).state_dict()
    served = weights(rounded)
    for name in (PROJECTION, "model.layers.0.self_attn.q_proj.weight"):
        gap = (trained_on[name].float() - served[name].float()).abs().max()
        assert float(gap) <= 0.01 * float(served[name].float().abs().max()), name


def test_preparing_again_reuses_a_verified_copy_and_redoes_a_damaged_or_stale_one(
    source: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(source, src)
    target = tmp_path / "src-nf4"
    prepare_nf4(str(src), target)
    shard = next(target.glob("*.safetensors"))
    stamp = shard.stat().st_mtime_ns
    assert prepare_nf4(str(src), target) == target
    assert shard.stat().st_mtime_ns == stamp  # verified and reused, not rewritten

    shard.write_bytes(b"damaged")
    prepare_nf4(str(src), target)
    assert weights(target)[PROJECTION].shape == weights(src)[PROJECTION].shape

    # A changed source: one projection doubled; the copy follows it.
    src_shard = next(src.glob("*.safetensors"))
    tensors = load_file(str(src_shard))
    tensors[PROJECTION] = tensors[PROJECTION] * 2
    save_file(tensors, str(src_shard), metadata={"format": "pt"})
    prepare_nf4(str(src), target)
    ratio = (
        weights(target)[PROJECTION].float().abs().max() / tensors[PROJECTION].float().abs().max()
    )
    assert 0.98 < float(ratio) < 1.02


def test_the_setting_picks_the_rounded_copy_and_verify_only_never_prepares(
    source: Path, tmp_path: Path
) -> None:
    settings = Settings(cache_dir=tmp_path, base_model=str(source), engine_weights="nf4")
    target = nf4_dir(settings, str(source))
    assert target.parent == tmp_path / "models" and "nf4" in target.name
    with pytest.raises(ModelError, match="not prepared"):
        resolve_model(settings, prepare=False)
    assert not target.exists()
    assert resolve_model(settings.with_overrides(engine_weights="full")) == str(source)


def test_preparing_in_a_child_gives_the_same_folder_and_its_errors(
    source: Path, tmp_path: Path
) -> None:
    """The gateway prepares the base in a child process (it never imports torch itself): the
    child prints the folder resolve_model gives here, and a failure is a ModelError here."""
    settings = Settings(cache_dir=tmp_path, base_model=str(source), engine_weights="nf4")
    with pytest.raises(ModelError, match="not prepared"):
        prepare_in_child(settings, prepare=False)
    folder = prepare_in_child(settings)
    # In the dtype this host serves (float32 where the CPU has no BF16: replicas.supervisor).
    expected = nf4_dir(settings, str(source), served_dtype(settings))
    assert folder == resolve_model(settings, prepare=False) == str(expected)
