"""The trainer's defaults: `quantization: "auto"` trains against the base the engine serves
(resolved from the settings when the job is created), and the default recipe the demo runs on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.conftest import Env
from tests.unit.sdk_client import sdk
from training.trainer_config import (
    BASE_LEARNING_RATE,
    TrainConfig,
    describe_base,
    for_engine,
    from_hyperparameters,
    trained_base,
)

TRAIN = b"".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"Where is parcel {i}?"},
                {"role": "assistant", "content": f"TICKET | parcel {i} | next: check the depot"},
            ]
        }
    ).encode()
    + b"\n"
    for i in range(12)
)


def test_auto_follows_the_engine_and_an_explicit_choice_is_kept() -> None:
    assert trained_base("auto", "full") == "none"
    assert trained_base("auto", "nf4") == "nf4"
    for engine in ("full", "nf4"):
        assert trained_base("nf4", engine) == "nf4"
        assert trained_base("none", engine) == "none"
    served_full = for_engine(TrainConfig(rank=8), "full")
    assert served_full == TrainConfig(rank=8, quantization="none")
    assert for_engine(TrainConfig(quantization="nf4"), "full").quantization == "nf4"
    assert describe_base("nf4") != describe_base("none")
    with pytest.raises(ValueError, match="quantization must be one of"):
        TrainConfig(quantization="int8")  # type: ignore[arg-type]


def test_the_default_recipe() -> None:
    c = TrainConfig()
    assert (c.quantization, c.epochs, c.learning_rate, c.anchor_weight) == ("auto", 1, 1e-3, 1.0)
    assert c.learning_rate == BASE_LEARNING_RATE
    assert from_hyperparameters(learning_rate_multiplier=0.5).learning_rate == 5e-4
    assert from_hyperparameters().epochs == 1


def _create(env: Env, **hyperparameters: Any) -> Any:
    client = sdk(env)
    upload = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model="smollm2",
        training_file=upload.id,
        hyperparameters=hyperparameters,  # type: ignore[arg-type]
    )


def test_a_job_on_defaults_records_lora_on_the_full_weights_the_engine_serves(env: Env) -> None:
    job = _create(env)
    hyper = job.model_dump()["hyperparameters"]
    assert hyper["quantization"] == "none"
    assert hyper["n_epochs"] == 1 and hyper["learning_rate_multiplier"] == 1.0
    assert hyper["anchor_weight"] == 1.0
    explicit = _create(env, quantization="nf4").model_dump()["hyperparameters"]
    assert explicit["quantization"] == "nf4"  # QLoRA stays available, as asked
    assert _create(env, quantization="auto").model_dump()["hyperparameters"]["quantization"] == (
        "none"
    )


@pytest.mark.parametrize("overrides", [{"engine_weights": "nf4"}])
def test_a_job_on_an_engine_serving_nf4_trains_qlora(env: Env) -> None:
    assert _create(env).model_dump()["hyperparameters"]["quantization"] == "nf4"
    assert _create(env, quantization="none").model_dump()["hyperparameters"]["quantization"] == (
        "none"
    )
