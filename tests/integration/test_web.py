"""Accounts, forms, errors and money rules through the HTTP surface (no worker needed:
jobs stay queued on the SQLite broker)."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.credits import ledger
from app.credits.models import LedgerEntry
from app.db import transaction
from app.generation import service
from app.generation.models import Job
from app.main import create_app
from app.migrate import NotMigrated
from tests.support import PASSWORD, Browserless, link_path, make_settings, outbox_link


def jobs_count(settings) -> int:
    with transaction(settings) as session:
        return session.scalar(select(func.count()).select_from(Job))


def balance_of(settings, email: str) -> int:
    from app.accounts.models import User

    with transaction(settings) as session:
        user = session.scalar(select(User).where(User.email == email))
        assert ledger.balance(session, user.id) == ledger.ledger_sum(session, user.id)
        return user.balance


# ---- pages ------------------------------------------------------------------------


def test_visitors_see_sign_up_and_log_in(client):
    page = client.get("/")
    assert page.status_code == 200
    assert 'href="/signup"' in page.text and 'href="/login"' in page.text
    assert "Generate" not in page.text


def test_signed_in_home_has_the_generate_form_balance_and_gallery_link(user_client):
    page = user_client.get("/").text
    assert '<label for="prompt">Prompt</label>' in page
    assert ">Generate</button>" in page
    assert "<strong>200</strong> credits" in page
    assert 'href="/gallery"' in page
    # every visible form control has a label
    ids = set(re.findall(r'<(?:input|textarea|select)(?![^>]*type="hidden")[^>]*\bid="([\w-]+)"', page))
    labels = set(re.findall(r'<label for="([\w-]+)"', page))
    assert ids and ids <= labels
    assert "/static/vendor/htmx.min.js" in page


def test_pages_for_members_send_visitors_to_log_in(client):
    for url in ("/gallery", "/account"):
        response = client.get(url)
        assert response.status_code == 303 and response.headers["location"] == "/login?next=" + url.replace("/", "%2F")
    assert client.get("/api/v1/generations/whatever").status_code == 401


def test_static_htmx_is_served_locally(client):
    response = client.get("/static/vendor/htmx.min.js")
    assert response.status_code == 200 and "htmx" in response.text[:2000]


# ---- accounts -----------------------------------------------------------------------


def test_sign_up_errors_are_shown_in_the_form(client):
    client.sign_up("taken@example.com")
    fresh = Browserless(client.http.app)
    # a taken address is answered as a new one (its owner gets an email instead: test_email.py)
    taken = fresh.form("/signup", {"email": "TAKEN@example.com", "password": PASSWORD})
    brand_new = fresh.form("/signup", {"email": "brand-new@example.com", "password": PASSWORD})
    assert taken.status_code == brand_new.status_code == 303
    assert taken.headers["location"] == brand_new.headers["location"] == "/signup/sent"
    assert "already exists" not in taken.text
    weak = fresh.form("/signup", {"email": "new@example.com", "password": "short"})
    assert weak.status_code == 422 and "at least 8 characters" in weak.text
    common = fresh.form("/signup", {"email": "new@example.com", "password": "password123"})
    assert common.status_code == 422 and "too easy to guess" in common.text
    assert 'value="new@example.com"' in common.text  # what the user typed is kept


def test_wrong_credentials_get_one_message(client):
    client.sign_up("ada@example.com")
    fresh = Browserless(client.http.app)
    for email, password in (("ada@example.com", "wrong password!"), ("nobody@example.com", PASSWORD)):
        response = fresh.form("/login", {"email": email, "password": password})
        assert response.status_code == 422 and "Wrong email or password." in response.text
    ok = fresh.form("/login", {"email": " Ada@Example.com ", "password": PASSWORD})
    assert ok.status_code == 303


def test_session_cookie_is_httponly_samesite_and_secure_over_https(settings):
    app = create_app(settings)
    for base, secure in (("http://testserver", False), ("https://testserver", True)):
        http = TestClient(app, base_url=base, follow_redirects=False)
        http.get("/signup")
        email = f"{'s' if secure else 'p'}@example.com"
        csrf = http.cookies["gouache_csrf"]
        http.post("/signup", data={"email": email, "password": PASSWORD, "csrf_token": csrf})
        # the session starts when the owner follows the emailed link
        link = outbox_link(settings.outbox_dir, email, "/email/verify/")
        assert link.startswith(f"{base}/email/verify/")
        response = http.post(link_path(link), data={"csrf_token": csrf})
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("gouache_session="))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert ("Secure" in cookie) is secure


def test_log_out_really_ends_the_session(user_client):
    stolen = user_client.http.cookies["gouache_session"]
    user_client.form("/logout", {})
    replay = TestClient(user_client.http.app, follow_redirects=False, cookies={"gouache_session": stolen})
    assert replay.get("/gallery").status_code == 303


def test_changing_the_password_ends_other_sessions(user_client):
    other_browser = Browserless(user_client.http.app)
    assert other_browser.form("/login", {"email": "ada@example.com", "password": PASSWORD}).status_code == 303
    changed = user_client.form(
        "/account/password", {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
    )
    assert changed.status_code == 200 and "Password changed" in changed.text
    assert other_browser.get("/gallery").status_code == 303  # logged out
    assert user_client.get("/gallery").status_code == 200  # this one stays


def test_forms_without_the_csrf_token_are_refused(client, settings):
    response = client.http.post("/signup", data={"email": "x@example.com", "password": PASSWORD})
    assert response.status_code == 403 and "Reload the page" in response.text
    wrong = client.http.post("/signup", data={"email": "x@example.com", "password": PASSWORD, "csrf_token": "forged"})
    assert wrong.status_code == 403
    client.sign_up("y@example.com")
    api = client.http.post("/api/v1/generations", json={"prompt": "a cat"})
    assert api.status_code == 403 and "security token" in api.json()["error"]
    assert jobs_count(settings) == 0


# ---- generating: prices, bad input, money ------------------------------------------------


def test_the_charge_equals_the_quote(user_client, settings):
    for size, steps, n in ((64, 4, 1), (128, 20, 3), (96, 50, 4)):
        quote = user_client.get("/api/v1/quote", params={"width": size, "height": size, "steps": steps, "n": n}).json()
        before = balance_of(settings, "ada@example.com")
        job = user_client.api_post(
            "/api/v1/generations", {"prompt": "a cat", "width": size, "height": size, "steps": steps, "n": n}
        )
        assert job.status_code == 202
        assert job.json()["price"] == quote["credits"]
        assert balance_of(settings, "ada@example.com") == before - quote["credits"]


def test_the_quote_fragment_shows_price_and_balance_after(user_client):
    fragment = user_client.get("/generate/quote", params={"size": "64x64", "steps": 4, "n": 2}).text
    assert re.search(r"<strong>\d+</strong> credits?", fragment) and "left after" in fragment
    bad = user_client.get("/generate/quote", params={"size": "64x64", "steps": 0, "n": 2}).text
    assert "Steps must be between 1 and" in bad


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": ""}, "Describe the image"),
        ({"prompt": "x" * 1001}, "the limit is 1000"),
        ({"width": 100}, "multiple of 8"),
        ({"width": 1024}, "Width must be between 64 and 128"),
        ({"steps": 0}, "Steps must be between 1 and 100"),
        ({"steps": 101}, "Steps must be between 1 and 100"),
        ({"n": 5}, "Number of images must be between 1 and 4"),
        ({"guidance": 31}, "Guidance must be between 0 and 30"),
        ({"guidance": "lots"}, "Guidance must be a number"),
        ({"seed": -1}, "Seed must be between 0 and"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_moves_no_credit(user_client, settings, fields, message):
    body = {"prompt": "a cat", "width": 64, "height": 64, "steps": 4, **fields}
    api = user_client.api_post("/api/v1/generations", body)
    assert 400 <= api.status_code < 500
    assert message in api.json()["error"]
    form = user_client.form("/generate", {**{k: str(v) for k, v in body.items()}, "request_id": "r1"})
    assert 400 <= form.status_code < 500 and message in form.text
    assert 'aria-invalid="true"' in form.text or "alert" in form.text
    assert jobs_count(settings) == 0
    assert balance_of(settings, "ada@example.com") == 200


def test_not_enough_credits_is_refused_clearly(make_client, tmp_path, tiny_model_path):
    from tests.support import migrated

    poor = migrated(make_settings(tmp_path / "poor", tiny_model_path, signup_grant_credits=1))
    c = make_client(poor)
    c.sign_up("poor@example.com")
    response = c.api_post("/api/v1/generations", {"prompt": "a cat", "width": 128, "height": 128, "steps": 50, "n": 4})
    assert response.status_code == 402
    assert "Not enough credits" in response.json()["error"] and "balance is 1" in response.json()["error"]
    assert jobs_count(poor) == 0 and balance_of(poor, "poor@example.com") == 1
    page = c.form("/generate", {"prompt": "a cat", "size": "128x128", "steps": "50", "n": "4", "request_id": "x"})
    assert page.status_code == 402 and "Not enough credits" in page.text


def test_a_double_submit_creates_one_job(user_client, settings):
    form = {"prompt": "a cat", "size": "64x64", "steps": "4", "n": "1", "request_id": "same-click"}
    first = user_client.form("/generate", form)
    second = user_client.form("/generate", form)
    assert first.headers["location"] == second.headers["location"]
    assert jobs_count(settings) == 1
    with transaction(settings) as session:
        holds = session.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "hold"))
    assert holds == 1
    api = [
        user_client.api_post("/api/v1/generations", {"prompt": "a dog"}, **{"Idempotency-Key": "k1"}) for _ in range(2)
    ]
    assert api[0].json()["id"] == api[1].json()["id"]
    assert jobs_count(settings) == 2


def test_htmx_submit_returns_the_job_card_and_a_fresh_request_id(user_client):
    headers = {"HX-Request": "true", "X-CSRF-Token": user_client.csrf}
    ok = user_client.http.post(
        "/generate",
        data={"prompt": "a cat", "size": "64x64", "steps": "4", "n": "1", "request_id": "h1"},
        headers=headers,
    )
    assert ok.status_code == 200
    assert 'class="job job-queued"' in ok.text
    job_id = re.search(r'id="job-([\w-]+)"', ok.text).group(1)
    # the card follows its job's event stream (static/js/jobs.js), and fetches itself on a change of status
    assert f'data-job-events="/api/v1/generations/{job_id}/events"' in ok.text
    assert 'hx-trigger="job-refresh"' in ok.text
    # the form's next request id comes as an event (create.js sets it)
    assert json.loads(ok.headers["HX-Trigger"])["new-request-id"] not in ("", "h1")
    bad = user_client.http.post("/generate", data={"prompt": " ", "size": "64x64", "request_id": "h2"}, headers=headers)
    assert bad.status_code == 422 and bad.headers["HX-Retarget"] == "#form-error"
    assert "Describe the image" in bad.text


def test_users_never_see_each_others_jobs(make_client):
    alice, bob = make_client(), make_client()
    alice.sign_up("alice@example.com")
    bob.sign_up("bob@example.com")
    job = alice.api_post("/api/v1/generations", {"prompt": "alice's secret"}).json()
    for url in (f"/api/v1/generations/{job['id']}", f"/jobs/{job['id']}", f"/jobs/{job['id']}/card"):
        assert bob.get(url).status_code == 404
        assert alice.get(url).status_code == 200
    assert "alice&#39;s secret" not in bob.get("/").text and "alice's secret" not in bob.get("/").text


# ---- the job row is the record ---------------------------------------------------------


def test_a_redelivered_task_claims_the_job_once(user_client, settings):
    job = user_client.api_post("/api/v1/generations", {"prompt": "a cat"}).json()
    assert service.claim(settings, job["id"]) is not None
    assert service.claim(settings, job["id"]) is None


def test_failing_twice_releases_once(user_client, settings):
    job = user_client.api_post("/api/v1/generations", {"prompt": "a cat", "steps": 50}).json()
    service.fail(settings, job["id"], "boom")
    service.fail(settings, job["id"], "boom again")
    assert balance_of(settings, "ada@example.com") == 200


def test_an_unreachable_queue_charges_nothing(make_client, tmp_path, tiny_model_path):
    from tests.support import migrated

    broken = migrated(
        make_settings(tmp_path / "noqueue", tiny_model_path, broker_url="sqla+sqlite:////nonexistent/dir/broker.sqlite")
    )
    c = make_client(broken)
    c.sign_up("ada@example.com")
    response = c.api_post("/api/v1/generations", {"prompt": "a cat"})
    assert response.status_code == 503 and "nothing was charged" in response.json()["error"]
    assert balance_of(broken, "ada@example.com") == 200


# ---- start-up --------------------------------------------------------------------------


def test_the_app_refuses_an_unmigrated_database(tmp_path, tiny_model_path):
    with pytest.raises(NotMigrated, match="gouache db upgrade"):
        create_app(make_settings(tmp_path / "fresh", tiny_model_path))


# ---- a worker that dies must not keep the user's credits: the janitor's job ----------------


def _age_job(settings, job_id: str, **seconds_ago) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from app.db import utcnow

    values = {col: utcnow() - timedelta(seconds=s) for col, s in seconds_ago.items()}
    with transaction(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_a_job_whose_worker_died_every_time_fails_and_is_refunded_with_nobody_looking(user_client, settings):
    from app.generation import janitor

    job = user_client.api_post("/api/v1/generations", {"prompt": "a cat", "steps": 50}).json()
    claimed = service.claim(settings, job["id"])
    assert balance_of(settings, "ada@example.com") == 200 - job["price"]
    for attempt in range(1, settings.job_max_attempts + 1):
        _age_job(settings, job["id"], lease_expires_at=1)  # the worker died: nothing renews the lease
        report = janitor.sweep(settings)
        if attempt < settings.job_max_attempts:
            assert report.requeued == 1 and report.sent == 1
            assert service.claim(settings, job["id"]).attempts == attempt + 1  # the next worker takes it
    assert report.failed == 1

    card = user_client.get(f"/jobs/{job['id']}/card").text
    assert "stopped 3 times" in card and "No credits were charged" in card
    assert balance_of(settings, "ada@example.com") == 200
    # the first worker wakes up and finishes: nothing is recorded, nothing charged
    made = service.StoredImage(key="images/x/y/0.png", thumb_key=None, index=0, seed=1, width=64, height=64)
    assert service.succeed(settings, claimed, [made]) is False
    assert user_client.get(f"/api/v1/generations/{job['id']}").json()["images"] == []
    assert balance_of(settings, "ada@example.com") == 200


def test_the_janitor_fails_queued_jobs_no_worker_took_in_time(user_client, settings):
    from app.generation import janitor

    queued = user_client.api_post("/api/v1/generations", {"prompt": "never picked up"}).json()
    fresh = user_client.api_post("/api/v1/generations", {"prompt": "still fine"}).json()
    waited = settings.job_queue_timeout_s + 5
    _age_job(settings, queued["id"], created_at=waited, sent_at=waited)

    assert janitor.sweep(settings).timed_out == 1
    statuses = {j: user_client.get(f"/api/v1/generations/{j}").json() for j in (queued["id"], fresh["id"])}
    assert statuses[queued["id"]]["status"] == "failed" and "No worker picked" in statuses[queued["id"]]["error"]
    assert statuses[fresh["id"]]["status"] == "queued"
    assert balance_of(settings, "ada@example.com") == 200 - fresh["price"]
