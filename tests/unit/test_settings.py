from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from store.settings import ConfigError, Settings, describe, to_env


def test_env_is_parsed_and_overrides_win() -> None:
    env = {
        "LOOPGATE_PORT": "9000",
        "LOOPGATE_ENGINE_MODE": "external",
        "LOOPGATE_ENGINE_URLS": "http://a:8000, http://b:8000",
        "LOOPGATE_DATA_DIR": "/tmp/x",
        "LOOPGATE_ENGINE_EXTRA_ARGS": "--enforce-eager --seed 1",
        "LOOPGATE_AUTH_CACHE_TTL_S": "0.5",
    }
    s = Settings.from_env(env, port=9001)
    assert s.port == 9001
    assert s.engine_urls == ("http://a:8000", "http://b:8000")
    assert s.engine_extra_args == ("--enforce-eager", "--seed", "1")
    assert s.data_dir == Path("/tmp/x")
    assert s.auth_cache_ttl_s == 0.5
    assert s.store_url == "sqlite:////tmp/x/loopgate.db"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LOOPGATE_PORT": "abc"}, "LOOPGATE_PORT"),
        ({"LOOPGATE_PORT": "70000"}, "LOOPGATE_PORT"),
        ({"LOOPGATE_ENGINE_MODE": "external"}, "LOOPGATE_ENGINE_URLS"),
        ({"LOOPGATE_ENGINE_MODE": "cloud"}, "LOOPGATE_ENGINE_MODE"),
        ({"LOOPGATE_ENGINE_MODE": "external", "LOOPGATE_ENGINE_URLS": "ftp://x"}, "http"),
        ({"LOOPGATE_ENGINE_MAX_LORA_RANK": "7"}, "MAX_LORA_RANK"),
        ({"LOOPGATE_ENGINE_CPU_BLOCK_SIZE": "48"}, "LOOPGATE_ENGINE_CPU_BLOCK_SIZE must be 0"),
        ({"LOOPGATE_ENGINE_WEIGHTS": "int4"}, "LOOPGATE_ENGINE_WEIGHTS must be one of full, nf4"),
        ({"LOOPGATE_TRAINING_DEVICE": "tpu"}, "LOOPGATE_TRAINING_DEVICE must be one of auto"),
        ({"LOOPGATE_UPSTREAM_TRANSPORT": "curl"}, "LOOPGATE_UPSTREAM_TRANSPORT"),
    ],
)
def test_bad_config_says_what_to_change(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env(env)


def test_reference_covers_every_setting() -> None:
    rows = describe()
    assert len(rows) == len(Settings.__dataclass_fields__)
    assert all(help_text for _, _, help_text in rows)


def test_base_model_name() -> None:
    assert Settings().base_model_name == "smollm2-135m-instruct"
    assert Settings(base_model="/models/Qwen2-0.5B").base_model_name == "qwen2-0.5b"
    assert Settings(served_model_name="x").base_model_name == "x"


def test_the_configuration_reference_documents_every_setting() -> None:
    """docs/configuration.md's table (./scripts/docs-config regenerates it) names every setting."""
    reference = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [name for name, _, _ in describe() if f"`{name}`" not in reference]
    assert missing == [], f"docs/configuration.md lacks {missing}: run ./scripts/docs-config"


def test_to_env_rebuilds_the_same_settings(tmp_path: Path) -> None:
    """Child processes (the training worker) get the gateway's settings through the env."""
    settings = Settings(
        data_dir=tmp_path,
        engine_mode="external",
        engine_urls=("http://a:1", "http://b:2"),
        training_worker=False,
        training_dir=tmp_path / "t",
        parity_min_agreement=0.5,
        admin_key="secret",
    )
    env = to_env(settings, omit=("admin_key",))
    assert "LOOPGATE_ADMIN_KEY" not in env
    rebuilt = Settings.from_env(env)
    assert rebuilt == replace(settings, admin_key="")
