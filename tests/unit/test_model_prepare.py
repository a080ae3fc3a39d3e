"""The bundled GGUF becomes a verified safetensors folder, once; a damaged folder is redone."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from replicas.base_model import MANIFEST, bundled_gguf, prepare_bundled, sha256_file, verify
from tests.support.lora_factory import default_base_dir


def test_the_bundled_model_is_converted_hashed_and_redone_when_damaged(tmp_path: Path) -> None:
    target = tmp_path / "bundled"
    assert prepare_bundled(target) == target
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["source_sha256"] == sha256_file(bundled_gguf())
    assert manifest["dtype"] == "bfloat16"
    assert verify(target)["files"] == manifest["files"]
    assert not list(tmp_path.glob("*.tmp-*"))  # staging moved into place, nothing left over

    # Same weights as the folder the rest of the suite prepared from the same GGUF.
    shard = next(target.glob("*.safetensors"))
    reference = next(default_base_dir().glob("*.safetensors"))
    ours, theirs = load_file(str(shard)), load_file(str(reference))
    assert ours.keys() == theirs.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(ours[name], theirs[name])

    stamp = shard.stat().st_mtime_ns
    prepare_bundled(target)
    assert shard.stat().st_mtime_ns == stamp  # verified and reused

    shard.write_bytes(b"damaged")
    prepare_bundled(target)
    assert verify(target)["files"] == manifest["files"]  # conversion is deterministic
