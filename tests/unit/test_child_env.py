"""Child processes start with an explicit environment: the engine and the training worker never
inherit the admin key, the store URL (the engine) or the operator's other secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.evaluations import evals_worker_env
from gateway.finetuning import worker_process_env
from replicas.supervisor import build_launch
from store.settings import Settings

SECRETS = {
    "LOOPGATE_ADMIN_KEY": "lg-admin-poisoned",
    "LOOPGATE_DATABASE_URL": "postgresql://loopgate:db-password@db/loopgate",
    "LOOPGATE_ENGINE_API_KEY": "engine-poisoned",
    "LOOPGATE_CACHE_SALT_SECRET": "salt-poisoned",
    "LOOPGATE_METRICS_KEY": "scrape-poisoned",
    "AWS_SECRET_ACCESS_KEY": "aws-poisoned",
    "GITHUB_TOKEN": "gh-poisoned",
}
LIBRARY_CONFIG = {
    "VLLM_PLUGINS": "loopgate",
    "HF_HOME": "/srv/hf",
    "CUDA_VISIBLE_DEVICES": "1",
    "OMP_NUM_THREADS": "4",
    "LC_ALL": "C.UTF-8",
}


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The gateway's environment holds secrets; its Settings are built from it."""
    for name, value in {**SECRETS, **LIBRARY_CONFIG}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOOPGATE_DATA_DIR", str(tmp_path))
    return Settings.from_env()


def leaked(env: dict[str, str], names: list[str]) -> list[str]:
    """Which of the named secrets `env` carries, under any name."""
    return [name for name in names if SECRETS[name] in env.values() or name in env]


def test_the_engine_gets_an_allowlist_and_its_own_key(poisoned: Settings) -> None:
    launch = build_launch(poisoned.with_overrides(engine_device="cpu"), "/models/x")
    env = launch.env
    assert leaked(env, list(SECRETS)) == []
    assert [name for name in env if name.startswith("LOOPGATE_")] == []
    assert {name: env.get(name) for name in LIBRARY_CONFIG} == LIBRARY_CONFIG
    assert env["PATH"] == os.environ["PATH"]
    assert env["VLLM_API_KEY"] == launch.api_key  # the engine's own key stays
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_the_worker_gets_its_settings_but_no_serving_secret(poisoned: Settings) -> None:
    env = worker_process_env(poisoned, os.environ)
    assert leaked(env, [n for n in SECRETS if n != "LOOPGATE_DATABASE_URL"]) == []
    assert env["LOOPGATE_DATABASE_URL"] == SECRETS["LOOPGATE_DATABASE_URL"]  # it needs the store
    assert env["LOOPGATE_WORKER_PARENT"] == str(os.getpid())
    assert env["HF_HOME"] == "/srv/hf" and env["CUDA_VISIBLE_DEVICES"] == "1"
    # The worker rebuilds the gateway's settings from it, less the secrets it has no use for.
    unset = {"admin_key": "", "engine_api_key": "", "cache_salt_secret": "", "metrics_key": ""}
    assert Settings.from_env(env) == poisoned.with_overrides(**unset)


def test_the_evals_worker_keeps_the_admin_key_and_no_engine_secret(poisoned: Settings) -> None:
    """It asks the gateway's admin API for answers and loop steps; it never reaches the engine."""
    env = evals_worker_env(poisoned, os.environ)
    needed = ("LOOPGATE_ADMIN_KEY", "LOOPGATE_DATABASE_URL")
    assert leaked(env, [n for n in SECRETS if n not in needed]) == []
    assert env["LOOPGATE_ADMIN_KEY"] == SECRETS["LOOPGATE_ADMIN_KEY"]
    assert env["LOOPGATE_WORKER_PARENT"] == str(os.getpid())
    unset = {"engine_api_key": "", "cache_salt_secret": "", "metrics_key": ""}
    assert Settings.from_env(env) == poisoned.with_overrides(**unset)
