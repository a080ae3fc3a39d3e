"""Console sign-in: who may sign in, what the cookies are, CSRF on every form, sessions that end."""

from __future__ import annotations

import time

import pytest

from gateway.console.session import ConsoleUser, Sessions, SignInRequired
from tests.unit.conftest import Env
from tests.unit.console_client import csrf_of, sign_in, sign_out

ADMIN_KEY = "admin-secret"


def test_a_page_without_a_session_sends_the_browser_to_sign_in(env: Env) -> None:
    resp = env.client.get("/console?x=1", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/console/login?next=/console%3Fx%3D1"
    assert env.client.post("/console/logout", follow_redirects=False).status_code == 401


def test_the_admin_key_signs_in_with_strict_http_only_cookies(env: Env) -> None:
    form = env.client.get("/console/login")
    login_cookie = form.headers["set-cookie"].lower()
    assert "httponly" in login_cookie and "samesite=strict" in login_cookie
    done = env.client.post(
        "/console/login",
        data={"csrf": csrf_of(form.text), "key": ADMIN_KEY, "name": "ada", "next": "/console"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/console"
    session = next(c for c in done.headers.get_list("set-cookie") if "loopgate_console=" in c)
    assert "HttpOnly" in session and "samesite=strict" in session.lower()
    assert "Path=/console" in session
    assert "Max-Age=28800" in session
    assert ADMIN_KEY not in session  # the key never goes into the cookie


@pytest.mark.parametrize(
    ("fields", "status", "says"),
    [
        ({"key": "wrong"}, 401, "not valid"),
        ({"key": ""}, 401, "not valid"),
        ({"key": ADMIN_KEY, "csrf": "forged"}, 403, "expired"),
    ],
)
def test_a_bad_sign_in_is_refused_on_the_form(
    env: Env, fields: dict[str, str], status: int, says: str
) -> None:
    form = env.client.get("/console/login")
    resp = env.client.post("/console/login", data={"csrf": csrf_of(form.text), **fields})
    assert resp.status_code == status and says in resp.text
    assert "Traceback" not in resp.text
    assert env.client.get("/console", follow_redirects=False).status_code == 303


def test_sign_in_never_redirects_off_the_console(env: Env) -> None:
    for target in ("https://evil.example/", "//evil.example/console", "/v1/models"):
        form = env.client.get("/console/login")
        done = env.client.post(
            "/console/login",
            data={"csrf": csrf_of(form.text), "key": ADMIN_KEY, "next": target},
            follow_redirects=False,
        )
        assert done.headers["location"] == "/console"


def test_a_tenant_key_signs_in_read_only_and_sign_out_ends_the_session(env: Env) -> None:
    csrf = sign_in(env.client, env.acme_key)
    page = env.client.get("/console")
    assert page.status_code == 200 and "read-only" in page.text and "acme" in page.text
    cookie = env.client.cookies.get("loopgate_console")
    sign_out(env.client, csrf)
    assert env.client.get("/console", follow_redirects=False).status_code == 303
    env.client.cookies.set("loopgate_console", cookie or "", path="/console")  # replayed
    assert env.client.get("/console", follow_redirects=False).status_code == 303


def test_a_form_without_the_session_csrf_token_is_refused(env: Env) -> None:
    sign_in(env.client, ADMIN_KEY)
    for sent in ({}, {"csrf": "forged"}):
        resp = env.client.post("/console/logout", data=sent, follow_redirects=False)
        assert resp.status_code == 403 and "CSRF" in resp.text
    assert env.client.get("/console").status_code == 200  # still signed in


def test_every_console_form_checks_csrf_and_tenant_sessions_cannot_act(env: Env) -> None:
    """Each POST route the console has refuses a missing CSRF token (403), and a tenant's
    session may not act at all (403), whatever the form says."""
    app = env.client.app
    posts = sorted(
        {
            route.path
            for route in app.routes
            if route.path.startswith("/console/")
            and "POST" in getattr(route, "methods", ())
            and route.path != "/console/login"
        }
    )
    assert "/console/logout" in posts
    sign_in(env.client, ADMIN_KEY)
    for path in posts:
        concrete = path.replace("{", "").replace("}", "").replace(":str", "").replace(":int", "")
        resp = env.client.post(concrete, data={"x": "1"}, follow_redirects=False)
        assert resp.status_code in (403, 404), (path, resp.status_code)
        if resp.status_code == 403:
            assert "CSRF" in resp.text or "read-only" in resp.text
    env.client.cookies.clear()
    csrf = sign_in(env.client, env.acme_key)
    for path in posts:
        if path == "/console/logout":
            continue
        concrete = path.replace("{", "").replace("}", "").replace(":str", "").replace(":int", "")
        resp = env.client.post(concrete, data={"csrf": csrf}, follow_redirects=False)
        assert resp.status_code in (403, 404), (path, resp.status_code)


def test_sessions_reject_forged_expired_and_foreign_cookies() -> None:
    sessions = Sessions("s3cret", ttl_s=60)
    user, cookie = sessions.issue("tenant", "bo", "ten_1", "acme")
    assert sessions.read(cookie) == user
    body, _, mac = cookie.rpartition(".")
    for bad in (None, "", "nodot", f"{body}.{'0' * len(mac)}", f"{body[:-2]}xx.{mac}"):
        with pytest.raises(SignInRequired):
            sessions.read(bad)
    with pytest.raises(SignInRequired):
        Sessions("another", ttl_s=60).read(cookie)  # another deployment's key
    expired = Sessions("s3cret", ttl_s=-1)
    _, old = expired.issue("admin", "ada")
    with pytest.raises(SignInRequired):
        sessions.read(old)
    assert isinstance(user, ConsoleUser) and user.actor == "console:bo"
    assert user.expires_at > time.time()
