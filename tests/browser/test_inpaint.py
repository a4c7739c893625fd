"""A person inpaints in Chromium: upload an image, paint a mask with the mouse, undo,
paint again, generate; only the painted area of the picture changes."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import sign_up_in_browser

pytestmark = pytest.mark.browser


def test_paint_a_mask_and_inpaint(live_server, page, shoot, tmp_path):
    rng = np.random.default_rng(7)
    source = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    source_path = tmp_path / "photo.png"
    source.save(source_path)

    sign_up_in_browser(page, live_server, "painter@example.com")
    expect(page.locator("#balance strong")).to_have_text("200")

    page.locator(".mode-tab", has_text="Inpaint").click()
    expect(page.get_by_label("Start image")).to_be_visible()
    expect(page.get_by_label("Size")).to_be_hidden()  # the size comes from the image
    page.get_by_label("Start image").set_input_files(str(source_path))
    stage = page.locator("#mask-paint")
    expect(stage).to_be_visible()
    expect(page.locator("#quote .quote-price strong")).to_have_text(re.compile(r"^\d+$"))  # priced once sized

    page.get_by_label("Brush").fill("16")
    box = stage.bounding_box()  # after the fill, which may scroll the page

    def paint(x0, y0, x1, y1):
        page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y1, steps=8)
        page.mouse.up()

    paint(0.1, 0.1, 0.9, 0.1)  # a stroke along the top...
    page.get_by_role("button", name="Undo").click()  # ...taken back
    paint(0.45, 0.3, 0.55, 0.7)  # a short vertical stroke in the middle
    mask_files = page.evaluate("document.querySelector('#mask').files.length")
    assert mask_files == 1
    shoot("09-inpaint-painted")

    page.get_by_label("Prompt", exact=True).fill("a green star")
    page.get_by_role("button", name="Generate", exact=True).click()
    card = page.locator("article.job").first
    expect(card.locator(".thumb img")).to_have_count(1, timeout=120_000)
    shoot("10-inpaint-done")

    src = card.locator(".thumb img").get_attribute("src")
    result = Image.open(io.BytesIO(page.request.get(f"{live_server}{src}").body())).convert("RGB")
    assert result.size == (64, 64)
    before, after = np.asarray(source), np.asarray(result)
    changed = np.abs(before.astype(int) - after).sum(axis=2) > 6
    ys, xs = np.nonzero(changed)
    assert changed.any(), "nothing was repainted"
    # the repainted pixels lie around the middle stroke, none along the undone top stroke
    assert xs.min() >= 16 and xs.max() <= 48 and ys.min() >= 8
    assert not changed[:12].any()
