"""Small synthetic LoRA adapters (real safetensors files) for fast registry and swap tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

# The bundled base (SmolLM2-135M): hidden 576, kv width 192, MLP 1536.
SHAPES = {
    "q_proj": (576, 576),
    "k_proj": (192, 576),
    "v_proj": (192, 576),
    "o_proj": (576, 576),
    "gate_proj": (1536, 576),
    "up_proj": (1536, 576),
    "down_proj": (576, 1536),
}
ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}


def write_adapter(
    folder: Path,
    *,
    rank: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    layers: int = 2,
    seed: int = 0,
    base: str = "smollm2-135m-instruct",
    **config: object,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module in targets:
            out_f, in_f = SHAPES.get(module, (64, 64))
            group = "self_attn" if module in ATTN else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{group}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (
                rng.standard_normal((rank, in_f), dtype=np.float32) * 0.01
            )
            tensors[f"{prefix}.lora_B.weight"] = (
                rng.standard_normal((out_f, rank), dtype=np.float32) * 0.01
            )
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(targets),
        "base_model_name_or_path": base,
        "bias": "none",
        "task_type": "CAUSAL_LM",
        **config,
    }
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for file in sorted(folder.iterdir()):
            archive.add(file, arcname=file.name)
    return buffer.getvalue()
