"""A person in Chromium buys credits through the local test checkout (no Stripe keys)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from app.config import DEFAULT_PACKS
from tests.browser.conftest import sign_up_in_browser

pytestmark = pytest.mark.browser


def test_buy_a_pack_through_the_test_checkout_and_see_the_balance_change(live_server, page, shoot):
    pack = DEFAULT_PACKS[0]  # the live server sells the default packs
    sign_up_in_browser(page, live_server, "grace@example.com")
    balance = page.locator("#balance strong")
    expect(balance).to_have_text("200")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    expect(page.get_by_role("heading", name="Billing", exact=True)).to_be_visible()
    expect(page.get_by_text("Payments are in test mode")).to_be_visible()
    shoot("10-billing")

    page.get_by_role("button", name=re.compile(r"^Buy ")).first.click()
    expect(page).to_have_url(re.compile(r"/billing/test-checkout/[0-9a-f-]{36}$"))
    expect(page.get_by_text("Test checkout — no real payment.")).to_be_visible()
    expect(page.get_by_role("heading", name=pack.name)).to_be_visible()
    expect(balance).to_have_text("200")  # nothing until it is paid
    shoot("11-test-checkout")

    page.get_by_role("button", name="Pay (test)").click()
    expect(page).to_have_url(re.compile(r"/billing\?paid="))
    expect(balance).to_have_text(f"{200 + pack.credits:,}")
    expect(page.get_by_role("status")).to_contain_text(f"{pack.credits:,} credits were added")
    bought = page.locator('table.history tr[data-kind="purchase"]')  # one row per purchase, with what was paid
    expect(bought).to_contain_text(f"Bought {pack.credits:,} credits · {pack.name} pack")
    expect(bought).to_contain_text(f"Paid {pack.price_label}")
    expect(bought).to_contain_text(f"+{pack.credits:,}")

    page.get_by_role("link", name=re.compile(rf"{pack.credits:,} credits$")).click()  # the purchase under Receipts
    expect(page.get_by_role("heading", name="Receipt")).to_be_visible()
    expect(page.locator(".receipt")).to_contain_text(f"{pack.amount / 100:.2f} {pack.currency.upper()}")
    expect(page.locator(".receipt")).to_contain_text("Test checkout (no money moved)")
    expect(page.locator(".receipt")).to_contain_text("grace@example.com")
    shoot("12-receipt")

    page.goto(f"{live_server}/pricing")
    expect(page.get_by_role("heading", name="Pricing")).to_be_visible()
    expect(page.locator(".packs")).to_contain_text(pack.price_label)
    expect(balance).to_have_text(f"{200 + pack.credits:,}")
    shoot("13-pricing")
