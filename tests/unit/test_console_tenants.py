"""The console's Tenants pages: keys, limits with usage, quotas, gate policy, data settings,
opt-outs and erasure, shown and changed through the admin API's services (read back there)."""

from __future__ import annotations

import re

import pytest

from tests.unit.conftest import ADMIN, Env
from tests.unit.console_client import sign_in

ADMIN_KEY = "admin-secret"
PAGE = "/console/tenants/acme"


def chat(env: Env, user: str = "", key: str | None = None) -> None:
    body: dict[str, object] = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}
    if user:
        body["user"] = user
    resp = env.client.post("/v1/chat/completions", json=body, headers=env.auth(key))
    assert resp.status_code == 200, resp.text


def stored(env: Env, key: str | None = None) -> int:
    resp = env.client.get("/v1/chat/completions?limit=100", headers=env.auth(key))
    return len(resp.json()["data"])


def post(env: Env, path: str, csrf: str, **fields: str) -> tuple[int, str, str]:
    """(status, location, page) of a console form posted without following the redirect."""
    resp = env.client.post(path, data={"csrf": csrf, **fields}, follow_redirects=False)
    return resp.status_code, resp.headers.get("location", ""), resp.text


def assert_refused(status: int, page: str, code: int = 400) -> None:
    assert status == code, page
    assert "Traceback" not in page and "<h1>" in page


def row(page: str, element_id: str) -> str:
    found = re.search(rf'<tr id="{element_id}">(.*?)</tr>', page, re.S)
    assert found, f"no row {element_id}"
    return found.group(1)


def counter(page: str, table: str, kind: str) -> list[str]:
    """The cells of one usage counter's row in a usage table: used, limit."""
    body = page.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    found = re.search(rf'<tr data-kind="{kind}">(.*?)</tr>', body, re.S)
    assert found, f"no {kind} counter in {table}"
    return re.findall(r'<td class="num">([^<]*)</td>', found.group(1))


def test_signed_out_pages_send_the_browser_to_sign_in(env: Env) -> None:
    for path in ("/console/tenants", PAGE):
        resp = env.client.get(path, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/console/login")


def test_a_tenant_session_sees_only_its_own_tenant_read_only(env: Env) -> None:
    csrf = sign_in(env.client, env.acme_key, "bo")
    listing = env.client.get("/console/tenants").text
    assert 'href="/console/tenants/acme"' in listing and "globex" not in listing
    assert "create-tenant-form" not in listing
    page = env.client.get(PAGE)
    assert page.status_code == 200 and 'id="keys-table"' in page.text
    for action in ("revoke-form-", "create-key-form", "limits-form", "erase-form", "<textarea"):
        assert action not in page.text
    assert '<pre id="gate-policy-json">' in page.text  # the policy, read-only
    other = env.client.get("/console/tenants/globex")
    assert other.status_code == 404 and "globex-private" not in other.text
    status, _, text = post(env, PAGE + "/keys", csrf, name="mine")
    assert status == 403 and "read-only" in text
    keys = env.client.get("/admin/tenants/acme/keys", headers=ADMIN).json()["data"]
    assert [k["name"] for k in keys] == ["k"]  # nothing was issued


def test_a_new_key_is_shown_once_and_works_and_revoking_stops_it(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    resp = env.client.post(PAGE + "/keys", data={"csrf": csrf, "name": "ci"})
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    found = re.search(r'<pre id="new-key">([^<]+)</pre>', resp.text)
    assert found
    key = found.group(1)
    assert env.client.get("/v1/models", headers=env.auth(key)).status_code == 200
    listed = env.client.get("/admin/tenants/acme/keys", headers=ADMIN).json()["data"]
    new = next(k for k in listed if k["name"] == "ci")
    page = env.client.get(PAGE).text
    assert key not in page and "ci" in row(page, f"key-{new['id']}")
    status, location, _ = post(env, f"{PAGE}/keys/{new['id']}/revoke", csrf)
    assert status == 303 and location == PAGE + "?done=revoked"
    assert env.client.get("/v1/models", headers=env.auth(key)).status_code == 401
    listed = env.client.get("/admin/tenants/acme/keys", headers=ADMIN).json()["data"]
    assert next(k for k in listed if k["id"] == new["id"])["revoked_at"] is not None
    shown = env.client.get(location).text
    assert "Key revoked." in shown and "revoked" in row(shown, f"key-{new['id']}")


def test_a_key_is_revoked_only_through_its_own_tenant(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    globex = env.client.get("/admin/tenants/globex/keys", headers=ADMIN).json()["data"][0]
    status, _, page = post(env, f"{PAGE}/keys/{globex['id']}/revoke", csrf)
    assert_refused(status, page, 404)
    assert env.client.get("/v1/models", headers=env.auth(env.globex_key)).status_code == 200


def test_limits_are_saved_as_the_api_saves_them_and_usage_is_shown(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    fields = {"requests_per_minute": "50", "token_budget": "1000", "budget_period": "day"}
    status, location, _ = post(env, PAGE + "/limits", csrf, **fields)
    assert status == 303 and location == PAGE + "?done=limits"
    limits = env.client.get("/admin/tenants/acme/limits", headers=ADMIN).json()
    assert limits["requests_per_minute"] == 50 and limits["token_budget"] == 1000
    assert limits["budget_period"] == "day" and limits["tokens_per_minute"] is None
    chat(env)
    chat(env)
    page = env.client.get(location).text
    assert "Limits saved." in page
    assert counter(page, "usage-table", "requests") == ["2", "50"]
    assert counter(page, "usage-table", "budget") == ["14", "1,000"]  # 7 tokens a chat


@pytest.mark.parametrize(
    "fields",
    [{"requests_per_minute": "0"}, {"max_concurrent": "many"}, {"budget_period": "week"}],
)
def test_bad_limits_are_a_400_page_and_change_nothing(env: Env, fields: dict[str, str]) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    post(env, PAGE + "/limits", csrf, requests_per_minute="9")
    status, _, page = post(env, PAGE + "/limits", csrf, **fields)
    assert_refused(status, page)
    limits = env.client.get("/admin/tenants/acme/limits", headers=ADMIN).json()
    assert limits["requests_per_minute"] == 9


def test_one_keys_limits_and_usage(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    key_id = env.client.get("/admin/tenants/acme/keys", headers=ADMIN).json()["data"][0]["id"]
    status, _, _ = post(env, PAGE + "/limits", csrf, key_id=key_id, requests_per_minute="7")
    assert status == 303
    url = f"/admin/tenants/acme/keys/{key_id}/limits"
    assert env.client.get(url, headers=ADMIN).json()["requests_per_minute"] == 7
    tenant_limits = env.client.get("/admin/tenants/acme/limits", headers=ADMIN).json()
    assert tenant_limits["requests_per_minute"] is None
    chat(env)
    page = env.client.get(PAGE).text
    assert counter(page, f"key-counters-{key_id}", "requests") == ["1", "7"]
    globex = env.client.get("/admin/tenants/globex/keys", headers=ADMIN).json()["data"][0]["id"]
    status, _, text = post(env, PAGE + "/limits", csrf, key_id=globex, requests_per_minute="1")
    assert_refused(status, text, 404)


def test_quotas_with_usage_and_their_edit(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    status, _, _ = post(env, PAGE + "/quotas", csrf, max_files="3", max_epochs="")
    assert status == 303
    shares = env.client.get("/admin/tenants/acme/quotas", headers=ADMIN).json()
    assert shares["own"]["max_files"] == 3 and shares["in_force"]["max_files"] == 3
    assert shares["own"]["max_epochs"] is None
    quota = row(env.client.get(PAGE).text, "quota-max_files")
    assert re.findall(r'<td class="num">([^<]*)</td>', quota) == ["3", "0"]
    status, _, page = post(env, PAGE + "/quotas", csrf, max_seq_length="8")  # the API's ge=16
    assert_refused(status, page)
    assert env.client.get("/admin/tenants/acme/quotas", headers=ADMIN).json()["own"]["max_files"]


def test_the_gate_policy_is_edited_as_json_and_checked_as_the_api_checks_it(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    policy = '{"min_improvement": 0.1, "confidence": 0.9}'
    status, location, _ = post(env, PAGE + "/gate-policy", csrf, policy=policy)
    assert status == 303 and location == PAGE + "?done=gate-policy"
    saved = env.client.get("/admin/tenants/acme/gate-policy", headers=ADMIN).json()
    assert saved["min_improvement"] == 0.1 and saved["confidence"] == 0.9
    assert "&#34;min_improvement&#34;: 0.1" in env.client.get(location).text
    for bad in ('{"min_improvement": 2}', "{not json", '{"unknown": 1}', ""):
        status, _, page = post(env, PAGE + "/gate-policy", csrf, policy=bad)
        assert_refused(status, page)
    again = env.client.get("/admin/tenants/acme/gate-policy", headers=ADMIN).json()
    assert again == saved


def test_data_settings_change_the_tenant_as_patch_does(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    fields = {"store_default": "false", "redact_pii": "false", "retention_days": "30"}
    status, _, _ = post(env, PAGE + "/policy", csrf, **fields)
    assert status == 303
    tenant = env.client.get("/admin/tenants/acme", headers=ADMIN).json()
    assert (tenant["store_default"], tenant["redact_pii"], tenant["retention_days"]) == (
        False,
        False,
        30,
    )
    page = env.client.get(PAGE).text
    assert '<td id="retention">30 days</td>' in page and '<td id="store-default">no</td>' in page
    post(env, PAGE + "/policy", csrf, store_default="true", redact_pii="true", retention_days="")
    tenant = env.client.get("/admin/tenants/acme", headers=ADMIN).json()
    assert tenant["retention_days"] is None and tenant["store_default"] is True  # kept forever
    for bad in ({"retention_days": "0"}, {"store_default": "maybe"}):
        status, _, text = post(env, PAGE + "/policy", csrf, **bad)
        assert_refused(status, text)


def test_an_opt_out_flags_the_end_users_rows_and_is_listed(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    chat(env, "u1")
    chat(env, "u2")
    status, location, _ = post(env, PAGE + "/opt-out", csrf, end_user="u1")
    assert status == 303
    rows = env.client.get("/v1/chat/completions", headers=env.auth()).json()["data"]
    flagged = {r["loopgate"]["end_user"]: r["loopgate"]["do_not_train"] for r in rows}
    assert flagged == {"u1": True, "u2": False}
    page = env.client.get(location).text
    assert "(1)" in page and "<li><code>u1</code></li>" in page
    post(env, PAGE + "/opt-out", csrf, end_user="<b>x</b>")
    assert "<code>&lt;b&gt;x&lt;/b&gt;</code>" in env.client.get(PAGE).text  # escaped
    status, _, text = post(env, PAGE + "/opt-out", csrf, end_user="")
    assert_refused(status, text)


def test_erase_needs_the_tenants_name_typed_and_then_erases_as_the_api_does(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    for user in ("u1", "u1", "u2"):
        chat(env, user)
    chat(env, key=env.globex_key)
    for typed in ("", "acm", "globex"):
        status, _, page = post(env, PAGE + "/erase", csrf, end_user="u1", confirm=typed)
        assert_refused(status, page)
        assert "nothing was erased" in page
    assert stored(env) == 3
    status, _, page = post(env, PAGE + "/erase", csrf, end_user="u1", confirm="acme")
    assert status == 200 and 'id="erase-result"' in page
    assert "Erased 2 captured completion(s) of end user <code>u1</code>" in page
    assert stored(env) == 1 and stored(env, env.globex_key) == 1
    status, _, page = post(env, PAGE + "/erase", csrf, confirm="acme")
    assert status == 200 and "Erased 1 captured completion(s)," in page
    assert stored(env) == 0 and stored(env, env.globex_key) == 1


def test_an_admin_creates_a_tenant(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    status, location, _ = post(env, "/console/tenants", csrf, name="initech")
    assert status == 303 and location == "/console/tenants/initech"
    assert env.client.get("/admin/tenants/initech", headers=ADMIN).status_code == 200
    assert 'href="/console/tenants/initech"' in env.client.get("/console/tenants").text
    for bad in ("Bad Name", "", "acme"):
        status, _, page = post(env, "/console/tenants", csrf, name=bad)
        assert status in (400, 409), (bad, status)
        assert "Traceback" not in page
    names = [t["name"] for t in env.client.get("/admin/tenants", headers=ADMIN).json()["data"]]
    assert sorted(names) == ["acme", "globex", "initech"]


def test_unknown_tenants_are_404_pages(env: Env) -> None:
    csrf = sign_in(env.client, ADMIN_KEY)
    assert env.client.get("/console/tenants/nobody").status_code == 404
    status, _, page = post(env, "/console/tenants/nobody/erase", csrf, confirm="nobody")
    assert_refused(status, page, 404)
