"""Billing history and pricing in Chromium, on a desktop (1366×900) and a phone (390×844):
one row per job with its thumbnail, a running balance, pages of history, the pricing page's
examples, and never a page wider than the screen."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from app.enums import JobStatus
from tests.billing_data import add_job, age_entries, buy, grant
from tests.browser.conftest import ARTIFACTS, sign_up_in_browser, web_server
from tests.gallery_data import user_id
from tests.support import make_settings, migrated

pytestmark = pytest.mark.browser

VIEWPORTS = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
COLOURS = [(220, 60, 60), (40, 110, 220), (240, 200, 40), (40, 160, 90), (150, 70, 200), (240, 120, 180)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A fresh install's web server (the demo model's catalog, the test checkout on) and its
    settings, to make histories with; no worker: the jobs are settled as a worker would."""
    tmp = tmp_path_factory.mktemp("billing-ux")
    settings = migrated(make_settings(tmp / "data", test_checkout=True))
    with web_server(settings, tmp / "web.log") as url:
        yield url, settings


@pytest.fixture(params=list(VIEWPORTS))
def screen(request, browser):
    context = browser.new_context(viewport=VIEWPORTS[request.param])
    page = context.new_page()
    yield request.param, page
    context.close()


def no_horizontal_overflow(page) -> None:
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]"
    )


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_new_users_history_is_the_welcome_grant(shop, screen):
    url, _settings = shop
    size, page = screen
    sign_up_in_browser(page, url, f"newcomer-{size}@example.com")
    page.goto(f"{url}/billing")
    history = page.locator("table.history")
    expect(history.locator("tr.history-row")).to_have_count(1)
    expect(history).to_contain_text("Welcome credits")
    expect(page.get_by_text("Nothing generated yet")).to_be_visible()
    expect(page.get_by_role("link", name="Create an image")).to_be_visible()
    no_horizontal_overflow(page)
    shoot(page, f"billing-empty-{size}")


def test_a_busy_history_one_row_per_job_with_a_running_balance(shop, screen):
    url, settings = shop
    size, page = screen
    email = f"busy-{size}@example.com"
    sign_up_in_browser(page, url, email)
    owner = user_id(settings, email)
    for i in range(26):  # an older page of plain jobs
        add_job(settings, owner, f"a shape, number {i}", price=1 + i % 2, colour=COLOURS[i % len(COLOURS)])
    buy(settings, owner, "studio")
    done = add_job(
        settings, owner, "three pink squares on a purple background", n_images=3, price=3, colour=(230, 110, 170)
    )
    add_job(settings, owner, "a green triangle in the top left on a white background", status=JobStatus.FAILED, price=1)
    grant(settings, owner, 150, "A thank-you from the team")
    add_job(settings, owner, "two yellow stars on a black background", status=JobStatus.CANCELLED, price=2)
    add_job(
        settings,
        owner,
        "a red circle on a blue background, " * 6,  # a long prompt: truncated
        n_images=4,
        price=4,
        colour=(210, 50, 50),
    )
    add_job(settings, owner, "a blue star in the bottom right", status=JobStatus.RUNNING, price=2)
    age_entries(settings, owner, days=3)

    page.goto(f"{url}/billing")
    history = page.locator("table.history")
    rows = history.locator("tr.history-row")
    expect(rows).to_have_count(25)
    job_row = history.locator(f'tr[data-job-id="{done}"]')
    expect(job_row).to_have_count(1)  # one row per job
    expect(job_row).to_contain_text("three pink squares on a purple background")
    expect(job_row).to_contain_text("3 images")
    expect(job_row).to_contain_text("−3")
    thumb = job_row.locator("img")
    expect(thumb).to_be_visible()
    thumb.scroll_into_view_if_needed()
    expect(thumb).to_have_attribute("src", re.compile(r"^/images/[\w-]+\.webp$"))
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    expect(history.locator('tr[data-status="failed"]')).to_contain_text("nothing charged")
    expect(history.locator('tr[data-status="cancelled"]')).to_contain_text("nothing charged")
    expect(history.locator('tr[data-status="running"]')).to_contain_text("2 held")
    expect(history.locator('tr[data-kind="purchase"]')).to_contain_text("Bought 5,500 credits")
    expect(history).not_to_contain_text("image(s)")

    balance = page.locator("#balance strong").inner_text()
    first_balance = rows.first.locator(".h-balance").inner_text()
    assert re.sub(r"\D", "", first_balance) == re.sub(r"\D", "", balance)  # the newest row: the balance now
    amounts = [
        int(t.replace(",", "").replace("−", "-").replace("+", "")) for t in rows.locator(".h-amount").all_inner_texts()
    ]
    balances = [int(re.sub(r"[^\d]", "", t)) for t in rows.locator(".h-balance").all_inner_texts()]
    for i in range(len(balances) - 1):
        assert balances[i] == balances[i + 1] + amounts[i]
    no_horizontal_overflow(page)
    if size == "phone":  # the rows stack as cards: no table wider than the screen
        assert page.evaluate("() => getComputedStyle(document.querySelector('tr.history-row')).display") == "grid"
        assert page.evaluate("() => document.querySelector('.history-scroll').scrollWidth <= window.innerWidth")
    shoot(page, f"billing-history-{size}")

    page.get_by_role("link", name="Older →").click()
    expect(page).to_have_url(re.compile(r"/billing\?page=2$"))
    expect(page.get_by_text("Page 2 of 2", exact=True)).to_be_visible()
    expect(page.locator("table.history tr.history-row").last).to_contain_text("Welcome credits")
    assert re.sub(r"\D", "", page.locator("tr.history-row .h-balance").last.inner_text()) == "200"
    no_horizontal_overflow(page)
    shoot(page, f"billing-history-page2-{size}")


def test_pricing_shows_the_models_sizes_and_an_example_per_mode(shop, screen):
    url, _settings = shop
    size, page = screen
    page.goto(f"{url}/pricing")
    expect(page.get_by_role("heading", name="Pricing", exact=True)).to_be_visible()
    for mode in ("txt2img", "img2img", "inpaint", "outpaint", "variation", "upscale"):
        expect(page.locator(f'.price-example[data-mode="{mode}"] .price-amount strong')).to_have_text(
            re.compile(r"^\d")
        )
    table = page.locator("table.price-table")
    expect(table).to_contain_text("256×256")
    expect(table).to_contain_text("512×512")
    expect(table).not_to_contain_text("768")
    explain = page.locator("#upscale")
    expect(explain).to_contain_text("16 times the pixels")
    expect(explain).to_contain_text("= 18 credits")
    expect(explain).to_contain_text("= 50 credits")
    formula = page.locator("details.price-formula")
    expect(formula.locator("code").first).not_to_be_visible()  # the raw formula waits behind "How it's computed"
    no_horizontal_overflow(page)
    shoot(page, f"pricing-{size}")
    formula.locator("summary").click()
    expect(formula.locator("code").first).to_be_visible()
    no_horizontal_overflow(page)
