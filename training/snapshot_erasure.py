"""Erasure inside a written dataset snapshot: its lineage, and its files rewritten without the
examples of erased completions.

A snapshot folder (`training.dataset.write_snapshot`) holds train/eval/preferences.jsonl, one
provenance line per data line (file, line, split, provenance with the source completion id and
its author), and stats.json (the builder's report: stats and flags). Rewriting it for a set of
erased completion ids:

1. drops every data line whose provenance names an erased completion (a preference pair goes
   with its example), and renumbers the provenance of the lines that stay;
2. scrubs the report: a flag naming an erased completion goes whole (its detail quotes text
   and names authors); top authors and sources are recounted from what stays, and the train,
   eval, preference and corrected counts describe the files as they are now (`counts` still
   describe the build);
3. writes all of it into a staging folder and swaps it in (rename, rename), so a reader or a
   crash sees the old snapshot or the new one; a snapshot with nothing left is deleted.

The same rewrite run twice gives the same files: a crash between two passes only repeats work.
The data lines that stay are copied byte for byte (their content hash does not change).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

from store.records import DatasetErasure
from training.snapshot import AuthorCount, Snapshot, SourceCount, Split

DATA_FILES = ("train.jsonl", "eval.jsonl", "preferences.jsonl")
TOP_AUTHORS = 10  # as many as the builder lists
EXAMPLE_FILES = ("train.jsonl", "eval.jsonl")  # authors and sources count these (not pairs)


class _Provenance(msgspec.Struct):
    """What the rewrite reads of an example's provenance (`training.dataset.Provenance`)."""

    source: Literal["traffic", "file"]
    source_id: str
    author: str
    corrected: bool = False
    alias: str | None = None
    adapter_version: str | None = None


class _Line(msgspec.Struct):
    """A provenance.jsonl line; the provenance itself is kept as written."""

    file: str
    line: int
    split: str
    provenance: msgspec.Raw


_provenance = msgspec.json.Decoder(_Provenance)
_line = msgspec.json.Decoder(_Line)


def flagged_completion_ids(snapshot: Snapshot) -> set[str]:
    """The completions a traffic snapshot's flags name (excluded, capped or removed duplicates
    among them): its report mentions them, so an erasure of one rewrites it too."""
    return {source_id for flag in snapshot.flags for source_id in flag.source_ids}


def split_sources(folder: Path, split: Split) -> list[str | None]:
    """The source completion of each line of a written split, in order (None: not traffic)."""
    sources: dict[int, str | None] = {}
    for entry, provenance in _read_provenance(folder):
        if entry.file == f"{split}.jsonl":
            traffic = provenance.source == "traffic"
            sources[entry.line] = provenance.source_id if traffic else None
    return [sources.get(n) for n in range(1, max(sources, default=0) + 1)]


def erase_from_snapshot(folder: Path, erased: Collection[str], row_stats: str) -> DatasetErasure:
    """Rewrite the snapshot at `folder` without the erased completions (module docstring);
    `row_stats` is the dataset row's copy of the report, scrubbed the same way."""
    gone = set(erased)
    with _locked(folder):
        _recover(folder)
        if not folder.is_dir():
            return DatasetErasure("deleted", 0, 0, 0, _scrub_json(row_stats, [], (0, 0, 0), gone))
        lines, provenance = _kept(folder, gone)
        counts = (
            len(lines["train.jsonl"]),
            len(lines["eval.jsonl"]),
            len(lines["preferences.jsonl"]),
        )
        if not any(counts):
            shutil.rmtree(folder)
            return DatasetErasure("deleted", 0, 0, 0, _scrub_json(row_stats, [], counts, gone))
        _swap(folder, _stage(folder, lines, provenance, counts, gone))
    return DatasetErasure("rewritten", *counts, _scrub_json(row_stats, provenance, counts, gone))


# -- reading what stays -----------------------------------------------------------------------

_Kept = tuple[dict[str, list[bytes]], list[tuple[_Line, _Provenance]]]


def _read_provenance(folder: Path) -> Iterator[tuple[_Line, _Provenance]]:
    path = folder / "provenance.jsonl"
    for raw in path.read_bytes().splitlines() if path.exists() else []:
        if raw.strip():
            entry = _line.decode(raw)
            yield entry, _provenance.decode(entry.provenance)


def _kept(folder: Path, erased: set[str]) -> _Kept:
    """Each data file's lines that stay, and their provenance renumbered (file order)."""
    dropped = {
        (entry.file, entry.line)
        for entry, provenance in _read_provenance(folder)
        if provenance.source_id in erased
    }
    lines: dict[str, list[bytes]] = {}
    for name in DATA_FILES:
        path = folder / name
        raw = path.read_bytes().splitlines() if path.exists() else []
        lines[name] = [text for n, text in enumerate(raw, start=1) if (name, n) not in dropped]
    renumbered: list[tuple[_Line, _Provenance]] = []
    next_line = Counter[str]()
    for entry, provenance in _read_provenance(folder):
        if (entry.file, entry.line) not in dropped:
            next_line[entry.file] += 1
            entry.line = next_line[entry.file]
            renumbered.append((entry, provenance))
    return lines, renumbered


# -- the report -----------------------------------------------------------------------------


def _scrub_json(
    text: str,
    kept: list[tuple[_Line, _Provenance]],
    counts: tuple[int, int, int],
    erased: set[str],
) -> str:
    report = msgspec.json.decode(text)
    if isinstance(report, dict):
        _scrub(report, kept, counts, erased)
    return msgspec.json.encode(report).decode()


def _scrub(
    report: dict[str, Any],
    kept: list[tuple[_Line, _Provenance]],
    counts: tuple[int, int, int],
    erased: set[str],
) -> None:
    """Step 2 of the module docstring, in place, on the report's JSON."""
    flags = report.get("flags")
    if isinstance(flags, list):
        report["flags"] = [f for f in flags if not erased.intersection(f.get("source_ids", ()))]
    stats = report.get("stats")
    if not isinstance(stats, dict):
        return
    examples = [p for entry, p in kept if entry.file in EXAMPLE_FILES]
    for key, value in zip(("train", "eval", "preferences"), counts, strict=True):
        if key in stats:
            stats[key] = value
    if "corrected" in stats:
        stats["corrected"] = sum(p.corrected for p in examples)
    if "top_authors" in stats:
        authors = Counter(p.author for p in examples)
        ranked = sorted(authors.items(), key=lambda item: (-item[1], item[0]))[:TOP_AUTHORS]
        stats["top_authors"] = msgspec.to_builtins([AuthorCount(a, n) for a, n in ranked])
    if "sources" in stats:
        tally = Counter((p.source, p.alias, p.adapter_version) for p in examples)
        order = sorted(tally.items(), key=lambda item: (-item[1], repr(item[0])))
        stats["sources"] = msgspec.to_builtins([SourceCount(*key, n) for key, n in order])


# -- writing ------------------------------------------------------------------------------------


def _stage(
    folder: Path,
    lines: dict[str, list[bytes]],
    provenance: list[tuple[_Line, _Provenance]],
    counts: tuple[int, int, int],
    erased: set[str],
) -> Path:
    staging = folder.with_name(folder.name + ".erasing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name, kept in lines.items():
        (staging / name).write_bytes(b"".join(line + b"\n" for line in kept))
    encoded = [msgspec.json.encode(entry) + b"\n" for entry, _ in provenance]
    (staging / "provenance.jsonl").write_bytes(b"".join(encoded))
    stats = folder / "stats.json"
    if stats.exists():
        report = _scrub_json(stats.read_text(), provenance, counts, erased)
        formatted = msgspec.json.format(report.encode())
        (staging / "stats.json").write_bytes(formatted + b"\n")
    return staging


def _swap(folder: Path, staging: Path) -> None:
    old = folder.with_name(folder.name + ".erased")
    folder.rename(old)
    staging.rename(folder)  # a crash before this: `_recover` finishes it
    shutil.rmtree(old)


def _recover(folder: Path) -> None:
    """Finish an interrupted swap (the staging folder is complete once the old one moved), then
    clear what an interrupted pass left."""
    staging = folder.with_name(folder.name + ".erasing")
    old = folder.with_name(folder.name + ".erased")
    if not folder.exists():
        for candidate in (staging, old):  # staging is complete once the old one moved away
            if candidate.is_dir():
                candidate.rename(folder)
                break
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One rewrite of a snapshot at a time, across processes (gateways, the CLI)."""
    if not folder.parent.is_dir():
        yield
        return
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
