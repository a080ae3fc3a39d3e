"""LiteLLM proxy for the overhead benchmark: its own pinned virtual environment and its config.

LiteLLM is not a dependency of loopgate: it is installed from PyPI into a cache directory of
its own (`<cache>/litellm-<version>`), once, and started from there as a one-worker proxy
that routes `smollm2` to the benchmark's mock upstream as an OpenAI-compatible backend.
Telemetry is off and the model cost map is read from the package (no network at start-up).

Run: python -m benchmarks.litellm_env   (creates the environment, prints its path)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The current release (1.109.1, November 2026) and every one since 1.106.3 require
# certifi>=2026.10.19, which PyPI as reachable from the development machine does not serve yet
# (its newest is 2026.10.18): 1.106.2 is the newest release that installs there. 1.107.0 was a
# compromised release and is gone from PyPI.
LITELLM_VERSION = "1.106.2"
MODEL_NAME = "smollm2"
MASTER_KEY = "sk-loopgate-bench"
INSTALL_TIMEOUT_S = 1800
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class LiteLLMEnv:
    """A ready LiteLLM installation."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def proxy(self) -> Path:
        return self.root / "bin" / "litellm"


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loopgate"


def env_dir(cache_root: Path, version: str = LITELLM_VERSION) -> Path:
    return cache_root / f"litellm-{version}"


def ensure_env(cache_root: Path | None = None, version: str = LITELLM_VERSION) -> LiteLLMEnv:
    """Create (once) a virtual environment holding `litellm[proxy]==version`."""
    root = env_dir(cache_root or default_cache_root(), version)
    env = LiteLLMEnv(root)
    if (root / COMPLETE_MARKER).exists() and env.proxy.exists():
        return env
    root.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", "--clear", str(root)], "creating the virtual environment")
    pip = [str(env.python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    _run([*pip, f"litellm[proxy]=={version}"], f"pip install 'litellm[proxy]=={version}'")
    (root / COMPLETE_MARKER).write_text(version + "\n")
    return env


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"LiteLLM environment: {what} failed (exit {done.returncode}); PyPI must be "
            f"reachable:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )


def write_config(path: Path, upstream_url: str) -> Path:
    """The proxy config: `smollm2` → the upstream's /v1 as an OpenAI-compatible backend.

    JSON is a subset of YAML, so the file is written with the standard library.
    """
    config = {
        "model_list": [
            {
                "model_name": MODEL_NAME,
                "litellm_params": {
                    "model": "openai/mock",
                    "api_base": upstream_url.rstrip("/") + "/v1",
                    "api_key": "none",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {"master_key": MASTER_KEY},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def proxy_argv(env: LiteLLMEnv, config: Path, port: int) -> list[str]:
    return [
        str(env.proxy),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def proxy_env() -> dict[str, str]:
    """Variables the proxy needs on top of the caller's: no telemetry, no network, quiet."""
    return {
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "DISABLE_ADMIN_UI": "True",
    }


READY_PATH = "/health/liveliness"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.litellm_env", description=__doc__)
    p.add_argument("--cache-root", type=Path, default=None, help="default ~/.cache/loopgate")
    p.add_argument("--version", default=LITELLM_VERSION)
    args = p.parse_args(argv)
    env = ensure_env(args.cache_root, args.version)
    print(env.root)


if __name__ == "__main__":
    main()
