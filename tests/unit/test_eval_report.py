"""The eval report renders its numbers as Markdown, escaped HTML and a PNG chart."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

from evals.gate import GatePolicy, decide
from evals.report import (
    CaseRow,
    EvalReport,
    SuiteReport,
    render_html,
    render_markdown,
    render_plot,
    worst_regressions,
    write_report,
)
from evals.stats import compare_paired, summarize_latency, summarize_scores

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ATTACK = "<script>alert('x')</script>"
VOID_TAGS = {"meta", "img", "br", "hr", "link", "input"}


def _report() -> EvalReport:
    candidate, live, base = [1.0, 1.0, 0.5, 0.0], [0.5, 0.5, 0.5, 0.5], [0.5, 0.0, 0.5, 0.0]
    guard_candidate, guard_base = [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]
    tenant = compare_paired(candidate, live)
    guard = compare_paired(guard_candidate, guard_base)
    rows = [
        CaseRow("t-3", f"Say {ATTACK} | twice", 0.0, 0.5, f"no {ATTACK}", "live | answer"),
        CaseRow("t-0", "fine", 1.0, 0.5, "good", "ok"),
    ]
    suites = [
        SuiteReport(
            name="acme $support",
            systems={
                "candidate": summarize_scores(candidate),
                "live": summarize_scores(live),
                "base": summarize_scores(base),
            },
            vs_live=tenant,
            vs_base=compare_paired(candidate, base),
            cases=rows,
        ),
        SuiteReport(
            name="guard",
            systems={
                "candidate": summarize_scores(guard_candidate),
                "base": summarize_scores(guard_base),
            },
            vs_base=guard,
        ),
    ]
    latency = {
        "candidate": summarize_latency([110.0, 120.0, 130.0]),
        "live": summarize_latency([100.0, 100.0, 100.0]),
    }
    decision = decide(GatePolicy(), tenant, guard, latency["candidate"], latency["live"])
    return EvalReport(f"acme {ATTACK}", suites, decision, latency)


def test_markdown_has_the_numbers_and_the_decision() -> None:
    markdown = render_markdown(_report())
    assert "**Decision: KEEP LIVE (candidate refused)**" in markdown
    # Tenant suite: candidate 0.625, live 0.5, base 0.25; delta vs live +0.125 (W/T/L 2/1/1).
    assert "0.625 [" in markdown
    assert "0.500 [" in markdown
    assert "0.250 [" in markdown
    assert "+0.125 [" in markdown
    assert "| 2/1/1 |" in markdown
    assert "-0.250 [" in markdown  # guard vs base
    assert "| candidate | 120.0 |" in markdown
    assert "| tenant_ci | FAIL |" in markdown
    assert (
        "- guard suite: candidate 0.750 vs reference 1.000 (-0.250) drops more than the "
        "allowed 0.020: the candidate lost general capability\n" in markdown
    )
    assert "## Worst regressions: acme $support" in markdown
    assert "| t-3 |" in markdown
    assert "| t-0 |" not in markdown  # an improvement is not a regression
    assert "<script>" not in markdown
    assert "live \\| answer" in markdown


class _TagBalance(HTMLParser):
    """Collects unbalanced tags and the text of <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.problems.append(tag)


def test_html_is_balanced_self_contained_and_escapes_user_text() -> None:
    report = _report()
    page = render_html(report, render_plot(report))
    parser = _TagBalance()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>")
    assert parser.problems == []
    assert parser.stack == []
    assert parser.scripts == 0
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "http" not in page  # nothing fetched from elsewhere
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None
    assert base64.b64decode(embedded.group(1)).startswith(PNG_SIGNATURE)


def test_worst_regressions_are_sorted_and_limited() -> None:
    rows = [CaseRow(f"c{i}", "p", 0.0, i / 10, "a", "b") for i in range(1, 6)]
    suite = SuiteReport("s", {}, cases=[*rows, CaseRow("up", "p", 1.0, 0.0, "a", "b")])
    assert [r.case_id for r in worst_regressions(suite, 3)] == ["c5", "c4", "c3"]


def test_write_report_writes_all_three_files(tmp_path: Path) -> None:
    files = write_report(_report(), tmp_path / "reports" / "acme")
    assert files.png.read_bytes().startswith(PNG_SIGNATURE)
    assert "Decision:" in files.markdown.read_text(encoding="utf-8")
    assert files.html.read_text(encoding="utf-8").rstrip().endswith("</html>")
