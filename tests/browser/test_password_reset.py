"""A person in Chromium, with a real SMTP server on loopback: signs up, logs in before
confirming (the banner, "Resend link"), confirms from the email; later forgets the password
and resets it by following the link from the email the server received; then looks at the
account settings and deletes the account."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import web_server
from tests.support import PASSWORD, SmtpSink, make_settings, migrated

pytestmark = pytest.mark.browser

NEW_PASSWORD = "a completely new passphrase"


@pytest.fixture(scope="module")
def mail_site(tmp_path_factory, tiny_model_path):
    tmp = tmp_path_factory.mktemp("mail-site")
    with SmtpSink() as sink:
        settings = migrated(make_settings(tmp / "data", tiny_model_path, **sink.settings(email_link_cooldown_s=0)))
        with web_server(settings, tmp / "web.log") as url:
            yield url, sink


def log_in(page, url: str, email: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def test_reset_the_password_by_following_the_emailed_link(mail_site, page, shoot):
    url, sink = mail_site
    page.goto(f"{url}/signup")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    shoot("20-check-your-email")

    # Logged in before confirming: no credits yet, a banner, a new link on request.
    log_in(page, url, "ada@example.com", PASSWORD)
    banner = page.locator(".verify-banner")
    expect(banner).to_contain_text("Confirm your email address")
    expect(page.locator("#balance strong")).to_have_text("0")
    shoot("21-unconfirmed-banner")
    banner.get_by_role("button", name="Resend link").click()
    expect(page.get_by_role("status")).to_contain_text("We sent a new confirmation link")
    page.goto(sink.link("ada@example.com", "/email/verify/", count=2))
    page.get_by_role("button", name="Confirm my email").click()
    expect(page.get_by_text("Your email address is confirmed")).to_be_visible()
    expect(page.locator("#balance strong")).to_have_text("200")
    expect(page.locator(".verify-banner")).to_have_count(0)
    shoot("22-confirmed")
    page.get_by_role("button", name="Log out", exact=True).click()

    # Forgot the password.
    page.goto(f"{url}/login")
    shoot("23-login")
    page.get_by_role("link", name="Forgot password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    shoot("24-forgot")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_role("button", name="Send me a link").click()
    expect(page.get_by_role("status")).to_contain_text("we sent it a link")
    shoot("25-forgot-sent")

    email = sink.wait_for("ada@example.com", count=3)[-1]
    assert email["Subject"] == "Reset your Gouache password"
    link = sink.link("ada@example.com", "/password/reset/", count=3)
    page.goto(link)
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password").fill("short")
    page.get_by_role("button", name="Save the new password").click()
    expect(page.get_by_role("alert")).to_contain_text("at least 8 characters")
    shoot("26-reset-error")
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Save the new password").click()
    expect(page).to_have_url(re.compile(r"/login\?reset=1$"))
    expect(page.get_by_role("status")).to_contain_text("Your password was changed")
    shoot("27-reset-done")

    log_in(page, url, "ada@example.com", PASSWORD)  # the old one no longer works
    expect(page.get_by_role("alert")).to_contain_text("Wrong email or password.")
    log_in(page, url, "ada@example.com", NEW_PASSWORD)
    expect(page.locator("#balance strong")).to_have_text("200")

    page.goto(link)  # a used link
    expect(page.get_by_role("heading", name="This link doesn't work")).to_be_visible()
    expect(page.get_by_role("link", name="Send me a new link")).to_be_visible()
    shoot("28-link-used")


def test_account_settings_and_deleting_the_account(mail_site, page, shoot):
    url, sink = mail_site
    page.goto(f"{url}/signup")
    page.get_by_label("Email").fill("grace@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.goto(sink.link("grace@example.com", "/email/verify/"))
    page.get_by_role("button", name="Confirm my email").click()
    expect(page.get_by_text("Your email address is confirmed")).to_be_visible()

    page.goto(f"{url}/account")
    expect(page.get_by_text("confirmed", exact=True)).to_be_visible()
    for heading in ("Email address", "Password", "Sessions", "Delete account"):
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
    shoot("29-account")

    page.get_by_role("link", name="Delete my account…").click()
    expect(page.get_by_role("heading", name="Delete your account?")).to_be_visible()
    page.get_by_label("Your password, to confirm").fill("not my password")
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("alert")).to_contain_text("current password is not right")
    shoot("30-delete-confirm")
    page.get_by_label("Your password, to confirm").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("heading", name="Your account was deleted")).to_be_visible()
    expect(page.get_by_role("link", name="Sign up")).to_be_visible()  # logged out
    shoot("31-goodbye")
    assert sink.wait_for("grace@example.com", count=2)[-1]["Subject"] == "Your Gouache account was deleted"
