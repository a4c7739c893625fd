"""The job card follows its job over server-sent events, not by polling; without
EventSource it still fills in, by polling."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sign_up_in_browser

pytestmark = pytest.mark.browser


def generate(page, prompt: str) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Steps").fill("12")
    page.get_by_label("Images").select_option("2")
    page.get_by_role("button", name="Generate").click()


def test_the_job_card_fills_in_from_the_event_stream(live_server, page, shoot):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    sign_up_in_browser(page, live_server, "sse@example.com")
    balance = page.locator("#balance strong")
    generate(page, "a lighthouse at dusk, streamed")
    card = page.locator("article.job").first
    expect(card.locator(".thumbs img")).to_have_count(2, timeout=120_000)
    expect(card.locator(".status")).to_have_text("Succeeded")
    expect(balance).not_to_have_text("200")  # the finished card told the page to re-read it
    shoot("job-events-done")

    job_id = card.get_attribute("id").removeprefix("job-")
    streamed = [url for url in requests if url.endswith(f"/api/v1/generations/{job_id}/events")]
    cards = [url for url in requests if re.search(rf"/jobs/{job_id}/card$", url)]
    assert streamed, "the card opened no event stream"
    # the card is fetched again only when its status changes (queued → running → succeeded),
    # not every 600 ms
    assert len(cards) <= 3, cards


def test_without_event_source_the_card_polls(live_server, page):
    page.add_init_script("delete window.EventSource;")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    sign_up_in_browser(page, live_server, "poll@example.com")
    generate(page, "a lighthouse at dusk, polled")
    card = page.locator("article.job").first
    expect(card.locator(".thumbs img")).to_have_count(2, timeout=120_000)
    expect(card.locator(".status")).to_have_text("Succeeded")
    assert not [url for url in requests if url.endswith("/events")]
    assert [url for url in requests if url.endswith("/card")]
