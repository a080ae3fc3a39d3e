"""The console's Fine-tuning & datasets pages: jobs made through the tenant API shown, cancelled
from the console and read back through the API; the live stream; snapshots' filter reports;
loop timelines; tenant isolation and errors as pages."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest
from litestar.response.sse import ServerSentEventMessage

from gateway.console.job_stream import job_updates
from store import FineTuningJob, JobChanges, LoopRecord, Store, open_store
from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import csrf_of, sign_in
from tests.unit.test_finetuning_api import GOOD, upload
from tests.unit.test_poisoning import seed, start_loop, wait_run

ADMIN_KEY = "admin-secret"


def create_job(env: Env, key: str | None = None) -> dict:
    file_id = upload(env, GOOD, key)["id"]
    body = {"model": "smollm2", "training_file": file_id, "suffix": "tone", "seed": 11}
    body["hyperparameters"] = {"n_epochs": 2, "lora_rank": 8}  # type: ignore[assignment]
    resp = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth(key))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def store_of(env: Env) -> Store:
    store: Store = env.client.app.state.gateway.store
    return store


def add_progress(env: Env, job_id: str, step: int, loss: float) -> None:
    data: dict[str, float | int | str] = {"step": step, "total_steps": 4, "train_loss": loss}
    env.client.blocking_portal.call(
        store_of(env).add_job_event, job_id, "info", f"step {step}/4, train loss {loss}", data
    )


def sse(text: str) -> list[ServerSentEventMessage]:
    """A server-sent event stream's messages (event, id, data)."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
        if "event" in fields:
            seq = fields.get("id")
            found.append(ServerSentEventMessage(fields.get("data"), fields["event"], seq))
    return found


def test_signed_out_the_pages_send_the_browser_to_sign_in(env: Env) -> None:
    for path in ("/console/training", "/console/jobs/j", "/console/jobs/j/stream"):
        resp = env.client.get(path, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/console/login")
    for path in ("/console/datasets/d", "/console/loops/l"):
        assert env.client.get(path, follow_redirects=False).status_code == 303
    assert env.client.post("/console/jobs/j/cancel", follow_redirects=False).status_code == 401


def test_a_job_made_through_the_api_is_on_the_training_page_and_its_own(env: Env) -> None:
    job = create_job(env)
    add_progress(env, job["id"], 1, 2.5)
    add_progress(env, job["id"], 2, 1.75)
    sign_in(env.client, ADMIN_KEY)
    page = env.client.get("/console/training?tenant=acme")
    assert page.status_code == 200
    assert f'href="/console/jobs/{job["id"]}"' in page.text and 'id="jobs-table"' in page.text
    dataset_id = job["loopgate"]["dataset_id"]
    assert f"/console/datasets/{dataset_id}?tenant=acme" in page.text
    other = env.client.get("/console/training?tenant=globex").text
    assert job["id"] not in other and "No fine-tuning jobs" in other
    shown = env.client.get(f"/console/jobs/{job['id']}").text
    assert 'id="job-status">queued<' in shown and 'id="cancel-form"' in shown
    assert "<th>epochs</th><td><code>2</code>" in shown
    assert (
        "<th>rank</th><td><code>8</code>" in shown and "<th>seed</th><td><code>11</code>" in shown
    )
    assert "job created on dataset" in shown and "train loss 1.75" in shown
    assert "<svg" in shown and "<title>train loss</title>" in shown  # the loss curve
    assert "/console/static/training.js" in shown
    last = re.search(r'data-stream="/console/jobs/[^"?]+/stream\?after=(\d+)"', shown)
    assert last and int(last.group(1)) > 0  # the stream goes on after the last event shown


def test_cancel_from_the_console_is_read_back_through_the_api(env: Env) -> None:
    job = create_job(env)
    sign_in(env.client, ADMIN_KEY, "ada")
    csrf = csrf_of(env.client.get(f"/console/jobs/{job['id']}").text)
    done = env.client.post(
        f"/console/jobs/{job['id']}/cancel", data={"csrf": csrf}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == f"/console/jobs/{job['id']}"
    api = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.auth()).json()
    assert api["status"] == "cancelled"
    events = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=env.auth())
    assert any(e["message"] == "cancelled by console:ada" for e in events.json()["data"])
    page = env.client.get(f"/console/jobs/{job['id']}").text
    assert 'id="job-status">cancelled<' in page and 'id="cancel-form"' not in page
    again = env.client.post(f"/console/jobs/{job['id']}/cancel", data={"csrf": csrf})
    assert again.status_code == 400 and "already cancelled" in again.text
    assert "Traceback" not in again.text


def test_a_finished_jobs_stream_sends_its_events_and_loss_curve_then_ends(env: Env) -> None:
    job = create_job(env)
    add_progress(env, job["id"], 1, 2.5)
    add_progress(env, job["id"], 2, 1.5)
    env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=env.auth())
    sign_in(env.client, ADMIN_KEY)
    resp = env.client.get(f"/console/jobs/{job['id']}/stream")  # returns: the stream ended
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    messages = sse(resp.text)
    kinds = [m.event for m in messages]
    assert kinds[-2:] == ["status", "end"] and messages[-1].data == "cancelled"
    events = [m for m in messages if m.event == "job-event"]
    assert len(events) == 4 and all(m.id for m in events)
    assert '"train_loss":1.5' in str(events[2].data) and "cancelled by key:" in str(events[3].data)
    chart = next(m for m in messages if m.event == "chart")
    assert str(chart.data).startswith("<svg") and "train loss" in str(chart.data)
    # From a given event on (a reconnecting browser's Last-Event-ID wins over ?after=).
    second = str(events[1].id)
    later = sse(env.client.get(f"/console/jobs/{job['id']}/stream?after={second}").text)
    assert [m.id for m in later if m.event == "job-event"] == [events[2].id, events[3].id]
    headers = {"last-event-id": str(events[2].id)}
    resumed = sse(env.client.get(f"/console/jobs/{job['id']}/stream?after=0", headers=headers).text)
    assert [m.id for m in resumed if m.event == "job-event"] == [events[3].id]


def test_the_stream_follows_a_running_job_as_its_worker_writes(env: Env) -> None:
    """New events and loss points as they are stored, then the end once the job finishes."""
    job_id = create_job(env)["id"]
    store, portal = store_of(env), env.client.blocking_portal
    job: FineTuningJob | None = portal.call(store.claim_job, "worker-1")
    assert job is not None and job.id == job_id and job.status == "running"
    events, _ = portal.call(store.list_job_events, job_id, None, 10)
    updates = job_updates(store, job, events[0].seq, poll_s=0.01)

    def until(kind: str, stream: AsyncIterator[ServerSentEventMessage]) -> list[str]:
        seen = []
        while (m := portal.call(stream.__anext__)).event != kind:
            seen.append(str(m.event))
        return [*seen, kind]

    assert until("status", updates) == ["status"]  # nothing new yet: just where it stands
    add_progress(env, job_id, 1, 2.0)
    assert until("chart", updates) == ["job-event", "chart"]
    changes = JobChanges(status="succeeded", stage="done", finished_at=time.time() - 5)
    assert portal.call(store.update_job, job_id, changes)
    assert until("end", updates) == ["status", "end"]
    with pytest.raises(StopAsyncIteration):
        portal.call(updates.__anext__)


def test_a_tenant_session_sees_its_own_jobs_read_only_and_no_one_elses(env: Env) -> None:
    acme_job, globex_job = create_job(env), create_job(env, env.globex_key)
    dataset_id = acme_job["loopgate"]["dataset_id"]
    csrf, globex = sign_in(env.client, env.globex_key), env.auth(env.globex_key)
    page = env.client.get("/console/training")
    assert globex_job["id"] in page.text and acme_job["id"] not in page.text
    assert 'id="tenant-form"' not in page.text  # no tenant picker
    for path in (
        f"/console/jobs/{acme_job['id']}",
        f"/console/jobs/{acme_job['id']}/stream",
        f"/console/datasets/{dataset_id}",
        f"/console/datasets/{dataset_id}?tenant=acme",
        "/console/training?tenant=acme",
    ):
        resp = env.client.get(path)
        assert resp.status_code == 404, path
    own = env.client.get(f"/console/jobs/{globex_job['id']}").text
    assert 'id="job-status">queued<' in own and 'id="cancel-form"' not in own
    refused = env.client.post(f"/console/jobs/{globex_job['id']}/cancel", data={"csrf": csrf})
    assert refused.status_code == 403 and "read-only" in refused.text
    api = env.client.get(f"/v1/fine_tuning/jobs/{globex_job['id']}", headers=globex)
    assert api.json()["status"] == "queued"


def test_unknown_objects_and_bad_input_are_pages_without_a_trace(env: Env) -> None:
    job = create_job(env)
    sign_in(env.client, ADMIN_KEY)
    for path, status in (
        ("/console/jobs/ftjob-nope", 404),
        ("/console/datasets/ds-nope", 404),
        ("/console/loops/loop-nope", 404),
        ("/console/training?tenant=nobody", 404),
        (f"/console/jobs/{job['id']}/stream?after=-1", 400),
        (f"/console/jobs/{job['id']}/stream?after=many", 400),
    ):
        resp = env.client.get(path)
        assert resp.status_code == status, (path, resp.status_code)
        assert "text/html" in resp.headers["content-type"] and "Traceback" not in resp.text
    csrf = csrf_of(env.client.get("/console/training").text)
    missing = env.client.post("/console/jobs/ftjob-nope/cancel", data={"csrf": csrf})
    assert missing.status_code == 404


def test_a_file_snapshot_shows_what_was_excluded_and_why(env: Env) -> None:
    dup = GOOD.splitlines(keepends=True)[0]
    job = create_job_from(env, GOOD + dup + dup)
    sign_in(env.client, ADMIN_KEY)
    dataset_id = job["loopgate"]["dataset_id"]
    page = env.client.get(f"/console/datasets/{dataset_id}")  # an admin needs no ?tenant=
    assert page.status_code == 200 and "acme" in page.text
    assert "14 examples in, 12 kept, 2 excluded." in page.text
    row = re.search(r'<tr data-stage="exact_duplicate">(.*?)</tr>', page.text, re.S)
    assert row and ">2<" in row.group(1) and "exact duplicate" in row.group(1)
    assert 'id="review-status">clear<' in page.text


def create_job_from(env: Env, data: bytes) -> dict:
    file_id = upload(env, data)["id"]
    body = {"model": "smollm2", "training_file": file_id}
    resp = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.auth())
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


@pytest.mark.usefixtures("evals_worker")  # the loop is advanced by an evals worker
def test_a_loop_run_shows_its_timeline_and_its_snapshots_poisoning_flags(env: Env) -> None:
    seed(env, honest_users=20, per_user=2, posers=20)  # enough poison to stop for review
    why = "reviewed: two leaked keys; train on the rest"
    run = start_loop(env, {"allow_flagged": True, "reason": why})
    run = wait_run(env, run["id"], lambda r: r["job_id"] is not None or r["status"] != "running")
    assert run["job_id"], run
    env.client.post(f"/v1/fine_tuning/jobs/{run['job_id']}/cancel", headers=env.auth())
    run = wait_run(env, run["id"], lambda r: r["status"] != "running")
    sign_in(env.client, ADMIN_KEY)
    listed = env.client.get("/console/training?tenant=acme").text
    assert f'href="/console/loops/{run["id"]}?tenant=acme"' in listed
    page = env.client.get(f"/console/loops/{run['id']}?tenant=acme").text
    assert f'id="loop-status">{run["status"]}<' in page
    steps = re.findall(r'<tr data-step="\d+">(.*?)</tr>', page, re.S)
    assert len(steps) == len(run["steps"]) >= 3
    queued = next(s for s in steps if "fine-tuning job" in s and "queued" in s)
    assert f'<a href="/console/jobs/{run["job_id"]}">' in queued
    statuses = [re.findall(r'class="badge status-(\w+)', s) for s in steps]
    assert statuses == [*[["done"]] * (len(steps) - 1), [run["status"]]]
    made = next(s for s in steps if s.count(run["dataset_id"]) > 1)
    assert f"/console/datasets/{run['dataset_id']}?tenant=acme" in made
    fragment = env.client.get(f"/console/loops/{run['id']}/steps?tenant=acme")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert len(re.findall(r'<tr data-step="\d+">', fragment.text)) == len(steps)
    report = env.client.get(f"/console/datasets/{run['dataset_id']}?tenant=acme").text
    assert 'id="review-status">overridden<' in report and why in report
    flag = re.search(r'<tr data-flag="(\w+)">(.*?)</tr>', report, re.S)
    assert flag and "excluded" in flag.group(2)
    assert 'data-stage="trigger_phrase"' in report or 'data-stage="repeated_prompt"' in report
    env.client.cookies.clear()
    sign_in(env.client, env.globex_key)
    assert env.client.get(f"/console/loops/{run['id']}").status_code == 404
    assert env.client.get(f"/console/loops/{run['id']}?tenant=acme").status_code == 404
    assert env.client.get(f"/console/loops/{run['id']}/steps").status_code == 404
    api = env.client.get(f"/admin/tenants/acme/loops/{run['id']}", headers=ADMIN).json()
    assert api["status"] == run["status"]


async def test_loop_runs_are_listed_per_tenant_newest_first_and_bounded(url: str) -> None:
    """The store query behind the page's loop table, on both backends."""
    store = open_store(url)
    await store.open()
    try:
        for tenant_id, name in (("t1", "acme"), ("t2", "globex")):
            await store.create_tenant(tenant_id, name)
        for n in range(4):
            run = LoopRecord(f"loop-{n}", "t1", "support", "running", "{}", "{}", 100.0 + n)
            await store.add_loop_run(run)
        await store.add_loop_run(LoopRecord("loop-x", "t2", "a", "running", "{}", "{}", 500.0))
        listed = await store.list_loop_runs("t1", 3)
        assert [r.id for r in listed] == ["loop-3", "loop-2", "loop-1"]
        assert [r.id for r in await store.list_loop_runs("t2", 10)] == ["loop-x"]
    finally:
        await store.close()
