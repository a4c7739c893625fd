"""A person in Chromium: sign up, generate, watch progress, find the image in the gallery."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import confirm_in_browser

pytestmark = pytest.mark.browser


def test_sign_up_generate_and_see_it_in_the_gallery(live_server, page, shoot):
    page.goto(live_server)
    shoot("01-landing")
    page.get_by_role("link", name="Sign up").first.click()
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill("a long enough passphrase")
    shoot("02-signup")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    shoot("02b-check-your-email")
    confirm_in_browser(page, live_server, "ada@example.com")

    balance = page.locator("#balance strong")
    expect(balance).to_have_text("200")
    shoot("03-create-empty")

    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk, gouache")
    page.get_by_label("Images").select_option("2")
    price = page.request.get(f"{live_server}/api/v1/quote?width=128&height=128&steps=20&n=2").json()["credits"]
    expect(page.locator("#quote .quote-price strong")).to_have_text(str(price))  # the live quote followed the form
    expect(page.locator("#quote")).to_contain_text(f"{200 - price} left after")

    page.get_by_role("button", name="Generate").click()
    card = page.locator("article.job").first
    expect(card).to_be_visible()
    expect(balance).to_have_text(str(200 - price))  # held at submit, shown at once
    # the progress bar is live: a running card shows "Step k of n" before it finishes
    expect(card.locator("img")).to_have_count(2, timeout=120_000)
    shoot("04-create-done")
    expect(card.locator(".status")).to_have_text("Succeeded")

    page.get_by_role("link", name="Gallery", exact=True).click()
    tiles = page.locator(".gallery-grid img")
    expect(tiles).to_have_count(2)
    # the grid's thumbnails are new URLs (not cached from the create page): wait for them to load
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    shoot("05-gallery")
    page.locator(".gallery-grid a").first.click()
    expect(page.get_by_text("a lighthouse at dusk, gouache")).to_be_visible()
    expect(page.get_by_role("link", name="Download PNG")).to_be_visible()
    shoot("06-detail")


def test_a_bad_request_shows_an_error_in_the_form(live_server, page, shoot):
    page.goto(f"{live_server}/signup")
    page.get_by_label("Email").fill("bob@example.com")
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("alert")).to_contain_text("at least 8 characters")
    shoot("07-signup-error")
    page.get_by_label("Password").fill("a long enough passphrase")
    page.get_by_role("button", name="Sign up").click()
    confirm_in_browser(page, live_server, "bob@example.com")
    page.get_by_label("Steps").fill("0")
    page.get_by_label("Prompt", exact=True).fill("a cat")
    expect(page.locator("#quote")).to_contain_text("Steps must be between 1 and")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-error")).to_contain_text("Steps must be between 1 and")
    shoot("08-create-error")
    expect(page.locator("#balance strong")).to_have_text("200")
