"""Hostile credentials on every tenant route: each is a 401 in the OpenAI error shape, never a
500, never echoed; tenant keys and hostile credentials on the admin API are 401/403.

Header values travel as bytes: non-ASCII characters are sent UTF-8 encoded (HTTP's obs-text),
as a client would, and single obs-text bytes are sent as they are."""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest import ADMIN, Env

Credential = bytes  # an Authorization header value, exactly as sent
CHAT = b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}'
SQL = [
    "' OR '1'='1",
    "' OR 1=1 --",
    '" OR ""="',
    "admin'--",
    "1; DROP TABLE api_keys; --",
    "'; DELETE FROM tenants; --",
    "' UNION SELECT key_hash FROM api_keys --",
    "' UNION SELECT NULL, NULL, NULL --",
    "1' AND SLEEP(5) --",
    "'; SELECT pg_sleep(5); --",
    "%' OR 1=1 --",
    "') OR ('1'='1",
    "1 OR 1=1",
    "' OR ''='",
    "\\' OR 1=1 --",
    "'||(SELECT key_hash FROM api_keys LIMIT 1)||'",
    "0x27204f5220313d31",
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "../../../../etc/passwd",
    "%00",
    "%0d%0aSet-Cookie: x=1",
    "<script>alert(1)</script>",
    "*",
    "' OR key_hash LIKE '%",
]
UNICODE = [
    "\u202e",  # right-to-left override
    "\u200b",  # zero-width space
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte-order mark
    "\u00a0",  # no-break space
    "\u3000",  # ideographic space
    "\u2028",  # line separator
    "\U0001f600",  # emoji
    "\U0001f469\u200d\U0001f4bb",  # emoji sequence
    "\u0301",  # combining acute accent
    "\u0430",  # Cyrillic a (looks like Latin a)
    "\uff11",  # full-width digit one
    "\ud7ff",
    "\U0010fffd",
    "\u05d0",  # Hebrew alef (RTL)
    "\u0645",  # Arabic meem (RTL)
]
SCHEMES = ["Basic", "Digest", "Token", "Bearer:", "Bearer=", "Bearer,", "Bearerx", "Bear", "OAuth"]
# HTTP field values may carry HTAB, SP, visible ASCII and obs-text (0x80-0xFF), nothing else.
OBS_TEXT = [bytes([b]) for b in range(0x80, 0x100)]


def near_misses(key: str) -> list[str]:
    """Copies of a real key that differ in one way: each must be refused."""
    prefix, key_id, secret = key.split("-", 2)
    out = [
        key[:-1],
        key + "A",
        key[1:],
        key.upper(),
        key.lower(),
        key.replace("-", "_"),
        key.replace("-", "", 1),
        f"{prefix}-{key_id}-",
        f"{prefix}-{key_id}",
        f"{prefix}-{key_id}-{secret[::-1]}",
        f"{prefix}-{key_id[::-1]}-{secret}",
        f"{prefix}-{'0' * 16}-{secret}",
        f"{prefix}-{key_id}-{secret}{secret}",
        key + key,
        f"{key}\u200b",
        f"\u200b{key}",
        f"{key}\u00a0",  # trailing whitespace that is not HTTP's (SP, HTAB)
        f"{key}\u3000",
        f"{key}\u2028",
        f"{key[:20]} {key[20:]}",
        f"{key[:20]}\t{key[20:]}",
        f"{key} {key}",
    ]
    for i in range(3, len(key)):  # one character changed, at every position
        swap = "B" if key[i] != "B" else "C"
        out.append(key[:i] + swap + key[i + 1 :])
    return out


def curated(key: str) -> list[Credential]:
    key_id = key.split("-")[1]
    tokens = [
        *SQL,
        *(f"lg-{s}" for s in SQL),
        *(f"lg-{key_id}-{s}" for s in SQL),
        *(f"{key}{s}" for s in SQL),
        *(f"x{u}y" for u in UNICODE),
        *(f"{key}{u}" for u in UNICODE),
        *(f"lg-{key_id}-{u * 43}" for u in UNICODE),
        *(f"lg-{u}" for u in UNICODE),
        *(u * 3 for u in UNICODE),
        *near_misses(key),
        "A" * 65536,
        "lg-" + "a" * 65536,
        f"lg-{key_id}-" + "A" * 65536,
        key * 2000,
        "x" * 1024 * 1024,
        "null",
        "undefined",
        "None",
        "0",
        "-1",
        "[]",
        "{}",
        '{"key": "x"}',
        "lg-",
        "lg--",
        "lg-admin-secret",
        "admin-secret ",  # the admin key is no tenant key
    ]
    values = [f"Bearer {t}".encode() for t in tokens]
    values += [f"{scheme} {key}".encode() for scheme in SCHEMES]
    values += [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Bearer   ",
        b"Bearer \t",
        b"bearer",
        b"BEARER",
        key.encode(),  # no scheme
        b"Bearer" + key.encode(),  # no space
        b"Bearer\t" + key.encode(),  # the separator is SP
        b"Bearer  Bearer " + key.encode(),
        b"Bearer " + key.encode() + b" extra",
        b"Basic " + b"x" * 100,
        b"Bearer \x7f",
    ]
    values += [b"Bearer " + key.encode() + b for b in OBS_TEXT]  # a real key, one byte more
    values += [b"Bearer " + b + key.encode() for b in OBS_TEXT]
    values += [b"Bearer x" + b for b in OBS_TEXT[::8]]
    return list(dict.fromkeys(values))


def documented(env: Env, tag: str) -> list[tuple[str, str]]:
    """(method, path) of every route the served OpenAPI document tags `tag`."""
    paths = env.client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path) for path, ops in paths.items() for method, op in ops.items()
        if tag in op["tags"]
    ]  # fmt: skip


def tenant_requests(env: Env) -> list[tuple[str, str]]:
    """(method, url) of every documented tenant route, path parameters filled in."""
    out = []
    for method, path in documented(env, "tenant"):
        parts = ["x" if p.startswith("{") else p for p in path.split("/")]
        out.append((method, "/".join(parts)))
    return out


def call(env: Env, method: str, url: str, credential: Credential | None) -> httpx.Response:
    """One request straight into the app (as a server would pass it: header bytes untouched;
    the test client would re-encode non-ASCII bytes), on the test client's event loop."""
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if credential is not None:
        headers.append((b"authorization", credential))
    body = CHAT if method in ("POST", "PUT", "PATCH") else b""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not messages:
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    env.client.blocking_portal.call(env.client.app, scope, receive, send)
    start, *rest = messages
    content = b"".join(m.get("body", b"") for m in rest)
    return httpx.Response(start["status"], headers=list(start["headers"]), content=content)


def assert_refused(resp: httpx.Response, credential: Credential, statuses: tuple[int, ...]) -> None:
    assert resp.status_code in statuses, (credential[:80], resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] in ("authentication_error", "permission_error")
    assert "Traceback" not in resp.text
    token = credential.partition(b" ")[2].strip()
    if len(token) >= 8:  # shorter ones may occur in any error message by chance
        assert token not in resp.content  # never echoed
        assert all(token not in v.encode("latin-1") for v in resp.headers.values())


def test_curated_hostile_credentials_are_401_on_every_tenant_route(env: Env) -> None:
    credentials = curated(env.acme_key)
    assert len(credentials) >= 500
    routes = tenant_requests(env)
    assert len(routes) >= 20
    for method, url in routes:
        assert_refused(call(env, method, url, None), b"", (401,))
        for credential in credentials:
            assert_refused(call(env, method, url, credential), credential, (401,))
    print(f"\n{len(credentials)} curated credentials x {len(routes)} tenant routes: all 401")
    # The real key still works, so every refusal above was about the credential.
    ok = call(env, "GET", "/v1/models", f"Bearer {env.acme_key}".encode())
    assert ok.status_code == 200


HEADER_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\t '\";-"),
    max_size=300,
)


@st.composite
def hostile(draw: st.DrawFn, key: str) -> Credential:
    """Generated credentials: random text, and random edits of the real key."""
    kind = draw(st.sampled_from(["text", "edit", "wrap", "bytes"]))
    if kind == "text":
        token = draw(HEADER_TEXT)
    elif kind == "edit":
        i = draw(st.integers(0, len(key) - 1))
        ch = draw(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")))
        token = key[:i] + ch + key[i + 1 :]
    elif kind == "wrap":
        token = draw(HEADER_TEXT) + key + draw(HEADER_TEXT)
    else:
        allowed = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
        raw = draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=200))
        return b"Bearer " + bytes(raw)
    if token.strip(" \t") == key:  # HTTP itself trims SP/HTAB: that is the real key
        token = token + "!"
    scheme = draw(st.sampled_from(["Bearer ", "Bearer ", "bearer ", "Basic ", "", "Token "]))
    return (scheme + token).encode()


def test_generated_hostile_credentials_are_401(env: Env) -> None:
    seen: set[Credential] = set()
    routes = tenant_requests(env)

    @given(credential=hostile(env.acme_key), route=st.sampled_from(routes))
    @settings(
        max_examples=400,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    def check(credential: Credential, route: tuple[str, str]) -> None:
        seen.add(credential)
        assert_refused(call(env, route[0], route[1], credential), credential, (401,))

    check()
    print(f"\n{len(seen)} generated credentials: all 401")
    assert len(seen) >= 300


def test_whitespace_http_trims_is_not_part_of_the_key(env: Env) -> None:
    """HTTP servers drop SP/HTAB around a field value, so these reach the gateway as the key;
    any other whitespace (no-break space, NEL, ...) makes another key (see near_misses)."""
    for value in (f"Bearer {env.acme_key} ", f"Bearer  {env.acme_key}", f"Bearer {env.acme_key}\t"):
        assert call(env, "GET", "/v1/models", value.encode()).status_code == 200


def test_admin_routes_refuse_tenant_keys_and_hostile_credentials(env: Env) -> None:
    tenant = f"Bearer {env.acme_key}".encode()
    hostile_values = [
        tenant,
        f"Bearer {env.globex_key}".encode(),
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic YWRtaW46YWRtaW4=",
        b"Bearer admin-secre",
        b"Bearer admin-secretX",
        b"Bearer ADMIN-SECRET",
        b"Bearer admin-secret\xa0",
        b"Bearer admin-secret\x85",
        b"Bearer admin-secret\xe2\x80\x8b",
        b"Bearer ' OR '1'='1",
        b"Bearer " + b"A" * 65536,
        b"admin-secret",
    ]
    for method, path in documented(env, "admin"):
        url = "/".join("acme" if p == "{tenant}" else "x" if p.startswith("{") else p
                       for p in path.split("/"))  # fmt: skip
        for credential in hostile_values:
            assert_refused(call(env, method, url, credential), credential, (401, 403))
        assert_refused(call(env, method, url, None), b"", (401,))
    # The admin key itself still works.
    assert env.client.get("/admin/tenants", headers=ADMIN).status_code == 200
