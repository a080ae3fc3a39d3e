"""Signing a test client into the console, as an admin or as a tenant."""

from __future__ import annotations

import re

from litestar.testing import TestClient

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def sign_in(client: TestClient, key: str, name: str = "ada") -> str:  # type: ignore[type-arg]
    """Sign in through the form; returns the session's CSRF token."""
    form = client.get("/console/login")
    assert form.status_code == 200
    done = client.post(
        "/console/login",
        data={"csrf": csrf_of(form.text), "key": key, "name": name, "next": "/console"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    return csrf_of(client.get("/console").text)


def sign_out(client: TestClient, csrf: str) -> None:  # type: ignore[type-arg]
    client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
