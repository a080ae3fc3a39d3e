"""The docs hold together: README.md is a short front page that opens with the two commands,
and every relative link in it and in docs/*.md reaches a file (and a heading, when it names one).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README_MAX_BYTES = 12_288
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def outside_fences(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked (no links there)."""
    return [_CODE_SPAN.sub("``", line) for line in outside_fences(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces to '-'."""
    text = heading.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page; repeated headings get -1, -2, ... as on GitHub."""
    found: set[str] = set()
    for line in outside_fences(page.read_text()):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    """Relative links of a page whose file, or heading in that file, does not exist."""
    broken = []
    for line in prose_lines(page.read_text()):
        for target in _LINK.findall(line):
            if _SCHEME.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{target} (no such heading in {dest.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_checker_catches_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Scale-out: `many` hosts\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n"
        "[ok](other.md) [ok](other.md#scale-out-many-hosts) [ok](#here) [web](https://x.y/z)\n"
        "[gone](missing.md) [bad](other.md#nowhere) ![img](nope.png) `[code](not-a-link.md)`\n"
        "```\n[fenced](also-not-a-link.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nowhere (no such heading in other.md)",
        "nope.png (no such file)",
    ]


def test_the_readme_is_a_front_page() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_the_readme_opens_with_the_two_commands_that_ci_runs() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    first = [line for line in lines if line.strip()][:5]
    assert first[0] == "# loopgate"
    assert first[1] == "```bash"
    assert first[2].startswith("./scripts/up ")
    assert first[3].startswith("./scripts/test ")
    assert first[4] == "```"
    assert "exec ./scripts/test" in (ROOT / ".ci" / "run").read_text()
    for script in ("up", "test"):
        assert (ROOT / "scripts" / script).stat().st_mode & 0o111, (
            f"scripts/{script} not executable"
        )
