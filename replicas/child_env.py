"""The environment a child process (the vLLM engine, the training worker) starts with.

Children never inherit the gateway's environment wholesale: that environment holds the admin key
(LOOPGATE_ADMIN_KEY), the store's URL and password (LOOPGATE_DATABASE_URL) and whatever else the
operator's shell or orchestrator put there (cloud credentials, tokens). A child gets an allowlist
of what a Python/ML process needs to run — the locale, paths, and the configuration variables of
the libraries it uses (HF_*, TORCH_*, CUDA_*, VLLM_*, ...) — and never a LOOPGATE_* variable;
each caller then adds, explicitly, what that child needs (the engine its own API key, the worker
the settings it runs with).
"""

from __future__ import annotations

from collections.abc import Mapping

# Exact names a process needs to run: search path, home, locale, temp dir, Python's own.
NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "VIRTUAL_ENV",
        # Where the CUDA libraries and vLLM-CPU's recommended tcmalloc/iomp come from.
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
    }
)
# Prefixes of the libraries' own configuration (VLLM_PLUGINS, CUDA_VISIBLE_DEVICES, HF_HOME...).
PREFIXES = (
    "LC_",
    "XDG_",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "TORCH_",
    "TORCHINDUCTOR_",
    "PYTORCH_",
    "TRITON_",
    "OMP_",
    "KMP_",
    "MKL_",
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "BNB_",
    "ACCELERATE_",
    "VLLM_",
)
NEVER = "LOOPGATE_"


def inherited(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a child may see: the allowlist, never a LOOPGATE_* variable."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(NEVER) and (name in NAMES or name.startswith(PREFIXES))
    }


def child_env(environ: Mapping[str, str], **explicit: str) -> dict[str, str]:
    """The allowlisted part of `environ`, plus what the caller passes this child on purpose."""
    return {**inherited(environ), **explicit}
