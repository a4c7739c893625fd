"""API keys: made, used, revoked; what a key may and may not reach; CSRF only for cookies."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from app.apikeys import service as apikeys
from app.apikeys.models import ApiKey
from app.db import reading, transaction, utcnow
from tests.support import Browserless


def _user_id(settings, email: str) -> int:
    from sqlalchemy import select

    from app.accounts.models import User

    with reading(settings) as session:
        return session.scalars(select(User.id).where(User.email == email)).one()


def make_key(settings, email: str, name: str = "script") -> str:
    with transaction(settings) as session:
        _row, key = apikeys.create(session, _user_id(settings, email), name)
    return key


def bare(client: Browserless) -> TestClient:
    """A client with no cookies: a script, not a browser."""
    return TestClient(client.http.app, follow_redirects=False)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_authenticates_the_native_api_without_csrf(user_client, settings):
    key = make_key(settings, "ada@example.com")
    assert key.startswith("gch_") and len(key) == 4 + 8 + 43
    script = bare(user_client)
    made = script.post("/api/v1/generations", json={"prompt": "a red fox", "size": "64x64"}, headers=bearer(key))
    assert made.status_code == 202, made.text
    job = script.get(f"/api/v1/generations/{made.json()['id']}", headers=bearer(key))
    assert job.status_code == 200 and job.json()["prompt"] == "a red fox"


@pytest.mark.parametrize("auth", [None, "Bearer gch_nonsense", "Bearer ", "Bearer gch_abcdefgh" + "x" * 43])
def test_no_key_or_a_bad_key_is_401_json_never_a_redirect(client, auth):
    script = bare(client)
    headers = {"Authorization": auth} if auth else {}
    for method, url in (("get", "/api/v1/generations/nope"), ("post", "/api/v1/generations")):
        response = getattr(script, method)(url, headers=headers, **({"json": {}} if method == "post" else {}))
        assert response.status_code == 401, (method, url, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert "error" in response.json()


def test_a_revoked_key_stops_at_once(user_client, settings):
    key = make_key(settings, "ada@example.com")
    script = bare(user_client)
    made = script.post("/api/v1/generations", json={"prompt": "x", "size": "64x64"}, headers=bearer(key))
    assert made.status_code == 202
    with transaction(settings) as session:
        apikeys.revoke_prefix(session, key[:12])
    refused = script.get("/api/v1/generations/x", headers=bearer(key))
    assert refused.status_code == 401 and "API key" in refused.json()["error"]


def test_a_cookie_session_still_needs_the_csrf_token(user_client):
    refused = user_client.http.post("/api/v1/generations", json={"prompt": "a fox", "size": "64x64"})
    assert refused.status_code == 403
    assert user_client.api_post("/api/v1/generations", {"prompt": "a fox", "size": "64x64"}).status_code == 202


def test_last_used_is_written_at_most_once_a_minute(user_client, settings):
    key = make_key(settings, "ada@example.com")
    script = bare(user_client)
    with reading(settings) as session:
        assert session.query(ApiKey).one().last_used_at is None
    script.get("/api/v1/generations/x", headers=bearer(key))
    with reading(settings) as session:
        first = session.query(ApiKey).one().last_used_at
    assert first is not None and utcnow() - first < timedelta(seconds=30)
    script.get("/api/v1/generations/x", headers=bearer(key))
    with reading(settings) as session:
        assert session.query(ApiKey).one().last_used_at == first  # no write within the minute
    with transaction(settings) as session:
        session.query(ApiKey).one().last_used_at = first - timedelta(minutes=2)
    script.get("/api/v1/generations/x", headers=bearer(key))
    with reading(settings) as session:
        assert session.query(ApiKey).one().last_used_at > first


def test_a_suspended_accounts_key_is_403(user_client, settings):
    from app.accounts.models import User

    key = make_key(settings, "ada@example.com")
    with transaction(settings) as session:
        session.get_one(User, _user_id(settings, "ada@example.com")).suspended_at = utcnow()
    refused = bare(user_client).get("/api/v1/generations/x", headers=bearer(key))
    assert refused.status_code == 403 and "suspended" in refused.json()["error"]


def test_each_key_is_rate_limited_with_retry_after(make_client, settings, tmp_path):
    from tests.support import make_settings, migrated

    limited = migrated(make_settings(tmp_path / "limited", api_key_requests_per_minute=3))
    c = make_client(limited)
    c.sign_up("ada@example.com")
    key, other = make_key(limited, "ada@example.com"), make_key(limited, "ada@example.com", "other")
    script = bare(c)
    codes = [script.get("/api/v1/generations/x", headers=bearer(key)).status_code for _ in range(3)]
    assert codes == [404, 404, 404]
    refused = script.get("/api/v1/generations/x", headers=bearer(key))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert script.get("/api/v1/generations/x", headers=bearer(other)).status_code == 404  # each key its own


# ---- the API keys page -----------------------------------------------------------------------


def _shown_key(html: str) -> str:
    import re

    found = re.search(r'value="(gch_[A-Za-z0-9_-]+)"', html)
    assert found, "the new key is not on the page"
    return found.group(1)


def test_the_page_makes_a_key_shown_once_lists_and_revokes_it(user_client, settings):
    empty = user_client.get("/account/api-keys")
    assert empty.status_code == 200 and "No keys yet" in empty.text
    assert "/account/api-keys" in user_client.get("/account").text  # linked from the account page

    made = user_client.form("/account/api-keys", {"name": "  laptop   script "})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    key = _shown_key(made.text)
    assert "only time it is shown" in made.text

    listed = user_client.get("/account/api-keys")
    assert key[:12] in listed.text and "laptop script" in listed.text and "Never" in listed.text
    assert key not in listed.text  # shown once: the list has the prefix only
    with reading(settings) as session:
        row = session.query(ApiKey).one()
        assert row.prefix == key[:12] and row.key_hash != key and key not in row.key_hash

    script = bare(user_client)
    assert script.get("/api/v1/generations/x", headers=bearer(key)).status_code == 404  # used: it works
    assert "Never" not in user_client.get("/account/api-keys").text  # last used shows a time

    revoked = user_client.form(f"/account/api-keys/{row.id}/revoke", {})
    assert revoked.status_code == 303
    assert "revoked" in user_client.get(revoked.headers["location"]).text
    assert script.get("/api/v1/generations/x", headers=bearer(key)).status_code == 401


def test_a_key_needs_a_name_and_the_page_needs_the_csrf_token(user_client):
    nameless = user_client.form("/account/api-keys", {"name": "  "})
    assert nameless.status_code == 422 and "Give the key a name" in nameless.text
    assert user_client.http.post("/account/api-keys", data={"name": "x"}).status_code == 403


def test_nobody_revokes_another_users_key(make_client, settings):
    ada, bob = make_client(), make_client()
    ada.sign_up("ada@example.com")
    bob.sign_up("bob@example.com")
    key = make_key(settings, "ada@example.com")
    with reading(settings) as session:
        key_id = session.query(ApiKey).one().id
    assert bob.form(f"/account/api-keys/{key_id}/revoke", {}).status_code == 404
    assert bare(ada).get("/api/v1/generations/x", headers=bearer(key)).status_code == 404  # still works


def test_user_bs_key_never_reaches_user_as_jobs(make_client, settings):
    ada, bob = make_client(), make_client()
    ada.sign_up("ada@example.com")
    bob.sign_up("bob@example.com")
    job = ada.api_post("/api/v1/generations", {"prompt": "ada's fox", "size": "64x64"}).json()
    bobs = bearer(make_key(settings, "bob@example.com"))
    script = bare(ada)
    assert script.get(f"/api/v1/generations/{job['id']}", headers=bobs).status_code == 404
    assert script.post(f"/api/v1/generations/{job['id']}/cancel", headers=bobs).status_code == 404
    # and with Ada's browser cookies along, Bob's key still decides who asks
    assert ada.http.get(f"/api/v1/generations/{job['id']}", headers=bobs).status_code == 404


def test_deleting_the_account_deletes_its_keys(user_client, settings):
    key = make_key(settings, "ada@example.com")
    from app.erasure.service import delete_account
    from tests.support import PASSWORD

    delete_account(settings, _user_id(settings, "ada@example.com"), PASSWORD)
    with reading(settings) as session:
        assert session.query(ApiKey).count() == 0
    assert bare(user_client).get("/api/v1/generations/x", headers=bearer(key)).status_code == 401


# ---- gouache keys ----------------------------------------------------------------------------


def test_cli_create_prints_only_the_key_then_lists_and_revokes(user_client, settings):
    from tests.integration.test_cli_users import gouache

    made = gouache(settings, "keys", "create", "Ada@example.com", "--name", "backup job")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and key.startswith("gch_") and len(key) == 55
    assert bare(user_client).get("/api/v1/generations/x", headers=bearer(key)).status_code == 404

    listed = gouache(settings, "keys", "list", "ada@example.com")
    assert listed.exit_code == 0 and key[:12] in listed.stdout and "backup job" in listed.stdout
    assert key not in listed.stdout

    revoked = gouache(settings, "keys", "revoke", key[:12])
    assert revoked.exit_code == 0 and key[:12] in revoked.stdout
    assert bare(user_client).get("/api/v1/generations/x", headers=bearer(key)).status_code == 401
    assert gouache(settings, "keys", "list", "ada@example.com").stdout == ""
    assert "revoked" in gouache(settings, "keys", "list", "ada@example.com", "--revoked").stdout
    assert gouache(settings, "keys", "revoke", "gch_zzzzzzzz").exit_code == 1
    assert gouache(settings, "keys", "create", "nobody@example.com", "--name", "x").exit_code == 1
