"""Small charts drawn on the server as inline SVG (no script, no library in the browser)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import NamedTuple

from markupsafe import Markup

COLORS = ("#2f5bd3", "#c4312b", "#1a7f37", "#9a6700", "#7c3aed", "#0e7490")
Point = tuple[float, float]


def line_chart(
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    width: int = 640,
    height: int = 200,
    y_label: str = "",
    x_label: str = "",
) -> Markup:
    """Lines through each series' (x, y) points, on shared axes, with a legend."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return Markup('<p class="muted">no data yet</p>')
    pad_l, pad_b, pad_t, pad_r = 48, 28, 28, 12
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, *(p[1] for p in points)), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y: float) -> float:
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_b - pad_t)

    parts = [_frame(width, height, pad_l, pad_b, pad_t, y0, y1, sy, y_label, x_label)]
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{path}">'
            f"<title>{escape(label)}</title></polyline>"
        )
        parts.append(
            f'<text x="{width - pad_r - 110 * (len(series) - i)}" y="{pad_t - 12}" '
            f'style="fill:{color}">'
            f"{escape(label)}</text>"
        )
    return _svg(width, height, parts)


def bar_chart(
    bars: Sequence[tuple[str, float]], *, width: int = 640, height: int = 200, y_label: str = ""
) -> Markup:
    """One bar per (label, value)."""
    if not bars:
        return Markup('<p class="muted">no data yet</p>')
    pad_l, pad_b, pad_t = 48, 36, 28
    top = max(v for _, v in bars) or 1.0

    def sy(y: float) -> float:
        return height - pad_b - y / top * (height - pad_b - pad_t)

    step = (width - pad_l - 12) / len(bars)
    parts = [_frame(width, height, pad_l, pad_b, pad_t, 0.0, top, sy, y_label, "")]
    for i, (label, value) in enumerate(bars):
        x = pad_l + i * step + step * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{sy(value):.1f}" width="{step * 0.7:.1f}" '
            f'height="{height - pad_b - sy(value):.1f}" fill="{COLORS[0]}">'
            f"<title>{escape(label)}: {value:g}</title></rect>"
            f'<text x="{x:.1f}" y="{height - pad_b + 14}">{escape(label[:14])}</text>'
        )
    return _svg(width, height, parts)


class Estimate(NamedTuple):
    """A value with its confidence interval, one mark of an interval chart."""

    label: str
    value: float
    low: float
    high: float


def interval_chart(
    groups: Sequence[tuple[str, Sequence[Estimate]]],
    *,
    width: int = 640,
    height: int = 220,
    y_label: str = "",
    reference: float | None = None,
) -> Markup:
    """Per group (e.g. a suite) a dot per estimate with its interval as a whisker; a line at 0
    and, when given, a dashed line at `reference` (e.g. the least improvement a gate asks for)."""
    marks = [e for _, estimates in groups for e in estimates]
    if not marks:
        return Markup('<p class="muted">no data yet</p>')
    pad_l, pad_b, pad_t = 48, 36, 24
    values = [v for e in marks for v in (e.low, e.high, e.value)] + [0.0, reference or 0.0]
    y0, y1 = min(values), max(values)
    y0, y1 = (y0, y1) if y1 > y0 else (y0 - 1, y1 + 1)

    def sy(y: float) -> float:
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_b - pad_t)

    step = (width - pad_l - 12) / len(groups)
    parts = [_frame(width, height, pad_l, pad_b, pad_t, y0, y1, sy, y_label, "")]
    parts.append(_hline(pad_l, width - 8, sy(0.0), "#98a2b3", ""))
    if reference is not None:
        parts.append(_hline(pad_l, width - 8, sy(reference), COLORS[2], ' stroke-dasharray="4 3"'))
    labels = list(dict.fromkeys(e.label for e in marks))
    for i, (group, estimates) in enumerate(groups):
        left = pad_l + i * step
        for j, e in enumerate(estimates):
            x = left + step * (j + 1) / (len(estimates) + 1)
            parts.append(_whisker(x, e, sy, COLORS[labels.index(e.label) % len(COLORS)]))
        parts.append(
            f'<text x="{left + step / 2:.1f}" y="{height - pad_b + 14}" text-anchor="middle">'
            f"{escape(group[:24])}</text>"
        )
    parts += _legend(labels, width - 130 * len(labels) - 8, pad_t - 8)
    return _svg(width, height, parts)


def _legend(labels: Sequence[str], x: int, y: int) -> list[str]:
    return [
        f'<text x="{x + 130 * k}" y="{y}" style="fill:{COLORS[k % len(COLORS)]}">'
        f"{escape(label)}</text>"
        for k, label in enumerate(labels)
    ]


def _hline(x0: float, x1: float, y: float, color: str, extra: str) -> str:
    return f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}"{extra}/>'


def _whisker(x: float, e: Estimate, scale: Callable[[float], float], color: str) -> str:
    low, high, mid = scale(e.low), scale(e.high), scale(e.value)
    return (
        f'<g class="estimate"><title>{escape(e.label)}: {e.value:+.3f} '
        f"[{e.low:+.3f}, {e.high:+.3f}]</title>"
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{low:.1f}" y2="{high:.1f}" stroke="{color}" '
        f'stroke-width="2"/><line x1="{x - 5:.1f}" x2="{x + 5:.1f}" y1="{low:.1f}" '
        f'y2="{low:.1f}" stroke="{color}"/><line x1="{x - 5:.1f}" x2="{x + 5:.1f}" '
        f'y1="{high:.1f}" y2="{high:.1f}" stroke="{color}"/>'
        f'<circle cx="{x:.1f}" cy="{mid:.1f}" r="4" fill="{color}"/></g>'
    )


def _frame(
    width: int,
    height: int,
    pad_l: int,
    pad_b: int,
    pad_t: int,
    y0: float,
    y1: float,
    scale: Callable[[float], float],
    y_label: str,
    x_label: str,
) -> str:
    ticks = [y0 + (y1 - y0) * k / 4 for k in range(5)]
    lines = [
        f'<line x1="{pad_l}" x2="{width - 8}" y1="{scale(t):.1f}" y2="{scale(t):.1f}" '
        f'stroke="#eef0f4"/><text x="{pad_l - 6}" y="{scale(t) + 4:.1f}" '
        f'text-anchor="end">{t:.3g}</text>'
        for t in ticks
    ]
    lines.append(f'<text x="4" y="{max(pad_t - 12, 10)}">{escape(y_label)}</text>')
    lines.append(
        f'<text x="{width - 8}" y="{height - 4}" text-anchor="end">{escape(x_label)}</text>'
    )
    return "".join(lines)


def _svg(width: int, height: int, parts: list[str]) -> Markup:
    return Markup(  # noqa: S704 - every text in it is escaped above
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )
