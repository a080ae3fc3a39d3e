"""The gateway's registration of a trained adapter judges the engine's answers with the worker's
near-tie offsets: past a step where peft's top two tokens were nearly tied, the two engines may
part without that being evidence of a wrongly served adapter (training/parity.py)."""

from __future__ import annotations

import json
from pathlib import Path

from store import JobChanges
from tests.unit.adapter_files import write_adapter
from tests.unit.conftest import Env
from tests.unit.test_finetuning_api import GOOD, upload
from training.parity import PARITY_PROMPTS

ENGINE = "Ahoy matey, the cat sat on the mat."
PEFT = "Ahoy matey, the dog ran off."  # parts from ENGINE at character 16, under the 24 judged
TIE_AT = 16  # where the worker found peft's first near-tie


def trained_job(env: Env, tmp_path: Path, ties: list[int | None] | None) -> dict[str, object]:
    """A job whose worker part is done here: an adapter and the worker's result, then the
    gateway's real registration against the (fake) engine."""
    file_id = upload(env, GOOD)["id"]
    body = {"model": "smollm2", "training_file": file_id, "suffix": "style"}
    job_id = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth()).json()["id"]
    result: dict[str, object] = {"parity_reference": [PEFT] * len(PARITY_PROMPTS)}
    if ties is not None:
        result["parity_ties"] = ties
    out = write_adapter(tmp_path / job_id / "adapter", seed=1)
    gateway = env.client.app.state.gateway

    async def register() -> None:
        changes = JobChanges(status="running", stage="registering", output_dir=str(out),
                             result=json.dumps(result), worker="worker:test")  # fmt: skip
        assert await gateway.store.update_job(job_id, changes)
        await gateway.finetuning.register(await gateway.store.get_job(job_id))

    env.client.blocking_portal.call(register)
    return dict(env.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=env.auth()).json())


def test_answers_that_part_at_peft_s_near_tie_agree(env: Env, tmp_path: Path) -> None:
    env.engine.reply = ENGINE
    job = trained_job(env, tmp_path, [TIE_AT] * len(PARITY_PROMPTS))
    assert job["status"] == "succeeded", job
    assert str(job["fine_tuned_model"]).startswith("ft:smollm2:acme:style:")


def test_without_the_offsets_the_same_answers_fail_parity(env: Env, tmp_path: Path) -> None:
    env.engine.reply = ENGINE
    job = trained_job(env, tmp_path, None)  # a result from before the worker recorded near-ties
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "parity_failed"  # type: ignore[index]
    assert job["fine_tuned_model"] is None


def test_parting_before_the_near_tie_still_fails(env: Env, tmp_path: Path) -> None:
    env.engine.reply = ENGINE
    job = trained_job(env, tmp_path, [TIE_AT + 4] * len(PARITY_PROMPTS))
    assert job["status"] == "failed", job
