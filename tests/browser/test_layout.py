"""The site's shell at 1366x900 and 390x844: no page scrolls sideways, the phone menu
reaches every page (the account page too), the header stays compact, login returns to
where you were going, deleting asks in our own dialog, bulk actions confirm with a toast,
and a missing page is a page of ours."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.site_tour import (
    NEWCOMER,
    OWNER,
    VIEWPORTS,
    fill_gallery,
    make_admin,
    sign_up_owner,
    tour_site,
)
from tests.support import PASSWORD

pytestmark = pytest.mark.browser

OVERFLOW = "() => [document.documentElement.scrollWidth, window.innerWidth]"


@pytest.fixture(scope="module")
def site(tmp_path_factory, browser):
    with tour_site(tmp_path_factory.mktemp("layout")) as site:
        context = browser.new_context(viewport=VIEWPORTS["desktop"])
        sign_up_owner(context.new_page(), site)
        site.owner_state = context.storage_state()  # type: ignore[attr-defined]
        context.close()
        fill_gallery(site)
        make_admin(site.settings, OWNER)
        yield site


def new_page(browser, viewport: str, state=None):
    phone = viewport == "phone"
    context = browser.new_context(viewport=VIEWPORTS[viewport], is_mobile=phone, has_touch=phone, storage_state=state)
    page = context.new_page()
    page.on("dialog", lambda d: pytest.fail(f"a native {d.type}() dialog: {d.message}"))
    return page


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_no_page_scrolls_sideways(site, browser, viewport):
    visitor = new_page(browser, viewport)
    owner = new_page(browser, viewport, site.owner_state)
    wide = {}
    for who, page, pages in (("out", visitor, site.logged_out_pages()), ("in", owner, site.logged_in_pages())):
        for name, path in pages.items():
            page.goto(f"{site.url}{path}")
            page.wait_for_load_state("networkidle")
            scroll_width, inner_width = page.evaluate(OVERFLOW)
            if scroll_width > inner_width:
                wide[f"{who}:{name} {path}"] = scroll_width
    assert not wide, f"wider than the {viewport}'s {VIEWPORTS[viewport]['width']} px: {wide}"
    visitor.context.close()
    owner.context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_the_menu_reaches_every_page_and_the_header_is_compact(site, browser, viewport):
    page = new_page(browser, viewport, site.owner_state)
    page.goto(f"{site.url}/gallery")
    height = page.locator(".topbar").bounding_box()["height"]
    menu = page.get_by_role("button", name="Menu")
    if viewport == "phone":
        assert height <= 60, f"the phone's sticky header is {height} px tall"
        expect(page.get_by_role("link", name=re.compile("ada@example.com"))).to_be_hidden()
        expect(menu).to_have_attribute("aria-expanded", "false")
        menu.click()
        expect(menu).to_have_attribute("aria-expanded", "true")
        for name in ("Create", "Gallery", "Billing", "Pricing", "Admin", "API keys"):
            expect(page.locator("#site-menu").get_by_role("link", name=name, exact=True)).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#site-menu")).to_be_hidden()
        expect(menu).to_be_focused()
        menu.click()
    else:
        assert height <= 72
        expect(menu).to_be_hidden()
        expect(page.get_by_role("link", name="Pricing", exact=True)).to_be_visible()
    page.get_by_role("link", name=re.compile("ada@example.com")).click()
    expect(page).to_have_url(f"{site.url}/account")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    page.context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_logging_in_returns_to_where_you_were_going(site, browser, viewport):
    page = new_page(browser, viewport)
    page.goto(f"{site.url}/billing")
    expect(page).to_have_url(f"{site.url}/login?next=%2Fbilling")
    page.get_by_label("Email").fill(NEWCOMER)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()  # a typo keeps the destination
    expect(page.locator("#password-error, .alert-error").first).to_be_visible()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{site.url}/billing")
    page.context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_gallery_on_a_phone_hides_filters_and_the_keyboard_hint(site, browser, viewport):
    page = new_page(browser, viewport, site.owner_state)
    page.goto(f"{site.url}/gallery")
    model = page.locator("#f-model")
    columns = page.evaluate(
        "() => getComputedStyle(document.querySelector('.gallery-grid')).gridTemplateColumns.split(' ').length"
    )
    if viewport == "phone":
        assert columns == 2
        expect(model).to_be_hidden()
        page.get_by_role("button", name="Filters").click()
        expect(model).to_be_visible()
        model.select_option(index=1)
        expect(page.locator(".filters-count")).to_have_text("1")
    else:
        assert columns >= 4
        expect(model).to_be_visible()
        expect(page.get_by_role("button", name="Filters")).to_be_hidden()
    page.goto(f"{site.url}/gallery/{site.images[0]}")
    hint = page.get_by_text("← → to browse")
    if viewport == "phone":
        expect(hint).to_be_hidden()
    else:
        expect(hint).to_be_visible()
    page.context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_delete_asks_in_our_own_dialog_and_bulk_actions_say_what_they_did(site, browser, viewport):
    page = new_page(browser, viewport, site.owner_state)  # a native confirm() fails the test
    page.goto(f"{site.url}/gallery")
    cells = page.locator(".gallery-grid .cell")
    before = cells.count()
    page.locator(".tile-select input").nth(0).check()
    page.locator(".tile-select input").nth(1).check()
    page.locator(".bulkbar").get_by_role("button", name="♥ Favourite").click()
    toast = page.locator("#toasts .toast")
    expect(toast).to_have_text(re.compile("Favourited 2 images"))
    expect(page.locator("#toasts")).to_have_attribute("aria-live", "polite")

    page.locator(".tile-select input").first.check()
    page.locator(".bulkbar button[value=delete]").click()
    dialog = page.locator("dialog#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Delete this image for good?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")  # the keyboard cancels: nothing deleted
    expect(dialog).to_be_hidden()
    expect(cells).to_have_count(before)

    page.locator(".bulkbar button[value=delete]").click()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Delete images")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#toasts .toast")).to_have_text(re.compile("Deleted 1 image"))
    expect(cells).to_have_count(before - 1)
    page.context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_a_missing_page_is_a_page_of_ours(site, browser, viewport):
    page = new_page(browser, viewport)
    response = page.goto(f"{site.url}/docs")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_role("link", name="/api/docs")).to_be_visible()
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(246, 244, 239)"  # our stylesheet, not a raw JSON body
    icon = page.evaluate("() => document.querySelector('link[rel=icon]').href")
    assert page.request.get(icon).ok and page.request.get(f"{site.url}/favicon.ico").ok
    page.context.close()
