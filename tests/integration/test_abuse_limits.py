"""Abuse limits, tried as an attacker would: guessing passwords, farming accounts, buying credits
on a server that takes no payments, and prompts the studio's content policy refuses."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.accounts import throttle
from app.accounts.models import User
from app.accounts.throttle import Throttle, TooManyAttempts
from app.credits.models import Purchase
from app.db import reading
from app.generation.models import Job
from app.main import create_app
from tests.support import PASSWORD, Browserless, make_settings, migrated, run_threads

WRONG = "not the right passphrase"


class Browser(Browserless):
    """A browser at a given client address (what uvicorn reports as the peer)."""

    def __init__(self, app, address: str = "203.0.113.7"):
        self.http = TestClient(app, follow_redirects=False, client=(address, 50000))
        self.http.get("/login")

    def log_in(self, email: str, password: str = PASSWORD):
        return self.form("/login", {"email": email, "password": password})


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def app_for(tmp_path, tiny_model_path, *, clock: Clock | None = None, **overrides):
    settings = migrated(make_settings(tmp_path / "data", tiny_model_path, **overrides))
    app = create_app(settings)
    if clock is not None:
        app.state.throttle = Throttle(settings, clock=clock)
    return app, settings


def users(settings) -> int:
    with reading(settings) as s:
        return s.scalar(select(func.count()).select_from(User)) or 0


# ---- failed logins ------------------------------------------------------------------------------


def test_after_five_wrong_passwords_even_the_right_one_is_refused_with_429_and_retry_after(tmp_path, tiny_model_path):
    app, _ = app_for(tmp_path, tiny_model_path)
    Browser(app, "198.51.100.1").sign_up("ada@example.com")
    attacker = Browser(app)
    for _ in range(5):
        assert attacker.log_in("ada@example.com", WRONG).status_code == 422
    refused = attacker.log_in("ada@example.com", PASSWORD)
    assert refused.status_code == 429
    assert "Too many failed login attempts; try again in 15 minutes." in refused.text
    assert 890 <= int(refused.headers["Retry-After"]) <= 900
    assert "gouache_session" not in refused.cookies
    # the owner, elsewhere, is refused too: the account's own count is full
    owner = Browser(app, "198.51.100.1").log_in("ada@example.com")
    assert owner.status_code == 429 and "Retry-After" in owner.headers


def test_the_counts_expire_after_the_window(tmp_path, tiny_model_path):
    clock = Clock()
    app, _ = app_for(tmp_path, tiny_model_path, clock=clock, login_throttle_window_s=60)
    browser = Browser(app)
    browser.sign_up("ada@example.com")
    for _ in range(5):
        assert browser.log_in("ada@example.com", WRONG).status_code == 422
        clock.now += 5  # the first failure leaves the window first
    refused = browser.log_in("ada@example.com")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "35"  # 60 s after the first failure
    assert "try again in 35 seconds" in refused.text
    clock.now += 34
    assert browser.log_in("ada@example.com").status_code == 429
    clock.now += 1  # the first failure is now older than the window: one more try
    assert browser.log_in("ada@example.com").status_code == 303


def test_the_address_and_the_account_are_counted_apart(tmp_path, tiny_model_path):
    app, _ = app_for(tmp_path, tiny_model_path, login_failures_per_account=3, login_failures_per_ip=5)
    for email in ("ada@example.com", "bob@example.com"):
        Browser(app, "198.51.100.1").sign_up(email)
    attacker, elsewhere = Browser(app, "203.0.113.7"), Browser(app, "198.51.100.9")

    for _ in range(3):
        assert attacker.log_in("ada@example.com", WRONG).status_code == 422
    assert elsewhere.log_in("ada@example.com").status_code == 429  # the account is throttled anywhere
    assert attacker.log_in("bob@example.com").status_code == 303  # another account from this address is not

    for email in ("carol@example.com", "dave@example.com"):  # accounts that don't exist count alike
        assert attacker.log_in(email, WRONG).status_code == 422
    assert Browser(app, "203.0.113.7").log_in("bob@example.com").status_code == 429  # the address is full
    assert elsewhere.log_in("bob@example.com").status_code == 303


def test_a_successful_login_clears_the_accounts_count_but_not_the_addresss(tmp_path, tiny_model_path):
    """An attacker with an account of their own can't log in between guesses to clear the count."""
    app, _ = app_for(tmp_path, tiny_model_path, login_failures_per_account=3, login_failures_per_ip=4)
    attacker = Browser(app)
    attacker.sign_up("mallory@example.com")
    Browser(app, "198.51.100.1").sign_up("ada@example.com")
    for _ in range(2):
        assert attacker.log_in("ada@example.com", WRONG).status_code == 422
        assert attacker.log_in("mallory@example.com").status_code == 303
    assert attacker.log_in("mallory@example.com", WRONG).status_code == 422  # mallory's count: 1
    assert attacker.log_in("mallory@example.com", WRONG).status_code == 422  # the address: 4 failures
    assert attacker.log_in("ada@example.com").status_code == 429


def test_simultaneous_guesses_are_checked_before_hashing(tmp_path, tiny_model_path, monkeypatch):
    """40 guesses at once: each waits for a hashing turn and checks the count again once it has
    one, so only the limit (plus at most one guess per other turn) is ever hashed."""
    app, settings = app_for(tmp_path, tiny_model_path, login_failures_per_ip=0, password_hash_queue=64)
    Browser(app, "198.51.100.1").sign_up("ada@example.com")
    from app.accounts import service

    verified = []
    real_verify = service._hasher.verify
    monkeypatch.setattr(service._hasher, "verify", lambda h, p: verified.append(1) or real_verify(h, p))
    tabs = [Browser(app, f"203.0.113.{i}") for i in range(40)]
    codes = run_threads(40, lambda i: tabs[i].log_in("ada@example.com", WRONG).status_code)
    assert set(codes) == {422, 429}
    limit, turns = settings.login_failures_per_account, settings.password_hash_concurrency
    assert limit <= codes.count(422) <= limit + turns - 1
    assert len(verified) == codes.count(422)  # a refused guess hashed nothing


def test_when_every_hashing_turn_is_taken_a_login_is_answered_503_at_once(tmp_path, tiny_model_path):
    app, _ = app_for(tmp_path, tiny_model_path, password_hash_concurrency=1, password_hash_queue=0)
    browser = Browser(app)
    browser.sign_up("ada@example.com")
    holding, release = threading.Event(), threading.Event()

    def hold_the_only_turn() -> None:
        with throttle.PASSWORD_WORK.turn():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_only_turn)
    holder.start()
    try:
        assert holding.wait(10)
        busy = browser.log_in("ada@example.com")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
        assert "The server is busy; try again in a few seconds." in busy.text
    finally:
        release.set()
        holder.join()
    assert browser.log_in("ada@example.com").status_code == 303


def test_json_answers_carry_retry_after_too(tmp_path, tiny_model_path):
    app, _ = app_for(tmp_path, tiny_model_path)

    @app.get("/api/v1/throttled")
    def throttled():
        raise TooManyAttempts(90, what="requests")

    response = TestClient(app).get("/api/v1/throttled")
    assert response.status_code == 429 and response.headers["Retry-After"] == "90"
    assert response.json() == {"error": "Too many requests; try again in 2 minutes.", "field": None}


# ---- sign-ups ----------------------------------------------------------------------------------


def test_sign_ups_from_one_address_are_throttled(tmp_path, tiny_model_path):
    app, settings = app_for(tmp_path, tiny_model_path, signups_per_ip=2)
    farm = Browser(app)
    assert farm.form("/signup", {"email": "a1@example.com", "password": "short"}).status_code == 422  # a typo
    for i in range(2):
        Browser(app).sign_up(f"a{i}@example.com")
    refused = Browser(app).form("/signup", {"email": "a3@example.com", "password": PASSWORD})
    assert refused.status_code == 429 and 3590 <= int(refused.headers["Retry-After"]) <= 3600
    assert "Too many sign-ups from your network; try again in 60 minutes." in refused.text
    assert users(settings) == 2
    Browser(app, "198.51.100.1").sign_up("someone-else@example.com")  # another address is not affected
    assert users(settings) == 3


def test_simultaneous_sign_ups_cannot_slip_past_the_throttle(tmp_path, tiny_model_path):
    app, settings = app_for(tmp_path, tiny_model_path, signups_per_ip=3)
    tabs = [Browser(app) for _ in range(12)]
    codes = run_threads(
        12, lambda i: tabs[i].form("/signup", {"email": f"farm{i}@example.com", "password": PASSWORD}).status_code
    )
    assert sorted(codes) == [303] * 3 + [429] * 9
    assert users(settings) == 3


# ---- the test checkout ------------------------------------------------------------------------


def test_without_stripe_keys_or_the_test_checkout_nothing_can_be_bought(tmp_path, tiny_model_path):
    on_app, settings = app_for(tmp_path, tiny_model_path, test_checkout=True)
    browser = Browser(on_app)
    browser.sign_up("ada@example.com")
    left_over = browser.form("/billing/checkout", {"pack": "pro"}).headers["location"]  # made while it was on

    off_app = create_app(settings.model_copy(update={"test_checkout": False}))  # `gouache web`'s default
    session = browser.http.cookies["gouache_session"]
    browser = Browser(off_app)
    browser.http.cookies.set("gouache_session", session)
    page = browser.get("/billing")
    assert page.status_code == 200 and "Purchases are not configured" in page.text
    assert "test mode" not in page.text and "Buy ·" not in page.text
    assert page.text.count(">Not available</button>") == len(settings.credit_packs)
    refused = browser.form("/billing/checkout", {"pack": "starter"})
    assert refused.status_code == 403 and "Purchases are not configured on this server" in refused.text
    assert browser.get(left_over).status_code == 404
    assert browser.form(left_over, {}).status_code == 404
    with reading(settings) as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 1  # the one made while it was on
        assert s.scalar(select(User.balance)) == settings.signup_grant_credits


def test_the_test_checkout_shows_its_banner_and_sells(tmp_path, tiny_model_path):
    app, settings = app_for(tmp_path, tiny_model_path, test_checkout=True)
    browser = Browser(app)
    browser.sign_up("ada@example.com")
    page = browser.get("/billing").text
    assert "Payments are in <strong>test mode</strong>" in page and "GOUACHE_TEST_CHECKOUT" in page
    checkout = browser.form("/billing/checkout", {"pack": "starter"}).headers["location"]
    assert browser.form(checkout, {}).status_code == 303
    with reading(settings) as s:
        assert s.scalar(select(User.balance)) == settings.signup_grant_credits + 1000


def test_gouache_dev_turns_the_test_checkout_on_unless_told_otherwise(tmp_path, monkeypatch):
    from app.cli import dev_web_env

    assert make_settings(tmp_path).test_checkout is False  # `gouache web`, a fresh install
    assert dev_web_env(make_settings(tmp_path))["GOUACHE_TEST_CHECKOUT"] == "true"
    monkeypatch.setenv("GOUACHE_TEST_CHECKOUT", "false")
    from app.config import Settings

    told = Settings(_env_file=None, data_dir=tmp_path)
    assert told.test_checkout is False and dev_web_env(told)["GOUACHE_TEST_CHECKOUT"] == "false"


# ---- the prompt blocklist ----------------------------------------------------------------------


@pytest.fixture
def policed(tmp_path, tiny_model_path):
    app, settings = app_for(tmp_path, tiny_model_path, prompt_blocklist="gore, red wine")
    browser = Browser(app)
    browser.sign_up("ada@example.com")
    return browser, settings


def nothing_held(settings) -> None:
    with reading(settings) as s:
        assert s.scalar(select(User.balance)) == settings.signup_grant_credits
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_a_blocked_prompt_is_refused_in_the_page_and_costs_nothing(policed):
    browser, settings = policed
    message = "This prompt can't be used here: “gore” is not allowed by this studio's content policy."
    page = browser.form("/generate", {"prompt": "Blood and GORE, oil painting", "request_id": "r1"})
    assert page.status_code == 422 and message.replace("'", "&#39;") in page.text
    htmx = browser.http.post(
        "/generate",
        data={"prompt": "a glass of red  wine", "request_id": "r2", "csrf_token": browser.csrf},
        headers={"HX-Request": "true"},
    )
    assert htmx.status_code == 422 and "“red wine” is not allowed" in htmx.text and 'id="form-error"' in htmx.text
    img2img = browser.form("/generate", {"prompt": "gore", "mode": "img2img", "request_id": "r3"})
    assert img2img.status_code == 422 and "“gore” is not allowed" in img2img.text
    nothing_held(settings)


def test_a_blocked_prompt_is_refused_by_the_api_and_the_quotes(policed):
    browser, settings = policed
    refused = browser.api_post("/api/v1/generations", {"prompt": "gore", "negative_prompt": "blurry"})
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "This prompt can't be used here: “gore” is not allowed by this studio's content policy.",
        "field": "prompt",
    }
    nothing_held(settings)
    assert browser.get("/api/v1/quote", params={"prompt": "gore"}).status_code == 422
    fragment = browser.get("/generate/quote", params={"prompt": "some gore"})
    assert "quote-error" in fragment.text and "“gore” is not allowed" in fragment.text
    # a word in the negative prompt is what the image must not show: allowed
    allowed = browser.api_post("/api/v1/generations", {"prompt": "a gorilla", "negative_prompt": "gore"})
    assert allowed.status_code == 202, allowed.text
