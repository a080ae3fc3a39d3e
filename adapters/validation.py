"""Adapter validation: nothing reaches the engine unless it is a well-formed LoRA for our base.

Checks, in order: only regular files (no symlinks, no directories) and only the two expected
names (pickle formats refused by name); size caps; `adapter_config.json` is a LoRA config
whose rank the engine accepts, whose target modules exist in the base, and which uses no
option vLLM cannot serve at runtime; the base it names is ours; the safetensors header is
well-formed and its data spans the file exactly (truncation is caught); every tensor is a
LoRA A/B matrix of a module that exists in the base with the shape that module implies.
Archives are unpacked member by member with the same rules (no traversal, no links).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

from store.errors import InvalidRequest, Unprocessable

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, "README.md"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MAX_CONFIG_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024 * 1024
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
_LORA_TENSOR = re.compile(r"^base_model\.model\.(?P<module>[\w.]+)\.lora_(?P<ab>[AB])\.weight$")
# Options vLLM cannot serve for a runtime-loaded LoRA (or that change which weights exist).
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA adapters are not supported by the engine",
    "modules_to_save": "modules_to_save (fully trained extra modules) is not supported",
    "layer_replication": "layer_replication is not supported",
    "rank_pattern": "per-module ranks (rank_pattern) are not supported",
    "alpha_pattern": "per-module alphas (alpha_pattern) are not supported",
}


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter must fit: the served base's names and its linear modules' shapes."""

    name: str
    accepted_names: frozenset[str]
    weights_hash: str
    modules: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (out, in)

    @property
    def leaf_names(self) -> frozenset[str]:
        return frozenset(path.rsplit(".", 1)[-1] for path in self.modules)


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_rank: int


@dataclass(frozen=True)
class AdapterManifest:
    """What validation learned; the registry records it as lineage."""

    content_hash: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str
    size_bytes: int


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header: offsets contiguous, data exactly fills the file."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise Unprocessable(f"{path.name} is not a safetensors file (too short)", param="file")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise Unprocessable(f"{path.name} has a corrupt or truncated header", param="file")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise Unprocessable(f"{path.name} has an unreadable header", param="file") from None
    if not isinstance(header, dict):
        raise Unprocessable(f"{path.name} has a malformed header", param="file")
    header.pop("__metadata__", None)
    tensors = {name: _tensor_info(path.name, name, spec) for name, spec in header.items()}
    end = 0
    for info in sorted(tensors.values(), key=lambda t: t.start):
        if info.start != end:
            raise Unprocessable(f"{path.name}: tensor data is not contiguous", param="file")
        end = info.end
    if 8 + header_len + end != size:
        raise Unprocessable(
            f"{path.name} is truncated or has trailing data ({size} bytes, header says "
            f"{8 + header_len + end})",
            param="file",
        )
    return tensors


def _tensor_info(file: str, name: str, spec: object) -> TensorInfo:
    if not isinstance(spec, dict):
        raise Unprocessable(f"{file}: bad entry for tensor {name!r}", param="file")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    ok = (
        isinstance(dtype, str)
        and isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
    )
    if not ok:
        raise Unprocessable(f"{file}: bad entry for tensor {name!r}", param="file")
    assert isinstance(dtype, str) and isinstance(shape, list) and isinstance(offsets, list)
    start, end = offsets
    numel = 1
    for dim in shape:
        numel *= dim
    if dtype in DTYPE_BYTES and end - start != numel * DTYPE_BYTES[dtype]:
        raise Unprocessable(f"{file}: tensor {name!r} size does not match its shape", param="file")
    return TensorInfo(dtype, tuple(shape), start, end)


def base_model_info(folder: Path, name: str, extra_names: tuple[str, ...] = ()) -> BaseModelInfo:
    """Read the base's linear-module shapes from its safetensors headers (no weights loaded)."""
    shards = sorted(folder.glob("*.safetensors"))
    modules: dict[str, tuple[int, int]] = {}
    digest = hashlib.sha256()
    for shard in shards:
        for tensor, info in read_safetensors_header(shard).items():
            if tensor.endswith(".weight") and len(info.shape) == 2 and ".layers." in tensor:
                out_features, in_features = info.shape
                modules[tensor.removesuffix(".weight")] = (out_features, in_features)
    manifest = folder / "loopgate-model.json"
    if manifest.is_file():  # a prepared folder already knows its files' hashes
        files = json.loads(manifest.read_text()).get("files", {})
        digest.update(json.dumps(files, sort_keys=True).encode())
    else:
        for shard in shards:
            digest.update(shard.name.encode() + str(shard.stat().st_size).encode())
    names = frozenset({name, str(folder), folder.name, *extra_names})
    return BaseModelInfo(name, names, digest.hexdigest(), modules)


def content_hash(folder: Path) -> str:
    """SHA-256 over the adapter's files (name and bytes), in a fixed order."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update(name.encode() + b"\0")
        with (folder / name).open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def validate_folder(folder: Path, base: BaseModelInfo, limits: Limits) -> AdapterManifest:
    total = _check_files(folder, limits)
    config = _read_config(folder / CONFIG_FILE)
    rank, alpha, targets = _check_config(config, base, limits)
    _check_tensors(folder / WEIGHTS_FILE, base, rank, targets)
    return AdapterManifest(content_hash(folder), rank, alpha, targets, base.name, total)


def _check_files(folder: Path, limits: Limits) -> int:
    total = 0
    for entry in folder.iterdir():
        if entry.is_symlink():
            raise Unprocessable(f"'{entry.name}' is a symbolic link; only plain files are accepted")
        if not entry.is_file():
            raise Unprocessable(f"'{entry.name}' is not a plain file; the adapter must be flat")
        if entry.name.endswith(PICKLE_SUFFIXES):
            raise Unprocessable(
                f"'{entry.name}' is a pickle-based weights file; only safetensors is accepted "
                "(save with safe_serialization=True)"
            )
        if entry.name not in ALLOWED_FILES:
            raise Unprocessable(f"unexpected file '{entry.name}' in the adapter")
        total += entry.stat().st_size
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / required).is_file():
            raise Unprocessable(f"the adapter has no {required}")
    if total > limits.max_bytes:
        raise Unprocessable(f"the adapter is {total} bytes; the limit is {limits.max_bytes}")
    if (folder / CONFIG_FILE).stat().st_size > MAX_CONFIG_BYTES:
        raise Unprocessable(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
    return total


def _read_config(path: Path) -> dict[str, object]:
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Unprocessable(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise Unprocessable(f"{CONFIG_FILE} must be a JSON object")
    return config


def _check_config(
    config: dict[str, object], base: BaseModelInfo, limits: Limits
) -> tuple[int, float, tuple[str, ...]]:
    if config.get("peft_type", "LORA") != "LORA":
        raise Unprocessable(f"peft_type {config.get('peft_type')!r} is not LORA", param="peft_type")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank not in VLLM_RANKS:
        raise Unprocessable(
            f"rank r={rank!r} is not one of the engine's ranks {VLLM_RANKS}", param="r"
        )
    if rank > limits.max_rank:
        raise Unprocessable(
            f"rank r={rank} exceeds the engine's max_lora_rank {limits.max_rank}", param="r"
        )
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise Unprocessable(f"lora_alpha {alpha!r} must be a positive number", param="lora_alpha")
    for key, why in _UNSUPPORTED.items():
        if config.get(key):
            raise Unprocessable(f"{why} ({key})", param=key)
    if config.get("bias", "none") != "none":
        raise Unprocessable("trained biases (bias != 'none') are not supported", param="bias")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise Unprocessable(
            "target_modules must be a non-empty list of module names", param="target_modules"
        )
    unknown = sorted(set(targets) - base.leaf_names) if base.modules else []
    if unknown:
        raise Unprocessable(
            f"target modules {unknown} do not exist in the base model {base.name}",
            param="target_modules",
        )
    claimed = config.get("base_model_name_or_path")
    # A local training path names the base by its folder (the shape checks below are the
    # strong test); a hub id or served name must match one of the accepted names.
    if (
        isinstance(claimed, str)
        and claimed
        and not (
            claimed in base.accepted_names or PurePosixPath(claimed).name in base.accepted_names
        )
    ):
        raise Unprocessable(
            f"the adapter was trained for base model '{claimed}'; this gateway serves "
            f"'{base.name}'",
            param="base_model_name_or_path",
        )
    return rank, float(alpha), tuple(sorted(set(targets)))


def _check_tensors(path: Path, base: BaseModelInfo, rank: int, targets: tuple[str, ...]) -> None:
    tensors = read_safetensors_header(path)
    if not tensors:
        raise Unprocessable(f"{WEIGHTS_FILE} holds no tensors")
    for name, info in tensors.items():
        match = _LORA_TENSOR.match(name)
        if match is None:
            raise Unprocessable(f"tensor {name!r} is not a LoRA A/B weight", param="weights")
        if info.dtype not in DTYPE_BYTES:
            raise Unprocessable(
                f"tensor {name!r} has unsupported dtype {info.dtype}", param="weights"
            )
        module = match.group("module")
        if module.rsplit(".", 1)[-1] not in targets:
            raise Unprocessable(
                f"tensor {name!r} is for a module not in target_modules", param="weights"
            )
        if not base.modules:
            continue  # the base's shapes are unknown (remote-only base): config checks only
        dims = base.modules.get(module)
        if dims is None:
            raise Unprocessable(
                f"tensor {name!r} targets a module the base does not have", param="weights"
            )
        out_features, in_features = dims
        expected = (rank, in_features) if match.group("ab") == "A" else (out_features, rank)
        if info.shape != expected:
            raise Unprocessable(
                f"tensor {name!r} has shape {list(info.shape)}; the base model needs "
                f"{list(expected)} (wrong base model or rank?)",
                param="weights",
            )


def unpack_archive(data: bytes, dest: Path, max_bytes: int) -> None:
    """Unpack a .tar(.gz) or .zip adapter into `dest`, refusing anything but flat plain files."""
    dest.mkdir(parents=True, exist_ok=False)
    written = 0
    for name, size, reader in _members(data):
        written += size
        if written > max_bytes:
            raise Unprocessable(f"the archive unpacks to more than {max_bytes} bytes")
        target = dest / name
        with target.open("xb") as out:
            out.write(reader())


def _members(data: bytes) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        with zipfile.ZipFile(buffer) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            names = _flat_names([i.filename for i in infos])
            for info, name in zip(infos, names, strict=True):
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise Unprocessable(f"archive member '{info.filename}' is a symbolic link")
                yield name, info.file_size, partial(archive.read, info)
        return
    buffer.seek(0)
    try:
        archive_tar = tarfile.open(fileobj=buffer, mode="r:*")  # noqa: SIM115 - closed below
    except tarfile.TarError:
        raise InvalidRequest("the upload is neither a .tar(.gz) nor a .zip archive") from None
    with archive_tar:
        members = [m for m in archive_tar.getmembers() if not m.isdir()]
        for member in members:
            if not member.isfile():
                raise Unprocessable(f"archive member '{member.name}' is a link or special file")
        names = _flat_names([m.name for m in members])
        for member, name in zip(members, names, strict=True):
            extracted = archive_tar.extractfile(member)
            assert extracted is not None
            yield name, member.size, extracted.read


def _flat_names(names: list[str]) -> list[str]:
    """Member names reduced to bare file names; traversal, absolute paths and nesting refused."""
    flat = []
    for raw in names:
        path = PurePosixPath(raw)
        if path.is_absolute() or ".." in path.parts or "\\" in raw:
            raise Unprocessable(f"archive member '{raw}' has an unsafe path")
        parts = [p for p in path.parts if p != "."]
        if len(parts) == 2 and len({PurePosixPath(n).parts[0] for n in names}) == 1:
            parts = parts[1:]  # one top-level folder is allowed
        if len(parts) != 1:
            raise Unprocessable(f"archive member '{raw}' is nested; files must be at the top level")
        flat.append(parts[0])
    if len(set(flat)) != len(flat):
        raise Unprocessable("the archive holds the same file name twice")
    return flat
