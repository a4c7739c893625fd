"""The Content-Security-Policy in Chromium: the main pages and the API docs load and work
(htmx's live quote follows the form) with no violation reported."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from app.generation.catalog import BUILTIN_TINY_MODEL
from tests.browser.conftest import sign_up_in_browser, web_server
from tests.gallery_data import add_image, user_id
from tests.support import make_settings, migrated

pytestmark = pytest.mark.browser

# Recorded in the page before any of its scripts run.
LISTEN = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__violations.push(`${e.violatedDirective}: ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """uvicorn only (the pages need no worker), on the built-in tiny model's limits."""
    tmp = tmp_path_factory.mktemp("csp")
    settings = migrated(make_settings(tmp / "data", model=BUILTIN_TINY_MODEL))
    with web_server(settings, tmp / "web.log") as url:
        yield url, settings


def test_pages_and_api_docs_work_under_the_csp_with_no_violation(web, page, shoot):
    url, settings = web
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
    page.add_init_script(LISTEN)

    sign_up_in_browser(page, url, "csp@example.com")  # the sign-up, email and confirm pages under the CSP too
    expect(page.locator("#balance strong")).to_be_visible()

    # htmx works: the live quote follows the form
    quote = page.locator("#quote .quote-price strong")
    first = quote.inner_text()
    page.get_by_label("Images").select_option("3")
    expect(quote).not_to_have_text(first)
    three = int(quote.inner_text())
    page.get_by_label("Images").select_option("1")
    expect(quote).to_have_text(first)
    assert three > int(first)
    # the strength slider's label follows it (a listener in create.js, not an inline handler)
    page.locator(".mode-tab", has_text="Image to image").click()
    page.locator("#strength").fill("0.8")
    expect(page.locator("#strength-value")).to_have_text("0.8")
    page.locator(".mode-tab", has_text="Text to image").click()
    shoot("csp-01-create")

    owner = user_id(settings, "csp@example.com")
    for colour in ((200, 80, 40), (40, 120, 200), (60, 160, 90)):
        add_image(settings, owner, "a fox in the snow", colour=colour)
    page.goto(f"{url}/gallery")
    expect(page.locator(".gallery-grid img")).to_have_count(3)
    # (a function, not an expression: Playwright evaluates expressions with eval, which the CSP refuses)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    page.get_by_label("Search prompts").fill("fox")  # htmx swaps the results in
    expect(page).to_have_url(f"{url}/gallery?q=fox")
    shoot("csp-02-gallery")
    violations = page.evaluate("window.__violations")

    page.goto(f"{url}/api/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=15_000)
    page.locator(".opblock-summary", has_text="/api/v1/quote").first.click()
    expect(page.get_by_role("button", name="Try it out").first).to_be_visible()
    shoot("csp-03-api-docs")
    violations += page.evaluate("window.__violations")

    assert violations == []
    assert [m for m in console if "Content Security Policy" in m or "Refused" in m] == []

    # The listener does hear a violation: htmx's own indicator <style> would have been one.
    page.evaluate("document.head.insertAdjacentHTML('beforeend', '<style>.x { color: red }</style>')")
    page.wait_for_function("() => window.__violations.length > 0")
    assert "style-src" in page.evaluate("window.__violations")[0]
