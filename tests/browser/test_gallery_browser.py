"""A person in Chromium browses a gallery: searches, filters (and goes back), favourites,
collects two images, and walks the lightbox with the keyboard."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sign_up_in_browser, web_server
from tests.gallery_data import add_image, user_id
from tests.support import PASSWORD, make_settings, migrated

pytestmark = pytest.mark.browser

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
IMAGES = [  # prompt, mode, size — oldest first
    ("a lighthouse on a cliff, gouache", "txt2img", (64, 64)),
    ("three pink squares on a purple background", "txt2img", (64, 96)),
    ("a lighthouse in the fog, watercolour", "img2img", (96, 64)),
    ("a red circle on a blue background", "txt2img", (64, 64)),
    ("two yellow stars on a black background", "upscale", (128, 64)),
    ("a green triangle on a white background", "txt2img", (64, 64)),
]


@pytest.fixture(scope="module")
def gallery_site(tmp_path_factory, tiny_model_path):
    tmp = tmp_path_factory.mktemp("gallery-site")
    settings = migrated(make_settings(tmp / "data", tiny_model_path))
    with web_server(settings, tmp / "web.log") as url:
        yield url, settings


def sign_up(page, url: str, email: str) -> None:
    sign_up_in_browser(page, url, email, PASSWORD)
    expect(page.locator("#balance")).to_be_visible()


def tiles(page):
    return page.locator(".gallery-grid .cell")


def test_search_filter_favourite_and_collect(gallery_site, page, shoot):
    url, settings = gallery_site
    sign_up(page, url, "ada@example.com")
    owner = user_id(settings, "ada@example.com")
    for i, (prompt, mode, size) in enumerate(IMAGES):
        colour = (40 * i, 120, 200 - 30 * i)
        add_image(settings, owner, prompt, mode=mode, size=size, created_at=T0 + timedelta(hours=i), colour=colour)

    page.goto(f"{url}/gallery")
    expect(tiles(page)).to_have_count(6)
    expect(tiles(page).first).to_contain_text("a green triangle")  # newest first
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(".gallery-grid img").first.get_attribute("src").endswith(".webp")
    shoot("gallery-01-images")

    # search: the URL follows, so the view can be bookmarked
    page.get_by_label("Search prompts").fill("lighthouse")
    expect(tiles(page)).to_have_count(2)
    expect(page).to_have_url(re.compile(r"/gallery\?q=lighthouse$"))
    # and a second filter narrows it
    page.get_by_label("Mode", exact=True).select_option("img2img")
    expect(tiles(page)).to_have_count(1)
    expect(tiles(page).first).to_contain_text("in the fog")
    expect(page).to_have_url(re.compile(r"q=lighthouse&mode=img2img$"))
    shoot("gallery-02-filtered")
    page.go_back()
    expect(page).to_have_url(re.compile(r"/gallery\?q=lighthouse$"))
    expect(tiles(page)).to_have_count(2)

    page.get_by_label("Search prompts").fill("zebra")
    expect(page.get_by_text("No images match")).to_be_visible()
    shoot("gallery-03-no-results")

    # a bookmarked filtered view opens as it was
    page.goto(f"{url}/gallery?aspect=landscape")
    expect(tiles(page)).to_have_count(2)
    expect(page.get_by_label("Aspect")).to_have_value("landscape")

    # favourite the newest lighthouse, then show only favourites
    page.goto(f"{url}/gallery?q=lighthouse")
    fog = tiles(page).filter(has_text="in the fog")
    fog.hover()
    fog.get_by_role("button", name="Favourite").click()
    expect(fog.get_by_role("button", name="Favourite")).to_have_attribute("aria-pressed", "true")
    page.get_by_text("♥ Favourites").click()
    expect(tiles(page)).to_have_count(1)
    expect(page).to_have_url(re.compile(r"favourites=1"))

    # select both lighthouses and put them in a new collection
    page.goto(f"{url}/gallery?q=lighthouse")
    for cell in (tiles(page).nth(0), tiles(page).nth(1)):
        cell.hover()
        cell.locator('input[name="ids"]').check()
    bar = page.locator("#selection")
    expect(bar).to_be_visible()
    expect(bar).to_contain_text("2 selected")
    shoot("gallery-04-selected")
    bar.get_by_label("New collection name").fill("Lighthouses")
    bar.get_by_role("button", name="Add to collection").click()
    expect(page).to_have_url(re.compile(r"/gallery\?q=lighthouse$"))

    page.get_by_role("link", name="Collections", exact=True).click()
    expect(page.locator(".collection-card")).to_contain_text("Lighthouses")
    expect(page.locator(".collection-card")).to_contain_text("2 images")
    shoot("gallery-05-collections")
    page.locator(".collection-card").click()
    expect(page.get_by_role("heading", name=re.compile("Lighthouses"))).to_be_visible()
    expect(tiles(page)).to_have_count(2)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    shoot("gallery-06-collection")

    # the lightbox: → next, ← previous, Esc back to the same filtered grid
    tiles(page).first.locator("a.tile").click()
    expect(page.get_by_text("a lighthouse in the fog, watercolour")).to_be_visible()
    shoot("gallery-07-detail")
    page.keyboard.press("ArrowRight")
    expect(page.locator(".meta")).to_contain_text("a lighthouse on a cliff")
    page.keyboard.press("ArrowLeft")
    expect(page.locator(".meta")).to_contain_text("in the fog")
    page.keyboard.press("Escape")
    expect(page).to_have_url(re.compile(r"/gallery\?collection="))
    expect(tiles(page)).to_have_count(2)


def test_an_empty_gallery_invites_a_first_image(gallery_site, page, shoot):
    url, _ = gallery_site
    sign_up(page, url, "new@example.com")
    page.goto(f"{url}/gallery")
    expect(page.get_by_text("Your gallery is empty")).to_be_visible()
    expect(page.get_by_role("link", name="Create your first image")).to_be_visible()
    shoot("gallery-00-empty")
