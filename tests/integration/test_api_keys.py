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
