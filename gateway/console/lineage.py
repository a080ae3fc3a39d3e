"""Adapter lineage as a graph: each version's dataset → job → base model hash → version, with
arcs from a parent version to the versions trained on top of it, drawn as inline SVG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from itertools import pairwise
from typing import Literal

from markupsafe import Markup

from store import AdapterVersion, FineTuningJob, Store

NodeKind = Literal["dataset", "job", "base", "version"]
MAX_VERSIONS = 100  # the newest this many; older versions stay in the table above the graph

BOX_W, BOX_H, GAP_X, ROW_H, PAD = 168, 40, 36, 58, 12
COLUMNS = ("dataset", "job", "base", "version")
FILL = {
    "dataset": "#ecfdf5",
    "job": "#eff6ff",
    "base": "#f5f3ff",
    "version": "#fff",
}


@dataclass(frozen=True)
class Node:
    kind: NodeKind
    title: str  # the first line: what it is
    detail: str  # the second line: its id, hash or status
    tooltip: str  # the full text on hover


@dataclass(frozen=True)
class Row:
    """One version's chain, left to right; `parent` is the version its job started from."""

    version: AdapterVersion
    chain: tuple[Node, ...]
    job_id: str | None
    parent: str | None


def job_id_of(version: AdapterVersion) -> str | None:
    """A version a fine-tuning job registered names its job (`created_by` "job:<id>")."""
    prefix, _, rest = version.created_by.partition(":")
    return rest if prefix == "job" and rest else None


async def lineage_rows(store: Store, versions: Sequence[AdapterVersion]) -> list[Row]:
    """The newest MAX_VERSIONS versions, oldest first, each with its chain (one job read each)."""
    newest = sorted(versions, key=lambda v: v.created_at)[-MAX_VERSIONS:]
    rows = []
    for version in newest:
        job_id = job_id_of(version)
        job = await store.get_job(job_id, version.tenant_id) if job_id else None
        rows.append(row_of(version, job_id, job))
    return rows


def row_of(version: AdapterVersion, job_id: str | None, job: FineTuningJob | None) -> Row:
    dataset_id = version.dataset_id or (job.dataset_id if job else None)
    chain: list[Node] = []
    if dataset_id:
        chain.append(Node("dataset", "dataset", dataset_id, f"dataset {dataset_id}"))
    if job_id:
        status = job.status if job else "not stored"
        chain.append(Node("job", f"job · {status}", job_id, f"fine-tuning job {job_id}"))
    base = f"{version.base_model} {version.base_hash}"
    base_hash = version.base_hash[:16] or "no hash recorded"
    chain.append(Node("base", version.base_model, base_hash, f"base {base}"))
    title = f"{version.name} · {version.status}"
    chain.append(Node("version", title, version.id, f"version {version.id} ({version.status})"))
    return Row(version, tuple(chain), job_id, job.base_adapter if job else None)


def lineage_svg(rows: Sequence[Row]) -> Markup:
    """Boxes in four columns, one row per version; arrows along each chain; parent arcs on the
    right from a parent version to its children (dashed when the parent is not listed)."""
    if not rows:
        return Markup('<p class="muted">no adapter versions yet</p>')
    where = {row.version.id: i for i, row in enumerate(rows)}
    arcs = [(where.get(row.parent), i, row.parent) for i, row in enumerate(rows) if row.parent]
    right = _x(len(COLUMNS) - 1) + BOX_W
    width = right + 40 + 14 * len(arcs) + PAD
    height = PAD * 2 + ROW_H * len(rows)
    parts = [_DEFS]
    for i, row in enumerate(rows):
        parts += _chain(i, row)
    for n, (source, target, parent) in enumerate(arcs):
        parts.append(_arc(source, target, parent or "", right, 24 + 14 * n))
    body = "".join(parts)
    return Markup(  # noqa: S704 - every text in it is escaped by _box and _arc
        f'<svg class="chart lineage" id="lineage-graph" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="adapter lineage">'
        f"{body}</svg>"
    )


def _x(column: int) -> int:
    return PAD + column * (BOX_W + GAP_X)


def _y(row: int) -> int:
    return PAD + row * ROW_H


def _chain(i: int, row: Row) -> list[str]:
    """The row's boxes in their columns, each joined to the next by an arrow."""
    columns = [COLUMNS.index(node.kind) for node in row.chain]
    parts = [_box(c, i, node, row.version.id) for c, node in zip(columns, row.chain, strict=True)]
    mid = _y(i) + BOX_H // 2
    for a, b in pairwise(columns):
        parts.append(
            f'<line x1="{_x(a) + BOX_W}" y1="{mid}" x2="{_x(b) - 2}" y2="{mid}" '
            'stroke="#667085" stroke-width="1.3" marker-end="url(#lg-arrow)"/>'
        )
    return parts


def _box(column: int, row: int, node: Node, version_id: str) -> str:
    x, y = _x(column), _y(row)
    node_id = f' id="lineage-{escape(version_id)}"' if node.kind == "version" else ""
    stroke = "#2f5bd3" if node.kind == "version" else "#d9dee7"
    return (
        f'<g class="node {node.kind}"{node_id}><title>{escape(node.tooltip)}</title>'
        f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="5" '
        f'fill="{FILL[node.kind]}" stroke="{stroke}"/>'
        f'<text x="{x + 8}" y="{y + 16}" {_FONT} style="fill:#1d2330">'
        f"{escape(_fit(node.title))}</text>"
        f'<text x="{x + 8}" y="{y + 31}" {_FONT} fill="#667085">{escape(_fit(node.detail))}</text>'
        "</g>"
    )


def _arc(source: int | None, target: int, parent: str, right: int, bulge: int) -> str:
    """A parent → child arc beside the version column; from the top edge when the parent is
    not among the rows drawn (deleted, or older than MAX_VERSIONS)."""
    y2 = _y(target) + BOX_H // 2 + 6
    if source is None:
        return (
            f'<path d="M {right + bulge} {PAD // 2} L {right + bulge} {y2} L {right + 2} {y2}" '
            'fill="none" stroke="#9a6700" stroke-dasharray="4 3" marker-end="url(#lg-arrow)">'
            f"<title>parent {escape(parent)} (not shown)</title></path>"
        )
    y1 = _y(source) + BOX_H // 2 - 6
    return (
        f'<path d="M {right} {y1} C {right + bulge} {y1}, {right + bulge} {y2}, {right + 2} {y2}" '
        'fill="none" stroke="#9a6700" stroke-width="1.3" marker-end="url(#lg-arrow)">'
        f"<title>parent {escape(parent)}</title></path>"
    )


def _fit(text: str, chars: int = 24) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


_FONT = 'font-size="11" font-family="system-ui, sans-serif"'
_DEFS = (
    '<defs><marker id="lg-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
    'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="#667085"/>'
    "</marker></defs>"
)
