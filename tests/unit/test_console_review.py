"""The console's review queue: what waits and why, a decision per key (approve, correct,
reject) recorded as feedback with the reviewer as author, read back through the tenant API."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from gateway import review
from store import (
    CaseSource,
    EvalResult,
    EvalRun,
    Feedback,
    Store,
    evals_sql,
    open_store,
    review_sql,
)
from store.errors import Conflict
from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import sign_in
from tests.unit.test_store_contract import T0, completion
from tests.unit.test_store_contract import feedback as feedback_row

PAGE = "/console/review"
ADMIN_KEY = "admin-secret"
SHOWN = re.compile(r'id="review-completion-id">([^<]+)<')
WAITING = re.compile(r'id="review-waiting-count">(\d+)<')
CORRECTED = "The capital of France is Paris, on the Seine."


def chat(env: Env, prompt: str, key: str | None = None, user: str = "u-1") -> str:
    body = {"model": "smollm2", "user": user, "messages": [{"role": "user", "content": prompt}]}
    resp = env.client.post("/v1/chat/completions", json=body, headers=env.auth(key))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def rate(env: Env, cid: str, rating: str, key: str | None = None, user: str = "u-1") -> None:
    body = {"rating": rating, "user": user}
    resp = env.client.post(f"/v1/chat/completions/{cid}/feedback", json=body, headers=env.auth(key))
    assert resp.status_code == 201, resp.text


def disliked(env: Env, prompts: list[str], key: str | None = None) -> list[str]:
    """Completions of the tenant's API, each rated down by its end user."""
    ids = [chat(env, p, key) for p in prompts]
    for cid in ids:
        rate(env, cid, "down", key)
    return ids


def queue(env: Env, tenant: str = "acme") -> tuple[str | None, int, str]:
    """The page: the completion shown (None: nothing waits), how many wait, the HTML."""
    page = env.client.get(PAGE, params={"tenant": tenant})
    assert page.status_code == 200, page.text
    shown, waiting = SHOWN.search(page.text), WAITING.search(page.text)
    assert waiting is not None
    return (shown.group(1) if shown else None), int(waiting.group(1)), page.text


def decide(env: Env, csrf: str, cid: str, decision: str, **fields: str) -> httpx.Response:
    data = {"csrf": csrf, "tenant": "acme", "decision": decision, **fields}
    return env.client.post(f"{PAGE}/{cid}", data=data, follow_redirects=False)


def feedback_of(env: Env, cid: str, key: str | None = None) -> list[dict[str, object]]:
    resp = env.client.get(f"/v1/chat/completions/{cid}/feedback", headers=env.auth(key))
    assert resp.status_code == 200, resp.text
    data: list[dict[str, object]] = resp.json()["data"]
    return data


def test_signed_out_goes_to_sign_in_and_a_tenant_session_may_not_review(env: Env) -> None:
    resp = env.client.get(PAGE + "?tenant=acme", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/console/login")
    (cid,) = disliked(env, ["What is the capital of France?"])
    csrf = sign_in(env.client, env.acme_key)
    assert env.client.get(PAGE, params={"tenant": "acme"}).status_code == 403
    refused = decide(env, csrf, cid, "approve")
    assert refused.status_code == 403 and "read-only" in refused.text
    assert feedback_of(env, cid)[-1]["author"] == "user:u-1"  # nothing was recorded


def test_the_page_offers_the_tenants_until_one_is_picked(env: Env) -> None:
    sign_in(env.client, ADMIN_KEY)
    page = env.client.get(PAGE)
    assert page.status_code == 200
    assert 'id="review-tenant"' in page.text and ">acme<" in page.text and ">globex<" in page.text
    assert 'id="review-form"' not in page.text
    missing = env.client.get(PAGE, params={"tenant": "nobody"})
    assert missing.status_code == 404 and "Traceback" not in missing.text


def test_three_reviews_become_feedback_by_the_reviewer_and_a_dataset_takes_the_correction(
    env: Env,
) -> None:
    prompts = [f"Question {i}: what is the capital of country number {i * 7}?" for i in range(4)]
    ids = disliked(env, prompts)
    liked = chat(env, "An unrelated question the user liked, about rivers?", user="u-2")
    rate(env, liked, "up", user="u-2")  # positive alone: nothing to review
    csrf = sign_in(env.client, ADMIN_KEY, name="grace")
    shown, waiting, html = queue(env)
    assert waiting == 4 and shown in ids and liked not in html
    assert prompts[ids.index(shown)] in html and "Paris." in html  # the conversation
    assert "1 negative feedback" in html
    assert 'src="/console/static/review.js"' in html
    for button in ('id="approve"', 'id="correct"', 'id="reject"', 'id="review-correction"'):
        assert button in html  # the form works without the script
    decided: dict[str, str] = {}
    typed = CORRECTED.replace(",", ",\r\n")  # a browser sends a textarea's lines so
    steps = [("approve", {}), ("correct", {"correction": typed}), ("reject", {})]
    for n, (decision, fields) in enumerate(steps):
        shown, waiting, _ = queue(env)
        assert shown is not None and shown not in decided.values() and waiting == 4 - n
        done = decide(env, csrf, shown, decision, **fields)
        assert done.status_code == 303
        assert done.headers["location"] == f"{PAGE}?tenant=acme&done={decision}"
        decided[decision] = shown
    after = env.client.get(PAGE, params={"tenant": "acme", "done": "reject"})
    assert "Rejected." in after.text
    last, waiting, _ = queue(env)
    assert waiting == 1 and last not in decided.values()
    # Read back through the tenant API: the reviewer is the author, the record says review.
    expected = {
        "approve": {"rating": "up", "correction": None},
        "correct": {"rating": None, "correction": CORRECTED.replace(",", ",\n")},
        "reject": {"rating": "down", "correction": None},
    }
    for decision, cid in decided.items():
        user_said, review = feedback_of(env, cid)
        assert user_said["author"] == "user:u-1"
        assert review["author"] == "reviewer:grace"
        assert review["tags"] == ["review", f"review:{decision}"]
        assert {k: review[k] for k in ("rating", "correction")} == expected[decision]
    again = decide(env, csrf, decided["approve"], "reject")
    assert again.status_code == 409
    # A dataset built now trains on the correction and the approved answer, though its user
    # rated it down (the rejected one and the one not yet reviewed stay out). Another user's
    # liked answer keeps u-1's two examples within the author cap (half of four).
    rate(env, chat(env, "Which is the longest river in Africa?", user="u-3"), "up", user="u-3")
    built = env.client.post("/v1/datasets", json={"max_author_share": 0.5}, headers=env.auth())
    assert built.status_code == 201, built.text
    snapshot = built.json()
    stats = snapshot["report"]["stats"]
    assert stats["counts"]["negative"] == 2 and stats["counts"]["kept"] == 4
    assert snapshot["report"]["stats"]["corrected"] == 1
    assert snapshot["preference_pairs"] == 1  # chosen: the correction; rejected: the answer
    lines = dataset_lines(env, snapshot["id"])
    assert any(CORRECTED.replace(",", ",\\n") in line for line in lines)


def dataset_lines(env: Env, dataset_id: str) -> list[str]:
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    folder = Path(db.execute("SELECT path FROM datasets WHERE id = ?", (dataset_id,)).fetchone()[0])
    return [line for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_a_reviewer_on_acme_never_sees_or_decides_globex_rows(env: Env) -> None:
    (theirs,) = disliked(env, ["A globex question?"], key=env.globex_key)
    (ours,) = disliked(env, ["An acme question?"])
    csrf = sign_in(env.client, ADMIN_KEY)
    shown, waiting, html = queue(env, "acme")
    assert (shown, waiting) == (ours, 1) and theirs not in html and "globex question" not in html
    crossed = decide(env, csrf, theirs, "reject")  # the form names acme
    assert crossed.status_code == 404
    assert [f["author"] for f in feedback_of(env, theirs, env.globex_key)] == ["user:u-1"]
    assert queue(env, "globex")[:2] == (theirs, 1)
    assert decide(env, csrf, ours, "approve").status_code == 303
    assert queue(env, "acme")[:2] == (None, 0)
    assert queue(env, "globex")[:2] == (theirs, 1)


def test_bad_decisions_are_refused_with_a_page_and_nothing_recorded(env: Env) -> None:
    (cid,) = disliked(env, ["What is the capital of France?"])
    csrf = sign_in(env.client, ADMIN_KEY)
    for decision, fields, status, says in [
        ("maybe", {}, 400, "unknown decision"),
        ("", {}, 400, "unknown decision"),
        ("correct", {"correction": "   "}, 400, "needs the corrected answer"),
        ("correct", {"correction": "Paris.\r\n"}, 400, "approve it instead"),
        ("correct", {"correction": "x" * 40_000}, 400, "invalid review"),
        ("approve", {"tenant": "nobody"}, 404, "No tenant"),
    ]:
        resp = decide(env, csrf, cid, decision, **fields)
        assert resp.status_code == status, (decision, resp.status_code)
        assert says in resp.text and "Traceback" not in resp.text
    assert decide(env, csrf, "chatcmpl-nope", "approve").status_code == 404
    assert len(feedback_of(env, cid)) == 1
    assert queue(env)[:2] == (cid, 1)


def test_disagreement_comes_first_and_low_eval_grades_are_shown(env: Env) -> None:
    (older,) = disliked(env, ["Disliked by its user?"])
    split = chat(env, "Liked by one user and not by another?")
    rate(env, split, "up", user="u-1")
    rate(env, split, "down", user="u-2")
    graded = chat(env, "Taken into an eval suite?")
    tenant_id = str(env.client.get("/admin/tenants/acme", headers=ADMIN).json()["id"])
    run = EvalRun("ev-review", tenant_id, "support", "av-new", None, "done", "admin", time.time())
    store: Store = env.client.app.state.gateway.store

    async def seed() -> None:  # what an evals worker records for a case taken from traffic
        await store.add_eval_run(run, sources=[CaseSource("tenant", "case-1", graded)])
        await store.add_eval_results(
            [EvalResult(run.id, "tenant", "case-1", "live", 0.2, False, None, "meh")]
        )

    env.client.blocking_portal.call(seed)
    sign_in(env.client, ADMIN_KEY)
    shown, waiting, html = queue(env)
    assert (shown, waiting) == (split, 3) and "disagreement" in html
    assert "1 positive feedback" in html and "1 negative feedback" in html
    csrf = sign_in(env.client, ADMIN_KEY)
    decide(env, csrf, split, "approve")
    assert queue(env)[:2] == (older, 2)
    decide(env, csrf, older, "reject")
    shown, waiting, html = queue(env)
    assert (shown, waiting) == (graded, 1) and "graded 0.20" in html


# -- one decision per completion, however many reviewers at once; the queue's indexes ----------


def test_two_reviewers_at_once_record_one_decision_and_the_other_gets_a_conflict(
    env: Env,
) -> None:
    ids = disliked(env, [f"Raced question number {i}, about lakes?" for i in range(5)])
    store: Store = env.client.app.state.gateway.store

    async def race() -> list[list[Feedback | BaseException]]:
        tenant = await store.get_tenant("acme")
        assert tenant is not None
        return [
            await asyncio.gather(
                review.decide(store, tenant, cid, "approve", None, "ada"),
                review.decide(store, tenant, cid, "correct", "Lakes hold fresh water.", "grace"),
                return_exceptions=True,
            )
            for cid in ids
        ]

    for cid, outcome in zip(ids, env.client.blocking_portal.call(race), strict=True):
        won = [r for r in outcome if isinstance(r, Feedback)]
        lost = [r for r in outcome if isinstance(r, Conflict)]
        assert len(won) == 1 and len(lost) == 1, outcome
        reviews = [f for f in feedback_of(env, cid) if str(f["author"]).startswith("reviewer:")]
        assert [f["id"] for f in reviews] == [won[0].id]
    sign_in(env.client, ADMIN_KEY)
    assert queue(env)[:2] == (None, 0)


async def test_the_store_takes_one_review_per_completion_from_racing_connections(
    url: str,
) -> None:
    stores = [open_store(url) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        await stores[0].create_tenant("t1", "acme")
        ids = [f"c-{i}" for i in range(4)]
        await stores[0].capture_batch([completion(c, created_at=T0) for c in ids], [])
        for cid in ids:
            rows = [
                feedback_row(f"r-{cid}-{n}", cid, created_at=T0 + n, author=f"reviewer:r{n}")
                for n in range(2)
            ]
            added = await asyncio.gather(
                *(s.add_review(f) for s, f in zip(stores, rows, strict=True))
            )
            assert sorted(added) == [False, True]
            kept = await stores[1].list_feedback("t1", cid)
            assert [f.id for f in kept] == [f.id for f, ok in zip(rows, added, strict=True) if ok]
        user = feedback_row("f-user", "c-0", created_at=T0 + 5, author="user:u-1")
        with pytest.raises(ValueError, match="reviewer:"):
            await stores[0].add_review(user)  # a user's feedback is no review
        await stores[0].add_feedback(user)  # and never collides with one
        assert len(await stores[0].list_feedback("t1", "c-0")) == 2
    finally:
        for s in stores:
            await s.close()


async def test_the_queue_and_the_loop_list_read_through_their_indexes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    s = open_store(url)
    await s.open()
    await s.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:

        def plan(sql: str, params: tuple[object, ...]) -> str:
            rows = db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            return "\n".join(str(r[3]) for r in rows)

        queue_plan = plan(review_sql.NEXT_TO_REVIEW, review_sql.next_params("t1", 0.5))
        loops_plan = plan(evals_sql.LIST_LOOPS, ("t1", 20))
    assert "SEARCH feedback USING COVERING INDEX feedback_tenant (tenant_id=?)" in queue_plan
    assert "SCAN feedback" not in queue_plan
    assert "SEARCH loop_runs USING INDEX loop_runs_tenant (tenant_id=?)" in loops_plan
    assert "TEMP B-TREE" not in loops_plan  # newest first, straight from the index
