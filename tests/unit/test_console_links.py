"""Every link the console prints leads somewhere: with a tenant's traffic, feedback, adapter
versions, an alias with a canary, eval runs, a fine-tuning job, its dataset and a loop run, a
breadth-first crawl from /console (links, fragment URLs, the tenant pickers' choices) answers
200 everywhere for an admin, and a tenant session's crawl never shows another tenant."""

from __future__ import annotations

import html
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urldefrag, urlencode, urljoin, urlsplit

import httpx
import pytest

from store import Dataset, EvalRun, LoopRecord, Store, open_store
from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import sign_in
from tests.unit.test_canary import promote, start, upload
from tests.unit.test_console_adapters import on_app
from tests.unit.test_console_overview import queue_eval, start_loop
from tests.unit.test_console_review import chat, rate
from tests.unit.test_console_training import create_job

ADMIN_KEY = "admin-secret"
LINK = re.compile(r'\b(?:href|src|data-src)="([^"]*)"')
GET_FORM = re.compile(r'<form method="get" action="([^"]+)"[^>]*>(.*?)</form>', re.S)
SELECT = re.compile(r'<select name="([^"]+)"[^>]*>(.*?)</select>', re.S)
OPTION = re.compile(r'<option value="([^"]*)"')
SKIPPED = ("/console/logout",)
MAX_PAGES = 400  # a crawl that finds more is following something unbounded


@dataclass(frozen=True)
class Seeded:
    """What the crawl should meet: acme's objects, and globex's that acme must never see."""

    acme_job: str
    acme_dataset: str
    queued_eval: str
    finished_eval: str
    loop: str
    globex_id: str
    globex_secrets: tuple[str, ...]  # names and ids of globex's objects


def finished_eval(env: Env, version: str, tmp_path: Path) -> str:
    """A finished run with its report files, as an evals worker records them."""
    reports = tmp_path / "report-ev-links"
    reports.mkdir()
    for name in ("report.html", "report.md", "report.png"):
        (reports / name).write_bytes(b"report")
    acme_id = str(env.client.get("/admin/tenants/acme", headers=ADMIN).json()["id"])
    run = EvalRun("ev-links", acme_id, "support", version, None, "running", "admin", time.time())
    summary = '{"tenant": {"means": {"candidate": 0.9, "live": 0.5, "base": 0.5}}}'
    decision = '{"promote": true, "reasons": ["better"], "checks": []}'

    async def record(store: Store) -> None:
        await store.add_eval_run(run)
        done = {"decision": decision, "summary": summary, "report_dir": str(reports)}
        await store.finish_eval_run(run.id, "done", promote=True, **done)

    on_app(env, record)
    return run.id


def seed(env: Env, tmp_path: Path) -> Seeded:
    """Realistic data on both tenants, made through the API (and the store where a worker would)."""
    for n in range(3):
        cid = chat(env, f"What is the capital of country {n}?")
        rate(env, cid, "down" if n == 0 else "up")
    globex_chat = chat(env, "globex's own question", env.globex_key)
    env.client.put("/admin/tenants/acme/aliases/support", json={}, headers=ADMIN)
    v1, v2 = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    promote(env, v1)
    start(env, v2, 20)
    globex_version = upload(env, tmp_path, 3, tenant="globex")
    job = create_job(env)
    globex_job = create_job(env, env.globex_key)
    globex = env.client.get("/admin/tenants/globex", headers=ADMIN).json()
    return Seeded(
        acme_job=str(job["id"]),
        acme_dataset=str(job["loopgate"]["dataset_id"]),
        queued_eval=queue_eval(env, v2),
        finished_eval=finished_eval(env, v2, tmp_path),
        loop=start_loop(env, "acme", "support"),
        globex_id=str(globex["id"]),
        globex_secrets=(
            "globex",
            str(globex["id"]),
            globex_chat,
            globex_version,
            str(globex_job["id"]),
            str(globex_job["loopgate"]["dataset_id"]),
        ),
    )


def links_of(page: str, base: str) -> list[str]:
    """The console URLs a page leads to: its links and fragment sources, and each choice of its
    GET forms' pickers (as a person choosing a tenant would)."""
    found = [urljoin(base, html.unescape(u)) for u in LINK.findall(page)]
    for action, body in GET_FORM.findall(page):
        for name, options in SELECT.findall(body):
            for value in OPTION.findall(options):
                query = urlencode({name: html.unescape(value)})
                found.append(f"{urljoin(base, html.unescape(action))}?{query}")
    return [urldefrag(u).url for u in found if same_console(u)]


def same_console(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and parts.path.startswith("/console")


def crawl(env: Env, start_at: str = "/console") -> dict[str, httpx.Response]:
    """Breadth-first over every console URL reachable from `start_at` (GET only; sign-out and
    the static files' contents are not followed)."""
    seen, queue, answers = {start_at}, deque([start_at]), {}
    while queue:
        url = queue.popleft()
        resp = env.client.get(url, follow_redirects=False)
        answers[url] = resp
        assert len(answers) <= MAX_PAGES, "the crawl does not end"
        if url.startswith("/console/static/") or "text/html" not in resp.headers.get(
            "content-type", ""
        ):
            continue
        for link in links_of(resp.text, url):
            if link not in seen and not link.startswith(SKIPPED):
                seen.add(link)
                queue.append(link)
    return answers


def test_an_admin_crawl_finds_no_broken_link(env: Env, tmp_path: Path) -> None:
    seeded = seed(env, tmp_path)
    sign_in(env.client, ADMIN_KEY)
    answers = crawl(env)
    broken = {u: r.status_code for u, r in answers.items() if r.status_code != 200}
    assert not broken, broken
    assert not [u for u, r in answers.items() if "Traceback" in r.text]
    # The crawl reached every kind of page, by the links the console prints.
    for path in (
        f"/console/jobs/{seeded.acme_job}",
        f"/console/datasets/{seeded.acme_dataset}?tenant=acme",
        f"/console/evals/{seeded.queued_eval}",  # the overview's link: the id alone
        f"/console/evals/{seeded.queued_eval}/status?tenant=acme",
        f"/console/evals/{seeded.finished_eval}?tenant=acme",
        f"/console/evals/{seeded.finished_eval}/report/report.png?tenant=acme",
        f"/console/loops/{seeded.loop}",
        f"/console/loops/{seeded.loop}/steps?tenant=acme",
        "/console/aliases?tenant=acme",
        "/console/tenants/globex",
        "/console/review?tenant=acme",
        "/console/overview/live",
        "/console/static/console.css",
        "/console/static/console.js",
        "/console/static/training.js",
        "/console/static/review.js",
    ):
        assert path in answers, path


def test_a_tenant_crawl_never_shows_another_tenant(env: Env, tmp_path: Path) -> None:
    seeded = seed(env, tmp_path)
    sign_in(env.client, env.acme_key)
    answers = crawl(env)
    assert f"/console/jobs/{seeded.acme_job}" in answers and "/console/review" not in answers
    assert f"/console/loops/{seeded.loop}" in answers
    failed = {u: r.status_code for u, r in answers.items() if r.status_code >= 400}
    assert not failed, failed
    for url, resp in answers.items():
        for secret in seeded.globex_secrets:
            assert secret not in resp.text, (url, secret)


def test_links_that_carry_only_an_id_find_the_object_for_an_admin(env: Env, tmp_path: Path) -> None:
    """An admin follows `/console/<kind>/<id>` without ?tenant=; a tenant session reaches only
    its own tenant's objects that way (another's is 404)."""
    seeded = seed(env, tmp_path)
    sign_in(env.client, ADMIN_KEY)
    paths = (
        f"/console/evals/{seeded.finished_eval}",
        f"/console/evals/{seeded.finished_eval}/status",
        f"/console/evals/{seeded.finished_eval}/report/report.md",
        f"/console/datasets/{seeded.acme_dataset}",
        f"/console/loops/{seeded.loop}",
        f"/console/loops/{seeded.loop}/steps",
    )
    for path in paths:
        resp = env.client.get(path)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
    shown = env.client.get(f"/console/evals/{seeded.finished_eval}").text
    assert "Tenant <strong>acme</strong>" in shown
    assert f"/console/evals/{seeded.finished_eval}/report/report.html?tenant=acme" in shown
    assert env.client.get("/console/evals/ev-nope").status_code == 404
    env.client.cookies.clear()
    sign_in(env.client, env.globex_key)
    for path in paths:
        assert env.client.get(path).status_code == 404, path


async def test_owner_of_names_the_tenant_of_an_object_by_its_id(url: str) -> None:
    """The store lookup behind id-only links, on both backends."""
    store = open_store(url)
    await store.open()
    try:
        for tenant_id, name in (("t1", "acme"), ("t2", "globex")):
            await store.create_tenant(tenant_id, name)
        await store.add_eval_run(EvalRun("ev-1", "t2", "a", "v", None, "queued", "x", 1.0))
        await store.add_loop_run(LoopRecord("loop-1", "t1", "a", "running", "{}", "{}", 1.0))
        dataset = Dataset("ds-1", "t2", "hash", "file", None, 1, 0, 0, "/d", "{}", "x", 1.0)
        await store.add_dataset(dataset, [])
        assert await store.owner_of("eval_run", "ev-1") == "t2"
        assert await store.owner_of("loop_run", "loop-1") == "t1"
        assert await store.owner_of("dataset", "ds-1") == "t2"
        assert await store.owner_of("eval_run", "loop-1") is None  # ids of one kind only
        assert await store.owner_of("dataset", "ds-nope") is None
    finally:
        await store.close()


PICKER = (
    '<form method="get" action="/console/evals" id="f"><select name="tenant" id="s">'
    '<option value="acme">acme</option><option value="a&amp;b" selected>x</option></select></form>'
)


@pytest.mark.parametrize(
    ("page", "base", "expected"),
    [
        (
            '<a href="/console/evals/e1?tenant=a&amp;only=losses#x">',
            "/console",
            ["/console/evals/e1?tenant=a&only=losses"],
        ),
        ('<a href="https://example.com/console">', "/console", []),
        ('<div data-src="steps?tenant=a">', "/console/loops/l1", ["/console/loops/steps?tenant=a"]),
        (PICKER, "/console", ["/console/evals?tenant=acme", "/console/evals?tenant=a%26b"]),
    ],
)
def test_the_crawler_reads_links_fragments_and_pickers(
    page: str, base: str, expected: list[str]
) -> None:
    assert links_of(page, base) == expected
