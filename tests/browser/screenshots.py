"""Screenshot every page at 1366x900 and 390x844 into a folder (default test-artifacts/screenshots/).

    scripts/screenshots [FOLDER]      (or: python -m tests.browser.screenshots [FOLDER])

Starts its own web app on a temporary data dir (no worker, no model run: the gallery's images
are made directly), signs up a user through the email link as a newcomer would, and photographs
each page logged out and logged in, the gallery empty and full, the phone menu and the delete
dialog. Needs the test tools (scripts/install --dev) and Debian's chromium."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="test-artifacts/screenshots", help="where the PNGs go")
    out = Path(parser.parse_args().folder)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM
    from tests.browser.site_tour import NEWCOMER, VIEWPORTS, fill_gallery, log_in, make_admin, sign_up_owner, tour_site

    written: list[Path] = []

    def context(browser, name: str, state=None):
        phone = name == "phone"
        return browser.new_context(viewport=VIEWPORTS[name], is_mobile=phone, has_touch=phone, storage_state=state)

    def shoot(page, viewport: str, name: str, path: str | None = None, *, full: bool = True) -> None:
        if path is not None:
            page.goto(f"{base}{path}")
            page.wait_for_load_state("networkidle")
        target = out / f"{viewport}-{len(written) + 1:02d}-{name}.png"
        page.screenshot(path=str(target), full_page=full)
        written.append(target)

    with tempfile.TemporaryDirectory(prefix="gouache-screenshots-") as tmp, tour_site(Path(tmp)) as site:
        base = site.url
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            )
            for viewport in VIEWPORTS:  # logged out
                ctx = context(browser, viewport)
                page = ctx.new_page()
                for name, path in site.logged_out_pages().items():
                    shoot(page, viewport, f"out-{name}", path)
                if viewport == "phone":
                    page.goto(f"{base}/")
                    page.get_by_role("button", name="Menu").click()
                    shoot(page, viewport, "out-menu-open", full=False)
                ctx.close()

            ctx = context(browser, "desktop")
            page = ctx.new_page()
            sign_up_owner(page, site)
            state = ctx.storage_state()
            ctx.close()
            for viewport in VIEWPORTS:  # a newcomer's empty gallery and collections
                ctx = context(browser, viewport)
                page = ctx.new_page()
                log_in(page, base, NEWCOMER)
                shoot(page, viewport, "gallery-empty", "/gallery")
                shoot(page, viewport, "collections-empty", "/collections")
                shoot(page, viewport, "billing-empty", "/billing")
                ctx.close()

            fill_gallery(site)
            make_admin(site.settings, "ada@example.com")
            for viewport in VIEWPORTS:
                ctx = context(browser, viewport, state)
                page = ctx.new_page()
                for name, path in site.logged_in_pages().items():
                    shoot(page, viewport, name, path)
                page.goto(f"{base}/gallery")
                page.locator(".tile-select input").first.check()
                page.locator(".tile-select input").nth(1).check()
                shoot(page, viewport, "gallery-selected", full=False)
                page.locator(".bulkbar button[value=delete]").click()
                shoot(page, viewport, "gallery-delete-dialog", full=False)
                page.keyboard.press("Escape")
                page.locator(".bulkbar button[value=favourite]").click()
                page.locator(".toast").wait_for()
                shoot(page, viewport, "gallery-toast", full=False)
                if viewport == "phone":
                    page.get_by_role("button", name="Filters").click()
                    shoot(page, viewport, "gallery-filters-open", full=False)
                    page.get_by_role("button", name="Menu").click()
                    shoot(page, viewport, "menu-open", full=False)
                ctx.close()
            browser.close()
    print(f"{len(written)} screenshots in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
