"""The loop ends in a rollout (evals.loop_run → gateway.loop → gateway.rollout), and one call
retrains an alias on cleaned data, through the evals worker's real path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from evals.loop_record import LoopRun
from gateway.cli import main
from gateway.loop import LoopSpec, StartLoop
from store import LoopRecord
from tests.unit.conftest import ADMIN, Env
from tests.unit.test_cli_adapters import served  # noqa: F401 - a fixture
from tests.unit.test_poisoning import cancel_and_finish, correct, trained_text, wait_run
from tests.unit.test_rollout import call, gw, passing_eval, setup, tenant_id

SLEEPY = {"rollout_tick_s": 3600.0, "rollout_lease_s": 7200.0}


@pytest.mark.parametrize("overrides", [SLEEPY])
@pytest.mark.usefixtures("evals_worker")  # the loop is advanced by an evals worker
def test_a_loop_past_the_gate_ends_in_a_rollout_and_shows_it(env: Env, tmp_path: Path) -> None:
    v1, v2 = setup(env, tmp_path)
    eval_id = passing_eval(env, v2, v1)
    # A loop that already trained v2 and ran its eval (a worker resumes it where it stood).
    run = LoopRun("loop-resumed", tenant_id(env), "support", "running", time.time())
    run.dataset_id, run.candidate, run.eval_id = "ds-0", v2, eval_id
    record = LoopRecord(
        id=run.id,
        tenant_id=run.tenant_id,
        alias="support",
        status="running",
        spec=msgspec.json.encode(LoopSpec(StartLoop(alias="support"), "ops")).decode(),
        state=msgspec.json.encode(run).decode(),
        created_at=run.started_at,
    )
    call(env, gw(env).store.add_loop_run, record)
    shown = wait_run(env, run.id, lambda r: r["status"] != "running")
    assert shown["status"] == "rolling_out", shown["steps"]
    assert shown["rollout_stage"] == "offline" and shown["rollout_id"]
    assert shown["steps"][-1]["message"].startswith(f"rollout {shown['rollout_id']} of {v2}")
    url = f"/admin/tenants/acme/aliases/support/rollouts/{shown['rollout_id']}"
    rollout = env.client.get(url, headers=ADMIN).json()
    assert (rollout["version"], rollout["eval_id"], rollout["actor"]) == (
        v2,
        eval_id,
        "loop:ops:loop-resumed",
    )
    again = env.client.post("/admin/tenants/acme/loops/loop-resumed/rollout", headers=ADMIN)
    assert again.status_code == 409  # the run ended: no second rollout from it
    env.client.post(url + "/abort", json={"reason": "t"}, headers=ADMIN)
    ended = env.client.get("/admin/tenants/acme/loops/loop-resumed", headers=ADMIN).json()
    assert ended["status"] == "aborted"


@pytest.mark.usefixtures("evals_worker")
def test_retrain_rebuilds_without_opted_out_data_and_ends_in_a_rollout(env: Env) -> None:
    for i in range(12):
        correct(env, env.acme_key, f"bob-{i % 3}", f"bob question {i} here", f"bob answer {i}")
        correct(env, env.acme_key, "alice", f"alice question {i} here", f"alice answer {i}")
    resp = env.client.post("/admin/tenants/acme/opt-out", json={"end_user": "alice"}, headers=ADMIN)
    assert resp.status_code == 200
    resp = env.client.post(
        "/admin/tenants/acme/aliases/smollm2/retrain",
        json={"reason": "alice withdrew consent"},
        headers=ADMIN,
    )
    assert resp.status_code == 202, resp.text
    run = resp.json()
    assert "without erased or opted-out data: alice withdrew consent" in run["steps"][0]["message"]
    spec = call(env, gw(env).store.get_loop_run, tenant_id(env), run["id"]).spec
    assert msgspec.json.decode(spec, type=LoopSpec).request.end == "rollout"
    run = wait_run(env, run["id"], lambda r: r["job_id"] is not None or r["status"] != "running")
    assert run["job_id"], run
    text = trained_text(env, run["dataset_id"])
    assert "bob answer" in text and "alice" not in text
    cancel_and_finish(env, run)


def test_the_retrain_command(
    served: tuple[str, object],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = served
    assert main(["tenant", "create", "acme"]) == 0
    capsys.readouterr()
    argv = ["adapters", "--url", url, "retrain", "acme", "smollm2", "--reason", "erasure"]
    assert main(argv) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "running" and run["alias"] == "smollm2"
    assert "with the default recipe" in run["steps"][0]["message"]
    assert main(["adapters", "--url", url, "retrain", "acme", "nope"]) == 1
    assert "404" in capsys.readouterr().err
