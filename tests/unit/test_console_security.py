"""The console's hardening: security headers on every response (CSP, nosniff, referrer policy,
no-store on pages), no inline script in any template, sign-in throttling per client address,
and hostile names and texts escaped on every page that shows them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import msgspec
from markupsafe import escape

from gateway.console.pages import CSP, TEMPLATES
from gateway.console.throttle import SignInThrottle
from store import EvalResult, EvalRun, Store
from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import csrf_of, sign_in
from tests.unit.test_canary import upload
from tests.unit.test_console_adapters import on_app
from tests.unit.test_console_links import crawl, seed
from tests.unit.test_console_review import chat, rate

ADMIN_KEY = "admin-secret"
SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=1>'
HOSTILE = (SCRIPT, ATTRIBUTE)


# -- headers ------------------------------------------------------------------------------------


def assert_secured(url: str, resp: httpx.Response, *, page: bool = True) -> None:
    assert resp.headers.get("content-security-policy") == CSP, url
    assert resp.headers.get("x-content-type-options") == "nosniff", url
    assert resp.headers.get("referrer-policy") == "same-origin", url
    if page:
        assert resp.headers.get("cache-control") == "no-store", url


def test_every_console_response_carries_the_security_headers(env: Env, tmp_path: Path) -> None:
    seed(env, tmp_path)
    signed_out = env.client.get("/console/tenants", follow_redirects=False)
    assert signed_out.status_code == 303
    assert_secured("signed out", signed_out)
    assert_secured("login", env.client.get("/console/login"))
    sign_in(env.client, ADMIN_KEY)
    answers = crawl(env)
    assert len(answers) > 20
    for url, resp in answers.items():
        assert_secured(url, resp, page=not url.startswith("/console/static/"))
    missing = env.client.get("/console/evals/ev-nope")
    assert missing.status_code == 404
    assert_secured("error page", missing)
    csrf = csrf_of(env.client.get("/console/tenants").text)
    created = env.client.post(
        "/console/tenants", data={"csrf": csrf, "name": "initech"}, follow_redirects=False
    )
    assert created.status_code == 303
    assert_secured("redirect after a form", created)


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
HANDLER = re.compile(r"\son[a-z]+\s*=", re.I)
JS_URL = re.compile(r"javascript:", re.I)


def test_no_template_holds_an_inline_script_or_event_handler() -> None:
    templates = sorted(TEMPLATES.rglob("*.html"))
    assert len(templates) > 10
    for path in templates:
        text = path.read_text()
        for pattern in (INLINE_SCRIPT, HANDLER, JS_URL):
            assert not pattern.search(text), (path.name, pattern.pattern)


def test_the_pattern_finds_what_csp_would_block() -> None:
    assert INLINE_SCRIPT.search("<script>go()</script>")
    assert not INLINE_SCRIPT.search('<script src="/console/static/x.js" defer></script>')
    assert HANDLER.search('<button onclick="go()">') and not HANDLER.search('<b data-on="1">')
    assert JS_URL.search('<a href="javascript:history.back()">')


# -- sign-in throttling ---------------------------------------------------------------------------


def attempt(env: Env, address: str, key: str) -> httpx.Response:
    """One sign-in from a client address: the form, then the post (on the app's own loop)."""

    async def sign_in_from() -> httpx.Response:
        transport = httpx.ASGITransport(app=env.client.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as c:
            form = await c.get("/console/login")
            data = {"csrf": csrf_of(form.text), "key": key, "name": "ada", "next": "/console"}
            return await c.post("/console/login", data=data)

    return env.client.blocking_portal.call(sign_in_from)


def test_ten_wrong_keys_from_one_address_throttle_it_and_no_other(env: Env) -> None:
    for _ in range(10):
        assert attempt(env, "10.0.0.1", "wrong-key").status_code == 401
    refused = attempt(env, "10.0.0.1", "wrong-key")
    assert refused.status_code == 429 and "too many wrong keys" in refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 300
    assert "Traceback" not in refused.text and 'id="key"' in refused.text  # still the form
    assert_secured("throttled", refused)
    # The right key from that address waits too (a guess that hit must not be told apart) ...
    assert attempt(env, "10.0.0.1", ADMIN_KEY).status_code == 429
    # ... while other addresses sign in, or fail, as before.
    assert attempt(env, "10.0.0.2", ADMIN_KEY).status_code == 303
    assert attempt(env, "10.0.0.3", env.acme_key).status_code == 303
    assert attempt(env, "10.0.0.2", "wrong-key").status_code == 401


def test_the_window_slides_and_a_right_key_does_not_reset_it() -> None:
    now = [1000.0]
    throttle = SignInThrottle(limit=3, window_s=300.0, clock=lambda: now[0])
    for step in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
        now[0] += 10 if step < 2 else 0
    assert throttle.retry_after("a") == 280  # the first failure leaves the window in 280 s
    assert throttle.retry_after("b") is None
    now[0] += 279.5
    assert throttle.retry_after("a") == 1
    now[0] += 0.5
    assert throttle.retry_after("a") is None  # one failure aged out: one more try
    throttle.failed("a")
    assert throttle.retry_after("a") == 10


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    now = [0.0]
    throttle = SignInThrottle(limit=2, window_s=60.0, max_addresses=100, clock=lambda: now[0])
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert throttle.retry_after("10.0.3.231") == 60  # the newest are remembered
    assert throttle.retry_after("10.0.0.0") is None  # the oldest were forgotten
    assert len(throttle._failures) <= 100


# -- escaping -------------------------------------------------------------------------------------


def hostile_data(env: Env, tmp_path: Path) -> None:
    """Tenants and adapter versions named with markup (made in the store: the API refuses such
    names), a captured completion and eval answers holding it."""
    uploaded = upload(env, tmp_path, 1)

    async def records(store: Store) -> None:
        await store.create_tenant("t-evil-1", SCRIPT)
        await store.create_tenant("t-evil-2", ATTRIBUTE)
        version = await store.get_adapter(uploaded)
        assert version is not None
        for n, payload in enumerate(HOSTILE):
            named = msgspec.structs.replace(
                version, id=f"lg-evil-{n}", name=payload, content_hash=f"evil{n}"
            )
            await store.add_adapter(named)

    on_app(env, records)
    rate(env, chat(env, f"Please repeat {SCRIPT} and {ATTRIBUTE}"), "down")
    hostile_eval(env)


def hostile_eval(env: Env) -> None:
    acme_id = str(env.client.get("/admin/tenants/acme", headers=ADMIN).json()["id"])
    run = EvalRun("ev-xss", acme_id, "support", "v-x", None, "running", "admin", time.time())
    results = [
        EvalResult(run.id, "tenant", f"q{n}", system, 0.5, True, 10.0, f"{system}: {p}", p)
        for system in ("candidate", "live", "base")
        for n, p in enumerate(HOSTILE)
    ]

    async def record(store: Store) -> None:
        await store.add_eval_run(run)
        await store.add_eval_results(results)
        await store.finish_eval_run(run.id, "done", promote=False, decision=None)

    on_app(env, record)


def assert_escaped(url: str, text: str, shown: tuple[str, ...]) -> None:
    for payload in HOSTILE:
        assert payload not in text, (url, payload)
        assert "<img src=x" not in text and "<script>alert" not in text, url
    for payload in shown:
        assert str(escape(payload)) in text, (url, payload)


def test_markup_in_names_and_texts_is_shown_as_text_on_every_page(env: Env, tmp_path: Path) -> None:
    hostile_data(env, tmp_path)
    sign_in(env.client, ADMIN_KEY)
    evil = {"tenant": SCRIPT}
    pages: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
        ("/console", {}, HOSTILE),  # the tenants' traffic rows
        ("/console/tenants", {}, HOSTILE),
        (f"/console/tenants/{ATTRIBUTE}", {}, (ATTRIBUTE,)),
        ("/console/aliases", {"tenant": "acme"}, HOSTILE),  # the adapter versions' names
        ("/console/aliases", evil, HOSTILE),  # the heading and the tenant picker
        ("/console/evals", evil, HOSTILE),
        ("/console/evals/ev-xss", {"tenant": "acme"}, HOSTILE),  # answers and reasons
        ("/console/training", evil, HOSTILE),
        ("/console/review", {"tenant": "acme"}, HOSTILE),  # the completion's text
    ]
    for path, params, shown in pages:
        resp = env.client.get(path, params=params)
        assert resp.status_code == 200, (path, params, resp.text[:300])
        assert_escaped(f"{path} {params}", resp.text, shown)
