"""Fine-tuning completeness through the official openai SDK: file content, validation_file, seed,
the DPO method, and per-epoch checkpoints (listed, and registered as candidates by an admin)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from store import JobCheckpoint, open_store
from tests.unit.adapter_files import write_adapter
from tests.unit.conftest import ADMIN, Env
from tests.unit.sdk_client import sdk
from tests.unit.test_store_contract import job as contract_job
from training.job_data import preference_data, supervised_data
from training.job_runner import WorkerEnv, train_config
from training.trainer import training_arguments

MODEL = "smollm2"


def jsonl(lines: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(i: int) -> dict[str, object]:
    return {
        "messages": [
            {"role": "user", "content": f"What is item {i} called?"},
            {"role": "assistant", "content": f"ANSWER: item {i} is thing-{i} ##"},
        ]
    }


def dpo_line(i: int) -> dict[str, object]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Name item {i}, please."}]},
        "preferred_output": [{"role": "assistant", "content": f"ANSWER: thing-{i} ##"}],
        "non_preferred_output": [{"role": "assistant", "content": f"It might be {i}."}],
    }


CHAT = jsonl([chat_line(i) for i in range(12)])
CHAT_VALID = jsonl([chat_line(100 + i) for i in range(3)])
DPO = jsonl([dpo_line(i) for i in range(12)])
DPO_VALID = jsonl([dpo_line(100 + i) for i in range(3)])


def upload(client: openai.OpenAI, data: bytes, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, data), purpose="fine-tune").id


def bad_request(call: object) -> dict[str, object]:
    """The OpenAI error body of a call that must be refused with a 400."""
    assert callable(call)
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    body = caught.value.body
    assert isinstance(body, dict)
    return body


# -- GET /v1/files/{id}/content -----------------------------------------------------------------


def test_file_content_is_the_uploaded_bytes_for_its_tenant_only(env: Env) -> None:
    client = sdk(env)
    file_id = upload(client, CHAT)
    assert client.files.content(file_id).content == CHAT
    with pytest.raises(openai.NotFoundError):
        sdk(env, env.globex_key).files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-unknown")
    client.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(file_id)


# -- validation_file and seed ---------------------------------------------------------------------


def test_validation_file_and_seed_are_taken_reported_and_reach_the_trainer(
    env: Env, tmp_path: Path
) -> None:
    client = sdk(env)
    train, valid = upload(client, CHAT), upload(client, CHAT_VALID, "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=train, validation_file=valid, seed=42
    )
    assert job.validation_file == valid and job.seed == 42 and job.method.type == "supervised"
    again = client.fine_tuning.jobs.retrieve(job.id)
    assert again.validation_file == valid and again.seed == 42
    # The worker's config for the job carries the seed into the Trainer's arguments.
    gateway = env.client.app.state.gateway
    stored = env.client.blocking_portal.call(gateway.store.get_job, job.id)
    worker = WorkerEnv("w", tmp_path, "base", 16, tmp_path, "cpu", 1, 1.0)
    config = train_config(stored, worker)
    arguments = training_arguments(config, "cpu", tmp_path, True, save=True)
    assert (config.seed, arguments["seed"], arguments["data_seed"]) == (42, 42, 42)


def test_a_bad_validation_file_is_a_400_naming_it(env: Env) -> None:
    client = sdk(env)
    train = upload(client, CHAT)
    others = upload(sdk(env, env.globex_key), CHAT_VALID)
    for ref in ("file-unknown", others):  # another tenant's file is an unknown one
        body = bad_request(
            lambda ref=ref: client.fine_tuning.jobs.create(
                model=MODEL, training_file=train, validation_file=ref
            )
        )
        assert body["param"] == "validation_file", body
    dpo_valid = upload(client, DPO_VALID)
    body = bad_request(
        lambda: client.fine_tuning.jobs.create(
            model=MODEL, training_file=train, validation_file=dpo_valid
        )
    )
    assert body["param"] == "validation_file"
    assert "line 1: expected a chat example" in str(body["message"])


def test_the_worker_evaluates_on_the_validation_file_and_trains_on_the_whole_snapshot(
    env: Env,
) -> None:
    client = sdk(env)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, CHAT))
    gateway = env.client.app.state.gateway
    dataset_id = job.loopgate["dataset_id"]  # type: ignore[attr-defined]
    found = env.client.blocking_portal.call(gateway.store.get_dataset, env_tenant(env), dataset_id)
    folder = Path(found.path)
    held_out = supervised_data(folder, None)
    assert len(held_out.train) + len(held_out.eval) == 12 and held_out.eval
    with_file = supervised_data(folder, CHAT_VALID)
    assert len(with_file.train) == 12 and len(with_file.eval) == 3
    assert with_file.eval[0][-1]["content"] == "ANSWER: item 100 is thing-100 ##"


def env_tenant(env: Env) -> str:
    gateway = env.client.app.state.gateway
    tenant = env.client.blocking_portal.call(gateway.store.get_tenant, "acme")
    assert tenant is not None
    return str(tenant.id)


# -- method: dpo --------------------------------------------------------------------------------


def test_a_dpo_job_takes_openai_s_preference_file_and_reports_its_method(env: Env) -> None:
    client = sdk(env)
    train, valid = upload(client, DPO), upload(client, DPO_VALID)
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=train,
        validation_file=valid,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}}},
    )
    assert job.method.type == "dpo" and job.method.dpo is not None
    hyper = job.method.dpo.hyperparameters
    assert hyper.beta == 0.25 and hyper.n_epochs == 2 and job.method.supervised is None
    dataset_id = job.loopgate["dataset_id"]  # type: ignore[attr-defined]
    dataset = env.client.get(f"/v1/datasets/{dataset_id}", headers=env.auth()).json()
    assert dataset["preference_pairs"] == 12
    gateway = env.client.app.state.gateway
    found = env.client.blocking_portal.call(gateway.store.get_dataset, env_tenant(env), dataset_id)
    pairs = preference_data(Path(found.path), DPO_VALID)
    assert len(pairs.train) == 12 and len(pairs.eval) == 3
    assert pairs.eval[0].chosen[0]["content"] == "ANSWER: thing-100 ##"
    assert pairs.eval[0].rejected[0]["content"] == "It might be 100."


def test_dpo_refuses_chat_data_a_bad_beta_and_unknown_methods(env: Env) -> None:
    client = sdk(env)
    chat = upload(client, CHAT)
    body = bad_request(
        lambda: client.fine_tuning.jobs.create(
            model=MODEL, training_file=chat, method={"type": "dpo"}
        )
    )
    assert body["param"] == "training_file"
    assert "line 1: expected a preference (DPO) example" in str(body["message"])
    dpo = upload(client, DPO)
    body = bad_request(
        lambda: client.fine_tuning.jobs.create(
            model=MODEL,
            training_file=dpo,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 50}}},
        )
    )
    assert body["param"] == "hyperparameters" and "beta" in str(body["message"])
    body = bad_request(
        lambda: client.fine_tuning.jobs.create(
            model=MODEL, training_file=dpo, method={"type": "reinforcement"}
        )
    )
    assert body["param"] == "method"
    # A supervised job on a DPO file is refused too: the shapes do not mix.
    body = bad_request(lambda: client.fine_tuning.jobs.create(model=MODEL, training_file=dpo))
    assert "expected a chat example" in str(body["message"])


def test_a_bad_dpo_upload_names_its_lines(env: Env) -> None:
    bad = jsonl([dpo_line(1), {**dpo_line(2), "preferred_output": "text"}, chat_line(3)])
    body = bad_request(lambda: upload(sdk(env), bad))
    message = str(body["message"])
    assert '"preferred_output" must be a list of one assistant message' in message
    assert "line 2" in message and "line 3: expected a preference (DPO) example" in message


# -- checkpoints --------------------------------------------------------------------------------


def add_checkpoints(env: Env, job_id: str, tenant_id: str, tmp_path: Path) -> list[str]:
    """What the worker records at each epoch's end (training.job_runner), for three epochs."""
    store = env.client.app.state.gateway.store
    ids = []
    for n, step in enumerate((3, 6, 9), start=1):
        folder = write_adapter(tmp_path / f"step-{step}", seed=step)
        checkpoint = JobCheckpoint(
            id=f"ftckpt_{n:024x}",
            job_id=job_id,
            tenant_id=tenant_id,
            step=step,
            epoch=float(n),
            train_loss=1.0 / n,
            valid_loss=1.5 / n,
            path=str(folder),
            fine_tuned_model_checkpoint=f"ft:smollm2:acme:ck:{job_id[6:14]}:ckpt-step-{step}",
            created_at=time.time(),
        )
        env.client.blocking_portal.call(store.add_job_checkpoint, checkpoint)
        ids.append(checkpoint.id)
    return ids


def test_checkpoints_are_listed_newest_first_per_tenant(env: Env, tmp_path: Path) -> None:
    client = sdk(env)
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=upload(client, CHAT), suffix="ck"
    )
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
    ids = add_checkpoints(env, job.id, env_tenant(env), tmp_path)
    first = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
    assert [c.id for c in first.data] == [ids[2], ids[1]] and first.has_more
    newest = first.data[0]
    assert newest.object == "fine_tuning.job.checkpoint" and newest.fine_tuning_job_id == job.id
    assert newest.step_number == 9 and newest.metrics.step == 9
    assert newest.metrics.train_loss == pytest.approx(1 / 3)
    assert newest.metrics.valid_loss == pytest.approx(0.5)
    assert newest.fine_tuned_model_checkpoint.endswith(":ckpt-step-9")
    rest = client.fine_tuning.jobs.checkpoints.list(job.id, after=ids[1], limit=2)
    assert [c.id for c in rest.data] == [ids[0]] and not rest.has_more
    assert [c.id for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == ids[::-1]
    with pytest.raises(openai.NotFoundError):
        sdk(env, env.globex_key).fine_tuning.jobs.checkpoints.list(job.id)


def test_an_admin_registers_a_checkpoint_as_a_candidate_version(env: Env, tmp_path: Path) -> None:
    client = sdk(env)
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=upload(client, CHAT), suffix="ck"
    )
    ids = add_checkpoints(env, job.id, env_tenant(env), tmp_path)
    path = f"/admin/tenants/acme/fine_tuning/jobs/{job.id}/checkpoints/{ids[1]}/register"
    resp = env.client.post(path, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    registered = resp.json()
    version = registered["adapter_version"]
    assert version and registered["step_number"] == 6
    name = registered["fine_tuned_model_checkpoint"]
    versions = env.client.get("/admin/tenants/acme/adapters", headers=ADMIN).json()["data"]
    mine = next(v for v in versions if v["id"] == version)
    assert mine["status"] == "candidate" and mine["created_by"] == f"checkpoint:{ids[1]}"
    assert name in [m.id for m in client.models.list()]
    listed = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert {c.id: c.adapter_version for c in listed}[ids[1]] == version  # type: ignore[attr-defined]
    assert env.client.post(path, headers=ADMIN).json()["adapter_version"] == version  # once
    events = client.fine_tuning.jobs.list_events(job.id).data
    assert any(f"checkpoint {ids[1]} (step 6) registered as {version}" in e.message for e in events)
    # Another tenant's path to it, or no admin key: not found / refused.
    other = f"/admin/tenants/globex/fine_tuning/jobs/{job.id}/checkpoints/{ids[1]}/register"
    assert env.client.post(other, headers=ADMIN).status_code == 404
    assert env.client.post(path, headers=env.auth()).status_code in (401, 403)


# -- the store: job checkpoints on both backends --------------------------------------------------


def checkpoint(cid: str, job_id: str, tenant: str, step: int) -> JobCheckpoint:
    return JobCheckpoint(
        id=cid,
        job_id=job_id,
        tenant_id=tenant,
        step=step,
        epoch=step / 2,
        train_loss=0.5,
        valid_loss=None if step == 2 else 0.75,
        path=f"/jobs/{job_id}/checkpoints/step-{step}",
        fine_tuned_model_checkpoint=f"ft:m:t:s:{job_id}:ckpt-step-{step}",
        created_at=1000.0 + step,
    )


async def test_job_checkpoints_in_the_store(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        for t in ("t1", "t2"):
            await store.create_tenant(t, t)
            await store.create_job(contract_job(f"ftjob-{t}", t, created_at=1.0))
        for step in (2, 4, 6):
            await store.add_job_checkpoint(checkpoint(f"ftckpt_{step}", "ftjob-t1", "t1", step))
        await store.add_job_checkpoint(checkpoint("ftckpt_x", "ftjob-t2", "t2", 2))
        page, more = await store.list_job_checkpoints("t1", "ftjob-t1", None, 2)
        assert [c.id for c in page] == ["ftckpt_6", "ftckpt_4"] and more
        assert page[0] == checkpoint("ftckpt_6", "ftjob-t1", "t1", 6)  # every field round-trips
        rest, more = await store.list_job_checkpoints("t1", "ftjob-t1", "ftckpt_4", 2)
        assert [c.id for c in rest] == ["ftckpt_2"] and not more and rest[0].valid_loss is None
        # Scoped: another tenant's job, checkpoint, or cursor is nothing.
        assert await store.list_job_checkpoints("t2", "ftjob-t1", None, 10) == ([], False)
        assert await store.get_job_checkpoint("t2", "ftckpt_6") is None
        other, _ = await store.list_job_checkpoints("t1", "ftjob-t1", "ftckpt_x", 10)
        assert other == []
        assert await store.set_checkpoint_version("ftckpt_4", "ver-1")
        got = await store.get_job_checkpoint("t1", "ftckpt_4")
        assert got is not None and got.adapter_version == "ver-1"
        assert await store.clear_job_checkpoints("ftjob-t1") == 3
        assert await store.list_job_checkpoints("t1", "ftjob-t1", None, 10) == ([], False)
        assert await store.get_job_checkpoint("t2", "ftckpt_x") is not None
    finally:
        await store.close()
