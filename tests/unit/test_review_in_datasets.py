"""A reviewer's decision wins in datasets built afterwards (approve over a user's down, reject
over a user's up, the reviewer's correction over a user's), with the reviewer's feedback in the
example's provenance; API clients cannot pass themselves off as reviewers."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.unit.conftest import Env
from tests.unit.console_client import sign_in

ADMIN_KEY = "admin-secret"
PAGE = "/console/review"
BUILD = {"max_author_share": 0.5}  # one example per test: no cap bites


@dataclass(frozen=True)
class Line:
    """One data line of a snapshot: its file, messages (or pair) and provenance."""

    file: str
    data: dict[str, object]
    provenance: dict[str, object]


def chat(env: Env, prompt: str, answer: str, user: str = "u-1") -> str:
    env.engine.reply = answer
    body = {"model": "smollm2", "user": user, "messages": [{"role": "user", "content": prompt}]}
    resp = env.client.post("/v1/chat/completions", json=body, headers=env.auth())
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def feedback(env: Env, cid: str, **body: object) -> httpx.Response:
    return env.client.post(f"/v1/chat/completions/{cid}/feedback", json=body, headers=env.auth())


def rate(env: Env, cid: str, rating: str, user: str = "u-1") -> None:
    resp = feedback(env, cid, rating=rating, user=user)
    assert resp.status_code == 201, resp.text


def review(env: Env, csrf: str, cid: str, decision: str, correction: str = "") -> str:
    """A reviewer's decision through the console; the id of the feedback it became."""
    data = {"csrf": csrf, "tenant": "acme", "decision": decision, "correction": correction}
    resp = env.client.post(f"{PAGE}/{cid}", data=data, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    (mine,) = [f for f in feedback_of(env, cid) if str(f["author"]).startswith("reviewer:")]
    assert mine["tags"] == ["review", f"review:{decision}"]
    return str(mine["id"])


def feedback_of(env: Env, cid: str) -> list[dict[str, object]]:
    resp = env.client.get(f"/v1/chat/completions/{cid}/feedback", headers=env.auth())
    assert resp.status_code == 200, resp.text
    data: list[dict[str, object]] = resp.json()["data"]
    return data


def build(env: Env) -> tuple[dict[str, object], dict[str, list[Line]]]:
    """A dataset built from acme's traffic now: its API record, and its lines per completion."""
    resp = env.client.post("/v1/datasets", json=BUILD, headers=env.auth())
    assert resp.status_code == 201, resp.text
    snapshot: dict[str, object] = resp.json()
    return snapshot, lines_by_completion(env, str(snapshot["id"]))


def lines_by_completion(env: Env, dataset_id: str) -> dict[str, list[Line]]:
    db = sqlite3.connect(env.client.app.state.gateway.settings.data_dir / "loopgate.db")
    folder = Path(db.execute("SELECT path FROM datasets WHERE id = ?", (dataset_id,)).fetchone()[0])
    db.close()
    files = {f.name: f.read_text().splitlines() for f in folder.glob("*.jsonl")}
    found: dict[str, list[Line]] = {}
    for raw in files["provenance.jsonl"]:
        entry = json.loads(raw)
        data = json.loads(files[entry["file"]][entry["line"] - 1])
        line = Line(entry["file"], data, entry["provenance"])
        found.setdefault(str(line.provenance["source_id"]), []).append(line)
    return found


def answer_of(line: Line) -> str:
    messages = line.data["messages"]
    assert isinstance(messages, list)
    return str(messages[-1]["content"])


def test_an_approved_answer_enters_though_its_user_rated_it_down(env: Env) -> None:
    approved = chat(env, "How many legs does a spider have?", "Eight legs.")
    rate(env, approved, "down")
    disliked = chat(env, "Which planet is known as the red one?", "Jupiter, probably.")
    rate(env, disliked, "down")  # not reviewed: the user's down still excludes it
    csrf = sign_in(env.client, ADMIN_KEY, name="grace")
    reviewed = review(env, csrf, approved, "approve")
    snapshot, lines = build(env)
    assert set(lines) == {approved}
    (line,) = lines[approved]
    assert line.file in ("train.jsonl", "eval.jsonl") and answer_of(line) == "Eight legs."
    user_down = next(f["id"] for f in feedback_of(env, approved) if f["author"] == "user:u-1")
    assert line.provenance["feedback_ids"] == sorted([reviewed, str(user_down)])
    assert line.provenance["corrected"] is False
    report = snapshot["report"]
    assert isinstance(report, dict) and report["stats"]["counts"]["negative"] == 1


def test_a_rejected_answer_stays_out_though_its_user_rated_it_up(env: Env) -> None:
    rejected = chat(env, "What is the boiling point of water at sea level?", "About 50 C.")
    rate(env, rejected, "up")
    liked = chat(env, "What colour is a clear daytime sky?", "Blue, mostly.")
    rate(env, liked, "up")  # not reviewed: the user's up keeps it
    fixed = chat(env, "How many continents are there?", "Nine.")
    sent = feedback(env, fixed, rating="up", correction="Seven, by the usual count.", user="u-1")
    assert sent.status_code == 201, sent.text
    csrf = sign_in(env.client, ADMIN_KEY)
    review(env, csrf, rejected, "reject")
    review(env, csrf, fixed, "reject")  # the reviewer's word over the user's correction too
    snapshot, lines = build(env)
    assert set(lines) == {liked}
    report = snapshot["report"]
    assert isinstance(report, dict) and report["stats"]["counts"]["negative"] == 2


def test_the_reviewers_correction_is_trained_on_over_a_later_users(env: Env) -> None:
    cid = chat(env, "Who wrote the play Hamlet?", "Christopher Marlowe.")
    rate(env, cid, "down")
    csrf = sign_in(env.client, ADMIN_KEY, name="ada")
    reviewed = review(env, csrf, cid, "correct", "William Shakespeare wrote Hamlet.")
    later = feedback(env, cid, correction="Francis Bacon, some say.", user="u-1")
    assert later.status_code == 201, later.text
    snapshot, lines = build(env)
    assert snapshot["preference_pairs"] == 1
    by_file = {line.file: line for line in lines[cid]}
    assert len(by_file) == 2 and "preferences.jsonl" in by_file  # the example and its pair
    example = next(line for name, line in by_file.items() if name != "preferences.jsonl")
    assert answer_of(example) == "William Shakespeare wrote Hamlet."
    pair = by_file["preferences.jsonl"].data
    assert isinstance(pair["chosen"], list) and isinstance(pair["rejected"], list)
    assert pair["chosen"][-1]["content"] == "William Shakespeare wrote Hamlet."
    assert pair["rejected"][-1]["content"] == "Christopher Marlowe."
    assert example.provenance["corrected"] is True
    ids = example.provenance["feedback_ids"]
    assert isinstance(ids, list) and reviewed in ids and len(ids) == 3
    # The reviewer names no end user: the correction counts as the completion's (its end user).
    assert example.provenance["author"] == "u-1"


def test_an_api_client_cannot_author_a_review(env: Env) -> None:
    cid = chat(env, "What is the tallest mountain on Earth?", "K2.")
    rate(env, cid, "down")
    posing = feedback(env, cid, rating="up", user="reviewer:mallory", tags=["review:approve"])
    assert posing.status_code == 201, posing.text
    assert posing.json()["author"] == "user:reviewer:mallory"
    named = feedback(env, cid, rating="up", author="reviewer:mallory")
    assert named.status_code == 400, named.text
    assert [f["author"] for f in feedback_of(env, cid)] == ["user:u-1", "user:reviewer:mallory"]
    liked = chat(env, "What is the largest ocean?", "The Pacific.")
    rate(env, liked, "up")
    _, lines = build(env)
    assert set(lines) == {liked}  # a user's down still excludes the other: no reviewer decided
    sign_in(env.client, ADMIN_KEY)
    page = env.client.get(PAGE, params={"tenant": "acme"})
    assert f'id="review-completion-id">{cid}<' in page.text  # still waits for a reviewer
