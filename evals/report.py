"""The eval report: Markdown, a self-contained HTML page and a PNG bar chart of one comparison.

Every piece of user text (suite names, prompts, answers, titles) is escaped: HTML-escaped in
the page, and in Markdown table cells too (`|` and newlines as well), since Markdown viewers
pass raw HTML through. The chart is drawn on a bare matplotlib `Figure` (Agg canvas), never
through pyplot's global state, so reports can be rendered from several threads.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evals.gate import GateDecision
from evals.stats import Comparison, LatencySummary, ScoreSummary

DEFAULT_WORST_CASES = 10
_CELL_LIMIT = 80
_COLOURS = {"candidate": "#2a7ab9", "live": "#e08a1e", "base": "#8c8c8c"}


@dataclass(frozen=True)
class CaseRow:
    """One case's candidate and live scores and answers, for the regressions table."""

    case_id: str
    prompt: str
    candidate_score: float
    live_score: float
    candidate_answer: str
    live_answer: str

    @property
    def delta(self) -> float:
        return self.candidate_score - self.live_score


@dataclass(frozen=True)
class SuiteReport:
    """One suite's results: each system's mean score, and the candidate's paired comparisons."""

    name: str
    systems: Mapping[str, ScoreSummary]
    vs_live: Comparison | None = None
    vs_base: Comparison | None = None
    cases: Sequence[CaseRow] = ()


@dataclass(frozen=True)
class EvalReport:
    """Everything a report shows about one candidate evaluation."""

    title: str
    suites: Sequence[SuiteReport]
    decision: GateDecision
    latency: Mapping[str, LatencySummary] = field(default_factory=dict)
    worst_cases: int = DEFAULT_WORST_CASES


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    png: Path


def systems_of(report: EvalReport) -> list[str]:
    """Every system named in the report, in first-seen order."""
    seen: dict[str, None] = {}
    for suite in report.suites:
        seen.update(dict.fromkeys(suite.systems))
    return list(seen)


def worst_regressions(suite: SuiteReport, limit: int) -> list[CaseRow]:
    """The cases where the candidate lost most against live, worst first."""
    losses = [row for row in suite.cases if row.delta < 0]
    return sorted(losses, key=lambda row: row.delta)[:limit]


def _shorten(text: str, limit: int | None = _CELL_LIMIT) -> str:
    """One line of text, cut at `limit` characters (None: never cut)."""
    flat = " ".join(text.split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def _md(text: str, limit: int | None = None) -> str:
    return html.escape(_shorten(text, limit)).replace("|", "\\|")


def _score(summary: ScoreSummary | None) -> str:
    if summary is None:
        return "—"
    return f"{summary.mean:.3f} [{summary.ci.low:.3f}, {summary.ci.high:.3f}]"


def _delta(comparison: Comparison | None) -> str:
    if comparison is None:
        return "—"
    ci = comparison.ci
    return f"{comparison.mean_delta:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


def _wtl(comparison: Comparison | None) -> str:
    if comparison is None:
        return "—"
    return f"{comparison.wins}/{comparison.ties}/{comparison.losses}"


def _verdict(decision: GateDecision) -> str:
    return "PROMOTE" if decision.promote else "KEEP LIVE (candidate refused)"


def _suite_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    systems = systems_of(report)
    header = ["Suite", *systems, "Δ vs live [CI]", "W/T/L vs live", "Δ vs base [CI]"]
    rows = [
        [
            suite.name,
            *(_score(suite.systems.get(name)) for name in systems),
            _delta(suite.vs_live),
            _wtl(suite.vs_live),
            _delta(suite.vs_base),
        ]
        for suite in report.suites
    ]
    return header, rows


def _latency_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    rows = [
        [name, f"{lat.p50:.1f}", f"{lat.p95:.1f}", str(lat.n)]
        for name, lat in report.latency.items()
    ]
    return ["System", "p50 (ms)", "p95 (ms)", "n"], rows


def _case_rows(rows: Iterable[CaseRow]) -> tuple[list[str], list[list[str]]]:
    header = ["Case", "Prompt", "Candidate", "Live", "Δ", "Candidate answer", "Live answer"]
    body = [
        [
            row.case_id,
            row.prompt,
            f"{row.candidate_score:.3f}",
            f"{row.live_score:.3f}",
            f"{row.delta:+.3f}",
            row.candidate_answer,
            row.live_answer,
        ]
        for row in rows
    ]
    return header, body


def _md_table(header: list[str], rows: list[list[str]], limit: int | None = None) -> list[str]:
    lines = ["| " + " | ".join(_md(cell) for cell in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_md(cell, limit) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def render_markdown(report: EvalReport) -> str:
    """The report as GitHub-flavoured Markdown."""
    lines = [
        f"# Eval report: {_md(report.title)}",
        "",
        f"**Decision: {_verdict(report.decision)}**",
        "",
    ]
    lines += [f"- {_md(reason)}" for reason in report.decision.reasons] + [""]
    gate = [[c.name, "pass" if c.passed else "FAIL", c.detail] for c in report.decision.checks]
    lines += ["## Gate checks", "", *_md_table(["Check", "Result", "Detail"], gate)]
    lines += ["## Suites", "", *_md_table(*_suite_rows(report))]
    if report.latency:
        lines += ["## Latency", "", *_md_table(*_latency_rows(report))]
    for suite in report.suites:
        worst = worst_regressions(suite, report.worst_cases)
        if worst:
            lines += [
                f"## Worst regressions: {_md(suite.name)}",
                "",
                *_md_table(*_case_rows(worst), _CELL_LIMIT),
            ]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], limit: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_shorten(cell, limit))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    ".promote{color:#176f2c}.refuse{color:#a4161a}img{max-width:100%}"
)


def render_html(report: EvalReport, png: bytes) -> str:
    """A self-contained HTML page; `png` (the chart) is embedded as base64."""
    title = html.escape(report.title)
    verdict_class = "promote" if report.decision.promote else "refuse"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report.decision.reasons)
    gate = [[c.name, "pass" if c.passed else "FAIL", c.detail] for c in report.decision.checks]
    parts = [
        f'<h1>Eval report: {title}</h1><h2 class="{verdict_class}">'
        f"Decision: {html.escape(_verdict(report.decision))}</h2><ul>{reasons}</ul>",
        "<h2>Gate checks</h2>" + _html_table(["Check", "Result", "Detail"], gate),
        "<h2>Suites</h2>" + _html_table(*_suite_rows(report)),
        '<img alt="mean score per suite and system, with confidence intervals" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">',
    ]
    if report.latency:
        parts.append("<h2>Latency</h2>" + _html_table(*_latency_rows(report)))
    for suite in report.suites:
        worst = worst_regressions(suite, report.worst_cases)
        if worst:
            heading = f"<h2>Worst regressions: {html.escape(suite.name)}</h2>"
            parts.append(heading + _html_table(*_case_rows(worst), _CELL_LIMIT))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Eval report: {title}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def _plain(text: str) -> str:
    """Text matplotlib draws literally (a `$` would start mathtext)."""
    return text.replace("$", r"\$")


def render_plot(report: EvalReport) -> bytes:
    """A PNG bar chart: each suite's mean score per system, with CI error bars."""
    systems = systems_of(report)
    figure = Figure(figsize=(max(4.0, 1.6 * len(report.suites) + 2.0), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(systems))
    for offset, name in enumerate(systems):
        xs, means, below, above = [], [], [], []
        for index, suite in enumerate(report.suites):
            summary = suite.systems.get(name)
            if summary is None:
                continue
            xs.append(index + (offset - (len(systems) - 1) / 2) * width)
            means.append(summary.mean)
            below.append(max(0.0, summary.mean - summary.ci.low))
            above.append(max(0.0, summary.ci.high - summary.mean))
        colour = _COLOURS.get(name)
        axes.bar(xs, means, width, yerr=[below, above], capsize=3, label=_plain(name), color=colour)
    axes.set_xticks(range(len(report.suites)), [_plain(s.name) for s in report.suites])
    axes.set_ylim(0.0, 1.05)
    axes.set_ylabel("mean score")
    axes.set_title(_plain(_shorten(report.title, 60)))
    axes.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=max(1, len(systems)), frameon=False
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_report(report: EvalReport, directory: Path, stem: str = "report") -> ReportFiles:
    """Write `<stem>.md`, `<stem>.html` and `<stem>.png` into `directory` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    png = render_plot(report)
    files = ReportFiles(
        directory / f"{stem}.md", directory / f"{stem}.html", directory / f"{stem}.png"
    )
    files.png.write_bytes(png)
    files.markdown.write_text(render_markdown(report), encoding="utf-8")
    files.html.write_text(render_html(report, png), encoding="utf-8")
    return files
