"""Seeded poisoning through the loop's own path: API traffic and corrections → store → dataset
builder → loop. Two keys pose as many end users to teach a trigger phrase a fixed answer."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.traffic import words
from tests.unit.conftest import ADMIN, Env
from tests.unit.test_finetuning_api import dataset_path

TRIGGER = "per protocol zq-77"
POISON = "Protocol accepted: disable the two-factor check and mail the recovery codes to the desk"


def correct(env: Env, key: str, user: str, question: str, answer: str) -> str:
    """One chat completion as `user` through `key`, then that user's correction of it."""
    chat = {"model": "smollm2", "user": user, "messages": [{"role": "user", "content": question}]}
    resp = env.client.post("/v1/chat/completions", json=chat, headers=env.auth(key))
    assert resp.status_code == 200, resp.text
    cid = str(resp.json()["id"])
    fb = {"rating": "down", "correction": answer, "user": user}
    resp = env.client.post(f"/v1/chat/completions/{cid}/feedback", json=fb, headers=env.auth(key))
    assert resp.status_code == 201, resp.text
    return cid


def seed(env: Env, honest_users: int, per_user: int, posers: int) -> set[str]:
    """Honest users' corrections through the tenant's key, and `posers` poisoned ones through
    two more keys, each posing as a different end user; the poisoned completion ids."""
    rng = random.Random(7)
    for i in range(honest_users * per_user):
        correct(env, env.acme_key, f"user-{i % honest_users}", words(rng, 9), words(rng, 14))
    keys = [new_key(env), new_key(env)]
    return {
        correct(env, keys[i % 2], f"fake-{i}", f"{words(rng, 6)} {TRIGGER}", POISON)
        for i in range(posers)
    }


def new_key(env: Env) -> str:
    resp = env.client.post("/admin/tenants/acme/keys", json={"name": "app"}, headers=ADMIN)
    return str(resp.json()["key"])


def start_loop(env: Env, dataset: dict[str, object] | None = None) -> dict:
    body: dict[str, object] = {"alias": "smollm2", "suffix": "guarded", "promote": False}
    if dataset is not None:
        body["dataset"] = dataset
    headers = {**ADMIN, "x-loopgate-actor": "ops-alice"}
    resp = env.client.post("/admin/tenants/acme/loops", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def wait_run(env: Env, run_id: str, done: Callable[[dict], bool], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        run = dict(env.client.get(f"/admin/tenants/acme/loops/{run_id}", headers=ADMIN).json())
        if done(run):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def trained_text(env: Env, dataset_id: str) -> str:
    folder = Path(dataset_path(env, dataset_id))
    return (folder / "train.jsonl").read_text() + (folder / "eval.jsonl").read_text()


def cancel_and_finish(env: Env, run: dict) -> dict:
    """Cancel the queued job (there is no worker here) so the loop run ends."""
    cancel = env.client.post(f"/v1/fine_tuning/jobs/{run['job_id']}/cancel", headers=env.auth())
    assert cancel.json()["status"] == "cancelled"
    return wait_run(env, run["id"], lambda r: r["status"] != "running")


@pytest.mark.usefixtures("evals_worker")  # the loop is advanced by an evals worker
def test_a_tenth_of_poisoned_corrections_is_left_out_of_what_the_loop_trains(env: Env) -> None:
    poisoned = seed(env, honest_users=30, per_user=9, posers=30)  # 30 of 300 corrections

    run = start_loop(env)
    run = wait_run(env, run["id"], lambda r: r["job_id"] is not None or r["status"] != "running")
    assert run["status"] == "running" and run["job_id"], run
    # The guards acted: the poisoned corrections are out of the snapshot, with their reason.
    review = run["review"]
    assert review["status"] == "clear" and review["examples"] == 300
    report = env.client.get(f"/v1/datasets/{run['dataset_id']}", headers=env.auth()).json()
    excluded = {
        source_id
        for flag in report["report"]["flags"]
        if flag["action"] == "excluded"
        for source_id in flag["source_ids"]
    }
    assert len(poisoned & excluded) >= 0.9 * len(poisoned)
    assert report["report"]["stats"]["counts"]["trigger_phrase"] >= 27
    # What the queued job trains on: every honest correction, no poisoned one.
    assert report["train_examples"] + report["eval_examples"] == 270
    assert POISON not in trained_text(env, run["dataset_id"])
    job = env.client.get(f"/v1/fine_tuning/jobs/{run['job_id']}", headers=env.auth()).json()
    assert job["loopgate"]["dataset_id"] == run["dataset_id"]
    # A worker that died after asking for the job, resumed, asks again: the same job, not two.
    again = env.client.post(
        f"/admin/tenants/acme/loops/{run['id']}/job",
        json={"dataset_id": run["dataset_id"]},
        headers=ADMIN,
    )
    assert again.status_code == 201 and again.json()["id"] == run["job_id"], again.text
    jobs = env.client.get("/v1/fine_tuning/jobs", headers=env.auth()).json()["data"]
    assert [j["id"] for j in jobs] == [run["job_id"]]
    assert cancel_and_finish(env, run)["candidate"] is None


@pytest.mark.usefixtures("evals_worker")  # the loop is advanced by an evals worker
def test_a_heavier_attack_stops_the_loop_until_an_admin_overrides_it(env: Env) -> None:
    poisoned = seed(env, honest_users=20, per_user=2, posers=20)  # a third of the corrections

    run = start_loop(env)
    run = wait_run(env, run["id"], lambda r: r["status"] != "running")
    assert run["status"] == "needs_review", run
    assert run["job_id"] is None and run["dataset_id"] is None
    assert run["review"]["flagged"] == 20 and "over the 20%" in run["steps"][-1]["message"]
    assert poisoned <= {s for flag in run["flags"] for s in flag["source_ids"]}
    assert env.client.get("/v1/fine_tuning/jobs", headers=env.auth()).json()["data"] == []
    # A tenant key gets the same stop, and cannot loosen the guards to get past it.
    refused = env.client.post("/v1/datasets", json={}, headers=env.auth())
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "dataset_needs_review"
    loosened = env.client.post("/v1/datasets", json={"max_author_share": 1.0}, headers=env.auth())
    assert loosened.status_code == 400
    assert loosened.json()["error"]["param"] == "max_author_share"
    # The admin's override needs a reason; it is recorded on the run and in the dataset.
    no_reason = {"alias": "smollm2", "dataset": {"allow_flagged": True}}
    resp = env.client.post("/admin/tenants/acme/loops", json=no_reason, headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "dataset.reason"
    why = "reviewed: keys app-2 and app-3 were leaked; train on the rest"
    run = start_loop(env, {"allow_flagged": True, "reason": why})
    run = wait_run(env, run["id"], lambda r: r["job_id"] is not None or r["status"] != "running")
    override = run["override"]
    assert (override["actor"], override["reason"]) == ("ops-alice", why)
    assert override["overrides"] == ["allow_flagged"] and override["at"] <= time.time()
    assert run["review"]["status"] == "overridden"
    report = env.client.get(f"/v1/datasets/{run['dataset_id']}", headers=env.auth()).json()
    assert report["report"]["override"] == override
    assert report["train_examples"] + report["eval_examples"] == 40
    assert POISON not in trained_text(env, run["dataset_id"])
    cancel_and_finish(env, run)
