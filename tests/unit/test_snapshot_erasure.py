"""A written dataset snapshot rewritten without erased completions (training.snapshot_erasure)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import msgspec

from tests.support.traffic import T0, Row, completion, feedback, liked, words
from training.dataset import Snapshot, completion_ids, from_traffic, read_split, write_snapshot
from training.dataset_config import DatasetConfig
from training.snapshot_erasure import erase_from_snapshot, flagged_completion_ids, split_sources

CONFIG = DatasetConfig(max_author_share=1.0, max_key_share=1.0, eval_fraction=0.4)


def two_users(n: int = 12) -> tuple[list[Row], dict[str, str]]:
    """n liked exchanges alternating between end users u1 and u2, plus one corrected (a
    preference pair) for each; returns the rows and each completion's end user."""
    rng = random.Random(7)
    rows: list[Row] = []
    for i in range(n):
        user = ("u1", "u2")[i % 2]
        c = completion(
            f"c{i}", f"{user} asks {words(rng, 8)}", f"{user} hears {words(rng, 14)}",
            end_user=user, created_at=T0 + i,
        )  # fmt: skip
        rows.append(liked(c))
    for user in ("u1", "u2"):
        c = completion(
            f"fix-{user}", f"{user} asks {words(rng, 8)}", words(rng, 14),
            end_user=user, created_at=T0 + 100,
        )  # fmt: skip
        fix = feedback(c.id, rating="down", correction=f"{user} fixes {words(rng, 14)}")
        rows.append((c, [fix]))
    return rows, {c.id: str(c.end_user) for c, _ in rows}


def written(tmp_path: Path, rows: list[Row], config: DatasetConfig = CONFIG) -> tuple[Path, str]:
    """The snapshot's folder, and its dataset row's `stats` (report) JSON."""
    snapshot = from_traffic(rows, opted_out=set(), config=config)
    folder = tmp_path / "datasets" / "acme" / "ds-1"
    write_snapshot(snapshot, folder)
    report = {"stats": snapshot.stats, "flags": snapshot.flags}
    return folder, msgspec.json.encode(report).decode()


def everything(folder: Path) -> str:
    return "".join(p.read_text() for p in sorted(folder.iterdir()))


def provenance(folder: Path) -> list[dict[str, object]]:
    lines = (folder / "provenance.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_erased_examples_leave_every_file_and_the_rest_stays_aligned(tmp_path: Path) -> None:
    rows, users = two_users()
    folder, row_stats = written(tmp_path, rows)
    before = provenance(folder)
    assert "u1 asks" in everything(folder) and '"u1"' in row_stats
    u1 = {cid for cid, user in users.items() if user == "u1"}
    kept = [p for p in before if p["provenance"]["source_id"] not in u1]  # type: ignore[index]
    per_file = {
        name: sum(p["file"] == name for p in kept) for name in ("train.jsonl", "eval.jsonl")
    }
    assert per_file["eval.jsonl"] >= 1 and any(
        p["file"] == "eval.jsonl" for p in before if p not in kept
    )

    outcome = erase_from_snapshot(folder, u1, row_stats)

    assert (outcome.state, outcome.train_count, outcome.eval_count) == (
        "rewritten", per_file["train.jsonl"], per_file["eval.jsonl"]
    )  # fmt: skip
    assert outcome.preference_count == 1  # u2's pair; u1's went with its example
    text = everything(folder)
    assert "u1" not in text and "u1" not in outcome.stats
    assert "u2 asks" in text and "u2 fixes" in text
    # Each remaining data line still matches its provenance (same content hash, renumbered).
    after = provenance(folder)
    for name in ("train.jsonl", "eval.jsonl"):
        lines = (folder / name).read_text().splitlines()
        entries = [p for p in after if p["file"] == name]
        assert [p["line"] for p in entries] == list(range(1, len(lines) + 1))
        for line, entry in zip(lines, entries, strict=True):
            messages = json.loads(line)["messages"]
            digest = hashlib.sha256(msgspec.json.encode(messages, order="sorted")).hexdigest()
            assert digest == entry["provenance"]["content_hash"]  # type: ignore[index]
    assert [p["provenance"] for p in after] == [p["provenance"] for p in kept]
    eval_ids = [p["provenance"]["source_id"] for p in after if p["file"] == "eval.jsonl"]  # type: ignore[index]
    assert split_sources(folder, "eval") == eval_ids
    assert len(read_split(folder, "eval")) == len(eval_ids)
    # The report counts what is left, and names only u2.
    stats = json.loads((folder / "stats.json").read_text())["stats"]
    assert [a["author"] for a in stats["top_authors"]] == ["u2"]
    assert (stats["train"], stats["eval"], stats["preferences"]) == (
        outcome.train_count, outcome.eval_count, 1
    )  # fmt: skip
    assert json.loads(outcome.stats)["stats"]["top_authors"] == stats["top_authors"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [".ds-1.lock", "ds-1"]
    # Done twice, the same files.
    again = erase_from_snapshot(folder, u1, outcome.stats)
    assert everything(folder) == text and again == outcome


def test_a_flag_naming_an_erased_completion_goes_whole(tmp_path: Path) -> None:
    rows, _ = two_users(6)
    rng = random.Random(3)
    same_prompt, same_answer = words(rng, 8), words(rng, 14)
    for i, user in enumerate(("u3", "u4", "u5")):  # an exact duplicate cluster
        c = completion(f"dup{i}", same_prompt, same_answer, end_user=user, created_at=T0 + 50 + i)
        rows.append(liked(c))
    config = replace(CONFIG, duplicate_cluster_min=3)
    snapshot = from_traffic(rows, opted_out=set(), config=config)
    [flag] = [f for f in snapshot.flags if f.kind == "duplicate_cluster"]
    assert {"dup1", "dup2"} <= flagged_completion_ids(snapshot)
    assert "dup2" not in completion_ids(snapshot)  # removed as a duplicate: only the flag names it
    folder, row_stats = written(tmp_path, rows, config)
    lines_before = {n: (folder / n).read_bytes() for n in ("train.jsonl", "eval.jsonl")}
    assert "'u5'" in (folder / "stats.json").read_text() and "'u5'" in row_stats

    outcome = erase_from_snapshot(folder, {"dup2"}, row_stats)

    assert {n: (folder / n).read_bytes() for n in lines_before} == lines_before
    report = json.loads((folder / "stats.json").read_text())
    assert flag.detail not in json.dumps(report) and "u5" not in (folder / "stats.json").read_text()
    assert "u5" not in outcome.stats and outcome.state == "rewritten"


def test_a_snapshot_with_nothing_left_is_deleted(tmp_path: Path) -> None:
    rows, users = two_users(6)
    folder, row_stats = written(tmp_path, rows)
    outcome = erase_from_snapshot(folder, set(users), row_stats)
    assert (outcome.state, outcome.train_count, outcome.eval_count) == ("deleted", 0, 0)
    assert not folder.exists()
    report = json.loads(outcome.stats)
    assert report["flags"] == [] and report["stats"]["top_authors"] == []
    assert "u1" not in outcome.stats and "u2" not in outcome.stats
    # A later pass on the deleted snapshot changes nothing.
    assert erase_from_snapshot(folder, set(users), outcome.stats) == outcome


def test_a_swap_a_crash_interrupted_is_finished(tmp_path: Path) -> None:
    rows, users = two_users(8)
    folder, row_stats = written(tmp_path, rows)
    u1 = {cid for cid, user in users.items() if user == "u1"}
    # The rewritten copy was staged and the old folder moved aside, then the process died.
    spare = tmp_path / "spare" / "ds-1"
    shutil.copytree(folder, spare)
    expected = erase_from_snapshot(spare, u1, row_stats)
    staged = everything(spare)
    spare.rename(folder.with_name("ds-1.erasing"))
    folder.rename(folder.with_name("ds-1.erased"))

    outcome = erase_from_snapshot(folder, u1, row_stats)

    assert outcome == expected and everything(folder) == staged
    assert sorted(p.name for p in folder.parent.iterdir()) == [".ds-1.lock", "ds-1"]


def test_a_crash_while_staging_keeps_the_old_snapshot(tmp_path: Path) -> None:
    rows, users = two_users(8)
    folder, row_stats = written(tmp_path, rows)
    u1 = {cid for cid, user in users.items() if user == "u1"}
    half = folder.with_name("ds-1.erasing")
    half.mkdir()
    (half / "train.jsonl").write_text("half-written\n")

    outcome = erase_from_snapshot(folder, u1, row_stats)

    assert outcome.state == "rewritten" and "half-written" not in everything(folder)
    assert not half.exists() and "u1" not in everything(folder)


def test_a_snapshot_keeps_its_lineage(tmp_path: Path) -> None:
    rows, _ = two_users(6)
    snapshot: Snapshot = from_traffic(rows, opted_out=set(), config=CONFIG)
    folder = tmp_path / "ds"
    write_snapshot(snapshot, folder)
    eval_ids = [e.provenance.source_id for e in snapshot.eval]
    assert split_sources(folder, "eval") == eval_ids
    assert split_sources(folder, "train") == [e.provenance.source_id for e in snapshot.train]
