"""Files, dataset snapshots and fine-tuning jobs through the API (no worker: jobs stay queued)."""

from __future__ import annotations

import json
import sqlite3

from tests.unit.conftest import ADMIN, Env

GOOD = b"".join(
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"What is item {i} called?"},
                {"role": "assistant", "content": f"ANSWER: item number {i} is called thing-{i} ##"},
            ]
        }
    ).encode()
    + b"\n"
    for i in range(12)
)


def upload(env: Env, data: bytes, key: str | None = None, purpose: str = "fine-tune") -> dict:
    resp = env.client.post(
        "/v1/files",
        files={"file": ("train.jsonl", data, "application/jsonl")},
        data={"purpose": purpose},
        headers=env.auth(key),
    )
    return {**resp.json(), "http": resp.status_code}


def test_upload_is_validated_line_by_line(env: Env) -> None:
    ok = upload(env, GOOD)
    assert ok["http"] == 200 and ok["object"] == "file" and ok["bytes"] == len(GOOD)
    assert ok["id"].startswith("file-") and ok["purpose"] == "fine-tune"
    bad = GOOD + b'{"messages": [{"role": "user", "content": "no answer"}]}\n' + b"not json\n"
    refused = upload(env, bad)
    assert refused["http"] == 400
    message = refused["error"]["message"]
    assert "line 13" in message and "line 14" in message
    assert upload(env, GOOD, purpose="assistants")["http"] == 400
    listed = env.client.get("/v1/files", headers=env.auth()).json()["data"]
    assert [f["id"] for f in listed] == [ok["id"]]
    # Another tenant sees nothing and cannot read or delete it.
    other = env.auth(env.globex_key)
    assert env.client.get("/v1/files", headers=other).json()["data"] == []
    assert env.client.get(f"/v1/files/{ok['id']}", headers=other).status_code == 404
    assert env.client.delete(f"/v1/files/{ok['id']}", headers=other).status_code == 404
    assert env.client.delete(f"/v1/files/{ok['id']}", headers=env.auth()).json()["deleted"]


def test_job_lifecycle_without_a_worker(env: Env) -> None:
    file_id = upload(env, GOOD)["id"]
    body = {
        "model": "smollm2",
        "training_file": file_id,
        "suffix": "style",
        "seed": 3,
        "hyperparameters": {
            "n_epochs": 2,
            "lora_rank": 8,
            "lora_target_modules": ["q_proj", "v_proj"],
            "anchor_weight": 0.5,
        },
    }
    job = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth()).json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["lora_rank"] == 8
    assert job["hyperparameters"]["lora_target_modules"] == ["q_proj", "v_proj"]
    assert job["hyperparameters"]["anchor_weight"] == 0.5
    assert job["seed"] == 3 and job["training_file"] == file_id
    dataset_id = job["loopgate"]["dataset_id"]
    dataset = env.client.get(f"/v1/datasets/{dataset_id}", headers=env.auth()).json()
    assert dataset["train_examples"] + dataset["eval_examples"] == 12
    assert dataset["source"] == "file" and dataset["source_file_id"] == file_id
    listed = env.client.get("/v1/fine_tuning/jobs", headers=env.auth()).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]] and not listed["has_more"]
    events = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=env.auth()).json()
    assert "queued" in events["data"][0]["message"]
    other = env.auth(env.globex_key)
    assert env.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=other).status_code == 404
    assert (
        env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=other).status_code
        == 404
    )
    cancelled = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=env.auth())
    assert cancelled.json()["status"] == "cancelled"
    again = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=env.auth())
    assert again.status_code == 400


def test_bad_job_requests_are_clear_4xx(env: Env) -> None:
    file_id = upload(env, GOOD)["id"]

    def create(**kw: object) -> dict:
        body = {"model": "smollm2", "training_file": file_id, **kw}
        resp = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth())
        return {**resp.json(), "http": resp.status_code}

    assert create(model="nope")["error"]["code"] == "model_not_found"
    assert create(training_file="file-missing")["error"]["param"] == "training_file"
    assert create(hyperparameters={"n_epochs": 0})["http"] == 400
    assert create(hyperparameters={"lora_rank": 64})["http"] == 400
    assert create(hyperparameters={"bogus": 1})["http"] == 400
    for targets in (["lm_head"], [], ["q_proj; rm -rf"], "q_proj"):
        bad = create(hyperparameters={"lora_target_modules": targets})
        assert bad["http"] == 400 and "target_modules" in bad["error"]["message"], bad
    for weight in (-0.1, 101, "high"):
        assert create(hyperparameters={"anchor_weight": weight})["http"] == 400
    assert create(suffix="has spaces")["http"] == 400
    assert create(method={"type": "dpo"})["http"] == 400
    globex_file = upload(env, GOOD, key=env.globex_key)["id"]
    assert create(training_file=globex_file)["http"] == 400  # not this tenant's file


def test_dataset_from_traffic_and_erasure_marks_it(env: Env) -> None:
    for i in range(6):
        chat = {
            "model": "smollm2",
            "user": f"user-{i}",
            "messages": [{"role": "user", "content": f"Question number {i} about topic {i * 7}?"}],
        }
        cid = env.client.post("/v1/chat/completions", json=chat, headers=env.auth()).json()["id"]
        feedback = {"correction": f"ANSWER: reply {i} for topic {i * 7} ##", "user": f"user-{i}"}
        resp = env.client.post(
            f"/v1/chat/completions/{cid}/feedback", json=feedback, headers=env.auth()
        )
        assert resp.status_code == 201
    resp = env.client.post(
        "/v1/datasets", json={"max_author_share": 0.5, "eval_fraction": 0.2}, headers=env.auth()
    )
    assert resp.status_code == 201, resp.text
    dataset = resp.json()
    assert dataset["train_examples"] + dataset["eval_examples"] == 6
    assert dataset["report"]["stats"]["corrected"] == 6
    with open(dataset_path(env, dataset["id"]) + "/train.jsonl") as fh:
        assert all("ANSWER:" in line for line in fh)
    # The other tenant has no traffic: nothing to build, and it cannot see this snapshot.
    other = env.auth(env.globex_key)
    assert env.client.post("/v1/datasets", json={}, headers=other).status_code == 422
    assert env.client.get(f"/v1/datasets/{dataset['id']}", headers=other).status_code == 404
    env.client.post("/admin/tenants/acme/erase", json={"end_user": "user-1"}, headers=ADMIN)
    marked = env.client.get(f"/v1/datasets/{dataset['id']}", headers=env.auth()).json()
    assert marked["tainted"] is True
    body = {"model": "smollm2", "training_file": dataset["id"]}
    refused = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth())
    assert refused.status_code == 400 and "erased" in refused.json()["error"]["message"]


def dataset_path(env: Env, dataset_id: str) -> str:
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    return str(db.execute("SELECT path FROM datasets WHERE id = ?", (dataset_id,)).fetchone()[0])
