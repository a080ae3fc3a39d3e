"""Erasure follows the data: snapshot files, eval answers and reports, adapter lineage, promotion.

A tenant's end users u1 and u2 chat and correct answers; a snapshot of that traffic trains
(registered directly: no real training) an adapter version, which is evaluated on the snapshot's
held-out split with answers that quote the prompts. Then u1, or the whole tenant, is erased.
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.erasure import DataErasure
from store import CaseSource, Dataset, EvalRun, SQLiteStore
from tests.support.traffic import words
from tests.unit.adapter_files import write_adapter
from tests.unit.conftest import ADMIN, Env
from tests.unit.fake_engine import chat_body

PER_USER = 8


@dataclass
class World:
    dataset: dict[str, object]
    folder: Path
    version: str
    run: dict[str, object]
    secrets: dict[str, list[str]]  # per end user: the words only their traffic holds


def echo_prompt_unless_adapter(request: httpx.Request) -> httpx.Response:
    """The adapter answers badly; the base quotes the prompt (the report shows regressions)."""
    body = json.loads(request.content)
    prompt = str(body["messages"][-1]["content"])
    text = "no idea" if str(body["model"]).startswith("lg-") else f"you said: {prompt}"
    return httpx.Response(200, json=chat_body(text, model=str(body["model"])))


def chat(env: Env, rng: random.Random, user: str) -> str:
    """One exchange of `user`, corrected by them; the secret word is in prompt and answer."""
    secret = f"{user}x{rng.randrange(10**9)}"
    topic = words(rng, 6)
    body = {
        "model": "smollm2",
        "user": user,
        "messages": [{"role": "user", "content": f"{secret} asks about {topic}?"}],
    }
    cid = env.client.post("/v1/chat/completions", json=body, headers=env.auth()).json()["id"]
    fix = {"correction": f"{secret} hears: {topic} {words(rng, 6)}", "user": user}
    resp = env.client.post(f"/v1/chat/completions/{cid}/feedback", json=fix, headers=env.auth())
    assert resp.status_code == 201, resp.text
    return secret


def build_world(env: Env, tmp_path: Path) -> World:
    rng = random.Random(11)
    secrets: dict[str, list[str]] = {"u1": [], "u2": []}
    for _ in range(PER_USER):
        for user in ("u1", "u2"):
            secrets[user].append(chat(env, rng, user))
    spec = {"max_author_share": 0.5, "eval_fraction": 0.4, "seed": 3}
    resp = env.client.post("/v1/datasets", json=spec, headers=env.auth())
    assert resp.status_code == 201, resp.text
    dataset = resp.json()
    gw = env.client.app.state.gateway
    folder = gw.settings.training_path / "datasets" / gw_tenant(env).id / dataset["id"]
    held_out = (folder / "eval.jsonl").read_text()
    assert any(s in held_out for s in secrets["u1"]) and any(s in held_out for s in secrets["u2"])
    version = register(env, tmp_path, str(dataset["id"]))
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    env.engine.custom = echo_prompt_unless_adapter  # type: ignore[assignment]
    run = run_eval(env, version)
    report = (Path(str(run["report_dir"])) / "report.md").read_text()
    assert any(s in report for s in secrets["u1"])  # the worst cases quote the prompts
    return World(dataset, folder, version, run, secrets)


def gw_tenant(env: Env) -> object:
    gw = env.client.app.state.gateway
    return env.client.blocking_portal.call(gw.admin.tenant, "acme")


def register(env: Env, tmp_path: Path, dataset_id: str) -> str:
    """An adapter version trained on the snapshot, registered as the job's registration does."""
    gw = env.client.app.state.gateway
    folder = write_adapter(tmp_path / "trained", seed=5)

    async def go() -> str:
        tenant = await gw.admin.tenant("acme")
        version = await gw.registry.import_folder(
            tenant, folder, name="ft-style", created_by="job:ftjob-1", dataset_id=dataset_id
        )
        return str(version.id)

    return str(env.client.blocking_portal.call(go))


def run_eval(env: Env, version: str) -> dict[str, object]:
    body = {"alias": "support", "candidate": version}
    resp = env.client.post("/admin/tenants/acme/evals", json=body, headers=ADMIN)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = env.client.get(f"/admin/tenants/acme/evals/{run_id}", headers=ADMIN).json()
        if run["status"] in ("done", "failed"):
            assert run["status"] == "done", run
            db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
            (folder,) = db.execute("SELECT report_dir FROM eval_runs WHERE id = ?", (run_id,))
            return {**run, "report_dir": folder[0]}
        time.sleep(0.05)
    raise AssertionError(f"eval {run_id} did not finish")


def results(env: Env, run_id: object) -> list[dict[str, object]]:
    resp = env.client.get(f"/admin/tenants/acme/evals/{run_id}/results", headers=ADMIN)
    return list(resp.json()["data"])


def tenant_text(folder: Path) -> str:
    return "".join(p.read_text() for p in sorted(folder.iterdir()))


@pytest.mark.usefixtures("evals_worker")  # the eval run is done by an evals worker
def test_erasing_an_end_user_follows_their_data(env: Env, tmp_path: Path) -> None:
    w = build_world(env, tmp_path)
    before = results(env, w.run["id"])
    assert any(s in str(r["answer"]) for r in before for s in w.secrets["u1"])

    resp = env.client.post("/admin/tenants/acme/erase", json={"end_user": "u1"}, headers=ADMIN)

    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "erased": PER_USER,
        "end_user": "u1",
        "datasets": [w.dataset["id"]],
        "adapter_versions_trained_on_erased": [w.version],
        "eval_runs": [w.run["id"]],
        "files_pending": [],
    }
    # 1. The snapshot's files no longer hold u1's text; u2's examples stay, and the record says so.
    files = tenant_text(w.folder)
    assert not any(s in files for s in w.secrets["u1"]) and '"u1"' not in files
    assert all(s in files for s in w.secrets["u2"])
    shown = env.client.get(f"/v1/datasets/{w.dataset['id']}", headers=env.auth()).json()
    assert shown["tainted"] is True and shown["erasure"] == "rewritten"
    assert shown["erased_examples"] == PER_USER
    assert shown["train_examples"] + shown["eval_examples"] == PER_USER
    assert "u1" not in json.dumps(shown["report"])
    # ... and neither do the eval's answers nor its report.
    after = results(env, w.run["id"])
    assert len(after) == len(before)
    assert not any(s in str(r["answer"]) for r in after for s in w.secrets["u1"])
    assert any(s in str(r["answer"]) for r in after for s in w.secrets["u2"])
    erased = [r for r in after if r["answer"] == "[erased]"]
    assert erased and all(r["suite"] == "tenant" for r in erased)
    run = env.client.get(f"/admin/tenants/acme/evals/{w.run['id']}", headers=ADMIN).json()
    assert run["erased_at"] is not None and run["report_files"] == []
    assert run["promote"] is False and run["summary"] is not None  # the verdict stays
    assert not Path(str(w.run["report_dir"])).exists()
    report = env.client.get(f"/admin/tenants/acme/evals/{w.run['id']}/report.md", headers=ADMIN)
    assert report.status_code == 404
    # 2. The adapter version trained on it is marked, in its lineage and the listing.
    shown_version = env.client.get(f"/admin/tenants/acme/adapters/{w.version}", headers=ADMIN)
    assert shown_version.json()["version"]["trained_on_erased"] is True
    listed = env.client.get("/admin/tenants/acme/adapters", headers=ADMIN).json()["data"]
    assert [v["trained_on_erased"] for v in listed] == [True]
    # 3. Promoting it needs force and a reason, and the alias history records both.
    assert_promotion_needs_force(env, w.version)


def assert_promotion_needs_force(env: Env, version: str) -> None:
    def promote(**body: object) -> httpx.Response:
        return env.client.post(
            "/admin/tenants/acme/aliases/support/promote",
            json={"version": version, **body},
            headers={**ADMIN, "x-loopgate-actor": "dpo"},
        )

    refused = promote(reason="looks fine")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "trained_on_erased"
    assert "erased" in refused.json()["error"]["message"]
    assert promote(force=True).status_code == 400  # forcing needs a reason
    assert promote(force=True, reason="  ").status_code == 400
    env.engine.custom = None  # the probe's answer
    forced = promote(force=True, reason="legal approved keeping it until v2 ships")
    assert forced.status_code == 200, forced.text
    history = env.client.get("/admin/tenants/acme/aliases/support/history", headers=ADMIN).json()
    event = history[-1]
    assert (event["forced"], event["actor"], event["to_version"]) == (True, "dpo", version)
    assert event["reason"].startswith("legal approved keeping it until v2 ships")
    assert "trained on erased data" in event["reason"]
    # A rollback onto a marked version is a promotion too.
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    back = env.client.post(
        "/admin/tenants/acme/aliases/support/rollback", json={"reason": "oops"}, headers=ADMIN
    )
    assert back.status_code == 409 and back.json()["error"]["code"] == "trained_on_erased"


@pytest.mark.usefixtures("evals_worker")  # the eval run is done by an evals worker
def test_erasing_the_tenant_deletes_its_snapshot(
    env: Env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_output: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # log_output: the CLI configures logging; the fixture puts the test's handlers back.
    w = build_world(env, tmp_path)
    env.client.post("/v1/chat/completions", json=CHAT_GLOBEX, headers=env.auth(env.globex_key))
    monkeypatch.setenv("LOOPGATE_DATA_DIR", str(env.client.app.state.gateway.settings.data_dir))

    assert main(["erase", "acme"]) == 0  # the CLI: the same erase, on this host's store

    printed = json.loads(capsys.readouterr().out)
    assert (printed["erased"], printed["end_user"], printed["files_pending"]) == (16, None, [])
    assert printed["adapter_versions_trained_on_erased"] == [w.version]
    assert not w.folder.exists()
    shown = env.client.get(f"/v1/datasets/{w.dataset['id']}", headers=env.auth()).json()
    assert (shown["erasure"], shown["train_examples"], shown["eval_examples"]) == ("deleted", 0, 0)
    assert shown["erased_examples"] == 2 * PER_USER
    assert shown["report"]["stats"]["top_authors"] == [] and shown["report"]["flags"] == []
    after = results(env, w.run["id"])
    tenant_answers = {r["answer"] for r in after if r["suite"] == "tenant"}
    assert tenant_answers == {"[erased]"}
    assert {r["answer"] for r in after if r["suite"] == "guard"} != {"[erased]"}
    assert not Path(str(w.run["report_dir"])).exists()
    version = env.client.get(f"/admin/tenants/acme/adapters/{w.version}", headers=ADMIN).json()
    assert version["version"]["trained_on_erased"] is True
    # Nothing is left to hold out: a new eval of it needs an uploaded suite.
    again = env.client.post(
        "/admin/tenants/acme/evals",
        json={"alias": "support", "candidate": w.version},
        headers=ADMIN,
    )
    assert again.status_code == 400 and "erased" in again.json()["error"]["message"]
    assert_promotion_needs_force(env, w.version)
    # The other tenant's traffic is untouched.
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 1


def test_a_version_registered_after_the_erase_is_marked(env: Env, tmp_path: Path) -> None:
    """A job that trained while the data was being erased registers a marked version."""
    rng = random.Random(5)
    for _ in range(4):
        for user in ("u1", "u2"):
            chat(env, rng, user)
    spec = {"max_author_share": 0.5, "eval_fraction": 0.25}
    dataset = env.client.post("/v1/datasets", json=spec, headers=env.auth()).json()
    env.client.post("/admin/tenants/acme/erase", json={"end_user": "u2"}, headers=ADMIN)
    version = register(env, tmp_path, str(dataset["id"]))
    shown = env.client.get(f"/admin/tenants/acme/adapters/{version}", headers=ADMIN).json()
    assert shown["version"]["trained_on_erased"] is True


CHAT_GLOBEX = {"model": "smollm2", "messages": [{"role": "user", "content": "hello"}]}


async def test_the_follow_through_touches_only_its_own_folders(tmp_path: Path) -> None:
    """Rows point at folders; only those under the training and report roots are rewritten or
    deleted, and a snapshot that cannot be read stays pending without holding back the rest."""
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        await store.create_tenant("t1", "acme")
        roots = tmp_path / "training" / "datasets", tmp_path / "evals"
        inside = roots[0] / "t1" / "ds-in"
        outside = tmp_path / "elsewhere" / "ds-out"
        broken = roots[0] / "t1" / "ds-broken"
        for folder in (broken, inside, outside):
            folder.mkdir(parents=True)
            (folder / "train.jsonl").write_text('{"messages": []}\n')
            (folder / "provenance.jsonl").write_text(
                '{"file":"train.jsonl","line":1,"split":"train","provenance":{"source":"traffic",'
                '"source_id":"c-gone","author":"u1"}}\n'
            )
            ds = Dataset(
                folder.name, "t1", "h", "traffic", None, 1, 0, 0, str(folder), "{}", "k", 1
            )
            await store.add_dataset(ds, ["c-gone"])  # erased before it was stored
        (broken / "provenance.jsonl").write_text("not json\n")
        reports = {"ev-in": roots[1] / "t1" / "ev-in", "ev-out": tmp_path / "elsewhere" / "ev"}
        for run_id, folder in reports.items():  # runs that read c-gone's case as it was erased
            folder.mkdir(parents=True)
            run = EvalRun(run_id, "t1", "support", "av-1", None, "running", "admin", 1)
            await store.add_eval_run(run, sources=[CaseSource("tenant", "tenant-0", "c-gone")])
            await store.finish_eval_run(run_id, "done", report_dir=str(folder))
        erasure = DataErasure(store, *roots)
        assert await erasure.follow() == 2
        assert not inside.exists() and (outside / "train.jsonl").exists()
        assert not reports["ev-in"].exists() and reports["ev-out"].exists()
        assert [r.id for r in await store.eval_reports_to_erase()] == ["ev-out"]
        assert [d.id for d in await store.datasets_to_erase()] == ["ds-broken", "ds-out"]
        assert (broken / "train.jsonl").exists()
        kept = await store.get_dataset("t1", "ds-in")
        assert kept is not None and (kept.erasure, kept.erased_examples) == ("deleted", 1)
    finally:
        await store.close()
