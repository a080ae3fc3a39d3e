"""Fair shares through the API: bounds on a job's size, quotas on files, datasets, jobs and eval
runs (each refused with a clear error), a tenant's own values set by the admin, admin cancel."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.unit.conftest import ADMIN, Env
from tests.unit.test_adapters_api import upload as upload_adapter
from tests.unit.test_evals_api import SUITE, answer_by_model, run_eval
from tests.unit.test_finetuning_api import GOOD, upload

OTHER = GOOD.replace(b"called", b"named")  # another file, so another dataset


def create(env: Env, file_id: str, key: str | None = None, **kw: object) -> httpx.Response:
    body = {"model": "smollm2", "training_file": file_id, **kw}
    return env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth(key))


def set_quotas(env: Env, tenant: str = "acme", **values: object) -> dict:
    resp = env.client.put(f"/admin/tenants/{tenant}/quotas", json=values, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def cancel(env: Env, job_id: str) -> None:
    resp = env.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=env.auth())
    assert resp.json()["status"] == "cancelled"


def assert_quota_error(resp: httpx.Response, quota: str) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert resp.json()["error"]["code"] == "quota_exceeded"
    assert resp.json()["error"]["param"] == quota
    assert quota in resp.json()["error"]["message"]
    assert resp.headers["x-should-retry"] == "false"  # the SDKs would retry a 429 otherwise


def tenant_files(env: Env, tenant: str = "acme") -> list[str]:
    gw = env.client.app.state.gateway
    folder = Path(gw.settings.training_path) / "files" / gw_tenant_id(env, tenant)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def gw_tenant_id(env: Env, name: str) -> str:
    return str(env.client.get(f"/admin/tenants/{name}", headers=ADMIN).json()["id"])


def test_hyperparameters_past_the_default_bounds_are_refused_by_name(env: Env) -> None:
    file_id = upload(env, GOOD)["id"]
    for name, value in (("n_epochs", 11), ("batch_size", 17), ("max_seq_length", 2049)):
        for body in (
            {"hyperparameters": {name: value}},
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {name: value}}}},
        ):
            refused = create(env, file_id, **body)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert (error["type"], error["param"], error["code"]) == (
                "invalid_request_error",
                name,
                "bound_exceeded",
            )
            assert str(value) in error["message"]
    at_bounds = {"n_epochs": 10, "batch_size": 16, "max_seq_length": 2048}
    job = create(env, file_id, hyperparameters=at_bounds)
    assert job.status_code == 200, job.text
    assert job.json()["hyperparameters"]["n_epochs"] == 10
    assert job.json()["hyperparameters"]["batch_size"] == 16


def test_a_tenants_own_bounds_refuse_what_it_asks_and_lower_its_defaults(env: Env) -> None:
    shares = set_quotas(env, max_epochs=2, max_batch_size=2)
    assert shares["own"]["max_epochs"] == 2 and shares["own"]["max_files"] is None
    assert shares["in_force"]["max_epochs"] == 2 and shares["in_force"]["max_files"] == 100
    file_id = upload(env, GOOD)["id"]
    refused = create(env, file_id, hyperparameters={"n_epochs": 3})
    assert refused.status_code == 400 and "bound is 2" in refused.json()["error"]["message"]
    auto = create(env, file_id).json()  # "auto" means 1 epoch, batch 4: batch lowered to 2
    assert (auto["hyperparameters"]["n_epochs"], auto["hyperparameters"]["batch_size"]) == (1, 2)
    other = upload(env, GOOD, key=env.globex_key)["id"]
    theirs = create(env, other, key=env.globex_key).json()
    assert (theirs["hyperparameters"]["n_epochs"], theirs["hyperparameters"]["batch_size"]) == (
        1,
        4,
    )


def test_a_dataset_past_the_examples_bound_is_refused(env: Env) -> None:
    set_quotas(env, max_train_examples=5)
    file_id = upload(env, GOOD)["id"]
    refused = create(env, file_id)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("training_file", "bound_exceeded")
    assert "max_train_examples" in error["message"]
    set_quotas(env)  # back to the default (2,000)
    assert create(env, file_id).status_code == 200


def test_at_most_three_queued_jobs_per_tenant(env: Env) -> None:
    file_id = upload(env, GOOD)["id"]
    jobs = [create(env, file_id).json()["id"] for _ in range(3)]
    assert_quota_error(create(env, file_id), "max_queued_jobs")
    other = upload(env, GOOD, key=env.globex_key)["id"]
    assert create(env, other, key=env.globex_key).status_code == 200  # its own queue
    cancel(env, jobs[0])
    assert create(env, file_id).status_code == 200
    listed = env.client.get("/v1/fine_tuning/jobs", headers=env.auth()).json()["data"]
    assert len(listed) == 4  # the refused one was never recorded


def test_jobs_per_day_quota(env: Env) -> None:
    set_quotas(env, max_jobs_per_day=2)
    file_id = upload(env, GOOD)["id"]
    for _ in range(2):
        cancel(env, create(env, file_id).json()["id"])  # the queue is empty again
    assert_quota_error(create(env, file_id), "max_jobs_per_day")


def test_file_quotas_refuse_an_upload_and_keep_nothing_of_it(env: Env) -> None:
    set_quotas(env, max_files=1)
    first = upload(env, GOOD)
    refused = upload(env, GOOD)
    assert refused["http"] == 429 and refused["error"]["param"] == "max_files"
    assert tenant_files(env) == [f"{first['id']}.jsonl"]
    set_quotas(env, max_file_bytes=len(GOOD) + 100)
    refused = upload(env, GOOD)  # fits the upload limit, not the room left in the quota
    assert refused["http"] == 429 and refused["error"]["param"] == "max_file_bytes"
    assert tenant_files(env) == [f"{first['id']}.jsonl"]
    env.client.delete(f"/v1/files/{first['id']}", headers=env.auth())
    assert upload(env, GOOD)["http"] == 200


def test_dataset_quota(env: Env) -> None:
    set_quotas(env, max_datasets=1)
    assert create(env, upload(env, GOOD)["id"]).status_code == 200  # a snapshot of the file
    assert_quota_error(create(env, upload(env, OTHER)["id"]), "max_datasets")
    # Checked before the snapshot is built (this tenant has no traffic: it would be a 422).
    assert_quota_error(env.client.post("/v1/datasets", json={}, headers=env.auth()), "max_datasets")
    assert len(env.client.get("/v1/datasets", headers=env.auth()).json()["data"]) == 1


@pytest.mark.usefixtures("evals_worker")  # the eval run is done by an evals worker
def test_eval_runs_per_day_quota(env: Env, tmp_path: Path) -> None:
    set_quotas(env, max_eval_runs_per_day=1)
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    version = str(upload_adapter(env, tmp_path, 1)["id"])
    env.engine.custom = answer_by_model("ANSWER: escalated ##")  # type: ignore[assignment]
    assert run_eval(env, version)["status"] == "done"
    body = {"alias": "support", "candidate": version, "suite_jsonl": SUITE}
    again = env.client.post("/admin/tenants/acme/evals", json=body, headers=ADMIN)
    assert_quota_error(again, "max_eval_runs_per_day")
    assert len(env.client.get("/admin/tenants/acme/evals", headers=ADMIN).json()["data"]) == 1


def test_the_admin_quota_routes(env: Env) -> None:
    shares = env.client.get("/admin/tenants/acme/quotas", headers=ADMIN).json()
    assert set(shares["own"].values()) == {None}
    assert shares["in_force"] == {
        "max_epochs": 10,
        "max_batch_size": 16,
        "max_seq_length": 2048,
        "max_train_examples": 2000,
        "max_queued_jobs": 3,
        "max_jobs_per_day": 24,
        "max_files": 100,
        "max_file_bytes": 1024**3,
        "max_datasets": 100,
        "max_eval_runs_per_day": 48,
        "max_active_batches": 4,
        "max_batch_lines": 10_000,
    }
    upload(env, GOOD)
    usage = env.client.get("/admin/tenants/acme/quotas", headers=ADMIN).json()["usage"]
    assert (usage["files"], usage["file_bytes"], usage["queued_jobs"]) == (1, len(GOOD), 0)
    for bad in ({"max_seq_length": 8}, {"max_files": 0}, {"max_files": "many"}, {"nope": 1}):
        resp = env.client.put("/admin/tenants/acme/quotas", json=bad, headers=ADMIN)
        assert resp.status_code == 400, (bad, resp.text)
    assert env.client.get("/admin/tenants/nobody/quotas", headers=ADMIN).status_code == 404
    assert env.client.get("/admin/tenants/acme/quotas", headers=env.auth()).status_code == 403
    resp = env.client.put("/admin/tenants/acme/quotas", json={}, headers=env.auth())
    assert resp.status_code == 403


def test_the_admin_cancels_any_tenants_job_and_is_recorded(env: Env) -> None:
    file_id = upload(env, GOOD)["id"]
    queued, running = (create(env, file_id).json()["id"] for _ in range(2))
    path = f"/admin/tenants/acme/fine_tuning/jobs/{queued}/cancel"
    assert env.client.post(path, headers=env.auth()).status_code == 403  # a tenant key
    wrong = f"/admin/tenants/globex/fine_tuning/jobs/{queued}/cancel"
    assert env.client.post(wrong, headers=ADMIN).status_code == 404  # not globex's job
    done = env.client.post(path, headers={**ADMIN, "x-loopgate-actor": "ops"})
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    events = env.client.get(f"/v1/fine_tuning/jobs/{queued}/events", headers=env.auth()).json()
    assert events["data"][0]["message"] == "cancelled by admin:ops"
    assert events["data"][0]["data"] == {"actor": "admin:ops"}
    assert env.client.post(path, headers=ADMIN).status_code == 400  # already cancelled
    start_training(env, running)
    path = f"/admin/tenants/acme/fine_tuning/jobs/{running}/cancel"
    flagged = env.client.post(path, headers=ADMIN)
    assert flagged.json()["status"] == "running" and flagged.json()["loopgate"]["cancel_requested"]
    events = env.client.get(f"/v1/fine_tuning/jobs/{running}/events", headers=env.auth()).json()
    assert events["data"][0]["message"] == "cancellation requested by admin"
    listed = env.client.get("/admin/tenants/acme/fine_tuning/jobs", headers=ADMIN).json()
    assert {j["id"] for j in listed["data"]} == {queued, running}
    # The tenant's own cancel names its key.
    third = create(env, file_id).json()["id"]
    cancel(env, third)
    events = env.client.get(f"/v1/fine_tuning/jobs/{third}/events", headers=env.auth()).json()
    assert events["data"][0]["message"].startswith("cancelled by key:")


def start_training(env: Env, job_id: str) -> None:
    """What a worker's claim does to the row (no worker runs in the unit tier)."""
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    with db:
        db.execute(
            "UPDATE fine_tuning_jobs SET status = 'running', stage = 'training', worker = 'w1' "
            "WHERE id = ?",
            (job_id,),
        )
    db.close()


def test_quota_errors_are_documented_in_the_openapi_document(env: Env) -> None:
    doc = env.client.get("/openapi.json").json()
    for path in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/datasets"):
        assert "429" in doc["paths"][path]["post"]["responses"], path
    assert "/admin/tenants/{tenant}/quotas" in doc["paths"]
    assert json.dumps(doc).count("quota_exceeded") >= 1
