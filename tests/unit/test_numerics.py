"""The dtypes chosen from the hardware: bf16 only where it is native, float32 elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evals.loop_record import training_summary
from replicas.supervisor import build_launch, engine_dtype, served_dtype
from store.numerics import (
    choose_cpu_dtype,
    cpu_capability,
    cpu_flags,
    cpu_has_native_bf16,
    describe_cpu,
    host_flags,
)
from store.settings import ConfigError, Settings
from training.trainer import compute_dtype
from training.trainer_config import TrainConfig

AVX2 = "fpu sse sse2 avx avx2 fma f16c"  # the AMD EPYC host without AVX512 / BF16
AVX512 = AVX2 + " avx512f avx512dq avx512bw avx512vl avx512_vnni"
AVX512_BF16 = AVX512 + " avx512_bf16"
AMX = AVX512_BF16 + " amx_tile amx_bf16 amx_int8"
ARM = "fp asimd evtstrm aes crc32"


def cpuinfo(tmp_path: Path, flags: str, key: str = "flags") -> frozenset[str]:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\n{key}\t\t: {flags}\n\nprocessor\t: 1\n")
    return cpu_flags(path)


@pytest.mark.parametrize(
    ("flags", "key", "capability", "native"),
    [
        (AVX2, "flags", "AVX2", False),
        (AVX512, "flags", "AVX512", False),
        (AVX512_BF16, "flags", "AVX512-BF16", True),
        (AMX, "flags", "AMX-BF16", True),
        (ARM, "Features", "ARM", False),
        (ARM + " bf16", "Features", "ARM-BF16", True),
        ("fpu sse", "flags", "baseline", False),
    ],
)
def test_capability_and_the_auto_dtype_follow_the_flags(
    tmp_path: Path, flags: str, key: str, capability: str, native: bool
) -> None:
    found = cpuinfo(tmp_path, flags, key)
    assert cpu_capability(found) == capability
    assert cpu_has_native_bf16(found) is native
    assert choose_cpu_dtype("auto", found) == ("bfloat16" if native else "float32")
    # an explicit setting wins on any hardware
    assert choose_cpu_dtype("float32", found) == "float32"
    assert choose_cpu_dtype("bfloat16", found) == "bfloat16"
    assert describe_cpu(found).startswith(f"CPU {capability} (bf16 ")


def test_unknown_hardware_reads_as_no_flags(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert choose_cpu_dtype("auto", frozenset()) == "float32"


def test_the_embedded_cpu_engine_gets_the_host_s_dtype(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, engine_device="cpu")
    expected = "bfloat16" if cpu_has_native_bf16(host_flags()) else "float32"
    launch = build_launch(settings, "model-dir", port=1234)
    assert launch.argv[launch.argv.index("--dtype") + 1] == expected == launch.dtype
    assert served_dtype(settings) == expected
    forced = Settings(data_dir=tmp_path, engine_device="cpu", engine_dtype="float32")
    launch = build_launch(forced, "model-dir", port=1234)
    assert launch.argv[launch.argv.index("--dtype") + 1] == "float32"
    # CUDA: vLLM's own choice for the GPU; what it serves the bundled model in is bf16
    cuda = Settings(data_dir=tmp_path, engine_device="cuda")
    assert engine_dtype(cuda, "cuda") == "auto"
    assert served_dtype(cuda) == "bfloat16"


def test_bad_dtype_settings_name_the_choices() -> None:
    with pytest.raises(ConfigError, match="LOOPGATE_ENGINE_DTYPE must be one of auto"):
        Settings.from_env({"LOOPGATE_ENGINE_DTYPE": "fp8"})
    with pytest.raises(ConfigError, match="LOOPGATE_TRAINING_DTYPE must be one of auto"):
        Settings.from_env({"LOOPGATE_TRAINING_DTYPE": "half"})
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        TrainConfig(compute_dtype="half")  # type: ignore[arg-type]


def test_the_trainer_computes_in_the_hardware_s_dtype_unless_told() -> None:
    native = cpu_has_native_bf16(host_flags())
    assert compute_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    assert compute_dtype("cpu", "float32") == torch.float32
    assert compute_dtype("cpu", "bfloat16") == torch.bfloat16


def test_the_loop_reports_how_fast_and_in_what_the_job_trained() -> None:
    result = json.dumps(
        {
            "training": {
                "train_tokens": 9120,
                "tokens_per_s": 146.4,
                "compute_dtype": "float32",
                "hardware": "CPU AVX2 (bf16 emulated)",
                "steps": 30,
            },
            "parity_reference": [],
        }
    )
    assert training_summary(result) == (
        "9120 tokens at 146 tok/s, float32 on CPU AVX2 (bf16 emulated)"
    )
    assert training_summary(None) == training_summary("not json") == ""
