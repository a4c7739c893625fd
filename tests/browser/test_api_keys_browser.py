"""A developer in Chromium makes an API key: the page empty, the new key shown once with a
working Copy button, the list with "last used" once a script used it, then revoking it."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sign_up_in_browser, web_server
from tests.support import make_settings, migrated

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_path):
    tmp = tmp_path_factory.mktemp("keys-site")
    settings = migrated(make_settings(tmp / "data", tiny_model_path))
    with web_server(settings, tmp / "web.log") as url:
        yield url


def test_make_copy_use_and_revoke_a_key(site, page, shoot):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site)
    sign_up_in_browser(page, site, "dev@example.com")

    page.get_by_role("link", name="API keys").click()  # from the header
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    expect(page.get_by_text("No keys yet")).to_be_visible()
    shoot("api-keys-empty")

    page.get_by_role("button", name="Create key").click()  # no name: told what to do
    expect(page.get_by_text("Give the key a name")).to_be_visible()
    page.get_by_label("Name").fill("Krita plugin")
    page.get_by_role("button", name="Create key").click()
    key_field = page.get_by_label("The new API key")
    key = key_field.input_value()
    assert key.startswith("gch_") and len(key) == 55
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    shoot("api-keys-new-key-shown-once")

    used = httpx.get(f"{site}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert used.status_code == 200
    page.get_by_label("Name").fill("nightly batch")
    page.get_by_role("button", name="Create key").click()
    page.goto(f"{site}/account/api-keys")
    expect(page.get_by_label("The new API key")).to_have_count(0)  # shown once only
    rows = page.locator(".keys-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="Krita plugin")).to_contain_text(key[:12])
    expect(rows.filter(has_text="nightly batch")).to_contain_text("Never")
    assert key not in page.content()
    shoot("api-keys-list")

    rows.filter(has_text="Krita plugin").get_by_role("button", name="Revoke").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Revoke").click()  # our own dialog
    expect(page.get_by_role("status")).to_contain_text(f"Key {key[:12]} revoked")
    expect(rows).to_have_count(1)
    assert httpx.get(f"{site}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
