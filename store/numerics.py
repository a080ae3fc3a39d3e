"""Which float format the hardware computes fast: the CPU's capability and the dtypes chosen
for training and serving from it (no torch here: the gateway reads this too).

Why it matters: on a CPU without native bf16 (AVX2 only, or AVX512 without BF16) every bf16
matmul is emulated. Measured on an AVX2-only AMD EPYC host: one core did 1.2 GFLOP/s in bf16
against 69.6 in float32; a QLoRA step ran at 5 tokens/s in bf16 against 146 in float32, and
vLLM-CPU served 21 output tokens/s in bf16 against 100 in float32 (16 streams). Where the CPU
has AVX512-BF16 or AMX, bf16 is native and at least as fast (see `benchmarks.engine_dtype`).

`auto` therefore means: bf16 where the hardware does it natively (a CUDA GPU that supports it,
a CPU with AVX512-BF16 or AMX-BF16, an Arm CPU with the BF16 extension), float32 elsewhere.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

Dtype = Literal["bfloat16", "float32"]
DtypeSetting = Literal["auto", "bfloat16", "float32"]
CPUINFO = Path("/proc/cpuinfo")
# The x86 flags (and the Arm feature) that mean bf16 matmuls run in hardware.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 'flags', Arm 'Features'); empty if
    unknown (no /proc, another OS)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def host_flags() -> frozenset[str]:
    """This host's CPU flags, read once per process."""
    return cpu_flags()


def cpu_capability(flags: frozenset[str] | None = None) -> str:
    """The CPU's widest vector and bf16 support in one word, for logs and reports:
    'AMX-BF16', 'AVX512-BF16', 'AVX512', 'AVX2', 'ARM-BF16', 'ARM' or 'baseline'."""
    flags = host_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    if "avx512f" in flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    if "asimd" in flags:
        return "ARM-BF16" if "bf16" in flags else "ARM"
    return "baseline"


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    flags = host_flags() if flags is None else flags
    return bool(flags & NATIVE_BF16_FLAGS)


def choose_cpu_dtype(setting: DtypeSetting, flags: frozenset[str] | None = None) -> Dtype:
    """The dtype for CPU work: the setting when it names one, else bf16 only where native."""
    if setting != "auto":
        return setting
    return "bfloat16" if cpu_has_native_bf16(flags) else "float32"


def describe_cpu(flags: frozenset[str] | None = None) -> str:
    """One line for every reported figure: 'CPU AVX2 (bf16 emulated)'."""
    native = "native" if cpu_has_native_bf16(flags) else "emulated"
    return f"CPU {cpu_capability(flags)} (bf16 {native})"
