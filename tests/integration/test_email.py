"""Email and the account lifecycle through the HTTP surface, with a real SMTP server on
loopback (aiosmtpd) reading what the studio sends: confirming the address before the
welcome credits, sign-up that tells nobody who has an account, password reset, changing
the address and the password, logging out everywhere, session rotation; and the outbox
folder a studio without a mail server writes to."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from app.accounts.models import AccountToken, LoginSession, User
from app.credits import ledger
from app.db import transaction, utcnow
from app.main import create_app
from tests.support import PASSWORD, Browserless, SmtpSink, link_path, links_in, make_settings, migrated, read_outbox

NEW_PASSWORD = "a completely new passphrase"


@pytest.fixture
def mail_settings(settings, smtp_server):
    """The studio's settings, sending through the loopback SMTP server, with no cooldown between links."""
    return settings.model_copy(update=smtp_server.settings(email_link_cooldown_s=0))


@pytest.fixture
def app(mail_settings):
    return create_app(mail_settings)


def browser(app) -> Browserless:
    return Browserless(app)


def account(settings, email: str) -> User | None:
    with transaction(settings) as session:
        user = session.scalar(select(User).where(User.email == email))
        if user is not None:
            assert ledger.balance(session, user.id) == ledger.ledger_sum(session, user.id)
            session.expunge(user)
        return user


def signed_up(app, smtp_server, email: str) -> tuple[Browserless, str]:
    """A browser that filled the sign-up form, and the confirmation link that reached the address."""
    c = browser(app)
    c.sign_up(email, confirm=False)
    return c, smtp_server.link(email, "/email/verify/")


def logged_in(app, email: str, password: str = PASSWORD) -> Browserless:
    c = browser(app)
    response = c.form("/login", {"email": email, "password": password})
    assert response.status_code == 303, response.text
    return c


def confirmed(app, smtp_server, email: str) -> Browserless:
    c, link = signed_up(app, smtp_server, email)
    assert c.form(link_path(link), {}).status_code == 303
    return c


# ---- sign-up and the confirmation link --------------------------------------------------------


def test_the_welcome_credits_come_once_the_address_is_confirmed(app, mail_settings, smtp_server):
    c, link = signed_up(app, smtp_server, "ada@example.com")
    message = smtp_server.to("ada@example.com")[0]
    assert message["Subject"] == "Confirm your email address for Gouache"
    assert message["From"] == mail_settings.mail_from
    assert link.startswith("http://testserver/email/verify/")
    assert "gouache_session" not in c.http.cookies  # signing up logs nobody in
    assert account(mail_settings, "ada@example.com").balance == 0

    page = c.get(link_path(link))  # a page with a button: opening the link changes nothing
    assert page.status_code == 200 and "Confirm my email" in page.text
    assert account(mail_settings, "ada@example.com").email_verified_at is None

    done = c.form(link_path(link), {})
    assert done.status_code == 303 and done.headers["location"] == "/account?welcome=1"
    user = account(mail_settings, "ada@example.com")
    assert user.email_verified_at is not None and user.balance == 200
    welcome = c.get("/account?welcome=1").text
    assert "Your email address is confirmed" in welcome and "Resend link" not in welcome

    again = c.form(link_path(link), {})  # a used link fails cleanly and grants nothing
    assert again.status_code == 400 and "already used" in again.text
    assert account(mail_settings, "ada@example.com").balance == 200
    with transaction(mail_settings) as session:
        grants = ledger.ledger_sum(session, user.id)
    assert grants == 200


def test_an_expired_confirmation_link_fails_cleanly_and_offers_a_new_one(app, mail_settings, smtp_server):
    c, link = signed_up(app, smtp_server, "ada@example.com")
    with transaction(mail_settings) as session:
        session.execute(update(AccountToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    me = logged_in(app, "ada@example.com")  # an unconfirmed account may log in
    for response in (me.get(link_path(link)), me.form(link_path(link), {})):
        assert response.status_code == 400 and "This link has expired" in response.text
        assert "Send me a new link" in response.text
    assert account(mail_settings, "ada@example.com").balance == 0


def test_an_unconfirmed_user_sees_a_banner_and_can_resend_the_link(app, mail_settings, smtp_server):
    signed_up(app, smtp_server, "ada@example.com")
    me = logged_in(app, "ada@example.com")
    home = me.get("/").text
    assert "Confirm your email address" in home and "Resend link" in home and "<strong>0</strong> credits" in home

    resent = me.form("/account/verify/resend", {})
    assert resent.status_code == 303 and resent.headers["location"] == "/account?sent=verify"
    assert "We sent a new confirmation link" in me.get(resent.headers["location"]).text
    second = smtp_server.link("ada@example.com", "/email/verify/", count=2)
    assert me.form(link_path(second), {}).status_code == 303
    assert account(mail_settings, "ada@example.com").balance == 200
    assert "Resend link" not in me.get("/").text


def test_resending_is_limited_per_account(settings, smtp_server):
    app = create_app(settings.model_copy(update=smtp_server.settings()))  # the default cooldown
    signed_up(app, smtp_server, "ada@example.com")
    me = logged_in(app, "ada@example.com")
    for _ in range(3):
        assert me.form("/account/verify/resend", {}).status_code == 303
    assert len(smtp_server.to("ada@example.com")) == 1


def test_an_unconfirmed_account_gets_no_monthly_refill(settings, smtp_server):
    app = create_app(settings.model_copy(update=smtp_server.settings(monthly_refill_credits=50)))
    signed_up(app, smtp_server, "ada@example.com")
    me = logged_in(app, "ada@example.com")
    assert "<strong>0</strong> credits" in me.get("/").text
    assert account(settings, "ada@example.com").balance == 0


# ---- sign-up tells nobody who has an account ----------------------------------------------------


def test_sign_up_answers_the_same_whether_or_not_the_address_has_an_account(app, mail_settings, smtp_server):
    confirmed(app, smtp_server, "ada@example.com")

    def attempt(email: str):
        response = browser(app).form("/signup", {"email": email, "password": "another good passphrase"})
        return response.status_code, response.headers.get("location"), sorted(response.cookies.keys())

    assert attempt("Ada@Example.com") == attempt("someone-new@example.com") == (303, "/signup/sent", [])
    with transaction(mail_settings) as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.email == "ada@example.com")) == 1

    owner_mail = smtp_server.wait_for("ada@example.com", count=2)[-1]
    assert owner_mail["Subject"] == "Someone tried to sign up to Gouache with your address"
    assert any(link.endswith("/password/forgot") for link in links_in(owner_mail))
    # and the password of the account did not change
    assert logged_in(app, "ada@example.com").get("/account").status_code == 200


def test_signing_up_again_before_confirming_sends_a_fresh_link(app, mail_settings, smtp_server):
    signed_up(app, smtp_server, "ada@example.com")
    browser(app).sign_up("ada@example.com", confirm=False)
    fresh = smtp_server.link("ada@example.com", "/email/verify/", count=2)
    assert browser(app).form(link_path(fresh), {}).status_code == 303
    assert account(mail_settings, "ada@example.com").balance == 200


def test_sign_up_hashes_the_password_whether_or_not_the_address_is_taken(app, smtp_server, monkeypatch):
    from app.accounts import service

    confirmed(app, smtp_server, "ada@example.com")
    hashed: list[str] = []
    real = service._hasher

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def hash(self, password):
            hashed.append(password)
            return real.hash(password)

    monkeypatch.setattr(service, "_hasher", Counting())
    for email in ("ada@example.com", "bob@example.com"):
        browser(app).form("/signup", {"email": email, "password": "another good passphrase"})
    assert hashed == ["another good passphrase"] * 2  # the same work, so timing tells nothing


# ---- forgot password ----------------------------------------------------------------------------


def test_a_password_reset_by_email_ends_every_session(app, mail_settings, smtp_server):
    laptop = confirmed(app, smtp_server, "ada@example.com")
    phone = logged_in(app, "ada@example.com")
    visitor = browser(app)
    assert 'href="/password/forgot"' in visitor.get("/login").text

    asked = visitor.form("/password/forgot", {"email": "ada@example.com"})
    unknown = visitor.form("/password/forgot", {"email": "nobody@example.com"})
    assert asked.status_code == unknown.status_code == 200
    assert asked.text.replace("ada@example.com", "X") == unknown.text.replace("nobody@example.com", "X")
    assert smtp_server.to("nobody@example.com") == []
    link = smtp_server.link("ada@example.com", "/password/reset/", count=2)
    assert smtp_server.to("ada@example.com")[1]["Subject"] == "Reset your Gouache password"

    form = visitor.get(link_path(link))
    assert form.status_code == 200 and "Choose a new password" in form.text
    weak = visitor.form(link_path(link), {"password": "short"})
    assert weak.status_code == 422 and "at least 8 characters" in weak.text  # the link still works
    done = visitor.form(link_path(link), {"password": NEW_PASSWORD})
    assert done.status_code == 303 and done.headers["location"] == "/login?reset=1"
    assert "Your password was changed" in visitor.get("/login?reset=1").text

    for before in (laptop, phone):
        assert before.get("/account").status_code == 303  # logged out
    with transaction(mail_settings) as session:
        assert session.scalar(select(func.count()).select_from(LoginSession)) == 0
    refused = browser(app).form("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert refused.status_code == 422
    assert logged_in(app, "ada@example.com", NEW_PASSWORD).get("/account").status_code == 200

    reused = visitor.form(link_path(link), {"password": "yet another passphrase"})
    assert reused.status_code == 400 and "already used" in reused.text
    assert logged_in(app, "ada@example.com", NEW_PASSWORD)


def test_an_expired_reset_link_fails_cleanly(app, mail_settings, smtp_server):
    confirmed(app, smtp_server, "ada@example.com")
    browser(app).form("/password/forgot", {"email": "ada@example.com"})
    link = smtp_server.link("ada@example.com", "/password/reset/", count=2)
    with transaction(mail_settings) as session:
        session.execute(update(AccountToken).values(expires_at=utcnow() - timedelta(minutes=1)))
    visitor = browser(app)
    page = visitor.get(link_path(link))
    assert page.status_code == 400 and "This link has expired" in page.text and 'href="/password/forgot"' in page.text
    assert visitor.form(link_path(link), {"password": NEW_PASSWORD}).status_code == 400
    assert logged_in(app, "ada@example.com", PASSWORD)  # the password did not change


def test_a_newer_reset_link_voids_the_older_one(app, smtp_server):
    confirmed(app, smtp_server, "ada@example.com")
    for _ in range(2):
        browser(app).form("/password/forgot", {"email": "ada@example.com"})
    first = smtp_server.link("ada@example.com", "/password/reset/", count=2)
    second = smtp_server.link("ada@example.com", "/password/reset/", count=3)
    assert browser(app).get(link_path(first)).status_code == 400
    assert browser(app).get(link_path(second)).status_code == 200


# ---- the settings page -----------------------------------------------------------------------------


def test_changing_the_address_takes_a_link_sent_to_the_new_one(app, mail_settings, smtp_server):
    me = confirmed(app, smtp_server, "ada@example.com")
    wrong = me.form("/account/email", {"email": "ada@new.example.com", "password": "not my password"})
    assert wrong.status_code == 422 and "current password is not right" in wrong.text
    same = me.form("/account/email", {"email": "ADA@example.com", "password": PASSWORD})
    assert same.status_code == 422 and "already your email address" in same.text

    asked = me.form("/account/email", {"email": "Ada@New.Example.com", "password": PASSWORD})
    assert asked.status_code == 200 and "We sent a link to <strong>ada@new.example.com</strong>" in asked.text
    assert account(mail_settings, "ada@example.com") is not None  # unchanged until the link is followed
    link = smtp_server.link("ada@new.example.com", "/email/change/")

    assert "ada@new.example.com" in me.get(link_path(link)).text
    done = me.form(link_path(link), {})
    assert done.status_code == 303 and done.headers["location"] == "/account?changed=email"
    assert "Your email address is now" in me.get("/account?changed=email").text
    user = account(mail_settings, "ada@new.example.com")
    assert user is not None and user.verified and user.balance == 200
    assert account(mail_settings, "ada@example.com") is None
    notice = smtp_server.wait_for("ada@example.com", count=2)[-1]
    assert notice["Subject"] == "The email address of your Gouache account changed"
    assert logged_in(app, "ada@new.example.com").get("/account").status_code == 200
    assert me.form(link_path(link), {}).status_code == 400  # once


def test_changing_the_password_rotates_this_browsers_session_and_ends_the_others(app, mail_settings, smtp_server):
    me = confirmed(app, smtp_server, "ada@example.com")
    other = logged_in(app, "ada@example.com")
    before = me.http.cookies["gouache_session"]
    changed = me.form("/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status_code == 200 and "Password changed" in changed.text
    after = me.http.cookies["gouache_session"]
    assert after != before
    assert me.get("/account").status_code == 200
    assert other.get("/account").status_code == 303
    old_cookie = TestClient(app, follow_redirects=False, cookies={"gouache_session": before})
    assert old_cookie.get("/account").status_code == 303


def test_log_out_everywhere(app, mail_settings, smtp_server):
    me = confirmed(app, smtp_server, "ada@example.com")
    other = logged_in(app, "ada@example.com")
    someone_else = confirmed(app, smtp_server, "bob@example.com")
    done = me.form("/account/logout-everywhere", {})
    assert done.status_code == 303 and done.headers["location"] == "/login?everywhere=1"
    assert me.get("/account").status_code == 303 and other.get("/account").status_code == 303
    assert someone_else.get("/account").status_code == 200
    assert "You were logged out on every device" in me.get("/login?everywhere=1").text


def test_logging_in_replaces_the_session_the_browser_had(app, mail_settings, smtp_server):
    me = confirmed(app, smtp_server, "ada@example.com")
    planted = me.http.cookies["gouache_session"]
    again = me.form("/login", {"email": "ada@example.com", "password": PASSWORD})
    assert again.status_code == 303
    assert me.http.cookies["gouache_session"] != planted
    replay = TestClient(app, follow_redirects=False, cookies={"gouache_session": planted})
    assert replay.get("/account").status_code == 303  # the old row is gone
    with transaction(mail_settings) as session:
        assert session.scalar(select(func.count()).select_from(LoginSession)) == 1


# ---- delivery ------------------------------------------------------------------------------------


def test_a_mail_server_that_is_down_loses_no_account(settings, smtp_server, caplog):
    dead = SmtpSink()  # a free port nobody listens on
    down = create_app(settings.model_copy(update=dead.settings(smtp_timeout_s=2)))
    with caplog.at_level(logging.ERROR, logger="gouache.mail"):
        browser(down).sign_up("ada@example.com", confirm=False)
    assert "could not send email" in caplog.text
    assert account(settings, "ada@example.com") is not None

    up = create_app(settings.model_copy(update=smtp_server.settings(email_link_cooldown_s=0)))
    me = logged_in(up, "ada@example.com")
    me.form("/account/verify/resend", {})
    assert me.form(link_path(smtp_server.link("ada@example.com", "/email/verify/")), {}).status_code == 303
    assert account(settings, "ada@example.com").balance == 200


def test_smtp_login_with_the_configured_user(settings):
    with SmtpSink(users={"studio": "s3cret"}) as sink:
        app = create_app(settings.model_copy(update=sink.settings(smtp_user="studio", smtp_password="s3cret")))
        browser(app).sign_up("ada@example.com", confirm=False)
        assert sink.wait_for("ada@example.com") and sink.logins == ["studio"]


def test_without_a_mail_server_each_message_is_an_eml_file_in_the_outbox(tmp_path, tiny_model_path, caplog):
    settings = migrated(make_settings(tmp_path / "data", tiny_model_path))
    assert settings.smtp_host == "" and settings.outbox_dir == settings.data_dir / "outbox"
    c = Browserless(create_app(settings))
    assert "no mail server set up" in c.get("/signup/sent").text
    with caplog.at_level(logging.WARNING, logger="gouache.mail"):
        c.sign_up("ada@example.com", confirm=False)
    files = list(settings.outbox_dir.glob("*.eml"))
    assert len(files) == 1
    (message,) = read_outbox(settings.outbox_dir)
    assert message["To"] == "ada@example.com" and message["Subject"] == "Confirm your email address for Gouache"
    (link,) = links_in(message)
    assert str(files[0]) in caplog.text and link in caplog.text  # a newcomer finds and clicks it
    c.confirm_email("ada@example.com")
    assert "<strong>200</strong> credits" in c.get("/").text
